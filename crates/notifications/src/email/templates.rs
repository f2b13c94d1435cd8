//! What Keel's mail and inbox entries say, one [`Message`] per event.
//!
//! Mail bodies are minijinja templates embedded from
//! `crates/notifications/templates/` (a text and an HTML one each, both
//! extending a layout); HTML templates escape what they insert. Subjects
//! and inbox texts are short enough to stay here.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use keel::common::v1::Money;
use minijinja::{Environment, UndefinedBehavior, Value, context, syntax::SyntaxConfig};

use crate::domain::Topic;

/// Every template, by name; `.html` ones are escaped as HTML.
const SOURCES: &[(&str, &str)] = &[
    ("layout.txt", include_str!("../../templates/layout.txt")),
    ("layout.html", include_str!("../../templates/layout.html")),
    ("welcome.txt", include_str!("../../templates/welcome.txt")),
    ("welcome.html", include_str!("../../templates/welcome.html")),
    ("verify_email.txt", include_str!("../../templates/verify_email.txt")),
    ("verify_email.html", include_str!("../../templates/verify_email.html")),
    ("password_reset.txt", include_str!("../../templates/password_reset.txt")),
    (
        "password_reset.html",
        include_str!("../../templates/password_reset.html"),
    ),
    ("order_placed.txt", include_str!("../../templates/order_placed.txt")),
    ("order_placed.html", include_str!("../../templates/order_placed.html")),
    ("order_paid.txt", include_str!("../../templates/order_paid.txt")),
    ("order_paid.html", include_str!("../../templates/order_paid.html")),
    ("order_shipped.txt", include_str!("../../templates/order_shipped.txt")),
    ("order_shipped.html", include_str!("../../templates/order_shipped.html")),
    (
        "order_cancelled.txt",
        include_str!("../../templates/order_cancelled.txt"),
    ),
    (
        "order_cancelled.html",
        include_str!("../../templates/order_cancelled.html"),
    ),
    (
        "balance_changed.txt",
        include_str!("../../templates/balance_changed.txt"),
    ),
    (
        "balance_changed.html",
        include_str!("../../templates/balance_changed.html"),
    ),
    (
        "webhook_endpoint_disabled.txt",
        include_str!("../../templates/webhook_endpoint_disabled.txt"),
    ),
    (
        "webhook_endpoint_disabled.html",
        include_str!("../../templates/webhook_endpoint_disabled.html"),
    ),
];

/// What a notification says, with what it needs to say it.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A user registered.
    Welcome {
        /// Their address.
        email: String,
    },
    /// An address needs verifying.
    VerifyEmail {
        /// What the user opens to verify (the token is in it).
        link: String,
        /// When the token stops working.
        expire_time: DateTime<Utc>,
    },
    /// A user asked to reset a forgotten password.
    PasswordReset {
        /// The single-use token for ResetPassword.
        token: String,
        /// The application's reset page with the token in it, when one is
        /// set; without it the mail explains the ResetPassword call.
        link: Option<String>,
        /// When the token stops working.
        expire_time: DateTime<Utc>,
    },
    /// An order was placed.
    OrderPlaced {
        /// The order.
        order_id: String,
        /// Its total.
        total: Money,
    },
    /// An order was paid.
    OrderPaid {
        /// The order.
        order_id: String,
        /// The amount charged.
        amount: Money,
    },
    /// An order shipped.
    OrderShipped {
        /// The order.
        order_id: String,
    },
    /// An order was cancelled.
    OrderCancelled {
        /// The order.
        order_id: String,
        /// Why, for people.
        reason: String,
        /// Whether a payment was refunded.
        refunded: bool,
    },
    /// An account balance moved.
    BalanceChanged {
        /// The signed change.
        delta: Money,
        /// The balance after it.
        balance: Money,
    },
    /// A webhook endpoint was disabled after failing for too long.
    WebhookEndpointDisabled {
        /// The endpoint's URL.
        url: String,
        /// Why, for people.
        reason: String,
    },
}

impl Message {
    /// The topic a user can switch this mail off by; `None` for security
    /// mail (verification, password reset), which always goes.
    pub fn topic(&self) -> Option<Topic> {
        match self {
            Message::Welcome { .. } => Some(Topic::UserRegistered),
            Message::VerifyEmail { .. } | Message::PasswordReset { .. } => None,
            Message::OrderPlaced { .. } => Some(Topic::OrderPlaced),
            Message::OrderPaid { .. } => Some(Topic::OrderPaid),
            Message::OrderShipped { .. } => Some(Topic::OrderShipped),
            Message::OrderCancelled { .. } => Some(Topic::OrderCancelled),
            Message::BalanceChanged { .. } => Some(Topic::BalanceChanged),
            Message::WebhookEndpointDisabled { .. } => Some(Topic::WebhookEndpointDisabled),
        }
    }

    /// The templates' base name.
    fn template(&self) -> &'static str {
        match self {
            Message::Welcome { .. } => "welcome",
            Message::VerifyEmail { .. } => "verify_email",
            Message::PasswordReset { .. } => "password_reset",
            Message::OrderPlaced { .. } => "order_placed",
            Message::OrderPaid { .. } => "order_paid",
            Message::OrderShipped { .. } => "order_shipped",
            Message::OrderCancelled { .. } => "order_cancelled",
            Message::BalanceChanged { .. } => "balance_changed",
            Message::WebhookEndpointDisabled { .. } => "webhook_endpoint_disabled",
        }
    }

    /// The subject line, which is also the inbox entry's title.
    fn subject(&self) -> String {
        match self {
            Message::Welcome { .. } => "Welcome to Keel".to_owned(),
            Message::VerifyEmail { .. } => "Verify your email address".to_owned(),
            Message::PasswordReset { .. } => "Reset your Keel password".to_owned(),
            Message::OrderPlaced { order_id, .. } => format!("Order {order_id} placed"),
            Message::OrderPaid { order_id, .. } => format!("Order {order_id} paid"),
            Message::OrderShipped { order_id } => format!("Order {order_id} shipped"),
            Message::OrderCancelled { order_id, .. } => format!("Order {order_id} cancelled"),
            Message::BalanceChanged { .. } => "Your balance changed".to_owned(),
            Message::WebhookEndpointDisabled { .. } => "A webhook endpoint was disabled".to_owned(),
        }
    }

    /// The inbox entry's body: one or two plain sentences.
    fn inbox_body(&self) -> String {
        match self {
            Message::Welcome { email } => format!("Your account {email} is ready."),
            Message::VerifyEmail { expire_time, .. } => format!(
                "We sent a verification link to your address; it works until {}.",
                when(expire_time)
            ),
            Message::PasswordReset { expire_time, .. } => format!(
                "We mailed you a password reset token; it works until {}.",
                when(expire_time)
            ),
            Message::OrderPlaced { total, .. } => {
                format!("Total {}, waiting for payment.", money(total))
            }
            Message::OrderPaid { amount, .. } => format!("Payment of {} received.", money(amount)),
            Message::OrderShipped { .. } => "Your order is on its way.".to_owned(),
            Message::OrderCancelled { reason, refunded, .. } => {
                let money = if *refunded {
                    "Your payment was refunded."
                } else {
                    "Nothing was charged."
                };
                format!("Cancelled: {reason}. {money}")
            }
            Message::BalanceChanged { delta, balance } => format!(
                "Changed by {}; the balance is now {}.",
                signed_money(delta),
                money(balance)
            ),
            Message::WebhookEndpointDisabled { url, reason } => {
                format!("Keel stopped sending to {url}: {reason}.")
            }
        }
    }

    /// What the templates insert; money and times already formatted.
    fn values(&self) -> Value {
        match self {
            Message::Welcome { email } => context! { email },
            Message::VerifyEmail { link, expire_time } => {
                context! { link, expire_time => when(expire_time) }
            }
            Message::PasswordReset {
                token,
                link,
                expire_time,
            } => context! { token, link, expire_time => when(expire_time) },
            Message::OrderPlaced { order_id, total } => {
                context! { order_id, total => money(total) }
            }
            Message::OrderPaid { order_id, amount } => {
                context! { order_id, amount => money(amount) }
            }
            Message::OrderShipped { order_id } => context! { order_id },
            Message::OrderCancelled {
                order_id,
                reason,
                refunded,
            } => context! { order_id, reason, refunded },
            Message::BalanceChanged { delta, balance } => {
                context! { delta => signed_money(delta), balance => money(balance) }
            }
            Message::WebhookEndpointDisabled { url, reason } => context! { url, reason },
        }
    }
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// A rendered inbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxText {
    /// A short title.
    pub title: String,
    /// Plain text.
    pub body: String,
}

/// The parsed templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Parses every template; fails naming the one that does not parse.
    pub fn new() -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        // A misspelt variable must fail the render (and the tests), not
        // print nothing in someone's mail.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags on lines of their own leave no blank lines behind.
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .context("the template syntax")?,
        );
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .with_context(|| format!("parsing the mail template {name}"))?;
        }
        Ok(Templates { env })
    }

    /// The mail for `message`: subject, text and HTML. Mail a user can
    /// switch off ends with a line saying how.
    pub fn mail(&self, message: &Message) -> anyhow::Result<Rendered> {
        let subject = message.subject();
        let values = context! {
            subject => subject.clone(),
            topic => message.topic().map(Topic::as_str),
            ..message.values()
        };
        let render = |ext: &str| {
            let name = format!("{}.{ext}", message.template());
            self.env
                .get_template(&name)
                .and_then(|template| template.render(values.clone()))
                .with_context(|| format!("rendering the mail template {name}"))
        };
        Ok(Rendered {
            text: render("txt")?,
            html: render("html")?,
            subject,
        })
    }

    /// The in-app inbox entry for `message`: a short title and plain text.
    pub fn inbox(&self, message: &Message) -> anyhow::Result<InboxText> {
        Ok(InboxText {
            title: message.subject(),
            body: message.inbox_body(),
        })
    }
}

/// A time as mail shows it: `2026-12-01 16:30 UTC`.
fn when(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Digits after the decimal point in `currency` (ISO 4217); 2 for codes
/// not listed, which is most of them.
fn exponent(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `1050 USD` as `10.50 USD`, `-5 JPY` as `-5 JPY`.
pub fn money(money: &Money) -> String {
    let code = money.currency_code.to_ascii_uppercase();
    let exp = exponent(&code);
    let sign = if money.amount_minor < 0 { "-" } else { "" };
    let minor = money.amount_minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{minor} {code}");
    }
    let unit = 10u64.pow(exp);
    format!(
        "{sign}{}.{:0width$} {code}",
        minor / unit,
        minor % unit,
        width = exp as usize
    )
}

/// [`money`] with a `+` on increases, for changes.
fn signed_money(delta: &Money) -> String {
    if delta.amount_minor > 0 {
        format!("+{}", money(delta))
    } else {
        money(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(amount_minor: i64) -> Money {
        Money {
            amount_minor,
            currency_code: "USD".to_owned(),
        }
    }

    fn every_message() -> Vec<Message> {
        let expire_time = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        vec![
            Message::Welcome {
                email: "ada@example.com".into(),
            },
            Message::VerifyEmail {
                link: "https://keel.example/verify?token=abc".into(),
                expire_time,
            },
            Message::PasswordReset {
                token: "tok-123".into(),
                link: None,
                expire_time,
            },
            Message::PasswordReset {
                token: "tok-123".into(),
                link: Some("https://app.example/reset?token=tok-123".into()),
                expire_time,
            },
            Message::OrderPlaced {
                order_id: "ord-1".into(),
                total: usd(1050),
            },
            Message::OrderPaid {
                order_id: "ord-1".into(),
                amount: usd(1050),
            },
            Message::OrderShipped {
                order_id: "ord-1".into(),
            },
            Message::OrderCancelled {
                order_id: "ord-1".into(),
                reason: "out of stock".into(),
                refunded: true,
            },
            Message::BalanceChanged {
                delta: usd(-250),
                balance: usd(800),
            },
            Message::WebhookEndpointDisabled {
                url: "https://hooks.example/keel".into(),
                reason: "every delivery failed for 5 days".into(),
            },
        ]
    }

    #[test]
    fn every_message_renders() -> anyhow::Result<()> {
        let templates = Templates::new()?;
        for message in every_message() {
            let mail = templates.mail(&message)?;
            let inbox = templates.inbox(&message)?;
            assert!(!mail.subject.is_empty(), "{message:?}");
            assert!(mail.text.starts_with("Hello,\n\n"), "{message:?}: {}", mail.text);
            assert!(!mail.text.contains("\n\n\n"), "{message:?}: {}", mail.text);
            assert!(mail.html.contains("<html"), "{message:?}");
            assert!(!inbox.title.is_empty() && !inbox.body.is_empty());
            assert!(inbox.title.len() <= 60, "{}", inbox.title);
            let stop = "To stop these mails";
            match message.topic() {
                Some(topic) => {
                    assert!(mail.text.contains(stop), "{message:?}");
                    assert!(mail.text.contains(topic.as_str()), "{message:?}");
                    assert!(mail.text.trim_end().ends_with('.'), "{message:?}");
                    assert!(mail.html.contains(stop), "{message:?}");
                }
                None => {
                    assert!(!mail.text.contains(stop), "{message:?}");
                    assert!(!mail.html.contains(stop), "{message:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn verify_mail_carries_the_link() -> anyhow::Result<()> {
        let mail = Templates::new()?.mail(&every_message()[1])?;
        assert!(mail.text.contains("https://keel.example/verify?token=abc"));
        // minijinja escapes `/` too (`&#x2f;`), which HTML reads back as `/`.
        let html = mail.html.replace("&#x2f;", "/");
        assert!(html.contains(r#"href="https://keel.example/verify?token=abc""#));
        assert!(mail.text.contains("2027-01-15 08:00 UTC"), "{}", mail.text);
        Ok(())
    }

    #[test]
    fn password_reset_without_a_link_explains_reset_password() -> anyhow::Result<()> {
        let templates = Templates::new()?;
        let mail = templates.mail(&every_message()[2])?;
        assert!(mail.text.contains("tok-123"));
        assert!(mail.text.contains("POST /v1/auth:resetPassword"));
        assert!(
            mail.text
                .contains(r#"{"token": "tok-123", "newPassword": "<your new password>"}"#),
            "{}",
            mail.text
        );
        assert!(mail.html.contains("ResetPassword"));

        let mail = templates.mail(&every_message()[3])?;
        assert!(mail.text.contains("https://app.example/reset?token=tok-123"));
        assert!(!mail.text.contains("POST /v1/auth:resetPassword"));
        Ok(())
    }

    #[test]
    fn html_is_escaped_text_is_not() -> anyhow::Result<()> {
        let message = Message::OrderCancelled {
            order_id: "ord-1".into(),
            reason: "<script>alert(1)</script> & more".into(),
            refunded: false,
        };
        let mail = Templates::new()?.mail(&message)?;
        assert!(!mail.html.contains("<script>"));
        assert!(mail.html.contains("&lt;script&gt;"));
        assert!(mail.text.contains("<script>alert(1)</script> & more"));
        Ok(())
    }

    #[test]
    fn money_uses_the_currency_exponent() {
        let m = |amount_minor, code: &str| Money {
            amount_minor,
            currency_code: code.to_owned(),
        };
        assert_eq!(money(&m(1050, "USD")), "10.50 USD");
        assert_eq!(money(&m(5, "eur")), "0.05 EUR");
        assert_eq!(money(&m(-1050, "USD")), "-10.50 USD");
        assert_eq!(money(&m(1050, "JPY")), "1050 JPY");
        assert_eq!(money(&m(1050, "KWD")), "1.050 KWD");
        assert_eq!(money(&m(i64::MIN, "USD")), "-92233720368547758.08 USD");
        assert_eq!(signed_money(&m(250, "USD")), "+2.50 USD");
        assert_eq!(signed_money(&m(-250, "USD")), "-2.50 USD");
    }
}
