//! The mailer against a real SMTP server (the testkit's, in-process) and
//! real files: what arrives, and what each kind of failure comes to.

use std::{path::Path, time::Duration};

use keel_notifications::{
    EmailConfig,
    domain::Outcome,
    email::{
        Mail, Mailer,
        templates::{Message, Templates},
    },
};
use keel_testkit::smtp::{ReceivedMail, SilentServer, SmtpFault, SmtpServer, SmtpStage};

const FROM: &str = "Keel <no-reply@keel.localhost>";
const UNSUBSCRIBE: &str = "https://keel.example/v1/notifications:unsubscribe?token=dG9rZW4";
const WAIT: Duration = Duration::from_secs(10);

fn config(smtp_url: Option<String>, mail_dir: Option<&Path>, timeout_ms: u64) -> EmailConfig {
    EmailConfig {
        smtp_url: smtp_url.map(Into::into),
        mail_dir: mail_dir.map(Path::to_path_buf),
        mail_from: FROM.to_owned(),
        smtp_timeout_ms: timeout_ms,
    }
}

fn smtp_mailer(server: &SmtpServer) -> anyhow::Result<Mailer> {
    Mailer::new(&config(Some(server.url()), None, 10_000))
}

fn welcome(id: &str, unsubscribe_url: Option<&str>) -> anyhow::Result<Mail> {
    let rendered = Templates::new()?.mail(&Message::Welcome {
        email: "ada@example.com".to_owned(),
    })?;
    Ok(Mail {
        message_id: id.to_owned(),
        to: "ada@example.com".to_owned(),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        unsubscribe_url: unsubscribe_url.map(str::to_owned),
    })
}

fn verify_email(id: &str) -> anyhow::Result<Mail> {
    let rendered = Templates::new()?.mail(&Message::VerifyEmail {
        link: "https://keel.example/verify?token=abc".to_owned(),
        expire_time: chrono::Utc::now(),
    })?;
    Ok(Mail {
        message_id: id.to_owned(),
        to: "ada@example.com".to_owned(),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        unsubscribe_url: None,
    })
}

#[tokio::test]
async fn mail_arrives_with_both_parts_and_the_unsubscribe_headers() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    assert_eq!(mailer.describe(), format!("SMTP server {}", server.addr()));

    let outcome = mailer.send(&welcome("d-1", Some(UNSUBSCRIBE))?).await;
    assert_eq!(outcome, Outcome::Delivered);

    let mails = server.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.from.contains("no-reply@keel.localhost"), "{}", mail.from);
    assert_eq!(mail.to.len(), 1);
    assert!(mail.to[0].contains("ada@example.com"), "{:?}", mail.to);
    assert_eq!(mail.header("From").as_deref(), Some("Keel <no-reply@keel.localhost>"));
    assert_eq!(mail.header("To").as_deref(), Some("ada@example.com"));
    assert_eq!(mail.header("Subject").as_deref(), Some("Welcome to Keel"));
    assert_eq!(mail.header("Message-ID").as_deref(), Some("<d-1@keel.localhost>"));
    assert_eq!(mail.header("List-Unsubscribe"), Some(format!("<{UNSUBSCRIBE}>")));
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let content_type = mail.header("Content-Type").unwrap_or_default();
    assert!(content_type.starts_with("multipart/alternative"), "{content_type}");

    let text = mail.text_body().unwrap_or_default();
    assert!(
        text.contains("Welcome to Keel! Your account ada@example.com is ready."),
        "{text}"
    );
    assert!(text.contains("— Keel"), "decoded as UTF-8: {text}");
    assert!(text.contains("To stop these mails"), "{text}");
    let html = mail.html_body().unwrap_or_default();
    assert!(html.contains("<strong>ada@example.com</strong>"), "{html}");
    Ok(())
}

#[tokio::test]
async fn mail_without_an_unsubscribe_url_has_no_list_headers() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    assert_eq!(mailer.send(&verify_email("d-2")?).await, Outcome::Delivered);
    let mails = server.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].header("List-Unsubscribe"), None);
    assert_eq!(mails[0].header("List-Unsubscribe-Post"), None);
    let text = mails[0].text_body().unwrap_or_default();
    assert!(text.contains("https://keel.example/verify?token=abc"), "{text}");
    assert!(!text.contains("To stop these mails"), "{text}");
    Ok(())
}

#[tokio::test]
async fn one_mailer_sends_many_over_its_pool() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    for i in 0..3 {
        let outcome = mailer.send(&welcome(&format!("d-pool-{i}"), None)?).await;
        assert_eq!(outcome, Outcome::Delivered);
    }
    let mails = server.wait_for(3, WAIT).await;
    let ids: Vec<_> = mails.iter().filter_map(|m| m.header("Message-ID")).collect();
    assert_eq!(
        ids,
        [
            "<d-pool-0@keel.localhost>",
            "<d-pool-1@keel.localhost>",
            "<d-pool-2@keel.localhost>"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_4xx_reply_is_retry_with_its_code() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    let mail = welcome("d-3", Some(UNSUBSCRIBE))?;

    server.fail_next(1, SmtpFault::Transient);
    match mailer.send(&mail).await {
        Outcome::Retry {
            status: Some(451),
            error,
            retry_after: None,
        } => assert!(!error.is_empty()),
        other => panic!("expected a retry with 451, got {other:?}"),
    }
    assert!(server.messages().is_empty());

    // The retry is the same message, and now it goes through.
    assert_eq!(mailer.send(&mail).await, Outcome::Delivered);
    let mails = server.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].header("Message-ID").as_deref(), Some("<d-3@keel.localhost>"));
    Ok(())
}

#[tokio::test]
async fn a_4xx_reply_at_data_is_retry_and_nothing_is_kept() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    server.fail_next_at(1, SmtpFault::Transient, SmtpStage::Data);
    let outcome = mailer.send(&welcome("d-4", None)?).await;
    assert!(
        matches!(outcome, Outcome::Retry { status: Some(451), .. }),
        "{outcome:?}"
    );
    assert!(server.messages().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_5xx_reply_is_refused_with_its_code() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    server.fail_next(1, SmtpFault::Permanent);
    match mailer.send(&welcome("d-5", None)?).await {
        Outcome::Refused {
            status: Some(550),
            error,
        } => assert!(error.contains("550"), "{error}"),
        other => panic!("expected a refusal with 550, got {other:?}"),
    }
    server.fail_next_at(1, SmtpFault::Permanent, SmtpStage::Data);
    let outcome = mailer.send(&welcome("d-6", None)?).await;
    assert!(
        matches!(outcome, Outcome::Refused { status: Some(550), .. }),
        "{outcome:?}"
    );
    assert!(server.messages().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_bad_recipient_is_refused_without_a_code() -> anyhow::Result<()> {
    let server = SmtpServer::start()?;
    let mailer = smtp_mailer(&server)?;
    let mut mail = welcome("d-7", None)?;
    mail.to = "not an address".to_owned();
    let outcome = mailer.send(&mail).await;
    assert!(matches!(outcome, Outcome::Refused { status: None, .. }), "{outcome:?}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_speaks_is_retry_after_the_timeout() -> anyhow::Result<()> {
    let silent = SilentServer::start().await?;
    let mailer = Mailer::new(&config(Some(silent.url()), None, 300))?;
    let started = tokio::time::Instant::now();
    let outcome = mailer.send(&welcome("d-8", None)?).await;
    let took = started.elapsed();
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                status: None,
                retry_after: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    Ok(())
}

#[tokio::test]
async fn no_server_listening_is_retry() -> anyhow::Result<()> {
    // A port that was free a moment ago and has nobody on it now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("smtp://user:sekret-password@127.0.0.1:{port}");
    let mailer = Mailer::new(&config(Some(url), None, 2_000))?;
    assert!(!mailer.describe().contains("sekret"));
    match mailer.send(&welcome("d-9", None)?).await {
        Outcome::Retry {
            status: None, error, ..
        } => assert!(!error.contains("sekret"), "{error}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn without_a_server_mail_is_written_as_eml_files() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("mail");
    let mailer = Mailer::new(&config(None, Some(&dir), 10_000))?;
    assert_eq!(mailer.describe(), format!("writing .eml files to {}", dir.display()));

    assert_eq!(mailer.send(&verify_email("d-10")?).await, Outcome::Delivered);
    assert_eq!(
        mailer.send(&welcome("d-11", Some(UNSUBSCRIBE))?).await,
        Outcome::Delivered
    );

    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".eml")), "{names:?}");
    // Sorted by name is sorted by time: the verification mail came first.
    assert!(names[0].ends_with("-d-10@keel.localhost.eml"), "{names:?}");
    assert!(names[1].ends_with("-d-11@keel.localhost.eml"), "{names:?}");

    let read = |name: &str| -> anyhow::Result<ReceivedMail> {
        Ok(ReceivedMail {
            from: String::new(),
            to: Vec::new(),
            data: std::fs::read_to_string(dir.join(name))?,
        })
    };
    let verify = read(&names[0])?;
    assert_eq!(verify.header("Subject").as_deref(), Some("Verify your email address"));
    assert_eq!(verify.header("To").as_deref(), Some("ada@example.com"));
    assert!(verify.header("Date").is_some());
    let text = verify.text_body().unwrap_or_default();
    assert!(text.contains("https://keel.example/verify?token=abc"), "{text}");
    assert!(verify.html_body().is_some());

    let welcome = read(&names[1])?;
    assert_eq!(welcome.header("List-Unsubscribe"), Some(format!("<{UNSUBSCRIBE}>")));
    Ok(())
}

#[tokio::test]
async fn a_mailer_needs_a_server_or_a_folder() {
    let error = match Mailer::new(&config(None, None, 1_000)) {
        Ok(mailer) => panic!("built {mailer:?} with nowhere to send"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("KEEL_SMTP_URL"), "{error}");
    assert!(error.contains("KEEL_NOTIFICATIONS_MAIL_DIR"), "{error}");
}

#[tokio::test]
async fn a_malformed_smtp_url_fails_without_quoting_it() {
    let error = match Mailer::new(&config(Some("smtp//user:sekret@".into()), None, 1_000)) {
        Ok(mailer) => panic!("built {mailer:?} from a malformed URL"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("KEEL_SMTP_URL"), "{error}");
    assert!(!error.contains("sekret"), "{error}");
}
