//! The second factor: a TOTP authenticator enrolled, confirmed and removed;
//! a login that answers a challenge instead of tokens, completed with a code
//! or a recovery code, each accepted once; wrong codes throttled as wrong
//! passwords are; secrets sealed at rest; and the whole flow over the
//! gateway's REST routes.
//!
//! Codes are computed from the `otpauth://` URI, as an authenticator app
//! reads it. The suite trusts `x-forwarded-for` from 127.0.0.1, so tests that
//! need distinct clients name the address they speak for.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::auth::v1::{self as pb, disable_totp_request, verify_second_factor_request::Factor};
use keel_auth::{
    schema::{login_challenges, totp_factors, totp_recovery_codes},
    store::second_factors,
    totp::TotpSecret,
};
use keel_testkit::{Suite, authorized, metrics, status::reason};
use serde_json::json;
use tonic::{Code, Request, Status};
use totp_rs::Totp;

const PASSWORD: &str = "correct horse battery staple";

/// `message` as sent on behalf of the client at `address`.
fn from<T>(address: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", address.parse().expect("an address"));
    request
}

/// A user with a confirmed authenticator: their id, an access token from
/// before, the app and the recovery codes.
struct Enrolled {
    email: String,
    user_id: String,
    access_token: String,
    app: Totp,
    /// When the app's first code confirmed it (that code's step is spent).
    confirmed_at: u64,
    recovery_codes: Vec<String>,
}

/// Now, in Unix seconds.
fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).expect("after 1970")
}

/// The app's code for Unix time `at`.
fn code_at(app: &Totp, at: u64) -> String {
    app.generate(at).to_string()
}

/// A six-digit code that is none of the window's around `at`.
fn wrong_code(app: &Totp, at: u64) -> String {
    let window: Vec<String> = (0..=2).map(|i| code_at(app, at - 30 + 30 * i)).collect();
    (0..)
        .map(|n| format!("{:06}", (123_456 + n * 7_919) % 1_000_000))
        .find(|code| !window.contains(code))
        .expect("a code outside the window")
}

/// Registers `email`, signs in, enrolls and confirms an authenticator with
/// the current code.
async fn enrolled(suite: &Suite, email: &str) -> anyhow::Result<Enrolled> {
    suite.register(email, PASSWORD).await?;
    let login = suite.login(email, PASSWORD).await?;
    let user_id = login.user.expect("a user").id;
    let access_token = login.tokens.expect("tokens: no second factor yet").access_token;
    let enrollment = suite
        .auth()
        .enroll_totp(authorized(pb::EnrollTotpRequest {}, &access_token))
        .await?
        .into_inner();
    let app = Totp::from_url(&enrollment.otpauth_uri)?;
    let confirmed_at = now();
    let confirm = pb::ConfirmTotpRequest {
        code: code_at(&app, confirmed_at),
    };
    let recovery_codes = suite
        .auth()
        .confirm_totp(authorized(confirm, &access_token))
        .await?
        .into_inner()
        .recovery_codes;
    Ok(Enrolled {
        email: email.into(),
        user_id,
        access_token,
        app,
        confirmed_at,
        recovery_codes,
    })
}

/// Logs in and expects a challenge: its token.
async fn challenged(suite: &Suite, email: &str) -> anyhow::Result<String> {
    let login = suite.login(email, PASSWORD).await?;
    assert!(login.tokens.is_none() && login.user.is_none(), "{login:?}");
    let challenge = login.second_factor_challenge.expect("a challenge");
    let expires = challenge.expire_time.expect("an expiry").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((now + 4 * 60..=now + 5 * 60 + 5).contains(&expires), "5 minutes");
    Ok(challenge.challenge_token)
}

fn verify_with(challenge: &str, factor: Factor) -> pb::VerifySecondFactorRequest {
    pb::VerifySecondFactorRequest {
        challenge_token: challenge.into(),
        factor: Some(factor),
    }
}

async fn verify(suite: &Suite, challenge: &str, factor: Factor) -> Result<pb::VerifySecondFactorResponse, Status> {
    Ok(suite
        .auth()
        .verify_second_factor(verify_with(challenge, factor))
        .await?
        .into_inner())
}

fn refused(status: &Status, code: Code, why: &str) {
    assert_eq!((status.code(), reason(status).as_str()), (code, why), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolled_login_answers_a_challenge_that_a_code_completes_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "second@example.com").await?;
    assert_eq!(user.recovery_codes.len(), 10);

    // The password alone gets a challenge, not tokens.
    let challenge = challenged(&suite, &user.email).await?;
    // The code that confirmed the app was spent then.
    let status = verify(&suite, &challenge, Factor::Code(code_at(&user.app, user.confirmed_at)))
        .await
        .expect_err("replayed");
    refused(&status, Code::Unauthenticated, "CODE_REUSED");

    // The next step's code (a step ahead is within the drift) completes it.
    let next = code_at(&user.app, user.confirmed_at + 30);
    let signed_in = verify(&suite, &challenge, Factor::Code(next.clone())).await?;
    assert_eq!(signed_in.user.expect("the user").id, user.user_id);
    let tokens = signed_in.tokens.expect("tokens");
    assert_eq!(tokens.token_type, "Bearer");
    // They work, as a plain login's do, and the session is listed.
    let sessions = suite
        .auth()
        .list_sessions(authorized(pb::ListSessionsRequest::default(), &tokens.access_token))
        .await?
        .into_inner()
        .sessions;
    assert!(sessions.iter().any(|s| s.id == tokens.session_id && s.current));
    suite.refresh(&tokens.refresh_token).await?;

    // A completed challenge is spent; the same code on a new one is a replay.
    let status = verify(&suite, &challenge, Factor::Code(next.clone()))
        .await
        .expect_err("spent challenge");
    refused(&status, Code::Unauthenticated, "INVALID_CHALLENGE");
    let again = challenged(&suite, &user.email).await?;
    let status = verify(&suite, &again, Factor::Code(next)).await.expect_err("replayed");
    refused(&status, Code::Unauthenticated, "CODE_REUSED");

    // Each refusal and success is counted.
    let scrape = metrics::scrape(&suite.metrics_url("auth")?).await?;
    let count = |operation: &str, outcome: &str| {
        scrape.value(
            "keel_second_factor_operations_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(count("enroll", "ok"), 1.0);
    assert_eq!(count("confirm", "ok"), 1.0);
    assert_eq!(count("challenge", "ok"), 2.0);
    assert_eq!(count("verify", "ok"), 1.0);
    assert_eq!(count("verify", "code_reused"), 2.0);
    assert_eq!(count("verify", "invalid_challenge"), 1.0);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_code_works_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "lost-phone@example.com").await?;
    let recovery = user.recovery_codes[3].clone();
    assert_eq!(recovery.len(), 19, "xxxx-xxxx-xxxx-xxxx: {recovery}");

    let challenge = challenged(&suite, &user.email).await?;
    // As typed: upper case, without the dashes.
    let typed = recovery.replace('-', "").to_uppercase();
    let signed_in = verify(&suite, &challenge, Factor::RecoveryCode(typed)).await?;
    assert!(signed_in.tokens.is_some());

    let challenge = challenged(&suite, &user.email).await?;
    let status = verify(&suite, &challenge, Factor::RecoveryCode(recovery))
        .await
        .expect_err("spent");
    refused(&status, Code::Unauthenticated, "INVALID_RECOVERY_CODE");
    // Another one still works.
    verify(&suite, &challenge, Factor::RecoveryCode(user.recovery_codes[4].clone())).await?;

    // Stored hashed: no code appears in the table.
    let hashes: Vec<Vec<u8>> = totp_recovery_codes::table
        .select(totp_recovery_codes::code_hash)
        .load(&mut suite.auth_db().await?)
        .await?;
    assert_eq!(hashes.len(), 10);
    for code in &user.recovery_codes {
        let plain = code.replace('-', "");
        assert!(
            hashes
                .iter()
                .all(|hash| !hash.windows(4).any(|w| w == &plain.as_bytes()[..4]))
        );
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_are_throttled_like_wrong_passwords_even_before_a_right_one() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&["--login-max-failures", "3"]).await?;
    let user = enrolled(&suite, "guessed@example.com").await?;
    let login = suite
        .auth()
        .login(from(
            "203.0.113.5",
            pb::LoginRequest {
                email: user.email.clone(),
                password: PASSWORD.into(),
            },
        ))
        .await?
        .into_inner();
    let challenge = login.second_factor_challenge.expect("a challenge").challenge_token;
    let guess = |code: String| from("203.0.113.5", verify_with(&challenge, Factor::Code(code)));
    for _ in 0..3 {
        let status = suite
            .auth()
            .verify_second_factor(guess(wrong_code(&user.app, now())))
            .await
            .expect_err("wrong");
        refused(&status, Code::Unauthenticated, "INVALID_CODE");
    }
    // The limit is reached: the right code waits too, as a right password does.
    let status = suite
        .auth()
        .verify_second_factor(guess(code_at(&user.app, now() + 30)))
        .await
        .expect_err("throttled");
    refused(&status, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert!(status.message().contains("retry in"), "{status:?}");

    // A right password from there still gets its challenge (codes are
    // counted apart), and the owner, from elsewhere, signs in.
    let owner = challenged(&suite, &user.email).await?;
    verify(&suite, &owner, Factor::Code(code_at(&user.app, now() + 30))).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_foreign_and_disabled_users_challenges_are_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "edge@example.com").await?;
    let code = code_at(&user.app, now() + 30);

    // Expired.
    let challenge = challenged(&suite, &user.email).await?;
    diesel::update(login_challenges::table)
        .set(login_challenges::expires_at.eq(chrono::Utc::now() - chrono::Duration::seconds(1)))
        .execute(&mut suite.auth_db().await?)
        .await?;
    let status = verify(&suite, &challenge, Factor::Code(code.clone()))
        .await
        .expect_err("expired");
    refused(&status, Code::Unauthenticated, "INVALID_CHALLENGE");

    // Started from one client, answered from another.
    let login = suite
        .auth()
        .login(from(
            "198.51.100.7",
            pb::LoginRequest {
                email: user.email.clone(),
                password: PASSWORD.into(),
            },
        ))
        .await?
        .into_inner();
    let elsewhere = login.second_factor_challenge.expect("a challenge").challenge_token;
    let status = suite
        .auth()
        .verify_second_factor(from(
            "198.51.100.8",
            verify_with(&elsewhere, Factor::Code(code.clone())),
        ))
        .await
        .expect_err("another client");
    refused(&status, Code::Unauthenticated, "INVALID_CHALLENGE");

    // Disabled by an administrator after the password checked out.
    let challenge = challenged(&suite, &user.email).await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let disable = pb::DisableUserRequest {
        user_id: user.user_id.clone(),
    };
    suite
        .auth()
        .disable_user(authorized(disable, &admin.access_token))
        .await?;
    let status = verify(&suite, &challenge, Factor::Code(code))
        .await
        .expect_err("disabled");
    refused(&status, Code::Unauthenticated, "USER_DISABLED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_changed_after_the_challenge_voids_it() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "changed@example.com").await?;
    let challenge = challenged(&suite, &user.email).await?;
    let change = pb::ChangePasswordRequest {
        current_password: PASSWORD.into(),
        new_password: "a brand new passphrase".into(),
    };
    suite
        .auth()
        .change_password(authorized(change, &user.access_token))
        .await?;
    let status = verify(&suite, &challenge, Factor::Code(code_at(&user.app, now() + 30)))
        .await
        .expect_err("credentials changed");
    refused(&status, Code::Unauthenticated, "CREDENTIALS_CHANGED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolling_replaces_a_pending_secret_and_is_refused_once_confirmed() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (_, tokens) = suite.signed_in_user().await?;
    let token = tokens.access_token.as_str();
    let enroll = async || {
        suite
            .auth()
            .enroll_totp(authorized(pb::EnrollTotpRequest {}, token))
            .await
            .map(tonic::Response::into_inner)
    };
    let confirm = async |code: String| {
        suite
            .auth()
            .confirm_totp(authorized(pb::ConfirmTotpRequest { code }, token))
            .await
            .map(tonic::Response::into_inner)
    };

    let status = confirm("123456".into()).await.expect_err("nothing enrolled");
    refused(&status, Code::FailedPrecondition, "TOTP_NOT_ENROLLED");

    let first = enroll().await?;
    let uri = &first.otpauth_uri;
    assert!(uri.starts_with("otpauth://totp/Keel:user-"), "{uri}");
    assert!(
        uri.ends_with(&format!(
            "?secret={}&issuer=Keel&algorithm=SHA1&digits=6&period=30",
            first.secret
        )),
        "{uri}"
    );
    let second = enroll().await?;
    assert_ne!(first.secret, second.secret);
    // The replaced secret's codes no longer confirm.
    let replaced = Totp::from_url(&first.otpauth_uri)?;
    let app = Totp::from_url(&second.otpauth_uri)?;
    let stale = code_at(&replaced, now());
    if ![
        code_at(&app, now() - 30),
        code_at(&app, now()),
        code_at(&app, now() + 30),
    ]
    .contains(&stale)
    {
        let status = confirm(stale).await.expect_err("replaced secret");
        refused(&status, Code::PermissionDenied, "INVALID_CODE");
    }
    let codes = confirm(code_at(&app, now())).await?.recovery_codes;
    assert_eq!(codes.len(), 10);

    let status = enroll().await.expect_err("confirmed");
    refused(&status, Code::AlreadyExists, "TOTP_ALREADY_ENROLLED");
    let status = confirm(code_at(&app, now() + 30)).await.expect_err("confirmed");
    refused(&status, Code::AlreadyExists, "TOTP_ALREADY_ENROLLED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_needs_the_password_and_a_code_and_removes_everything() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "done@example.com").await?;
    let disable = async |password: &str, factor: disable_totp_request::Factor| {
        let request = pb::DisableTotpRequest {
            password: password.into(),
            factor: Some(factor),
        };
        suite
            .auth()
            .disable_totp(authorized(request, &user.access_token))
            .await
            .map(drop)
    };
    let code = code_at(&user.app, now() + 30);

    let status = disable("not the password", disable_totp_request::Factor::Code(code.clone()))
        .await
        .expect_err("wrong password");
    refused(&status, Code::PermissionDenied, "WRONG_PASSWORD");
    let status = disable(
        PASSWORD,
        disable_totp_request::Factor::Code(wrong_code(&user.app, now())),
    )
    .await
    .expect_err("wrong code");
    refused(&status, Code::PermissionDenied, "INVALID_CODE");
    let request = pb::DisableTotpRequest {
        password: PASSWORD.into(),
        factor: None,
    };
    let status = suite
        .auth()
        .disable_totp(authorized(request, &user.access_token))
        .await
        .expect_err("no second factor given");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    disable(PASSWORD, disable_totp_request::Factor::Code(code.clone())).await?;
    let mut db = suite.auth_db().await?;
    let factors: i64 = totp_factors::table.count().get_result(&mut db).await?;
    let recovery: i64 = totp_recovery_codes::table.count().get_result(&mut db).await?;
    assert_eq!((factors, recovery), (0, 0));
    // A plain login again; disabling twice says there is nothing to disable.
    let login = suite.login(&user.email, PASSWORD).await?;
    assert!(login.tokens.is_some() && login.second_factor_challenge.is_none());
    let status = disable(PASSWORD, disable_totp_request::Factor::Code(code))
        .await
        .expect_err("nothing enabled");
    refused(&status, Code::FailedPrecondition, "TOTP_NOT_ENROLLED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_sealed_with_the_key_encryption_key() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = enrolled(&suite, "sealed@example.com").await?;
    let kek = suite
        .auth_config()
        .key_encryption_key
        .clone()
        .expect("the suite runs auth with a key-encryption key");
    let user_id = uuid::Uuid::parse_str(&user.user_id)?;
    let factor = second_factors::find(&mut suite.auth_db().await?, user_id)
        .await?
        .expect("a factor");
    assert_eq!(factor.sealed_with.as_deref(), Some(kek.id()));
    let plain = user.app.secret().as_bytes().to_vec();
    assert!(
        !factor
            .secret
            .expose()
            .windows(8)
            .any(|w| plain.windows(8).any(|p| p == w)),
        "no part of the secret is stored in the clear"
    );
    let opened = TotpSecret::open(&factor.secret, factor.sealed_with.as_deref(), user_id, Some(&kek))?;
    assert_eq!(opened.base32(), user.app.secret().to_base32());
    assert!(TotpSecret::open(&factor.secret, factor.sealed_with.as_deref(), user_id, None).is_err());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_flow_works_over_the_gateway() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let http = gateway.http();
    let email = "rest@example.com";
    let credentials = json!({ "email": email, "password": PASSWORD });
    let ok = |response: keel_testkit::http::HttpResponse| {
        assert_eq!(response.status, 200, "{:?}", response.json());
        response.json()
    };
    ok(http.post("/v1/auth:register", None, &credentials).await?);
    let login = ok(http.post("/v1/auth:login", None, &credentials).await?);
    let token = login["tokens"]["accessToken"].as_str().expect("a token").to_owned();

    let enrollment = ok(http.post("/v1/auth:enrollTotp", Some(&token), &json!({})).await?);
    let app = Totp::from_url(enrollment["otpauthUri"].as_str().expect("a URI"))?;
    assert_eq!(enrollment["secret"].as_str(), Some(app.secret().to_base32().as_str()));
    let confirmed = ok(http
        .post(
            "/v1/auth:confirmTotp",
            Some(&token),
            &json!({ "code": code_at(&app, now()) }),
        )
        .await?);
    let recovery = confirmed["recoveryCodes"].as_array().expect("recovery codes");
    assert_eq!(recovery.len(), 10);

    let login = ok(http.post("/v1/auth:login", None, &credentials).await?);
    assert!(login.get("tokens").is_none() && login.get("user").is_none(), "{login}");
    let challenge = login["secondFactorChallenge"]["challengeToken"]
        .as_str()
        .expect("a challenge")
        .to_owned();
    assert!(login["secondFactorChallenge"]["expireTime"].is_string(), "{login}");
    let refused = http
        .post(
            "/v1/auth:verifySecondFactor",
            None,
            &json!({ "challengeToken": challenge, "code": wrong_code(&app, now()) }),
        )
        .await?;
    assert_eq!(refused.status, 401, "{:?}", refused.json());
    assert_eq!(refused.json()["details"][0]["reason"], "INVALID_CODE");
    let signed_in = ok(http
        .post(
            "/v1/auth:verifySecondFactor",
            None,
            &json!({ "challengeToken": challenge, "code": code_at(&app, now() + 30) }),
        )
        .await?);
    let fresh = signed_in["tokens"]["accessToken"].as_str().expect("a token");
    ok(http.get("/v1/auth/sessions", Some(fresh)).await?);

    ok(http
        .post(
            "/v1/auth:disableTotp",
            Some(fresh),
            &json!({ "password": PASSWORD, "recoveryCode": recovery[0] }),
        )
        .await?);
    let login = ok(http.post("/v1/auth:login", None, &credentials).await?);
    assert!(login["tokens"]["accessToken"].is_string(), "{login}");
    gateway.stop().await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_factors_request_rules_are_enforced() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (_, tokens) = suite.signed_in_user().await?;
    let token = tokens.access_token.as_str();
    let mut auth = suite.auth();
    let challenge = "A".repeat(43);
    let cases: Vec<(&str, Result<(), Status>, &str, &str)> = vec![
        (
            "verify: not a challenge",
            auth.verify_second_factor(verify_with("x", Factor::Code("123456".into())))
                .await
                .map(drop),
            "challenge_token",
            "string.pattern",
        ),
        (
            "verify: a five-digit code",
            auth.verify_second_factor(verify_with(&challenge, Factor::Code("12345".into())))
                .await
                .map(drop),
            "code",
            "string.pattern",
        ),
        (
            "verify: a short recovery code",
            auth.verify_second_factor(verify_with(&challenge, Factor::RecoveryCode("abcd".into())))
                .await
                .map(drop),
            "recovery_code",
            "string.pattern",
        ),
        (
            "confirm: letters",
            auth.confirm_totp(authorized(pb::ConfirmTotpRequest { code: "abcdef".into() }, token))
                .await
                .map(drop),
            "code",
            "string.pattern",
        ),
        (
            "disable: no password",
            auth.disable_totp(authorized(
                pb::DisableTotpRequest {
                    password: String::new(),
                    factor: Some(disable_totp_request::Factor::Code("123456".into())),
                },
                token,
            ))
            .await
            .map(drop),
            "password",
            "string.min_len",
        ),
    ];
    for (case, result, field, rule) in cases {
        keel_testkit::status::assert_rule(case, result, field, rule);
    }
    // Neither a code nor a recovery code: the domain refuses what the rules
    // cannot say (a oneof left empty).
    let status = auth
        .verify_second_factor(pb::VerifySecondFactorRequest {
            challenge_token: challenge,
            factor: None,
        })
        .await
        .expect_err("no factor");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(keel_testkit::status::violated_fields(&status), ["code"]);
    suite.stop().await
}
