// An OpenID Provider for Keel's "Sign in with a provider" checks: panva's
// oidc-provider (OpenID Certified, pinned in .ci/package.json) with one
// confidential client, `keel`, and its development login and consent pages
// (any login and password sign in; the login is the subject).
//
// Usage: node oidc-provider.mjs PORT REDIRECT_URI CLIENT_SECRET
// Prints "listening <issuer>" once it serves.

import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const [port, redirectUri, clientSecret] = process.argv.slice(2);
if (!port || !redirectUri || !clientSecret) {
  console.error('usage: oidc-provider.mjs PORT REDIRECT_URI CLIENT_SECRET');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'keel',
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.com`,
          email_verified: true,
          name: sub.charAt(0).toUpperCase() + sub.slice(1),
        };
      },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    // The provider's own login and consent pages.
    devInteractions: { enabled: true },
  },
  // A relying party that does not send an S256 challenge is refused.
  pkce: { required: () => true },
  // Lifetimes in seconds, long enough for a run.
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 600,
    IdToken: 600,
    Interaction: 600,
    Session: 600,
  },
});

// The development pages log a warning each: expected here.
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
