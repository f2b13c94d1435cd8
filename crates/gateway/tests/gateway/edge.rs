//! The edge: errors as HTTP statuses with google.rpc.Status bodies, bearer
//! checks, rate limits, body limits, timeouts, request ids, trace context,
//! CORS and health.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_platform::Role;
use keel_testkit::{
    Suite,
    http::{HttpClient, HttpResponse, TestGateway, spawn_gateway},
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

const PASSWORD: &str = "correct horse battery staple";

async fn sign_in(suite: &Suite, http: &HttpClient, email: &str, roles: &[Role]) -> anyhow::Result<String> {
    suite.create_user(email, PASSWORD, roles).await?;
    let response = http
        .post("/v1/auth:login", None, &json!({ "email": email, "password": PASSWORD }))
        .await?;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    Ok(response.json()["tokens"]["accessToken"]
        .as_str()
        .expect("a token")
        .to_owned())
}

/// The error body's `code` and first detail's `@type`.
fn error_of(response: &HttpResponse) -> (i64, String, Value) {
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    (
        body["code"].as_i64().expect("a numeric code"),
        body["message"].as_str().expect("a message").to_owned(),
        body["details"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn service_errors_map_to_http_statuses_with_their_details() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();
    let user = sign_in(&suite, http, "ada@example.com", &[Role::User]).await?;
    let admin = sign_in(&suite, http, "root@example.com", &[Role::Admin]).await?;

    // INVALID_ARGUMENT → 400 with BadRequest field violations.
    let response = http
        .post(
            "/v1/auth:register",
            None,
            &json!({ "email": "not-an-email", "password": PASSWORD }),
        )
        .await?;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let (code, _, details) = error_of(&response);
    assert_eq!(code, Code::InvalidArgument as i64);
    let violations: Vec<&Value> = details
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .collect();
    // In words for people, as over gRPC; the rule id and its pattern in
    // the details for programs.
    let email = &violations[0]["fieldViolations"][0];
    assert_eq!(email["field"], "email", "{details}");
    assert_eq!(email["description"], "must be a valid email address", "{details}");
    assert_eq!(email["reason"], "string.pattern", "{details}");
    assert_eq!(
        response.json()["message"],
        "email: must be a valid email address",
        "{details}"
    );
    let info = details
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .expect("ErrorInfo");
    assert!(
        info["metadata"]["email.pattern"]
            .as_str()
            .is_some_and(|p| p.starts_with('^')),
        "{details}"
    );

    // ALREADY_EXISTS → 409 with the ErrorInfo reason.
    let response = http
        .post(
            "/v1/auth:register",
            None,
            &json!({ "email": "ada@example.com", "password": PASSWORD }),
        )
        .await?;
    assert_eq!(response.status, StatusCode::CONFLICT);
    let (_, _, details) = error_of(&response);
    assert!(
        details
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["reason"] == "EMAIL_TAKEN"),
        "{details}"
    );

    // UNAUTHENTICATED from the service (wrong password) → 401.
    let response = http
        .post(
            "/v1/auth:login",
            None,
            &json!({ "email": "ada@example.com", "password": "wrong password!" }),
        )
        .await?;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);

    // PERMISSION_DENIED → 403: another user's account, and an admin call.
    let admin_account = http.get("/v1/accounts/me", Some(&admin)).await?.json()["account"]["id"].clone();
    let admin_id = admin_account.as_str().expect("an id");
    let response = http
        .get(&format!("/v1/accounts/{admin_id}/balance"), Some(&user))
        .await?;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    let response = http.get("/v1/accounts", Some(&user)).await?;
    assert_eq!(response.status, StatusCode::FORBIDDEN);

    // ALREADY_EXISTS → 409: a request id reused with another amount.
    let deposit =
        |amount: &str| json!({ "amount": { "amountMinor": amount, "currencyCode": "USD" }, "requestId": "dep-1" });
    let path = format!("/v1/accounts/{admin_id}:deposit");
    assert_eq!(
        http.post(&path, Some(&admin), &deposit("100")).await?.status,
        StatusCode::OK
    );
    let response = http.post(&path, Some(&admin), &deposit("200")).await?;
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(error_of(&response).0, Code::AlreadyExists as i64);

    // FAILED_PRECONDITION → 409: well-formed, but the account holds another
    // currency.
    let euros = json!({ "amount": { "amountMinor": "100", "currencyCode": "EUR" }, "requestId": "dep-2" });
    let response = http.post(&path, Some(&admin), &euros).await?;
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(error_of(&response).0, Code::FailedPrecondition as i64);

    // ABORTED → 409: an etag another change made stale.
    let etag = http.get("/v1/accounts/me", Some(&user)).await?.json()["account"]["etag"].clone();
    let update = json!({ "displayName": "x", "etag": etag });
    let first = http
        .json(Method::PATCH, "/v1/accounts/me", Some(&user), &update)
        .await?;
    assert_eq!(first.status, StatusCode::OK);
    let stale = http
        .json(Method::PATCH, "/v1/accounts/me", Some(&user), &update)
        .await?;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.json());
    assert_eq!(error_of(&stale).0, Code::Aborted as i64);

    // RESOURCE_EXHAUSTED from auth's login throttle → 429 with Retry-After.
    let mut throttled = None;
    for _ in 0..8 {
        let response = http
            .post(
                "/v1/auth:login",
                None,
                &json!({ "email": "ada@example.com", "password": "guess guess" }),
            )
            .await?;
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(response);
            break;
        }
    }
    let throttled = throttled.expect("repeated failures are throttled");
    let retry_after: u64 = throttled.header("retry-after").expect("Retry-After").parse()?;
    assert!(retry_after >= 1);

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_4xx_answers_never_5xx() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&["--max-body-bytes", "1024"]).await?;
    let http = gateway.http();
    /// One bad request: what is sent and the status it must get.
    struct Case {
        name: &'static str,
        method: Method,
        path: &'static str,
        content_type: Option<&'static str>,
        body: Bytes,
        expected: StatusCode,
    }
    let post = |name, content_type, body: &[u8], expected| Case {
        name,
        method: Method::POST,
        path: "/v1/auth:login",
        content_type: Some(content_type),
        body: Bytes::copy_from_slice(body),
        expected,
    };
    let get = |name, method, path, expected| Case {
        name,
        method,
        path,
        content_type: None,
        body: Bytes::new(),
        expected,
    };
    let json = "application/json";
    let cases = [
        post("malformed JSON", json, b"{\"email\":", StatusCode::BAD_REQUEST),
        post("unknown field", json, br#"{"emial":"a@b.c"}"#, StatusCode::BAD_REQUEST),
        post("wrong type", json, br#"{"email":["a"]}"#, StatusCode::BAD_REQUEST),
        post("not an object", json, b"42", StatusCode::BAD_REQUEST),
        post(
            "wrong content type",
            "text/plain",
            b"{}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        post("too large", json, &[b' '; 4096], StatusCode::PAYLOAD_TOO_LARGE),
        get("unknown route", Method::GET, "/v1/nothing/here", StatusCode::NOT_FOUND),
        get(
            "wrong method",
            Method::DELETE,
            "/v1/auth:login",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        get(
            "unknown query field",
            Method::GET,
            "/v1/auth/jwks?nosuch=1",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for case in cases {
        let headers: Vec<_> = case
            .content_type
            .map(|t| (header::CONTENT_TYPE, HeaderValue::from_static(t)))
            .into_iter()
            .collect();
        let response = http.send(case.method, case.path, None, &headers, case.body).await?;
        let name = case.name;
        assert_eq!(
            response.status,
            case.expected,
            "{name}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let (code, message, _) = error_of(&response);
        assert!(code > 0 && !message.is_empty(), "{name}: a google.rpc.Status body");
    }
    let response = http
        .send(Method::DELETE, "/v1/auth:login", None, &[], Bytes::new())
        .await?;
    assert_eq!(response.header("allow"), Some("POST"));

    // A body sent in chunks, with no length declared, is cut off too.
    let chunked = http
        .send(
            Method::POST,
            "/v1/auth:login",
            None,
            &[
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (header::TRANSFER_ENCODING, HeaderValue::from_static("chunked")),
            ],
            Bytes::from(format!("{{\"email\":\"{}\"}}", "a".repeat(4096))),
        )
        .await?;
    assert_eq!(chunked.status, StatusCode::PAYLOAD_TOO_LARGE);

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_routes_need_a_valid_bearer_token() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();

    let missing = http.get("/v1/accounts/me", None).await?;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some(r#"Bearer realm="keel""#));
    assert_eq!(error_of(&missing).0, Code::Unauthenticated as i64);

    let forged = http
        .get("/v1/accounts/me", Some("eyJhbGciOiJFZERTQSJ9.e30.c2ln"))
        .await?;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(
        forged
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with(r#"Bearer realm="keel", error="invalid_token""#)),
        "{:?}",
        forged.headers
    );
    let basic = http
        .send(
            Method::GET,
            "/v1/accounts/me",
            None,
            &[(header::AUTHORIZATION, HeaderValue::from_static("Basic YTpi"))],
            Bytes::new(),
        )
        .await?;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    // Public routes need none, and a stale token does not get in their way.
    assert_eq!(http.get("/v1/auth/jwks", None).await?.status, StatusCode::OK);
    assert_eq!(http.get("/v1/auth/jwks", Some("stale")).await?.status, StatusCode::OK);
    let token = sign_in(&suite, http, "ada@example.com", &[Role::User]).await?;
    assert_eq!(http.get("/v1/accounts/me", Some(&token)).await?.status, StatusCode::OK);

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_s_keys_a_token_is_503_not_401() -> anyhow::Result<()> {
    // Nothing listens on either upstream port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://{closed}");
    let gateway = spawn_gateway([("auth", url.clone()), ("accounts", url)].into(), &[]).await?;
    // A well-formed header naming a key the gateway would have to fetch.
    let token = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6InVua25vd24ifQ.e30.c2ln";
    // The second call comes while the failed fetch is too recent to repeat:
    // still unavailable, not a bad token.
    for _ in 0..2 {
        let response = gateway.http().get("/v1/accounts/me", Some(token)).await?;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response).0, Code::Unavailable as i64);
    }
    let ready = gateway.http().get("/readyz", None).await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_is_rate_limited_on_its_own() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite
        .spawn_gateway(&["--rate-limit-per-minute", "60", "--rate-limit-burst", "5"])
        .await?;
    let http = gateway.http();
    let ada = sign_in(&suite, http, "ada@example.com", &[Role::User]).await?;
    let bob = sign_in(&suite, http, "bob@example.com", &[Role::User]).await?;

    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http.get("/v1/accounts/me", Some(&ada)).await?);
    }
    let limited = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429 after the burst");
    assert_eq!(statuses.iter().filter(|r| r.status == StatusCode::OK).count(), 5);
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse()?;
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(limited).0, Code::ResourceExhausted as i64);

    // Another user has an allowance of their own, though both share an address.
    assert_eq!(http.get("/v1/accounts/me", Some(&bob)).await?.status, StatusCode::OK);

    // Probing for routes counts against the address.
    let mut probes = Vec::new();
    for _ in 0..8 {
        probes.push(http.get("/v1/no/such/route", None).await?.status);
    }
    assert!(probes.contains(&StatusCode::NOT_FOUND), "{probes:?}");
    assert!(probes.contains(&StatusCode::TOO_MANY_REQUESTS), "{probes:?}");

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_client_address_counts_on_its_own() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    // The test itself plays the load balancer in front of the gateway.
    let gateway = suite.spawn_gateway(&["--trusted-proxies", "127.0.0.1"]).await?;
    let http = gateway.http();
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        suite.create_user(email, PASSWORD, &[Role::User]).await?;
    }
    let login_from = |address: &'static str, email: &'static str, password: &'static str| async move {
        let headers = [
            (
                header::HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_static(address),
            ),
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
        ];
        let body = json!({ "email": email, "password": password }).to_string();
        http.send(Method::POST, "/v1/auth:login", None, &headers, Bytes::from(body))
            .await
    };

    // One address guesses against several accounts until auth locks it out.
    let mut locked = false;
    for (i, email) in ["a@example.com", "b@example.com"].iter().cycle().take(12).enumerate() {
        let response = login_from("203.0.113.7", email, "wrong guess").await?;
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            locked = i >= 5;
            break;
        }
    }
    assert!(locked, "the guessing address is locked after its failures");
    // Locked out of the accounts it guessed at, the right password included...
    let refused = login_from("203.0.113.7", "a@example.com", PASSWORD).await?;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

    // ...while another client behind the same proxy signs in to the same
    // account, and its session shows its own address.
    let signed_in = login_from("198.51.100.20", "a@example.com", PASSWORD).await?;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.json());
    let token = signed_in.json()["tokens"]["accessToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    let sessions = http.get("/v1/auth/sessions", Some(&token)).await?.json();
    assert_eq!(sessions["sessions"][0]["clientAddress"], "198.51.100.20");

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_kept_or_made_and_returned() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();

    let given = http
        .send(
            Method::GET,
            "/v1/auth/jwks",
            None,
            &[(
                header::HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("req-42"),
            )],
            Bytes::new(),
        )
        .await?;
    assert_eq!(given.header("x-request-id"), Some("req-42"));
    // One that is too long, or not printable, is replaced: it goes into logs.
    let long = "r".repeat(65);
    for unfit in [long.as_str(), "two words", "tab\there"] {
        let replaced = http
            .send(
                Method::GET,
                "/v1/auth/jwks",
                None,
                &[(
                    header::HeaderName::from_static("x-request-id"),
                    HeaderValue::from_str(unfit)?,
                )],
                Bytes::new(),
            )
            .await?;
        let id = replaced.header("x-request-id").expect("an id is made");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{unfit:?} became {id:?}");
    }
    let made = http.get("/v1/auth/jwks", None).await?;
    let id = made.header("x-request-id").expect("an id is made");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    // Errors carry it too.
    let missing = http.get("/v1/nothing", None).await?;
    assert!(missing.header("x-request-id").is_some());

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_for_allowed_origins_only() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite
        .spawn_gateway(&["--cors-allow-origins", "https://app.example.com"])
        .await?;
    let http = gateway.http();
    let preflight = |origin: &'static str| async move {
        let headers = [
            (header::ORIGIN, HeaderValue::from_static(origin)),
            (header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("GET")),
            (
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static("authorization"),
            ),
        ];
        http.send(Method::OPTIONS, "/v1/accounts/me", None, &headers, Bytes::new())
            .await
    };
    let allowed = preflight("https://app.example.com").await?;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let refused = preflight("https://evil.example.com").await?;
    assert_eq!(refused.header("access-control-allow-origin"), None);

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_upstreams_and_healthz_the_process() -> anyhow::Result<()> {
    let mut suite = keel_testkit::spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();

    assert_eq!(http.get("/healthz", None).await?.status, StatusCode::OK);
    let ready = http.get("/readyz", None).await?;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.json());
    // Every registered service is an upstream.
    let every: serde_json::Map<String, serde_json::Value> = suite
        .service_names()
        .into_iter()
        .map(|name| (name.to_owned(), json!("SERVING")))
        .collect();
    assert_eq!(ready.json()["upstreams"], serde_json::Value::Object(every));

    suite.stop_accounts().await?;
    let ready = http.get("/readyz", None).await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["upstreams"]["accounts"], "NOT_SERVING");
    assert_eq!(http.get("/healthz", None).await?.status, StatusCode::OK);

    gateway.stop().await?;
    suite.stop().await
}

/// A stand-in for accounts that records each call's metadata and answers
/// GetAccount with the status its `account_id` names: `code-N` fails with
/// code N (with a BadRequest detail), `slow` answers after 5 s.
async fn scripted_accounts() -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<HeaderMap>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (seen, calls) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |request: http::Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let _ = seen.send(request.headers().clone());
                    let body = request.into_body().collect().await?.to_bytes();
                    let call = keel::accounts::v1::GetAccountRequest::decode(body.get(5..).unwrap_or_default())
                        .unwrap_or_default();
                    if call.account_id == "slow" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    let code = call
                        .account_id
                        .strip_prefix("code-")
                        .and_then(|n| n.parse::<i32>().ok())
                        .unwrap_or(Code::Internal as i32);
                    let status = tonic::Status::with_error_details(
                        Code::from_i32(code),
                        format!("scripted failure {code}"),
                        ErrorDetails::with_bad_request_violation("account_id", "scripted"),
                    );
                    Ok::<_, hyper::Error>(status.into_http::<Empty<Bytes>>())
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    Ok((addr, calls))
}

async fn gateway_before_scripted_accounts(
    suite: &Suite,
    args: &[&str],
) -> anyhow::Result<(TestGateway, mpsc::UnboundedReceiver<HeaderMap>)> {
    let (accounts, calls) = scripted_accounts().await?;
    let gateway = suite
        .spawn_gateway_with([("accounts", format!("http://{accounts}"))].into(), args)
        .await?;
    Ok((gateway, calls))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_grpc_code_maps_to_its_http_status() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (gateway, _calls) = gateway_before_scripted_accounts(&suite, &[]).await?;
    let http = gateway.http();
    let token = sign_in(&suite, http, "ada@example.com", &[Role::User]).await?;

    let expected = [
        (Code::Cancelled, 499),
        (Code::Unknown, 500),
        (Code::InvalidArgument, 400),
        (Code::DeadlineExceeded, 504),
        (Code::NotFound, 404),
        (Code::AlreadyExists, 409),
        (Code::PermissionDenied, 403),
        (Code::ResourceExhausted, 429),
        (Code::FailedPrecondition, 409),
        (Code::Aborted, 409),
        (Code::OutOfRange, 400),
        (Code::Unimplemented, 501),
        (Code::Internal, 500),
        (Code::Unavailable, 503),
        (Code::DataLoss, 500),
        (Code::Unauthenticated, 401),
    ];
    for (code, status) in expected {
        let response = http
            .get(&format!("/v1/accounts/code-{}", code as i32), Some(&token))
            .await?;
        assert_eq!(response.status.as_u16(), status, "{code:?}");
        let (body_code, message, details) = error_of(&response);
        assert_eq!(body_code, code as i64);
        assert_eq!(message, format!("scripted failure {}", code as i32));
        assert_eq!(details[0]["fieldViolations"][0]["field"], "account_id", "{code:?}");
    }

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caller_s_token_request_id_trace_and_address_reach_the_service() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (gateway, mut calls) = gateway_before_scripted_accounts(&suite, &[]).await?;
    let http = gateway.http();
    let token = sign_in(&suite, http, "ada@example.com", &[Role::User]).await?;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    http.send(
        Method::GET,
        "/v1/accounts/code-5",
        Some(&token),
        &[
            (
                header::HeaderName::from_static("traceparent"),
                HeaderValue::from_static(traceparent),
            ),
            (
                header::HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("req-7"),
            ),
        ],
        Bytes::new(),
    )
    .await?;
    let seen = calls.recv().await.expect("the call reached the service");
    assert_eq!(
        seen.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {token}").as_str())
    );
    // The call joins the caller's trace (under the gateway's own span when
    // a subscriber gives it one).
    let seen_trace = seen["traceparent"].to_str()?;
    assert_eq!(
        seen_trace.split('-').nth(1),
        traceparent.split('-').nth(1),
        "{seen_trace}"
    );
    assert_eq!(seen["x-request-id"], "req-7");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(seen.contains_key("grpc-timeout"), "the deadline travels: {seen:?}");

    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_service_gets_504() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (gateway, _calls) = gateway_before_scripted_accounts(&suite, &["--upstream-timeout-ms", "300"]).await?;
    let http = gateway.http();
    // Signed in over gRPC: a password hash on a busy machine may itself take
    // longer than this gateway's 300 ms.
    suite.create_user("ada@example.com", PASSWORD, &[Role::User]).await?;
    let token = suite
        .login("ada@example.com", PASSWORD)
        .await?
        .tokens
        .expect("tokens")
        .access_token;

    let response = http.get("/v1/accounts/slow", Some(&token)).await?;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(&response).0, Code::DeadlineExceeded as i64);

    gateway.stop().await?;
    suite.stop().await
}
