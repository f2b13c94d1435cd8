//! A stand-in for an external card gateway that speaks the part of Stripe's
//! HTTP API Keel uses, over real HTTP on port 0: PaymentIntents (create,
//! confirm, retrieve), Refunds (create, list), form-encoded bodies, a secret
//! key as bearer, `Idempotency-Key` honoured as Stripe honours it (or ignored,
//! as localstripe does), and signed webhooks (`Stripe-Signature`).
//!
//! Stripe's test payment methods decide how a confirmation ends:
//! `pm_card_visa` succeeds; `pm_card_chargeCustomerFail` and
//! `pm_card_visa_chargeDeclined` are declined (402 `card_declined`);
//! `pm_card_chargeDeclinedInsufficientFunds` is declined for insufficient
//! funds; `pm_card_threeDSecure2Required` needs 3-D Secure and stays
//! `requires_action` until [`CardGateway::authenticate`] (or
//! `POST /v1/payment_intents/{id}/_authenticate`, as localstripe has it).
//!
//! Faults are scripted per endpoint with [`CardGateway::fail_next`]: answer
//! 500 without acting, hang without acting (the caller times out), or act and
//! then hang (the caller never learns that the money moved).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

/// The secret key the stand-in accepts.
pub const SECRET_KEY: &str = "sk_test_keel_stand_in";

/// An endpoint a fault can be scripted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/payment_intents`
    CreateIntent,
    /// `POST /v1/payment_intents/{id}/confirm`
    ConfirmIntent,
    /// `POST /v1/payment_intents/{id}/cancel`
    CancelIntent,
    /// `GET /v1/payment_intents/{id}`
    RetrieveIntent,
    /// `GET /v1/payment_intents`
    ListIntents,
    /// `POST /v1/refunds`
    CreateRefund,
    /// `GET /v1/refunds`
    ListRefunds,
}

/// What goes wrong with the next call to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 with an `api_error`, having done nothing.
    ServerError,
    /// No answer, having done nothing: the caller times out.
    Hang,
    /// Does the work, then never answers: the caller times out not knowing
    /// that the money moved.
    LoseResponse,
}

/// A PaymentIntent as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct Intent {
    /// `pi_...`
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Lower-case ISO 4217, as Stripe writes it.
    pub currency: String,
    /// Stripe's status: `requires_payment_method`, `requires_confirmation`,
    /// `requires_action`, `succeeded`, `canceled`.
    pub status: String,
    /// The payment method attached.
    pub payment_method: Option<String>,
    /// `metadata[...]` as given.
    pub metadata: BTreeMap<String, String>,
    /// The decline of the last confirmation, if it was declined.
    pub last_error: Option<(String, String)>,
}

/// A refund as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct StoredRefund {
    /// `re_...`
    pub id: String,
    /// The intent refunded.
    pub payment_intent: String,
    /// Minor units.
    pub amount: i64,
    /// `metadata[...]` as given.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Ledger {
    intents: BTreeMap<String, Intent>,
    refunds: Vec<StoredRefund>,
    /// Successful charges (confirmations or authentications that took money).
    charges: Vec<String>,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    /// Idempotency-Key -> (the request it came with, the answer given).
    idempotent: HashMap<String, (String, u16, Value)>,
    honour_keys: bool,
    webhook: Option<(String, String)>,
    /// Every request: method, path, Idempotency-Key.
    requests: Vec<(String, String, Option<String>)>,
    /// Every request's `traceparent`, in the same order.
    traceparents: Vec<Option<String>>,
    /// Events caused by the call in progress, sent once it is done.
    pending_events: Vec<Value>,
    next_id: u64,
}

/// A running stand-in; dropping it stops it.
#[derive(Debug, Clone)]
pub struct CardGateway {
    addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    http: reqwest::Client,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for CardGateway {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl CardGateway {
    /// Starts the stand-in on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let ledger = Arc::new(Mutex::new(Ledger {
            honour_keys: true,
            ..Ledger::default()
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the webhook client")?;
        let state = Stand {
            ledger: ledger.clone(),
            http: http.clone(),
        };
        let app = Router::new()
            .route("/v1/payment_intents", post(create_intent).get(list_intents))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/payment_intents/{id}/confirm", post(confirm_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/payment_intents/{id}/_authenticate", post(authenticate_intent))
            .route("/v1/refunds", post(create_refund).get(list_refunds))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "the card gateway stand-in stopped");
            }
        });
        Ok(Self {
            addr,
            ledger,
            http,
            task: Arc::new(task),
        })
    }

    /// A succeeded intent for `order_id` that Keel never made (someone
    /// charged the buyer outside Keel, or a bug did): what reconciliation
    /// must find. Returns its id.
    pub fn plant_charge(&self, order_id: &str, amount: i64, currency: &str) -> String {
        let mut ledger = self.ledger();
        let id = new_id(&mut ledger, "pi");
        let intent = Intent {
            id: id.clone(),
            amount,
            currency: currency.to_lowercase(),
            status: "succeeded".into(),
            payment_method: Some("pm_card_visa".into()),
            metadata: BTreeMap::from([("order_id".to_owned(), order_id.to_owned())]),
            last_error: None,
        };
        ledger.intents.insert(id.clone(), intent);
        ledger.charges.push(id.clone());
        id
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Makes the next call to `endpoint` fail with `fault` (faults queue up).
    pub fn fail_next(&self, endpoint: Endpoint, fault: Fault) {
        self.ledger().faults.entry(endpoint).or_default().push_back(fault);
    }

    /// Ignores `Idempotency-Key`, as localstripe does: every POST acts anew.
    pub fn ignore_idempotency_keys(&self) {
        self.ledger().honour_keys = false;
    }

    /// Sends signed `payment_intent.*` events to `url` from now on.
    pub fn send_webhooks_to(&self, url: &str, secret: &str) {
        self.ledger().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    /// The intents created, oldest first.
    pub fn intents(&self) -> Vec<Intent> {
        self.ledger().intents.values().cloned().collect()
    }

    /// The ids of the intents whose money was taken, once per charge.
    pub fn charges(&self) -> Vec<String> {
        self.ledger().charges.clone()
    }

    /// The refunds made.
    pub fn refunds(&self) -> Vec<StoredRefund> {
        self.ledger().refunds.clone()
    }

    /// Every request received: method, path and Idempotency-Key.
    pub fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.ledger().requests.clone()
    }

    /// Every request's W3C `traceparent`, in the order of [`Self::requests`].
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.ledger().traceparents.clone()
    }

    /// Finishes 3-D Secure for an intent in `requires_action`: succeeded (the
    /// money is taken) or failed; sends the webhook.
    pub async fn authenticate(&self, intent_id: &str, success: bool) -> anyhow::Result<()> {
        let events = {
            let mut ledger = self.ledger();
            finish_authentication(&mut ledger, intent_id, success).map_err(|(_, body)| anyhow::anyhow!("{body}"))?;
            std::mem::take(&mut ledger.pending_events)
        };
        for event in events {
            send_event(&self.ledger, &self.http, event).await?;
        }
        Ok(())
    }

    /// Sends a signed event about `intent_id` of `event_type` (again), as
    /// Stripe does when it retries; returns the receiver's HTTP status.
    pub async fn send_event(&self, event_id: &str, event_type: &str, intent_id: &str) -> anyhow::Result<u16> {
        let intent = self
            .ledger()
            .intents
            .get(intent_id)
            .cloned()
            .context("no such intent")?;
        let event = json!({
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": chrono_now(),
            "data": { "object": intent_json(&intent) },
        });
        let (url, secret) = self.ledger().webhook.clone().context("no webhook endpoint set")?;
        post_signed(&self.http, &url, &secret, &event.to_string()).await
    }
}

/// `Stripe-Signature` for `payload` at `timestamp`: `t=<ts>,v1=<hex HMAC-SHA256
/// of "<ts>.<payload>">`.
pub fn stripe_signature(secret: &str, timestamp: i64, payload: &str) -> anyhow::Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).context("an HMAC key")?;
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("t={timestamp},v1={hex}"))
}

async fn post_signed(http: &reqwest::Client, url: &str, secret: &str, payload: &str) -> anyhow::Result<u16> {
    let signature = stripe_signature(secret, chrono_now(), payload)?;
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(payload.to_owned())
        .send()
        .await
        .with_context(|| format!("posting a webhook to {url}"))?;
    Ok(response.status().as_u16())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone)]
struct Stand {
    ledger: Arc<Mutex<Ledger>>,
    http: reqwest::Client,
}

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, kind: &str, code: &str, message: &str) -> Answer {
    (
        status,
        json!({ "error": { "type": kind, "code": code, "message": message } }),
    )
}

fn no_such_intent() -> Answer {
    error(
        404,
        "invalid_request_error",
        "resource_missing",
        "No such payment_intent",
    )
}

fn unexpected_state(message: &str) -> Answer {
    error(400, "invalid_request_error", "payment_intent_unexpected_state", message)
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn metadata(form: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    form.iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), value.clone()))
        })
        .collect()
}

fn intent_json(intent: &Intent) -> Value {
    let last_error = intent.last_error.as_ref().map(|(code, decline)| {
        json!({ "type": "card_error", "code": code, "decline_code": decline, "message": "Your card was declined." })
    });
    let next_action = (intent.status == "requires_action").then(|| json!({ "type": "use_stripe_sdk" }));
    json!({
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "currency": intent.currency,
        "status": intent.status,
        "payment_method": intent.payment_method,
        "metadata": intent.metadata,
        "last_payment_error": last_error,
        "next_action": next_action,
    })
}

fn refund_json(refund: &StoredRefund) -> Value {
    json!({
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "payment_intent": refund.payment_intent,
        "status": "succeeded",
        "metadata": refund.metadata,
    })
}

/// What a call does once the ledger has been consulted.
enum Step {
    Refuse(Answer),
    Hang,
    Answer(Answer, Vec<Value>, Option<Fault>),
}

/// Runs one API call: the bearer check, the scripted fault, the idempotency
/// record, the work, then the events it caused.
async fn handle(
    stand: &Stand,
    endpoint: Endpoint,
    method: Method,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    work: impl FnOnce(&mut Ledger) -> Result<Answer, Answer>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SECRET_KEY}"));
    // The ledger's lock is held only here, never across an await.
    let step = {
        let mut ledger = lock(&stand.ledger);
        ledger.requests.push((method.to_string(), path.clone(), key.clone()));
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        ledger.traceparents.push(traceparent.map(str::to_owned));
        let fault = ledger.faults.get_mut(&endpoint).and_then(VecDeque::pop_front);
        if !authorized {
            Step::Refuse(error(401, "invalid_request_error", "", "Invalid API Key provided"))
        } else if fault == Some(Fault::ServerError) {
            Step::Refuse(error(500, "api_error", "", "An unexpected error occurred"))
        } else if fault == Some(Fault::Hang) {
            Step::Hang
        } else {
            let fingerprint = format!("{method} {path} {}", String::from_utf8_lossy(body));
            let keyed = key.as_ref().filter(|_| ledger.honour_keys && method == Method::POST);
            match keyed.and_then(|key| ledger.idempotent.get(key).cloned()) {
                Some((first, status, body)) if first == fingerprint => Step::Answer((status, body), Vec::new(), fault),
                Some(_) => Step::Refuse(error(
                    400,
                    "idempotency_error",
                    "idempotency_key_in_use",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                )),
                None => {
                    let answer = work(&mut ledger).unwrap_or_else(|refused| refused);
                    let events = std::mem::take(&mut ledger.pending_events);
                    if let Some(key) = keyed.cloned() {
                        ledger.idempotent.insert(key, (fingerprint, answer.0, answer.1.clone()));
                    }
                    Step::Answer(answer, events, fault)
                }
            }
        }
    };
    let (answer, events, fault) = match step {
        Step::Refuse((status, body)) => return respond(status, &body),
        Step::Hang => std::future::pending().await,
        Step::Answer(answer, events, fault) => (answer, events, fault),
    };
    for event in events {
        if let Err(err) = send_event(&stand.ledger, &stand.http, event).await {
            tracing::warn!(error = format!("{err:#}"), "the stand-in could not deliver a webhook");
        }
    }
    if fault == Some(Fault::LoseResponse) {
        std::future::pending::<()>().await;
    }
    respond(answer.0, &answer.1)
}

fn respond(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn send_event(ledger: &Mutex<Ledger>, http: &reqwest::Client, event: Value) -> anyhow::Result<()> {
    let Some((url, secret)) = lock(ledger).webhook.clone() else {
        return Ok(());
    };
    post_signed(http, &url, &secret, &event.to_string()).await.map(drop)
}

fn new_id(ledger: &mut Ledger, prefix: &str) -> String {
    ledger.next_id += 1;
    format!("{prefix}_{:016}", ledger.next_id)
}

/// Queues a `payment_intent.*` event, sent when the call is done.
fn emit(ledger: &mut Ledger, event_type: &str, intent: &Intent) {
    let event = json!({
        "id": new_id(ledger, "evt"),
        "object": "event",
        "type": event_type,
        "created": chrono_now(),
        "data": { "object": intent_json(intent) },
    });
    ledger.pending_events.push(event);
}

async fn create_intent(State(stand): State<Stand>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    handle(
        &stand,
        Endpoint::CreateIntent,
        Method::POST,
        "/v1/payment_intents".into(),
        &headers,
        &body,
        |ledger| {
            let amount = form
                .get("amount")
                .and_then(|a| a.parse::<i64>().ok())
                .filter(|a| *a > 0)
                .ok_or_else(|| {
                    error(
                        400,
                        "invalid_request_error",
                        "parameter_invalid_integer",
                        "Invalid amount",
                    )
                })?;
            let currency = form
                .get("currency")
                .filter(|c| c.len() == 3)
                .ok_or_else(|| error(400, "invalid_request_error", "parameter_missing", "Missing currency"))?;
            let payment_method = form.get("payment_method").cloned();
            let mut intent = Intent {
                id: new_id(ledger, "pi"),
                amount,
                currency: currency.to_lowercase(),
                status: match payment_method {
                    Some(_) => "requires_confirmation".into(),
                    None => "requires_payment_method".into(),
                },
                payment_method,
                metadata: metadata(&form),
                last_error: None,
            };
            if form.get("confirm").is_some_and(|c| c == "true") {
                let confirmed = confirm(ledger, &mut intent);
                ledger.intents.insert(intent.id.clone(), intent.clone());
                confirmed?;
            }
            let answer = intent_json(&intent);
            ledger.intents.insert(intent.id.clone(), intent);
            Ok((200, answer))
        },
    )
    .await
}

/// Confirms `intent` with its payment method, as Stripe's test cards behave.
fn confirm(ledger: &mut Ledger, intent: &mut Intent) -> Result<(), Answer> {
    let decline = |ledger: &mut Ledger, intent: &mut Intent, decline_code: &str| {
        intent.status = "requires_payment_method".into();
        intent.last_error = Some(("card_declined".into(), decline_code.into()));
        // Stripe sends the event although the call answers 402.
        emit(ledger, "payment_intent.payment_failed", intent);
        (
            402,
            json!({ "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "message": "Your card was declined.",
                "payment_intent": intent_json(intent),
            }}),
        )
    };
    match intent.payment_method.as_deref() {
        Some("pm_card_visa") => {
            intent.status = "succeeded".into();
            intent.last_error = None;
            ledger.charges.push(intent.id.clone());
            emit(ledger, "payment_intent.succeeded", intent);
            Ok(())
        }
        Some("pm_card_threeDSecure2Required") => {
            intent.status = "requires_action".into();
            Ok(())
        }
        Some("pm_card_chargeCustomerFail" | "pm_card_visa_chargeDeclined") => {
            Err(decline(ledger, intent, "generic_decline"))
        }
        Some("pm_card_chargeDeclinedInsufficientFunds") => Err(decline(ledger, intent, "insufficient_funds")),
        Some(other) => Err(error(
            400,
            "invalid_request_error",
            "resource_missing",
            &format!("No such PaymentMethod: '{other}'"),
        )),
        None => Err(unexpected_state(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
        )),
    }
}

async fn confirm_intent(
    State(stand): State<Stand>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form(&body);
    let path = format!("/v1/payment_intents/{id}/confirm");
    handle(
        &stand,
        Endpoint::ConfirmIntent,
        Method::POST,
        path,
        &headers,
        &body,
        |ledger| {
            let mut intent = ledger.intents.get(&id).cloned().ok_or_else(no_such_intent)?;
            if !matches!(
                intent.status.as_str(),
                "requires_confirmation" | "requires_payment_method"
            ) {
                return Err(unexpected_state(&format!(
                    "This PaymentIntent's status is {}.",
                    intent.status
                )));
            }
            if let Some(method) = form.get("payment_method") {
                intent.payment_method = Some(method.clone());
            }
            let confirmed = confirm(ledger, &mut intent);
            let answer = intent_json(&intent);
            ledger.intents.insert(intent.id.clone(), intent);
            confirmed.map(|()| (200, answer))
        },
    )
    .await
}

async fn cancel_intent(
    State(stand): State<Stand>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/cancel");
    handle(
        &stand,
        Endpoint::CancelIntent,
        Method::POST,
        path,
        &headers,
        &body,
        |ledger| {
            let intent = ledger.intents.get_mut(&id).ok_or_else(no_such_intent)?;
            if !matches!(
                intent.status.as_str(),
                "requires_payment_method" | "requires_confirmation" | "requires_action"
            ) {
                return Err(unexpected_state(&format!(
                    "You cannot cancel this PaymentIntent because it has a status of {}.",
                    intent.status
                )));
            }
            intent.status = "canceled".into();
            Ok((200, intent_json(intent)))
        },
    )
    .await
}

fn finish_authentication(ledger: &mut Ledger, id: &str, success: bool) -> Result<Value, Answer> {
    let mut intent = ledger.intents.get(id).cloned().ok_or_else(no_such_intent)?;
    if intent.status != "requires_action" {
        return Err(unexpected_state("This PaymentIntent does not need authentication."));
    }
    if success {
        intent.status = "succeeded".into();
        ledger.charges.push(intent.id.clone());
        emit(ledger, "payment_intent.succeeded", &intent);
    } else {
        intent.status = "requires_payment_method".into();
        intent.last_error = Some(("payment_intent_authentication_failure".into(), String::new()));
        emit(ledger, "payment_intent.payment_failed", &intent);
    }
    let answer = intent_json(&intent);
    ledger.intents.insert(intent.id.clone(), intent);
    Ok(answer)
}

async fn authenticate_intent(
    State(stand): State<Stand>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut form = form(&body);
    form.extend(form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned());
    let success = form.get("success").is_some_and(|s| s == "true");
    let (finished, events) = {
        let mut ledger = lock(&stand.ledger);
        let finished = finish_authentication(&mut ledger, &id, success);
        (finished, std::mem::take(&mut ledger.pending_events))
    };
    for event in events {
        if let Err(err) = send_event(&stand.ledger, &stand.http, event).await {
            tracing::warn!(error = format!("{err:#}"), "the stand-in could not deliver a webhook");
        }
    }
    match finished {
        Ok(answer) => respond(200, &answer),
        Err((status, body)) => respond(status, &body),
    }
}

async fn retrieve_intent(State(stand): State<Stand>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("/v1/payment_intents/{id}");
    handle(
        &stand,
        Endpoint::RetrieveIntent,
        Method::GET,
        path,
        &headers,
        &[],
        |ledger| {
            let intent = ledger.intents.get(&id).ok_or_else(no_such_intent)?;
            Ok((200, intent_json(intent)))
        },
    )
    .await
}

async fn create_refund(State(stand): State<Stand>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    handle(
        &stand,
        Endpoint::CreateRefund,
        Method::POST,
        "/v1/refunds".into(),
        &headers,
        &body,
        |ledger| {
            let intent_id = form.get("payment_intent").ok_or_else(|| {
                error(
                    400,
                    "invalid_request_error",
                    "parameter_missing",
                    "Missing payment_intent",
                )
            })?;
            let intent = ledger.intents.get(intent_id).cloned().ok_or_else(no_such_intent)?;
            if intent.status != "succeeded" {
                return Err(error(
                    400,
                    "invalid_request_error",
                    "charge_not_refundable",
                    "This PaymentIntent has no successful charge to refund.",
                ));
            }
            let refunded: i64 = ledger
                .refunds
                .iter()
                .filter(|r| r.payment_intent == intent.id)
                .map(|r| r.amount)
                .sum();
            let amount = match form.get("amount") {
                Some(amount) => amount.parse::<i64>().map_err(|_| {
                    error(
                        400,
                        "invalid_request_error",
                        "parameter_invalid_integer",
                        "Invalid amount",
                    )
                })?,
                None => intent.amount - refunded,
            };
            // Stripe refuses to refund more than was charged (localstripe
            // does not: Keel must not rely on this).
            if amount <= 0 || refunded + amount > intent.amount {
                return Err(error(
                    400,
                    "invalid_request_error",
                    "charge_already_refunded",
                    "The charge has already been refunded.",
                ));
            }
            let refund = StoredRefund {
                id: new_id(ledger, "re"),
                payment_intent: intent.id,
                amount,
                metadata: metadata(&form),
            };
            let answer = refund_json(&refund);
            ledger.refunds.push(refund);
            Ok((200, answer))
        },
    )
    .await
}

/// Lists intents in id order, Stripe's way: `limit` (default 10, at most
/// 100) after `starting_after`, with `has_more`.
async fn list_intents(State(stand): State<Stand>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let query = query.unwrap_or_default();
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    handle(
        &stand,
        Endpoint::ListIntents,
        Method::GET,
        "/v1/payment_intents".into(),
        &headers,
        &[],
        |ledger| {
            let after = params.get("starting_after");
            let mut rest = ledger
                .intents
                .values()
                .filter(|intent| after.is_none_or(|after| intent.id > *after));
            let data: Vec<Value> = rest.by_ref().take(limit).map(intent_json).collect();
            let has_more = rest.next().is_some();
            Ok((200, json!({ "object": "list", "data": data, "has_more": has_more })))
        },
    )
    .await
}

async fn list_refunds(State(stand): State<Stand>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let query = query.unwrap_or_default();
    let filter: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    handle(
        &stand,
        Endpoint::ListRefunds,
        Method::GET,
        "/v1/refunds".into(),
        &headers,
        &[],
        |ledger| {
            let data: Vec<Value> = ledger
                .refunds
                .iter()
                .filter(|r| filter.get("payment_intent").is_none_or(|pi| *pi == r.payment_intent))
                .map(refund_json)
                .collect();
            Ok((200, json!({ "object": "list", "data": data, "has_more": false })))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_stripe_s() -> anyhow::Result<()> {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently.
        let signature = stripe_signature("whsec_test", 1_700_000_000, "{}")?;
        assert!(signature.starts_with("t=1700000000,v1="));
        assert_eq!(signature.len(), "t=1700000000,v1=".len() + 64);
        Ok(())
    }
}
