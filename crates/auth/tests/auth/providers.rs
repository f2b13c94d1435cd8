//! Sign-in with an identity provider, through the gateway as a browser and
//! an application would do it, against the testkit's stand-in OpenID
//! Provider: the happy path, linking and unlinking, and each attack a
//! misbehaving provider or a forged callback can try.

use std::time::Duration;

use http::{HeaderValue, Method, StatusCode, header};
use keel_testkit::{
    Suite, SuiteOptions,
    http::{HttpResponse, TestGateway},
    oidc_provider::{Account, Misbehaviour, OidcProvider},
};
use serde_json::{Value, json};

/// Where the stand-in sends browsers back: the gateway's callback under this
/// public URL (the test hands the callback to the gateway itself).
const PUBLIC_BASE_URL: &str = "http://keel.test";
/// The application's return URL.
const RETURN_URL: &str = "https://app.example/signed-in";
/// The provider's id in Keel.
const PROVIDER: &str = "corp";
/// The application's PKCE verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWjOEjXk";
const CHALLENGE: &str = "VYFANLqdx_HDV6BqEhluZJ63rtrIPROSSFdB3P6G83I";

struct Fixture {
    suite: Suite,
    gateway: TestGateway,
    provider: OidcProvider,
}

async fn fixture() -> anyhow::Result<Fixture> {
    fixture_with(&[]).await
}

async fn fixture_with(extra: &[&str]) -> anyhow::Result<Fixture> {
    let provider = OidcProvider::start().await?;
    provider.allow_redirect_uri(&format!("{PUBLIC_BASE_URL}/v1/auth/providers/{PROVIDER}/callback"));
    let providers = json!([{
        "id": PROVIDER,
        "display_name": "Corp SSO",
        "issuer": provider.issuer(),
        "client_id": provider.client_id(),
        "client_secret": provider.client_secret(),
        "scopes": ["email", "profile"],
    }])
    .to_string();
    let mut args = vec![
        "--oidc-providers",
        providers.as_str(),
        "--oidc-return-urls",
        RETURN_URL,
        "--public-base-url",
        PUBLIC_BASE_URL,
    ];
    args.extend_from_slice(extra);
    let suite = keel_testkit::spawn_suite_with_options(SuiteOptions::default().args("auth", &args)).await?;
    let gateway = suite.spawn_gateway(&["--rate-limit-per-minute", "0"]).await?;
    Ok(Fixture {
        suite,
        gateway,
        provider,
    })
}

impl Fixture {
    async fn stop(self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        self.suite.stop().await
    }

    /// Opens the start URL: the provider's authorization URL, and the
    /// cookie the gateway set.
    async fn start(&self) -> anyhow::Result<(String, String)> {
        let started = self
            .gateway
            .http()
            .get(
                &format!("/v1/auth/providers/{PROVIDER}:start?return_url={RETURN_URL}&code_challenge={CHALLENGE}"),
                None,
            )
            .await?;
        assert_eq!(started.status, StatusCode::FOUND, "{:?}", started.json());
        let location = started.header("location").unwrap_or_default().to_owned();
        assert!(location.starts_with(self.provider.issuer()), "{location}");
        Ok((location, cookie_of(&started)?))
    }

    /// Hands the provider's redirect (its `Location`, aimed at the public
    /// URL) to the gateway's callback, with `cookie`.
    async fn callback(&self, provider_location: &str, cookie: &str) -> anyhow::Result<HttpResponse> {
        let path = provider_location
            .strip_prefix(PUBLIC_BASE_URL)
            .ok_or_else(|| anyhow::anyhow!("the provider redirected elsewhere: {provider_location}"))?;
        let headers = [(
            header::COOKIE,
            HeaderValue::from_str(&format!("keel_sign_in={cookie}"))?,
        )];
        self.gateway
            .http()
            .send(Method::GET, path, None, &headers, bytes::Bytes::new())
            .await
    }

    /// A whole browser round: start, the provider, the callback; the
    /// return URL's parameters.
    async fn browser_round(&self) -> anyhow::Result<Vec<(String, String)>> {
        let (authorization_url, cookie) = self.start().await?;
        let answer = self.provider.authorize(&authorization_url).await?;
        let back = self.callback(&answer.location, &cookie).await?;
        returned(&back)
    }

    /// Signs in through the provider as the application would: the code
    /// from the return URL, exchanged with the verifier.
    async fn sign_in(&self) -> anyhow::Result<Value> {
        let params = self.browser_round().await?;
        let code = param(&params, "code").ok_or_else(|| anyhow::anyhow!("no code: {params:?}"))?;
        let exchanged = self
            .gateway
            .http()
            .post(
                "/v1/auth:exchangeSignInCode",
                None,
                &json!({ "code": code, "codeVerifier": VERIFIER }),
            )
            .await?;
        assert_eq!(exchanged.status, StatusCode::OK, "{:?}", exchanged.json());
        Ok(exchanged.json())
    }

    /// The refusal reason a browser round ends with at the application.
    async fn refused_with(&self) -> anyhow::Result<String> {
        let params = self.browser_round().await?;
        assert!(
            param(&params, "code").is_none(),
            "no code for a refused sign-in: {params:?}"
        );
        param(&params, "error").ok_or_else(|| anyhow::anyhow!("no error: {params:?}"))
    }
}

fn cookie_of(response: &HttpResponse) -> anyhow::Result<String> {
    let set = response.header("set-cookie").unwrap_or_default();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
    assert!(set.contains(&format!("Path=/v1/auth/providers/{PROVIDER}/")), "{set}");
    assert!(!set.contains("Secure"), "no Secure on loopback: {set}");
    set.strip_prefix("keel_sign_in=")
        .and_then(|rest| rest.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no keel_sign_in cookie: {set}"))
}

/// The parameters of the return URL the gateway redirected to.
fn returned(response: &HttpResponse) -> anyhow::Result<Vec<(String, String)>> {
    assert_eq!(response.status, StatusCode::FOUND, "{:?}", response.json());
    let location = response.header("location").unwrap_or_default();
    let url = url::Url::parse(location)?;
    assert_eq!(&location[..RETURN_URL.len()], RETURN_URL);
    assert!(!location.contains("access"), "no token in a URL: {location}");
    Ok(url.query_pairs().into_owned().collect())
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn token_of(login: &Value) -> String {
    login["tokens"]["accessToken"].as_str().unwrap_or_default().to_owned()
}

async fn identities(f: &Fixture, token: &str) -> anyhow::Result<Vec<Value>> {
    let listed = f.gateway.http().get("/v1/auth/identities", Some(token)).await?;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.json());
    Ok(listed.json()["identities"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_sign_in_creates_the_user_and_the_next_one_finds_them() -> anyhow::Result<()> {
    let f = fixture().await?;
    let providers = f.gateway.http().get("/v1/auth/providers", None).await?.json();
    assert_eq!(providers["providers"][0]["id"], PROVIDER);
    assert_eq!(providers["providers"][0]["displayName"], "Corp SSO");

    f.provider.sign_in_as(Account::default());
    let first = f.sign_in().await?;
    let user_id = first["user"]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(first["user"]["email"], "jane.doe@example.com");
    assert_eq!(first["user"]["emailVerified"], true, "the provider verified it");
    let token = token_of(&first);
    let linked = identities(&f, &token).await?;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0]["issuer"], f.provider.issuer());
    assert_eq!(linked[0]["subject"], Account::default().subject);

    let again = f.sign_in().await?;
    assert_eq!(
        again["user"]["id"],
        user_id.as_str(),
        "the same user, found by (issuer, subject)"
    );
    assert_eq!(identities(&f, &token_of(&again)).await?.len(), 1);
    // The provider-only user cannot unlink their only way in.
    let id = linked[0]["id"].as_str().unwrap_or_default();
    let unlink = f
        .gateway
        .http()
        .send(
            Method::DELETE,
            &format!("/v1/auth/identities/{id}"),
            Some(&token),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    assert_eq!(unlink.status, StatusCode::CONFLICT, "{:?}", unlink.json());
    assert!(unlink.json().to_string().contains("LAST_SIGN_IN_METHOD"));
    // Nor sign in with a password: they have none.
    let login = f
        .gateway
        .http()
        .post(
            "/v1/auth:login",
            None,
            &json!({ "email": "jane.doe@example.com", "password": "anything at all" }),
        )
        .await?;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);

    // A sign-in code is spent once, and only with its verifier.
    let params = f.browser_round().await?;
    let code = param(&params, "code").unwrap_or_default();
    let wrong = json!({ "code": code, "codeVerifier": "a".repeat(43) });
    let refused = f
        .gateway
        .http()
        .post("/v1/auth:exchangeSignInCode", None, &wrong)
        .await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.json().to_string().contains("SIGN_IN_CODE_INVALID"));
    let right = json!({ "code": code, "codeVerifier": VERIFIER });
    let spent = f
        .gateway
        .http()
        .post("/v1/auth:exchangeSignInCode", None, &right)
        .await?;
    assert_eq!(spent.status, StatusCode::UNAUTHORIZED, "the wrong verifier spent it");
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_misbehaving_provider_is_refused_with_its_reason() -> anyhow::Result<()> {
    let f = fixture_with(&["--oidc-timeout-ms", "1000"]).await?;
    f.provider.sign_in_as(Account::default());
    let cases = [
        (Misbehaviour::WrongAudience, "ID_TOKEN_INVALID"),
        (Misbehaviour::AzpMismatch, "ID_TOKEN_INVALID"),
        (Misbehaviour::MultipleAudiencesWithoutAzp, "ID_TOKEN_INVALID"),
        (Misbehaviour::Expired, "ID_TOKEN_INVALID"),
        (Misbehaviour::IssuedInTheFuture, "ID_TOKEN_INVALID"),
        (Misbehaviour::AlgNone, "ID_TOKEN_INVALID"),
        (Misbehaviour::HmacWithPublicKey, "ID_TOKEN_INVALID"),
        (Misbehaviour::UnknownKid, "ID_TOKEN_INVALID"),
        (Misbehaviour::WrongNonce, "ID_TOKEN_INVALID"),
        (Misbehaviour::MissingNonce, "ID_TOKEN_INVALID"),
        (Misbehaviour::WrongIssuer, "ID_TOKEN_INVALID"),
        (Misbehaviour::IssParameterMismatch, "ISSUER_MISMATCH"),
        (Misbehaviour::NoIssParameter, "ISSUER_MISMATCH"),
        (Misbehaviour::UserinfoSubjectMismatch, "ID_TOKEN_INVALID"),
        (Misbehaviour::TokenEndpointRedirects, "TOKEN_EXCHANGE_FAILED"),
        (
            Misbehaviour::SlowTokenEndpoint(Duration::from_secs(3)),
            "PROVIDER_UNAVAILABLE",
        ),
    ];
    for (misbehaviour, reason) in cases {
        f.provider.behave();
        f.provider.misbehave(misbehaviour);
        assert_eq!(f.refused_with().await?, reason, "{misbehaviour:?}");
    }
    assert_eq!(
        f.provider.redirected_token_requests(),
        0,
        "the token endpoint's redirect was not followed"
    );
    f.provider.behave();
    // No user was made by any of them; a well-behaved round works.
    let signed_in = f.sign_in().await?;
    assert_eq!(signed_in["user"]["email"], "jane.doe@example.com");
    let metrics = reqwest::get(f.suite.metrics_url("auth")?).await?.text().await?;
    assert!(
        metrics.contains(r#"keel_auth_provider_sign_ins_total{provider="corp",outcome="ID_TOKEN_INVALID"}"#),
        "{metrics}"
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_replayed_callbacks_and_foreign_return_urls_are_refused() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.provider.sign_in_as(Account::default());
    let http = f.gateway.http();
    let refused_state = |response: &HttpResponse| {
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{:?}", response.json());
        assert!(
            response.json().to_string().contains("SIGN_IN_STATE_INVALID"),
            "{:?}",
            response.json()
        );
        assert!(
            response.header("location").is_none(),
            "no redirect with an unknown state"
        );
    };

    // A state nobody issued.
    let (authorization_url, cookie) = f.start().await?;
    let answer = f.provider.authorize(&authorization_url).await?;
    let forged = answer.location.replace(
        &format!("state={}", answer.state.clone().unwrap_or_default()),
        "state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    refused_state(&f.callback(&forged, &cookie).await?);
    // The real one, from another browser (another cookie): refused, and spent.
    let (_, other_cookie) = f.start().await?;
    refused_state(&f.callback(&answer.location, &other_cookie).await?);
    refused_state(&f.callback(&answer.location, &cookie).await?);

    // Replayed: the first use works, the second is refused.
    let (authorization_url, cookie) = f.start().await?;
    let answer = f.provider.authorize(&authorization_url).await?;
    assert!(param(&returned(&f.callback(&answer.location, &cookie).await?)?, "code").is_some());
    refused_state(&f.callback(&answer.location, &cookie).await?);

    // A return URL not on the list.
    let foreign = http
        .get(
            &format!("/v1/auth/providers/{PROVIDER}:start?return_url=https://evil.example/&code_challenge={CHALLENGE}"),
            None,
        )
        .await?;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST);
    assert!(foreign.json().to_string().contains("RETURN_URL_NOT_ALLOWED"));
    assert!(foreign.header("location").is_none());
    let short = http
        .get(
            &format!("/v1/auth/providers/{PROVIDER}:start?return_url={RETURN_URL}&code_challenge=short"),
            None,
        )
        .await?;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(
        short.json().to_string().contains("must be exactly 43 characters"),
        "{:?}",
        short.json()
    );
    let unknown = http
        .get(
            &format!("/v1/auth/providers/nobody:start?return_url={RETURN_URL}&code_challenge={CHALLENGE}"),
            None,
        )
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_account_is_never_taken_over_by_email_and_links_only_when_signed_in() -> anyhow::Result<()> {
    let f = fixture().await?;
    let password = "correct horse battery";
    f.suite.register("jane.doe@example.com", password).await?;
    for verified in [false, true] {
        f.provider.sign_in_as(Account {
            email_verified: verified,
            ..Account::default()
        });
        assert_eq!(
            f.refused_with().await?,
            "LOCAL_ACCOUNT_EXISTS",
            "email_verified: {verified}"
        );
    }

    // Signed in locally, the user links the provider (password needed).
    let login = f.suite.login("jane.doe@example.com", password).await?;
    let local_id = login.user.map(|u| u.id).unwrap_or_default();
    let token = login.tokens.map(|t| t.access_token).unwrap_or_default();
    let http = f.gateway.http();
    let path = format!("/v1/auth/providers/{PROVIDER}:link");
    let link = |password: &'static str| {
        let body = json!({ "returnUrl": RETURN_URL, "codeChallenge": CHALLENGE, "password": password });
        let (http, path, token) = (http.clone(), path.clone(), token.clone());
        async move { http.post(&path, Some(&token), &body).await }
    };
    let wrong = link("not the password").await?;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{:?}", wrong.json());
    assert!(wrong.json().to_string().contains("PASSWORD_REQUIRED"));
    let linking = link("correct horse battery").await?;
    assert_eq!(linking.status, StatusCode::OK, "{:?}", linking.json());
    let cookie = cookie_of(&linking)?;
    let authorization_url = linking.json()["authorizationUrl"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let answer = f.provider.authorize(&authorization_url).await?;
    let params = returned(&f.callback(&answer.location, &cookie).await?)?;
    assert!(param(&params, "code").is_some(), "{params:?}");
    let linked = identities(&f, &token).await?;
    assert_eq!(linked.len(), 1);

    // From now on the provider signs in the local user.
    let signed_in = f.sign_in().await?;
    assert_eq!(signed_in["user"]["id"], local_id.as_str());
    // They have a password, so the identity may go.
    let id = linked[0]["id"].as_str().unwrap_or_default();
    let unlink = http
        .send(
            Method::DELETE,
            &format!("/v1/auth/identities/{id}"),
            Some(&token),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    assert_eq!(unlink.status, StatusCode::OK, "{:?}", unlink.json());
    assert!(identities(&f, &token).await?.is_empty());
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_user_cannot_come_in_through_a_provider() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.provider.sign_in_as(Account::default());
    let first = f.sign_in().await?;
    let user_id = first["user"]["id"].as_str().unwrap_or_default().to_owned();
    let (_, admin) = f.suite.signed_in_admin().await?;
    let disabled = f
        .gateway
        .http()
        .post(
            &format!("/v1/auth/users/{user_id}:disable"),
            Some(&admin.access_token),
            &json!({}),
        )
        .await?;
    assert_eq!(disabled.status, StatusCode::OK, "{:?}", disabled.json());
    assert_eq!(f.refused_with().await?, "USER_DISABLED");
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_provider_key_is_fetched_once_and_unknown_keys_do_not_hammer_the_provider() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.provider.sign_in_as(Account::default());
    f.sign_in().await?;
    let fetched = f.provider.jwks_fetches();
    f.provider.rotate_key()?;
    f.sign_in().await?;
    assert_eq!(f.provider.jwks_fetches(), fetched + 1, "the new kid made one fetch");
    // Tokens under unknown kids, one after another: at most one more fetch
    // within the refetch interval.
    f.provider.misbehave(Misbehaviour::UnknownKid);
    for _ in 0..3 {
        assert_eq!(f.refused_with().await?, "ID_TOKEN_INVALID");
    }
    assert!(
        f.provider.jwks_fetches() <= fetched + 2,
        "{}",
        f.provider.jwks_fetches()
    );
    f.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_sign_in_asks_for_the_second_factor_when_the_user_enrolled_one() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.provider.sign_in_as(Account::default());
    let first = f.sign_in().await?;
    let token = token_of(&first);
    let http = f.gateway.http();
    let enrollment = http.post("/v1/auth:enrollTotp", Some(&token), &json!({})).await?;
    assert_eq!(enrollment.status, StatusCode::OK, "{:?}", enrollment.json());
    let app = totp_rs::Totp::from_url(enrollment.json()["otpauthUri"].as_str().unwrap_or_default())?;
    let now = u64::try_from(chrono::Utc::now().timestamp())?;
    let confirmed = http
        .post(
            "/v1/auth:confirmTotp",
            Some(&token),
            &json!({ "code": app.generate(now).to_string() }),
        )
        .await?;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.json());

    let params = f.browser_round().await?;
    let code = param(&params, "code").unwrap_or_default();
    let exchanged = http
        .post(
            "/v1/auth:exchangeSignInCode",
            None,
            &json!({ "code": code, "codeVerifier": VERIFIER }),
        )
        .await?
        .json();
    assert!(
        exchanged["tokens"].is_null(),
        "no tokens before the second factor: {exchanged}"
    );
    let challenge = exchanged["secondFactorChallenge"]["challengeToken"]
        .as_str()
        .unwrap_or_default();
    assert!(!challenge.is_empty(), "{exchanged}");
    // The next step's code: the confirming one is spent.
    let next = app.generate(now + 30).to_string();
    let verified = http
        .post(
            "/v1/auth:verifySecondFactor",
            None,
            &json!({ "challengeToken": challenge, "code": next }),
        )
        .await?;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.json());
    assert_eq!(verified.json()["user"]["id"], first["user"]["id"]);
    f.stop().await
}
