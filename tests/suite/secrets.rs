//! Nothing secret leaves auth in its logs or its error messages: passwords,
//! access and refresh tokens, one-time tokens, password hashes, client
//! secrets.
//!
//! This module installs a global subscriber (for its whole test binary) that captures every log line and
//! span at TRACE level (dependencies included, through the same filter the
//! services use), runs real flows, and then searches the captured text for
//! each secret those flows handled: as text, and as the byte list that
//! `Debug` prints for a bind parameter or a buffer.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use diesel::QueryDsl as _;
use diesel_async::RunQueryDsl as _;
use keel::{
    auth::v1::{self as pb},
    events::v1::{Event, event::Payload},
};
use keel_platform::events::outbox::outbox;
use keel_testkit::{
    Suite, authorized,
    suite::{TEST_CLIENT_ID, TEST_CLIENT_SECRET},
};
use prost::Message as _;
use tonic::Status;
use tracing_subscriber::fmt::MakeWriter;

/// Everything written to the log, shared by every test in this binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().expect("the log buffer is not poisoned");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("the log buffer is not poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The captured logs; the first call installs the capturing subscriber.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let filter = keel_platform::serve::telemetry::log_filter("trace").expect("a valid filter");
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(captured.clone())
            .with_ansi(false)
            .try_init()
            .expect("no other subscriber is installed in this test binary");
        captured
    })
}

/// How `Debug` shows `bytes` inside a list: `36, 97, 114, ...`.
fn as_byte_list(bytes: &[u8]) -> String {
    bytes.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
}

/// Fails naming each secret found in the logs (without printing it).
fn assert_not_logged(secrets: &[(&str, &[u8])]) {
    let text = logs().text();
    assert!(
        text.contains("user registered"),
        "the capture works: auth's own logs are in it"
    );
    assert!(text.contains("TRACE"), "the capture works: it is as verbose as it gets");
    let leaked: Vec<String> = secrets
        .iter()
        .filter(|(_, secret)| !secret.is_empty())
        .flat_map(|(name, secret)| {
            let as_text = std::str::from_utf8(secret).is_ok_and(|s| text.contains(s));
            let as_bytes = text.contains(&as_byte_list(secret));
            [
                (as_text, format!("{name} (as text)")),
                (as_bytes, format!("{name} (as bytes)")),
            ]
        })
        .filter_map(|(found, what)| found.then_some(what))
        .collect();
    assert!(leaked.is_empty(), "secrets in the logs: {leaked:?}");
}

/// The private keys auth signs with (PKCS#8), opened, and as stored.
async fn signing_keys(suite: &Suite) -> anyhow::Result<Vec<Vec<u8>>> {
    let kek = suite.auth_config().key_encryption_key.as_ref();
    let mut keys = Vec::new();
    for key in keel_auth::store::signing_keys::newest(&mut suite.auth_db().await?, i64::MAX).await? {
        keys.push(keel_auth::keys::open_private_key(&key, kek)?);
        keys.extend(key.private_key.map(|stored| stored.expose().to_vec()));
    }
    Ok(keys)
}

/// The one-time tokens auth mailed out (verification and reset).
async fn mailed_tokens(suite: &Suite) -> anyhow::Result<Vec<String>> {
    let payloads: Vec<Vec<u8>> = outbox::table
        .select(outbox::payload)
        .load(&mut suite.auth_db().await?)
        .await?;
    let mut tokens = Vec::new();
    for bytes in payloads {
        if let Some(payload @ (Payload::EmailVerificationRequested(_) | Payload::PasswordResetRequested(_))) =
            Event::decode(bytes.as_slice())?.payload
        {
            tokens.push(suite.open_token(&payload)?);
        }
    }
    Ok(tokens)
}

async fn login(suite: &Suite, email: &str, password: &str) -> Result<pb::TokenPair, Status> {
    let request = pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    Ok(suite.auth().login(request).await?.into_inner().tokens.expect("tokens"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_flows_log_no_passwords_tokens_or_hashes() -> anyhow::Result<()> {
    logs();
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (email, password) = ("logged@example.com", "Secret-Passw0rd-For-Logs");
    let (wrong, new_password) = ("Wrong-Passw0rd-For-Logs", "New-Secret-Passw0rd-For-Logs");
    suite.register(email, password).await?;
    login(&suite, email, wrong).await.expect_err("wrong password");
    login(&suite, "nobody@example.com", wrong)
        .await
        .expect_err("unknown email");
    let first = login(&suite, email, password).await?;
    let second = suite.refresh(&first.refresh_token).await?;
    suite.refresh(&first.refresh_token).await.expect_err("reuse");
    let other = login(&suite, email, password).await?;
    let request = pb::ChangePasswordRequest {
        current_password: password.into(),
        new_password: new_password.into(),
    };
    suite
        .auth()
        .change_password(authorized(request, &other.access_token))
        .await?;
    let last = login(&suite, email, new_password).await?;
    suite
        .auth()
        .logout(pb::LogoutRequest {
            refresh_token: last.refresh_token.clone(),
        })
        .await?;
    let hash = suite.stored_password_hash(email).await?;
    let verification = mailed_tokens(&suite).await?;
    let keys = signing_keys(&suite).await?;
    suite.stop().await?;

    let hash_digest = hash.rsplit('$').next().unwrap_or_default();
    assert_not_logged(&[
        ("password", password.as_bytes()),
        ("wrong password", wrong.as_bytes()),
        ("new password", new_password.as_bytes()),
        ("first access token", first.access_token.as_bytes()),
        ("first refresh token", first.refresh_token.as_bytes()),
        ("second access token", second.access_token.as_bytes()),
        ("second refresh token", second.refresh_token.as_bytes()),
        ("other access token", other.access_token.as_bytes()),
        ("other refresh token", other.refresh_token.as_bytes()),
        ("last refresh token", last.refresh_token.as_bytes()),
        ("stored hash", hash.as_bytes()),
        ("stored hash digest", hash_digest.as_bytes()),
        ("verification token", verification[0].as_bytes()),
        ("signing key", &keys[0]),
    ]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_flows_log_no_tokens_or_passwords() -> anyhow::Result<()> {
    logs();
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (email, password, new_password) = ("reset@example.com", "Old-Recovery-Passw0rd", "New-Recovery-Passw0rd");
    suite.register(email, password).await?;
    let session = login(&suite, email, password).await?;
    suite
        .auth()
        .request_password_reset(pb::RequestPasswordResetRequest { email: email.into() })
        .await?;
    suite
        .auth()
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "stranger@example.com".into(),
        })
        .await?;
    let tokens = mailed_tokens(&suite).await?;
    assert_eq!(tokens.len(), 2, "verification and reset");
    for token in &tokens {
        // One of them is the wrong kind for each call; both get used or tried.
        let _ = suite
            .auth()
            .reset_password(pb::ResetPasswordRequest {
                token: token.clone(),
                new_password: new_password.into(),
            })
            .await;
        let _ = suite
            .auth()
            .verify_email(pb::VerifyEmailRequest { token: token.clone() })
            .await;
    }
    let hash = suite.stored_password_hash(email).await?;
    suite.stop().await?;

    assert_not_logged(&[
        ("password", password.as_bytes()),
        ("new password", new_password.as_bytes()),
        ("verification token", tokens[0].as_bytes()),
        ("reset token", tokens[1].as_bytes()),
        ("access token", session.access_token.as_bytes()),
        ("refresh token", session.refresh_token.as_bytes()),
        ("stored hash", hash.as_bytes()),
    ]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn service_token_flow_logs_no_client_secret_or_token() -> anyhow::Result<()> {
    logs();
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let issued = suite
        .auth()
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: TEST_CLIENT_ID.into(),
            client_secret: TEST_CLIENT_SECRET.into(),
            scopes: vec![],
        })
        .await?
        .into_inner();
    let wrong_secret = "Not-The-Client-Secret-0123456789";
    suite
        .auth()
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: TEST_CLIENT_ID.into(),
            client_secret: wrong_secret.into(),
            scopes: vec![],
        })
        .await
        .expect_err("wrong secret");
    // Used once, so the verifier handles it too.
    suite
        .auth()
        .list_sessions(authorized(pb::ListSessionsRequest::default(), &issued.access_token))
        .await
        .expect_err("not a user");
    // `assert_not_logged` needs auth's registration log line in the buffer.
    suite
        .register("service-flow@example.com", "any password at all")
        .await?;
    suite.stop().await?;

    assert_not_logged(&[
        ("client secret", TEST_CLIENT_SECRET.as_bytes()),
        ("wrong client secret", wrong_secret.as_bytes()),
        ("service token", issued.access_token.as_bytes()),
    ]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn error_messages_never_contain_the_password() -> anyhow::Result<()> {
    logs();
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (email, password) = ("errors@example.com", "Errors-Passw0rd-Visible?");
    suite.register(email, password).await?;
    let tokens = login(&suite, email, password).await?;

    let short = "Shrt-1!";
    let long = format!("Too-Long-Passw0rd-{}", "x".repeat(1024));
    let mut failures: Vec<(&str, Status)> = Vec::new();
    let register = |email: &str, password: &str| pb::RegisterRequest {
        request_id: String::new(),
        email: email.into(),
        password: password.into(),
    };
    let mut auth = suite.auth();
    for (case, request) in [
        ("short", register("short@example.com", short)),
        ("long", register("long@example.com", &long)),
        ("bad email", register("not an email", password)),
        ("taken", register(email, password)),
    ] {
        failures.push((case, auth.register(request).await.expect_err(case)));
    }
    for (case, attempt) in [("wrong", short), ("long", long.as_str()), ("unknown", password)] {
        let who = if case == "unknown" { "nobody@example.com" } else { email };
        failures.push((case, login(&suite, who, attempt).await.expect_err(case)));
    }
    for (case, current, new) in [("wrong current", short, password), ("short new", password, short)] {
        let request = pb::ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        failures.push((
            case,
            auth.change_password(authorized(request, &tokens.access_token))
                .await
                .expect_err(case),
        ));
    }
    suite.stop().await?;

    for (case, status) in &failures {
        for secret in [password, short, long.as_str()] {
            assert!(
                !status.message().contains(secret),
                "{case}: the message repeats a password"
            );
            let details = format!("{:?}", status.details());
            assert!(!details.contains(secret), "{case}: the details repeat a password");
        }
    }
    Ok(())
}

/// The security events logged so far that mention every one of `needles`.
fn security_events(needles: &[&str]) -> Vec<String> {
    if std::env::var_os("KEEL_SHOW_SECURITY_EVENTS").is_some() {
        for line in logs()
            .text()
            .lines()
            .filter(|l| l.contains(keel_platform::serve::audit::TARGET))
        {
            eprintln!("{line}");
        }
    }
    logs()
        .text()
        .lines()
        .filter(|line| line.contains(keel_platform::serve::audit::TARGET))
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

fn from<T>(address: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", address.parse().expect("an address"));
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn security_events_name_the_subject_and_the_client_and_never_the_secret() -> anyhow::Result<()> {
    logs();
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (email, password, wrong) = ("audited@example.com", "Audited-Passw0rd", "Guessed-Passw0rd");
    let user = suite.register(email, password).await?;
    let subject = format!("subject=user:{}", user.id);
    let client = "client=192.0.2.44";

    // Failed, then throttled sign-ins: the account and the address.
    let guess = || pb::LoginRequest {
        email: email.into(),
        password: wrong.into(),
    };
    for _ in 0..5 {
        suite
            .auth()
            .login(from("192.0.2.44", guess()))
            .await
            .expect_err("wrong");
    }
    let status = suite
        .auth()
        .login(from("192.0.2.44", guess()))
        .await
        .expect_err("throttled");
    assert_eq!(keel_testkit::status::reason(&status), "TOO_MANY_ATTEMPTS");
    assert_eq!(
        security_events(&[&subject, client, "INVALID_CREDENTIALS", "WARN"]).len(),
        5
    );
    assert_eq!(
        security_events(&[&subject, client, "TOO_MANY_ATTEMPTS", "event=\"throttled\""]).len(),
        1
    );

    // A token refused, with why (the caller only hears INVALID_TOKEN).
    let tokens = login(&suite, email, password).await?;
    // The signature's first character: its bits are all signature (the last
    // character's low bits are padding, and changing them may only make the
    // encoding non-canonical).
    let signature_start = tokens.access_token.rfind('.').expect("a JWT") + 1;
    let mut forged = tokens.access_token.clone();
    let first = forged.remove(signature_start);
    forged.insert(signature_start, if first == 'A' { 'B' } else { 'A' });
    let request = authorized(pb::ListSessionsRequest::default(), &forged);
    let status = suite.auth().list_sessions(request).await.expect_err("forged");
    assert_eq!(keel_testkit::status::reason(&status), "INVALID_TOKEN");
    assert_eq!(
        security_events(&["INVALID_TOKEN", "token_refusal=\"bad_signature\"", "peer=127.0.0.1"]).len(),
        1
    );

    // Denied permission: who asked.
    let request = pb::DisableUserRequest {
        user_id: uuid::Uuid::now_v7().to_string(),
    };
    let request = authorized(request, &tokens.access_token);
    let status = suite.auth().disable_user(request).await.expect_err("not an admin");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        security_events(&[&subject, "event=\"permission_denied\"", "DisableUser"]).len(),
        1
    );

    // A service client with a wrong secret.
    let request = pb::IssueServiceTokenRequest {
        client_id: TEST_CLIENT_ID.into(),
        client_secret: "not-the-secret-of-this-client".into(),
        scopes: vec![],
    };
    suite
        .auth()
        .issue_service_token(from("192.0.2.45", request))
        .await
        .expect_err("wrong secret");
    let service = format!("subject=service:{TEST_CLIENT_ID}");
    assert_eq!(
        security_events(&[&service, "client=192.0.2.45", "INVALID_CLIENT"]).len(),
        1
    );

    // A revocation: whose sessions, why.
    let request = pb::LogoutRequest {
        refresh_token: tokens.refresh_token.clone(),
    };
    suite.auth().logout(request).await?;
    let user_id = format!("user_id={}", user.id);
    assert_eq!(
        security_events(&[&user_id, "event=\"revoked\"", "reason=\"logout\"", "INFO"]).len(),
        1
    );
    suite.stop().await?;

    assert_not_logged(&[
        ("password", password.as_bytes()),
        ("guessed password", wrong.as_bytes()),
        ("access token", tokens.access_token.as_bytes()),
        ("forged token", forged.as_bytes()),
        ("refresh token", tokens.refresh_token.as_bytes()),
        ("wrong client secret", b"not-the-secret-of-this-client"),
    ]);
    Ok(())
}
