//! What the notifications tests share: a suite whose notifications service
//! mails through a real SMTP server in-process and retries quickly, users
//! with funded accounts, typed helpers, and polling with a deadline.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use keel::{
    accounts::v1 as accounts_pb,
    common::v1::Money,
    notifications::v1::{self as pb, notifications_service_client::NotificationsServiceClient},
};
use keel_testkit::{
    Suite, SuiteOptions, authorized,
    smtp::{ReceivedMail, SmtpServer},
    spawn_suite_with_options,
};
use tonic::transport::Channel;

/// Settings that make deliveries quick: webhooks to loopback allowed (the
/// receivers run here), the retry schedule in milliseconds, short timeouts.
pub const QUICK: &[&str] = &[
    "--webhook-allow-private",
    "true",
    "--webhook-retry-scale",
    "0.00005",
    "--webhook-timeout-ms",
    "1000",
    "--email-retry-base-ms",
    "20",
    "--delivery-poll-ms",
    "50",
    "--delivery-lease-ms",
    "5000",
    "--smtp-timeout-ms",
    "2000",
];

/// How long a test waits for something to arrive.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A suite with an SMTP server and a signed-in admin.
pub struct Fixture {
    pub suite: Suite,
    pub smtp: SmtpServer,
    pub admin: String,
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub token: String,
}

pub async fn fixture() -> anyhow::Result<Fixture> {
    fixture_with(&[]).await
}

/// A fixture whose notifications service also gets `args` (they override
/// QUICK's pairs of the same flag).
pub async fn fixture_with(args: &[&str]) -> anyhow::Result<Fixture> {
    let smtp = SmtpServer::start()?;
    let url = smtp.url();
    let quick = QUICK
        .iter()
        .enumerate()
        .filter(|(i, flag)| {
            // Flags with values come in pairs; drop a pair the caller sets.
            let flag = if flag.starts_with("--") { **flag } else { QUICK[*i - 1] };
            !args.contains(&flag)
        })
        .map(|(_, a)| *a);
    let all: Vec<&str> = quick
        .chain(["--smtp-url", url.as_str()])
        .chain(args.iter().copied())
        .collect();
    let suite = spawn_suite_with_options(SuiteOptions::default().args("notifications", &all)).await?;
    let (admin, tokens) = suite.signed_in_admin().await?;
    let fixture = Fixture {
        suite,
        smtp,
        admin: tokens.access_token,
    };
    // The admin's welcome and verification mail first, so a test's
    // scripted SMTP faults meet the test's own mail.
    fixture.mail_to(&admin.email, 2).await?;
    Ok(fixture)
}

impl Fixture {
    pub fn notifications(&self) -> NotificationsServiceClient<Channel> {
        NotificationsServiceClient::new(self.suite.channel("notifications"))
    }

    /// A new user, registered and signed in.
    pub async fn user(&self) -> anyhow::Result<User> {
        let email = format!("user-{}@example.com", uuid::Uuid::now_v7().simple());
        let password = "a perfectly fine password".to_owned();
        self.suite.register(&email, &password).await?;
        let login = self.suite.login(&email, &password).await?;
        let user = User {
            id: login.user.context("no user")?.id,
            email,
            token: login.tokens.context("no tokens")?.access_token,
        };
        // Accounts opens the account when UserRegistered reaches it, a
        // moment after the sign-up: tests that deposit need it there.
        eventually("the user's account", || async {
            let found = self
                .suite
                .accounts()
                .get_account(authorized(
                    accounts_pb::GetAccountRequest {
                        account_id: "me".into(),
                    },
                    &user.token,
                ))
                .await;
            match found {
                Ok(_) => Ok(Some(())),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                Err(status) => Err(status.into()),
            }
        })
        .await?;
        Ok(user)
    }

    /// Deposits into the user's account as the admin (a BalanceChanged).
    pub async fn deposit(&self, user: &User, amount_minor: i64) -> anyhow::Result<()> {
        self.suite
            .accounts()
            .deposit(authorized(
                accounts_pb::DepositRequest {
                    account_id: user.id.clone(),
                    amount: Some(Money {
                        amount_minor,
                        currency_code: "USD".into(),
                    }),
                    request_id: uuid::Uuid::now_v7().to_string(),
                    ..Default::default()
                },
                &self.admin,
            ))
            .await?;
        Ok(())
    }

    /// One page of the user's inbox.
    pub async fn inbox(&self, user: &User, unread_only: bool) -> anyhow::Result<pb::ListNotificationsResponse> {
        Ok(self
            .notifications()
            .list_notifications(authorized(
                pb::ListNotificationsRequest {
                    page_size: 100,
                    unread_only,
                    ..Default::default()
                },
                &user.token,
            ))
            .await?
            .into_inner())
    }

    /// The user's inbox entries of `event_type`, once there are `count`.
    pub async fn inbox_of(&self, user: &User, event_type: &str, count: usize) -> anyhow::Result<Vec<pb::Notification>> {
        eventually(&format!("{count} {event_type} entries"), || async {
            let entries: Vec<_> = self
                .inbox(user, false)
                .await?
                .notifications
                .into_iter()
                .filter(|n| n.event_type == event_type)
                .collect();
            Ok((entries.len() >= count).then_some(entries))
        })
        .await
    }

    /// The mail received for `address`, once there are `count`.
    pub async fn mail_to(&self, address: &str, count: usize) -> anyhow::Result<Vec<ReceivedMail>> {
        eventually(&format!("{count} mails to {address}"), || async {
            let mails: Vec<_> = self
                .smtp
                .messages()
                .into_iter()
                .filter(|m| m.to.iter().any(|to| to == address))
                .collect();
            Ok((mails.len() >= count).then_some(mails))
        })
        .await
    }

    /// The dead letters the admin sees.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<pb::DeadLetter>> {
        Ok(self
            .notifications()
            .list_dead_letters(authorized(
                pb::ListDeadLettersRequest {
                    page_size: 100,
                    ..Default::default()
                },
                &self.admin,
            ))
            .await?
            .into_inner()
            .dead_letters)
    }
}

/// Polls `check` until it gives a value, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `name=` in the first link of `text` that has it.
pub fn link_param(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}="))? + name.len() + 1;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '&' || c == '"' || c == '<' || c == '>')
        .unwrap_or(rest.len());
    Some(
        form_urlencoded::parse(format!("v={}", &rest[..end]).as_bytes())
            .next()?
            .1
            .into_owned(),
    )
}
