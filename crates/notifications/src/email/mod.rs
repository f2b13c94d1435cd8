//! Email over SMTP (or .eml files when no server is set).
//!
//! [`Mailer`] sends one [`Mail`] to one recipient and says what came of it
//! as an [`Outcome`]; [`templates`] writes the mail for each event and
//! [`unsubscribe`] signs the one-click links in it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, header::ContentTransferEncoding},
    transport::smtp::PoolConfig,
};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{config::EmailConfig, domain::Outcome};

mod headers;
pub mod templates;
pub mod unsubscribe;

use headers::{ListUnsubscribe, ListUnsubscribePost, valid_unsubscribe_url};

/// The longest error description an [`Outcome`] carries: enough for the
/// server's reply, short enough for a dead-letter row.
const MAX_ERROR_LEN: usize = 300;

/// One mail to one person, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The `Message-ID`, stable per delivery so that a retry is the same
    /// message (receivers drop the duplicate). Angle brackets are added
    /// when missing, and the sender's domain when it has no `@`.
    pub message_id: String,
    /// The recipient's address.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
    /// The one-click unsubscribe link (RFC 8058), for mail the user may
    /// switch off; `None` for security mail.
    pub unsubscribe_url: Option<String>,
}

/// Sends mail: over SMTP when `KEEL_SMTP_URL` is set, else as `.eml` files
/// in `KEEL_NOTIFICATIONS_MAIL_DIR`.
pub struct Mailer {
    from: Mailbox,
    timeout: Duration,
    sink: Sink,
}

enum Sink {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// `host:port`, for the banner and logs.
        endpoint: String,
        /// The URL's user name and password, scrubbed from any error text.
        secrets: Vec<SecretString>,
    },
    Files {
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the transport itself: it holds the credentials.
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .field("sink", &self.describe())
            .finish()
    }
}

impl Mailer {
    /// A mailer for `config`: SMTP when `smtp_url` is set (pooled
    /// connections), else `.eml` files in `mail_dir` (created if missing).
    /// Fails when neither is set, or on a malformed URL or sender. Call it
    /// inside a Tokio runtime: the SMTP pool starts a task there.
    pub fn new(config: &EmailConfig) -> anyhow::Result<Mailer> {
        let from: Mailbox = config.mail_from.parse().with_context(|| {
            format!(
                "KEEL_NOTIFICATIONS_MAIL_FROM ({:?}) is not a mail address",
                config.mail_from
            )
        })?;
        let sink = match (&config.smtp_url, &config.mail_dir) {
            (Some(url), _) => {
                // lettre's pool spawns its reaper on the current runtime and
                // panics without one; an error says it better.
                tokio::runtime::Handle::try_current()
                    .context("the SMTP mailer must be built inside a Tokio runtime")?;
                smtp_sink(url.expose_secret(), config.timeout())?
            }
            (None, Some(dir)) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating the mail folder {}", dir.display()))?;
                Sink::Files { dir: dir.clone() }
            }
            (None, None) => anyhow::bail!(
                "no way to send mail: set KEEL_SMTP_URL (an SMTP server) or \
                 KEEL_NOTIFICATIONS_MAIL_DIR (a folder for .eml files)"
            ),
        };
        Ok(Mailer {
            from,
            timeout: config.timeout(),
            sink,
        })
    }

    /// Where mail goes, for the start banner: the SMTP server's `host:port`
    /// (never its credentials) or the folder of `.eml` files.
    pub fn describe(&self) -> String {
        match &self.sink {
            Sink::Smtp { endpoint, .. } => format!("SMTP server {endpoint}"),
            Sink::Files { dir } => format!("writing .eml files to {}", dir.display()),
        }
    }

    /// Sends `mail` (one message, one recipient) within the configured
    /// timeout. A 5xx reply or a bad address is [`Outcome::Refused`]; a 4xx
    /// reply, a network error or the timeout is [`Outcome::Retry`].
    pub async fn send(&self, mail: &Mail) -> Outcome {
        let message = match self.message(mail) {
            Ok(message) => message,
            Err(refused) => {
                tracing::warn!(message_id = %mail.message_id, ?refused, "mail not sent");
                return refused;
            }
        };
        // lettre's own timeout covers connecting only; a server that stalls
        // mid-conversation must not hold a delivery past its lease.
        let outcome = match tokio::time::timeout(self.timeout, self.deliver(message)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            },
        };
        match &outcome {
            Outcome::Delivered => {
                tracing::debug!(message_id = %mail.message_id, sink = %self.describe(), "mail sent");
            }
            other => {
                tracing::warn!(message_id = %mail.message_id, outcome = ?other, "mail not sent");
            }
        }
        outcome
    }

    /// The RFC 5322 message; a mail that can never be built is refused.
    fn message(&self, mail: &Mail) -> Result<Message, Outcome> {
        let refuse = |error: String| Outcome::Refused { status: None, error };
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|_| refuse("the recipient address is not valid".to_owned()))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(self.message_id(&mail.message_id).ok_or_else(|| {
                refuse("the message id is not printable ASCII without spaces".to_owned())
            })?));
        if let Some(url) = &mail.unsubscribe_url {
            if !valid_unsubscribe_url(url) {
                return Err(refuse("the unsubscribe link is not a valid URL".to_owned()));
            }
            builder = builder.header(ListUnsubscribe(url.clone())).header(ListUnsubscribePost);
        }
        builder
            .multipart(alternative(&mail.text, &mail.html))
            .map_err(|e| refuse(format!("the message could not be built: {e}")))
    }

    /// `<id>`, with the sender's domain when `id` has none; `None` when
    /// `id` could not stand in the header as it is.
    fn message_id(&self, id: &str) -> Option<String> {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>') {
            return None;
        }
        Some(if id.contains('@') {
            format!("<{id}>")
        } else {
            format!("<{id}@{}>", self.from.email.domain())
        })
    }

    async fn deliver(&self, message: Message) -> Outcome {
        match &self.sink {
            Sink::Smtp { transport, secrets, .. } => match transport.send(message).await {
                Ok(_) => Outcome::Delivered,
                Err(e) => smtp_outcome(&e, secrets),
            },
            Sink::Files { dir } => match write_eml(dir, &message).await {
                Ok(()) => Outcome::Delivered,
                // A full disk or a permission problem may pass.
                Err(e) => Outcome::Retry {
                    status: None,
                    error: brief(&format!("{e:#}"), &[]),
                    retry_after: None,
                },
            },
        }
    }
}

/// The text and HTML parts. Quoted-printable always: readable in a raw
/// `.eml`, safe for any line length, and one decoding for readers to know.
fn alternative(text: &str, html: &str) -> MultiPart {
    use lettre::message::{SinglePart, header::ContentType};
    let part = |content_type: ContentType, body: &str| {
        SinglePart::builder()
            .header(content_type)
            .header(ContentTransferEncoding::QuotedPrintable)
            .body(body.to_owned())
    };
    MultiPart::alternative()
        .singlepart(part(ContentType::TEXT_PLAIN, text))
        .singlepart(part(ContentType::TEXT_HTML, html))
}

fn smtp_sink(url: &str, timeout: Duration) -> anyhow::Result<Sink> {
    // Parsed here as well as by lettre for the banner's host:port and the
    // secrets to scrub; neither error may quote the URL, which holds them.
    let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("KEEL_SMTP_URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("KEEL_SMTP_URL has no host"))?;
    let port = parsed.port().unwrap_or(match parsed.scheme() {
        "smtps" => 465,
        _ if parsed.query_pairs().any(|(k, _)| k == "tls") => 587,
        _ => 25,
    });
    // As written and percent-decoded (lettre logs in with the latter);
    // very short ones are left, as scrubbing them would garble the text.
    let secrets = [parsed.username(), parsed.password().unwrap_or_default()]
        .into_iter()
        .flat_map(|s| {
            let decoded = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
            [s.to_owned(), decoded.into_owned()]
        })
        .filter(|s| s.len() >= 3)
        .map(SecretString::from)
        .collect();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| anyhow::anyhow!("KEEL_SMTP_URL: {}", brief(&e.to_string(), &[])))?
        .timeout(Some(timeout))
        .pool_config(PoolConfig::new())
        .build();
    Ok(Sink::Smtp {
        transport,
        endpoint: format!("{host}:{port}"),
        secrets,
    })
}

/// What a failed SMTP send means for the delivery.
fn smtp_outcome(e: &lettre::transport::smtp::Error, secrets: &[SecretString]) -> Outcome {
    let status = e.status().map(|code| i32::from(u16::from(code)));
    let error = brief(&e.to_string(), secrets);
    if e.is_permanent() {
        Outcome::Refused { status, error }
    } else {
        // 4xx replies, and everything that is no reply at all (network,
        // TLS, a dropped connection): worth another try later.
        Outcome::Retry {
            status,
            error,
            retry_after: None,
        }
    }
}

/// `text` without secrets, on one line, at most [`MAX_ERROR_LEN`] chars.
fn brief(text: &str, secrets: &[SecretString]) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets {
        text = text.replace(secret.expose_secret(), "…");
    }
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Writes `message` as `<UTC time>-<Message-ID>.eml` in `dir`: names sort by
/// time, and the id keeps two mails of the same instant apart. Written
/// beside and renamed, so a reader never sees half a message.
async fn write_eml(dir: &Path, message: &Message) -> anyhow::Result<()> {
    let id = message
        .headers()
        .get_raw("Message-ID")
        .unwrap_or("message")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let id = id.trim_matches('_');
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ");
    let name = format!("{stamp}-{id}.eml");
    let partial = dir.join(format!(".{name}.partial"));
    let path = dir.join(&name);
    tokio::fs::write(&partial, message.formatted())
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    tokio::fs::rename(&partial, &path)
        .await
        .with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_scrubs_secrets_and_cuts() {
        let secrets = vec![SecretString::from("hunter2")];
        assert_eq!(brief("auth failed for\n hunter2", &secrets), "auth failed for …");
        let long = "x".repeat(1000);
        assert_eq!(brief(&long, &[]).chars().count(), MAX_ERROR_LEN + 1);
    }

    #[test]
    fn message_ids_are_bracketed_and_qualified() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let mailer = Mailer::new(&EmailConfig {
            smtp_url: None,
            mail_dir: Some(tmp.path().to_path_buf()),
            mail_from: "Keel <no-reply@keel.localhost>".to_owned(),
            smtp_timeout_ms: 1_000,
        })?;
        assert_eq!(mailer.message_id("abc").as_deref(), Some("<abc@keel.localhost>"));
        assert_eq!(mailer.message_id("<a@b.c>").as_deref(), Some("<a@b.c>"));
        assert_eq!(mailer.message_id("a b"), None);
        assert_eq!(mailer.message_id("a\r\nBcc: x@y.z"), None);
        assert_eq!(mailer.message_id(""), None);
        Ok(())
    }

    #[test]
    fn an_smtp_mailer_outside_a_runtime_is_an_error_not_a_panic() {
        let built = Mailer::new(&EmailConfig {
            smtp_url: Some("smtp://127.0.0.1:2525".into()),
            mail_dir: None,
            mail_from: "Keel <no-reply@keel.localhost>".to_owned(),
            smtp_timeout_ms: 1_000,
        });
        match built {
            Ok(mailer) => panic!("built {mailer:?} outside a runtime"),
            Err(e) => assert!(format!("{e:#}").contains("Tokio runtime"), "{e:#}"),
        }
    }

    #[tokio::test]
    async fn describe_hides_credentials() -> anyhow::Result<()> {
        for (url, endpoint) in [
            ("smtps://user:sekret@mail.example.com", "mail.example.com:465"),
            (
                "smtp://user:sekret@mail.example.com?tls=required",
                "mail.example.com:587",
            ),
            ("smtp://127.0.0.1:2525", "127.0.0.1:2525"),
            ("smtp://relay.local", "relay.local:25"),
        ] {
            let mailer = Mailer::new(&EmailConfig {
                smtp_url: Some(url.into()),
                mail_dir: None,
                mail_from: "Keel <no-reply@keel.localhost>".to_owned(),
                smtp_timeout_ms: 1_000,
            })?;
            assert_eq!(mailer.describe(), format!("SMTP server {endpoint}"));
            assert!(!format!("{mailer:?}").contains("sekret"));
        }
        Ok(())
    }
}
