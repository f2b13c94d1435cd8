//! Every annotated route's happy path, through the gateway against the real
//! services: REST/JSON in, proto3 JSON out.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use http::{Method, StatusCode};
use keel_platform::Role;
use keel_testkit::http::{HttpClient, HttpResponse};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "a brand new passphrase";

fn ok(response: HttpResponse) -> Value {
    assert_eq!(
        response.status,
        StatusCode::OK,
        "expected 200, got {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    // Tokens, balances and profiles are never cached.
    assert_eq!(response.header("cache-control"), Some("no-store"));
    response.json()
}

async fn register(http: &HttpClient, email: &str) -> anyhow::Result<Value> {
    let body = json!({ "email": email, "password": PASSWORD, "requestId": format!("register-{email}") });
    Ok(ok(http.post("/v1/auth:register", None, &body).await?))
}

async fn login(http: &HttpClient, email: &str, password: &str) -> anyhow::Result<Value> {
    let body = json!({ "email": email, "password": password });
    Ok(ok(http.post("/v1/auth:login", None, &body).await?))
}

fn access(login: &Value) -> String {
    login["tokens"]["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_routes_answer_in_proto3_json() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();

    // Register and sign in: lowerCamelCase names, enum names, RFC 3339 times.
    let registered = register(http, "ada@example.com").await?;
    let user = &registered["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["roles"], json!(["ROLE_USER"]));
    assert_eq!(user["emailVerified"], false, "defaults are written out");
    assert!(user["createTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{user}");
    let signed_in = login(http, "ada@example.com", PASSWORD).await?;
    let token = access(&signed_in);
    assert_eq!(signed_in["tokens"]["tokenType"], "Bearer");

    // JWKS is public.
    let jwks = ok(http.get("/v1/auth/jwks", None).await?);
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    // Sessions: list (with a query parameter), refresh, revoke another.
    let other = login(http, "ada@example.com", PASSWORD).await?;
    let sessions = ok(http.get("/v1/auth/sessions?pageSize=10", Some(&token)).await?);
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(2), "{sessions}");
    assert_eq!(sessions["nextPageToken"], "");
    let refreshed = ok(http
        .post(
            "/v1/auth:refresh",
            None,
            &json!({ "refreshToken": signed_in["tokens"]["refreshToken"] }),
        )
        .await?);
    let token = refreshed["tokens"]["accessToken"]
        .as_str()
        .expect("refreshed")
        .to_owned();
    let other_session = other["tokens"]["sessionId"].as_str().expect("a session id");
    let revoked = http
        .post(
            &format!("/v1/auth/sessions/{other_session}:revoke"),
            Some(&token),
            &json!({}),
        )
        .await?;
    assert_eq!(ok(revoked), json!({}));
    let logout = http
        .post(
            "/v1/auth:logout",
            None,
            &json!({ "refreshToken": other["tokens"]["refreshToken"] }),
        )
        .await?;
    assert_eq!(ok(logout), json!({}));

    // Verification and recovery, with the tokens auth mails out.
    let verification = suite
        .auth_events(Some("user.email_verification_requested"))
        .await?
        .pop()
        .and_then(|event| event.payload)
        .map(|payload| suite.open_token(&payload))
        .transpose()?
        .expect("a verification token");
    let verified = ok(http
        .post("/v1/auth:verifyEmail", None, &json!({ "token": verification }))
        .await?);
    assert_eq!(verified["user"]["emailVerified"], true);

    let changed = http
        .post(
            "/v1/auth:changePassword",
            Some(&token),
            &json!({ "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD }),
        )
        .await?;
    assert_eq!(ok(changed)["endedSessionCount"], 0);

    ok(http
        .post(
            "/v1/auth:requestPasswordReset",
            None,
            &json!({ "email": "ada@example.com" }),
        )
        .await?);
    let reset = suite
        .auth_events(Some("user.password_reset_requested"))
        .await?
        .pop()
        .and_then(|event| event.payload)
        .map(|payload| suite.open_token(&payload))
        .transpose()?
        .expect("a reset token");
    ok(http
        .post(
            "/v1/auth:resetPassword",
            None,
            &json!({ "token": reset, "newPassword": PASSWORD }),
        )
        .await?);
    login(http, "ada@example.com", PASSWORD).await?;

    // Admin routes.
    suite.create_user("root@example.com", PASSWORD, &[Role::Admin]).await?;
    let admin = access(&login(http, "root@example.com", PASSWORD).await?);
    let user_id = user["id"].as_str().expect("an id");
    let roles = ok(http
        .post(
            &format!("/v1/auth/users/{user_id}:setRoles"),
            Some(&admin),
            &json!({ "roles": ["ROLE_USER", "ROLE_ADMIN"] }),
        )
        .await?);
    assert_eq!(roles["user"]["roles"], json!(["ROLE_USER", "ROLE_ADMIN"]));
    let disabled = ok(http
        .post(&format!("/v1/auth/users/{user_id}:disable"), Some(&admin), &json!({}))
        .await?);
    assert_eq!(disabled["user"]["disabled"], true);

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_routes_answer_in_proto3_json() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();
    register(http, "grace@example.com").await?;
    let token = access(&login(http, "grace@example.com", PASSWORD).await?);
    suite.create_user("root@example.com", PASSWORD, &[Role::Admin]).await?;
    let admin = access(&login(http, "root@example.com", PASSWORD).await?);

    let account = ok(http.get("/v1/accounts/me", Some(&token)).await?)["account"].clone();
    assert_eq!(account["email"], "grace@example.com");
    let id = account["id"].as_str().expect("an id").to_owned();

    // PATCH with a named body field, a nested path variable and a query mask.
    let updated = ok(http
        .json(
            Method::PATCH,
            "/v1/accounts/me?updateMask=displayName",
            Some(&token),
            &json!({ "displayName": "Grace", "etag": account["etag"] }),
        )
        .await?);
    assert_eq!(updated["account"]["displayName"], "Grace");
    assert_ne!(updated["account"]["etag"], account["etag"]);

    // A deposit by the admin; int64 amounts travel as strings.
    let deposit = json!({
        "amount": { "amountMinor": "2500", "currencyCode": "USD" },
        "requestId": "deposit-1",
        "reason": "welcome credit",
    });
    let deposited = ok(http
        .post(&format!("/v1/accounts/{id}:deposit"), Some(&admin), &deposit)
        .await?);
    let transaction = &deposited["transaction"];
    assert_eq!(transaction["kind"], "TRANSACTION_KIND_DEPOSIT");
    assert_eq!(transaction["balanceAfter"]["amountMinor"], "2500");
    // The retry returns the first result.
    let again = ok(http
        .post(&format!("/v1/accounts/{id}:deposit"), Some(&admin), &deposit)
        .await?);
    assert_eq!(again["transaction"]["id"], transaction["id"]);

    let balance = ok(http.get("/v1/accounts/me/balance", Some(&token)).await?);
    assert_eq!(
        balance["balance"]["balance"],
        json!({ "amountMinor": "2500", "currencyCode": "USD" })
    );
    let listed = ok(http
        .get("/v1/accounts/me/transactions?pageSize=1", Some(&token))
        .await?);
    assert_eq!(listed["transactions"].as_array().map(Vec::len), Some(1));
    let accounts = ok(http.get("/v1/accounts?pageSize=50", Some(&admin)).await?);
    assert!(
        accounts["accounts"]
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a["id"] == id)),
        "{accounts}"
    );
    let by_id = ok(http.get(&format!("/v1/accounts/{id}"), Some(&admin)).await?);
    assert_eq!(by_id["account"]["displayName"], "Grace");

    gateway.stop().await?;
    suite.stop().await
}
