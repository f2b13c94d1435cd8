//! Mail over real SMTP: the verification and reset mails carry working
//! tokens, transient failures are retried and delivered once, permanent
//! ones are dead-lettered, notice mail can be switched off in one click.

use crate::common;

use common::{fixture, link_param};
use keel::{auth::v1 as auth_pb, notifications::v1 as pb};
use keel_testkit::{authorized, smtp::SmtpFault};

#[tokio::test(flavor = "multi_thread")]
async fn the_verification_mail_arrives_over_smtp_and_its_link_verifies_the_email() -> anyhow::Result<()> {
    let f = fixture().await?;
    let email = format!("new-{}@example.com", uuid::Uuid::now_v7().simple());
    let user = f.suite.register(&email, "a perfectly fine password").await?;
    assert!(!user.email_verified);

    let mails = f.mail_to(&email, 2).await?;
    let verify = mails
        .iter()
        .find(|m| {
            m.text_body()
                .unwrap_or_default()
                .contains("/v1/auth:verifyEmail?token=")
        })
        .expect("a verification mail");
    // Security mail can't be switched off.
    assert_eq!(verify.header("List-Unsubscribe"), None);
    let token = link_param(&verify.text_body().unwrap_or_default(), "token").expect("a token in the link");
    let verified = f
        .suite
        .auth()
        .verify_email(auth_pb::VerifyEmailRequest { token })
        .await?
        .into_inner()
        .user
        .expect("the user");
    assert!(verified.email_verified);

    // The welcome mail is notice mail: it can be switched off.
    let welcome = mails
        .iter()
        .find(|m| m.header("List-Unsubscribe").is_some())
        .expect("a welcome mail");
    assert_eq!(
        welcome.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reset_mail_carries_a_token_that_resets_the_password() -> anyhow::Result<()> {
    let f = fixture().await?;
    let user = f.user().await?;
    f.mail_to(&user.email, 2).await?;
    f.suite
        .auth()
        .request_password_reset(auth_pb::RequestPasswordResetRequest {
            email: user.email.clone(),
        })
        .await?;
    let mails = f.mail_to(&user.email, 3).await?;
    let reset = mails
        .iter()
        .find(|m| {
            m.header("Subject")
                .is_some_and(|s| s.to_lowercase().contains("password"))
        })
        .expect("a reset mail");
    let body = reset.text_body().unwrap_or_default();
    let token = body
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_'))
        .find(|word| word.len() == 43)
        .expect("the token in the mail")
        .to_owned();
    f.suite
        .auth()
        .reset_password(auth_pb::ResetPasswordRequest {
            token,
            new_password: "another perfectly fine password".into(),
        })
        .await?;
    f.suite.login(&user.email, "another perfectly fine password").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_is_retried_and_the_mail_delivered_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.smtp.fail_next(2, SmtpFault::Transient);
    let user = f.user().await?;
    let mails = f.mail_to(&user.email, 2).await?;
    // Give a duplicate the time to show up.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mails_now: Vec<_> = f
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m.to.contains(&user.email))
        .collect();
    assert_eq!(mails_now.len(), 2, "welcome and verification, each once: {mails:?}");
    assert!(f.dead_letters().await?.iter().all(|d| d.recipient != user.email));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_lands_in_the_dead_letters_at_once_and_can_be_redelivered() -> anyhow::Result<()> {
    let f = fixture().await?;
    f.smtp.fail_next(2, SmtpFault::Permanent);
    let user = f.user().await?;
    let dead = common::eventually("two dead letters", || async {
        let dead: Vec<_> = f
            .dead_letters()
            .await?
            .into_iter()
            .filter(|d| d.recipient == user.email)
            .collect();
        Ok((dead.len() == 2).then_some(dead))
    })
    .await?;
    for letter in &dead {
        assert_eq!(letter.channel, pb::Channel::Email as i32);
        assert_eq!(letter.attempt_count, 1, "a 5xx is not retried");
        assert_eq!(letter.last_smtp_code, 550);
        assert!(letter.webhook_endpoint_id.is_empty());
    }
    assert!(f.smtp.messages().iter().all(|m| !m.to.contains(&user.email)));

    // A plain user may not see or redeliver them.
    let denied = f
        .notifications()
        .list_dead_letters(authorized(pb::ListDeadLettersRequest::default(), &user.token))
        .await
        .expect_err("a user is refused");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let redeliver = |id: String| {
        let mut client = f.notifications();
        let admin = f.admin.clone();
        async move {
            client
                .redeliver_dead_letter(authorized(
                    pb::RedeliverDeadLetterRequest { dead_letter_id: id },
                    &admin,
                ))
                .await
        }
    };
    let redelivered = redeliver(dead[0].id.clone())
        .await?
        .into_inner()
        .dead_letter
        .expect("the letter");
    assert!(redelivered.redeliver_time.is_some());
    f.mail_to(&user.email, 1).await?;
    let again = redeliver(dead[0].id.clone()).await.expect_err("only once");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        f.dead_letters().await?.iter().all(|d| d.id != dead[0].id),
        "no longer listed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_click_unsubscribe_link_turns_that_mail_off() -> anyhow::Result<()> {
    let f = fixture().await?;
    let gateway = f.suite.spawn_gateway(&[]).await?;
    let user = f.user().await?;
    f.deposit(&user, 100).await?;
    let mails = f.mail_to(&user.email, 3).await?;
    let balance_mail = mails
        .iter()
        .find(|m| {
            m.header("Subject")
                .is_some_and(|s| s.to_lowercase().contains("balance"))
        })
        .expect("a balance mail");
    let link = balance_mail.header("List-Unsubscribe").expect("the header");
    let url = link.trim_matches(|c| c == '<' || c == '>');
    let path = &url[url.find("/v1/").expect("a gateway path")..];
    // As RFC 8058 mail clients do: a form POST, no credentials.
    let response = one_click(&gateway, path).await?;
    assert_eq!(response.status.as_u16(), 200, "{:?}", response.body);
    assert_eq!(response.json()["eventType"], "balance.changed");

    let preferences = f
        .notifications()
        .get_preferences(authorized(
            pb::GetPreferencesRequest { user_id: "me".into() },
            &user.token,
        ))
        .await?
        .into_inner()
        .preferences
        .expect("preferences");
    let balance = preferences
        .event_types
        .iter()
        .find(|e| e.event_type == "balance.changed")
        .expect("an override");
    assert!(!balance.channels.contains(&(pb::Channel::Email as i32)));
    assert!(balance.channels.contains(&(pb::Channel::InApp as i32)));

    // The next deposit reaches the inbox but sends no mail.
    f.deposit(&user, 200).await?;
    f.inbox_of(&user, "balance.changed", 2).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let count = f.smtp.messages().iter().filter(|m| m.to.contains(&user.email)).count();
    assert_eq!(count, 3);

    // A forged token is refused.
    // A forged token is refused: the token is the call's credential.
    let forged = one_click(&gateway, "/v1/notifications:unsubscribe?token=AAAA").await?;
    assert_eq!(forged.status.as_u16(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_smtp_server_mail_is_written_as_eml_files_whose_link_verifies() -> anyhow::Result<()> {
    // No --smtp-url: the suite's data folder holds the mail, as keel up's does.
    let suite = keel_testkit::spawn_suite_with_options(
        keel_testkit::SuiteOptions::default().args("notifications", &["--delivery-poll-ms", "50"]),
    )
    .await?;
    let email = format!("eml-{}@example.com", uuid::Uuid::now_v7().simple());
    suite.register(&email, "a perfectly fine password").await?;
    let dir = suite.data_dir().join("mail");
    let token = common::eventually("a verification .eml", || async {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "eml") {
                let raw = std::fs::read_to_string(&path)?;
                let text = keel_testkit::smtp::ReceivedMail {
                    from: String::new(),
                    to: Vec::new(),
                    data: raw,
                }
                .text_body()
                .unwrap_or_default();
                if let Some(token) = link_param(&text, "token").filter(|_| text.contains("verifyEmail")) {
                    return Ok(Some(token));
                }
            }
        }
        Ok(None)
    })
    .await?;
    let user = suite
        .auth()
        .verify_email(auth_pb::VerifyEmailRequest { token })
        .await?
        .into_inner()
        .user
        .expect("the user");
    assert!(user.email_verified);
    Ok(())
}

/// What an RFC 8058 mail client sends: a form POST, no credentials.
async fn one_click(
    gateway: &keel_testkit::http::TestGateway,
    path: &str,
) -> anyhow::Result<keel_testkit::http::HttpResponse> {
    let form = http::HeaderValue::from_static("application/x-www-form-urlencoded");
    gateway
        .http()
        .send(
            http::Method::POST,
            path,
            None,
            &[(http::header::CONTENT_TYPE, form)],
            bytes::Bytes::from_static(b"List-Unsubscribe=One-Click"),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_mail_is_forgotten_after_the_retention_period() -> anyhow::Result<()> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use keel_notifications::{domain::DeliveryState, schema::deliveries};

    let f = common::fixture_with(&["--delivery-retention-secs", "0"]).await?;
    let user = f.user().await?;
    f.mail_to(&user.email, 2).await?;
    let mut conn = f.suite.db("notifications").await?;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let delivered: i64 = deliveries::table
            .filter(deliveries::state.eq(DeliveryState::Delivered))
            .count()
            .get_result(&mut conn)
            .await?;
        if delivered == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{delivered} delivered rows are still kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
