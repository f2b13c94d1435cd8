//! Paying by card through an external gateway that speaks Stripe's API:
//! PaymentIntents and Refunds, form-encoded, the secret key as bearer, an
//! `Idempotency-Key` on every POST.
//!
//! Keel does not rely on the gateway honouring those keys (localstripe, for
//! one, ignores them). The intent is created unconfirmed with the buyer's
//! payment method, and the saga stores its id before anything else; every
//! later step retrieves that intent and acts on its real status. Only the
//! stored intent is ever confirmed, so an intent whose creation answer was
//! lost (or reached a worker that had lost its claim) can never take money. A refund first
//! looks for the refund it may already have made (tagged with its key in the
//! refund's metadata), so a lost answer never refunds twice.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument as _;

use super::{Charge, ChargeOutcome, Decline, PaymentProvider, Prepared, Refund, RefundOutcome, Taken, VoidOutcome};

/// The metadata key that tags a refund with Keel's idempotency key.
const KEY_METADATA: &str = "keel_key";

/// The card gateway provider.
#[derive(Debug, Clone)]
pub struct CardGateway {
    http: reqwest::Client,
    base_url: String,
    secret_key: SecretString,
}

/// A PaymentIntent, as much of it as Keel reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Intent {
    /// `pi_...`
    pub id: String,
    /// Stripe's status.
    pub status: String,
    /// Minor units.
    #[serde(default)]
    pub amount: i64,
    /// Why the last confirmation failed.
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
    /// `metadata[...]`: Keel tags each intent with its order.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct IntentList {
    data: Vec<Intent>,
    #[serde(default)]
    has_more: bool,
}

/// A decline, as Stripe describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentError {
    /// e.g. `card_declined`.
    #[serde(default)]
    pub code: Option<String>,
    /// e.g. `insufficient_funds`.
    #[serde(default)]
    pub decline_code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundObject {
    id: String,
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RefundList {
    data: Vec<RefundObject>,
}

impl RefundList {
    /// What the refunds that did not fail gave back.
    fn refunded(&self) -> i64 {
        self.data
            .iter()
            .filter(|r| r.status.as_deref() != Some("failed"))
            .map(|r| r.amount)
            .sum()
    }
}

/// How a call to the gateway failed.
#[derive(Debug)]
enum Failure {
    /// The gateway answered 4xx with an error object: the request was
    /// refused and did nothing (402: the card was declined).
    Refused {
        status: u16,
        code: String,
        decline_code: Option<String>,
        message: String,
    },
    /// No usable answer (timeout, connection, 5xx, 429, a body that does
    /// not parse): the call may or may not have acted.
    Unknown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused {
                status, code, message, ..
            } => write!(f, "the card gateway refused ({status} {code}): {message}"),
            Failure::Unknown(why) => write!(f, "{why}"),
        }
    }
}

impl CardGateway {
    /// A client of the gateway at `base_url` (e.g. `https://api.stripe.com`)
    /// with `secret_key`; each call gives up after `timeout`.
    pub fn new(base_url: &str, secret_key: SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .context("building the card gateway's HTTP client")?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key,
        })
    }

    /// Sends `request` in a client span of its own, whose W3C trace context
    /// goes with it, so the gateway's side joins the order's trace.
    async fn send<T: for<'de> Deserialize<'de>>(&self, request: reqwest::RequestBuilder) -> Result<T, Failure> {
        let mut request = request
            .bearer_auth(self.secret_key.expose_secret())
            .build()
            .map_err(|err| Failure::Unknown(format!("the card gateway request could not be built: {err}")))?;
        let span = tracing::info_span!(
            "card_gateway",
            otel.kind = "client",
            keel.service = crate::domain::NAME,
            http.request.method = %request.method(),
            url.path = request.url().path(),
            http.response.status_code = tracing::field::Empty,
        );
        keel_platform::serve::telemetry::inject_http_headers(&span, request.headers_mut());
        self.exchange(request).instrument(span).await
    }

    async fn exchange<T: for<'de> Deserialize<'de>>(&self, request: reqwest::Request) -> Result<T, Failure> {
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|err| Failure::Unknown(format!("the card gateway did not answer: {err}")))?;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let body: Value = response.json().await.map_err(|err| {
            Failure::Unknown(format!(
                "the card gateway's answer ({status}) was cut or unreadable: {err}"
            ))
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_value(body)
                .map_err(|err| Failure::Unknown(format!("the card gateway answered an unexpected object: {err}")));
        }
        let error = &body["error"];
        let text = |field: &str| error[field].as_str().map(str::to_owned);
        // A 4xx is a definite "no"; 429 and 5xx say nothing about what happened.
        if (400..500).contains(&status) && status != 429 {
            return Err(Failure::Refused {
                status,
                code: text("code").unwrap_or_default(),
                decline_code: text("decline_code"),
                message: text("message").unwrap_or_default(),
            });
        }
        Err(Failure::Unknown(format!(
            "the card gateway answered {status}: {}",
            text("message").unwrap_or_default()
        )))
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        key: &str,
        form: &[(&str, String)],
    ) -> Result<T, Failure> {
        let request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("Idempotency-Key", key)
            .form(form);
        self.send(request).await
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, Failure> {
        let request = self.http.get(format!("{}{path}", self.base_url)).query(query);
        self.send(request).await
    }

    /// Creates the charge's intent, unconfirmed.
    async fn create_intent(&self, charge: &Charge) -> Result<Intent, Failure> {
        let Some(payment_method) = &charge.payment_method_id else {
            return Err(Failure::Refused {
                status: 400,
                code: "payment_method_missing".into(),
                decline_code: None,
                message: "the order names no payment method".into(),
            });
        };
        let form = [
            ("amount", charge.amount_minor.to_string()),
            ("currency", charge.currency.to_lowercase()),
            ("payment_method", payment_method.clone()),
            ("confirm", "false".to_owned()),
            ("metadata[order_id]", charge.order_id.to_string()),
            (&format!("metadata[{KEY_METADATA}]"), charge.key.clone()),
        ];
        self.post("/v1/payment_intents", &format!("{}:create", charge.key), &form)
            .await
    }

    async fn retrieve(&self, intent_id: &str) -> Result<Intent, Failure> {
        self.get(&format!("/v1/payment_intents/{intent_id}"), &[]).await
    }

    /// Confirms the intent (with the payment method it was created with).
    async fn confirm(&self, charge: &Charge, intent_id: &str) -> ChargeOutcome {
        let path = format!("/v1/payment_intents/{intent_id}/confirm");
        match self
            .post::<Intent>(&path, &format!("{}:confirm", charge.key), &[])
            .await
        {
            Ok(intent) => outcome(&intent),
            Err(Failure::Refused {
                status: 402,
                code,
                decline_code,
                ..
            }) => ChargeOutcome::Declined(Decline::Declined(decline_code.unwrap_or(code))),
            // Confirmed meanwhile (another replica, or an answer lost on the
            // way): the intent says how it ended.
            Err(Failure::Refused { status: 400, .. }) => match self.retrieve(intent_id).await {
                Ok(intent) if intent.status == "requires_confirmation" => {
                    ChargeOutcome::Uncertain("the card gateway refused to confirm the intent".into())
                }
                Ok(intent) => outcome(&intent),
                Err(err) => ChargeOutcome::Uncertain(err.to_string()),
            },
            Err(err) => ChargeOutcome::Uncertain(err.to_string()),
        }
    }

    /// Every succeeded intent, page by page, with what its refunds gave back.
    async fn succeeded_intents(&self) -> Result<Vec<Taken>, Failure> {
        let mut taken = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", "100")];
            if let Some(after) = &after {
                query.push(("starting_after", after));
            }
            let page: IntentList = self.get("/v1/payment_intents", &query).await?;
            for intent in page.data.iter().filter(|i| i.status == "succeeded") {
                let refunds: RefundList = self
                    .get("/v1/refunds", &[("payment_intent", intent.id.as_str())])
                    .await?;
                taken.push(Taken {
                    order_id: intent
                        .metadata
                        .get("order_id")
                        .and_then(|id| uuid::Uuid::parse_str(id).ok()),
                    reference: intent.id.clone(),
                    amount_minor: intent.amount,
                    refunded_minor: refunds.refunded(),
                });
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.clone()),
                _ => return Ok(taken),
            }
        }
    }

    /// Cancels an intent that has not taken money, so it never will.
    async fn cancel(&self, charge: &Charge, intent_id: &str) -> VoidOutcome {
        let path = format!("/v1/payment_intents/{intent_id}/cancel");
        match self.post::<Intent>(&path, &format!("{}:cancel", charge.key), &[]).await {
            Ok(intent) => void_outcome(&intent),
            // It moved on meanwhile: it says where to.
            Err(Failure::Refused { status: 400, .. }) => match self.retrieve(intent_id).await {
                Ok(intent) => void_outcome(&intent),
                Err(err) => VoidOutcome::Uncertain(err.to_string()),
            },
            Err(err) => VoidOutcome::Uncertain(err.to_string()),
        }
    }
}

/// What an intent's status means for the order.
fn outcome(intent: &Intent) -> ChargeOutcome {
    match intent.status.as_str() {
        "succeeded" => ChargeOutcome::Paid {
            reference: intent.id.clone(),
        },
        // 3-D Secure, or a payment method that settles later: the webhook
        // (or the resumer) learns the end.
        "requires_action" | "processing" | "requires_capture" => ChargeOutcome::Pending {
            reference: Some(intent.id.clone()),
        },
        "canceled" => ChargeOutcome::Declined(Decline::Declined("payment_canceled".into())),
        "requires_payment_method" => {
            let why = intent
                .last_payment_error
                .as_ref()
                .and_then(|e| e.decline_code.clone().filter(|d| !d.is_empty()).or(e.code.clone()))
                .unwrap_or_else(|| "payment_failed".into());
            ChargeOutcome::Declined(Decline::Declined(why))
        }
        // requires_confirmation: not attempted yet.
        other => ChargeOutcome::Uncertain(format!("the payment intent is {other}")),
    }
}

/// What an intent's status means for an order being cancelled.
fn void_outcome(intent: &Intent) -> VoidOutcome {
    match intent.status.as_str() {
        "succeeded" => VoidOutcome::Charged {
            reference: intent.id.clone(),
        },
        "canceled" => VoidOutcome::NotCharged,
        other => VoidOutcome::Uncertain(format!("the payment intent is {other}")),
    }
}

#[tonic::async_trait]
impl PaymentProvider for CardGateway {
    fn prepares(&self) -> bool {
        true
    }

    async fn prepare(&self, charge: &Charge) -> Prepared {
        match self.create_intent(charge).await {
            Ok(intent) => Prepared::Ready(Some(intent.id)),
            // The buyer's payment method was refused at creation: nothing
            // was created, nothing can be taken. (401, 403 and 404 are Keel's
            // own set-up, fixed by an operator, not the buyer's decline.)
            Err(Failure::Refused { status, code, .. }) if !matches!(status, 401 | 403 | 404) => {
                Prepared::Declined(Decline::Declined(code))
            }
            Err(err) => Prepared::Uncertain(err.to_string()),
        }
    }

    async fn charge(&self, charge: &Charge) -> ChargeOutcome {
        let Some(id) = &charge.reference else {
            return ChargeOutcome::Uncertain("no payment intent is stored for the order yet".into());
        };
        // Any failure to read the stored intent, 4xx included, says nothing
        // about how it ends.
        match self.retrieve(id).await {
            Ok(intent) if intent.status == "requires_confirmation" => self.confirm(charge, &intent.id).await,
            Ok(intent) => outcome(&intent),
            Err(err) => ChargeOutcome::Uncertain(err.to_string()),
        }
    }

    /// The order was cancelled while its payment was unsettled: an intent
    /// that has not taken money is cancelled, so it never will.
    async fn void(&self, charge: &Charge) -> VoidOutcome {
        let Some(id) = &charge.reference else {
            // Only a stored intent is ever confirmed.
            return VoidOutcome::NotCharged;
        };
        match self.retrieve(id).await {
            Ok(intent)
                if matches!(
                    intent.status.as_str(),
                    "requires_confirmation" | "requires_action" | "requires_payment_method"
                ) =>
            {
                self.cancel(charge, id).await
            }
            Ok(intent) => void_outcome(&intent),
            Err(err) => VoidOutcome::Uncertain(err.to_string()),
        }
    }

    async fn charges(&self) -> Result<Option<Vec<Taken>>, String> {
        self.succeeded_intents().await.map(Some).map_err(|err| err.to_string())
    }

    async fn refund(&self, refund: &Refund) -> RefundOutcome {
        let intent = refund.charge_reference.as_str();
        // The refund this key already made, if an answer was lost.
        match self
            .get::<RefundList>("/v1/refunds", &[("payment_intent", intent)])
            .await
        {
            Ok(list) => {
                if let Some(done) = list
                    .data
                    .iter()
                    .find(|r| r.metadata.get(KEY_METADATA) == Some(&refund.key))
                {
                    return RefundOutcome::Refunded {
                        reference: done.id.clone(),
                    };
                }
                let refunded = list.refunded();
                if refunded > 0 {
                    // Someone refunded this charge outside Keel: never add to it.
                    tracing::error!(
                        intent,
                        refunded,
                        "the charge has refunds Keel did not make; not refunding again"
                    );
                    return RefundOutcome::Refused(format!("{intent} already has {refunded} refunded outside Keel"));
                }
            }
            Err(err) => return RefundOutcome::Uncertain(err.to_string()),
        }
        let form = [
            ("payment_intent", intent.to_owned()),
            ("amount", refund.amount_minor.to_string()),
            (&format!("metadata[{KEY_METADATA}]"), refund.key.clone()),
            ("metadata[order_id]", refund.order_id.to_string()),
        ];
        match self.post::<RefundObject>("/v1/refunds", &refund.key, &form).await {
            Ok(made) => RefundOutcome::Refunded { reference: made.id },
            Err(err @ Failure::Refused { status, .. }) if !matches!(status, 401 | 403 | 404) => {
                RefundOutcome::Refused(err.to_string())
            }
            Err(err) => RefundOutcome::Uncertain(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(status: &str, decline: Option<&str>) -> Intent {
        Intent {
            id: "pi_1".into(),
            status: status.into(),
            amount: 100,
            metadata: Default::default(),
            last_payment_error: decline.map(|d| PaymentError {
                code: Some("card_declined".into()),
                decline_code: Some(d.into()),
            }),
        }
    }

    #[test]
    fn an_intent_s_status_decides_the_order_s_fate() {
        assert_eq!(
            outcome(&intent("succeeded", None)),
            ChargeOutcome::Paid {
                reference: "pi_1".into()
            }
        );
        assert!(matches!(
            outcome(&intent("requires_action", None)),
            ChargeOutcome::Pending { .. }
        ));
        assert_eq!(
            outcome(&intent("requires_payment_method", Some("insufficient_funds"))),
            ChargeOutcome::Declined(Decline::Declined("insufficient_funds".into()))
        );
        assert!(matches!(outcome(&intent("canceled", None)), ChargeOutcome::Declined(_)));
        assert!(matches!(
            outcome(&intent("requires_confirmation", None)),
            ChargeOutcome::Uncertain(_)
        ));
    }
}
