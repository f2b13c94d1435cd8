//! The HTTP side: the router, the one handler every API route goes through,
//! and the operational endpoints.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::request::Parts,
    response::{IntoResponse as _, Response},
    routing::get,
};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::upgrade::OnUpgrade;
use keel_platform::{
    auth::lifetime::{Verified, until_lapsed},
    auth::verifier::bearer_token,
    serve::audit,
    serve::client_address::{FORWARDED_FOR, client_address},
    serve::telemetry::{RequestSpan, current_trace_context},
};
use tonic::{
    Code,
    metadata::{MetadataMap, MetadataValue},
};
use tower::ServiceBuilder;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    Gateway,
    bind::{Input, bind},
    connections::ConnectionSlot,
    edge::ClientKey,
    error::ApiError,
    metrics::{HttpMetrics, RouteTemplate},
    provider_sign_in, respond,
    resume::LAST_EVENT_ID,
    routes::Resolved,
    streams,
    websocket::{self, Handshake},
};

/// Headers passed on to the services as they arrived (`stripe-signature`:
/// the card gateway's webhook signs its raw body).
const FORWARDED: [&str; 3] = ["x-request-id", "user-agent", "stripe-signature"];

/// The W3C trace context headers: the gateway's own span's context goes on,
/// or the caller's as it came when the gateway has none.
const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// The gateway's HTTP router.
pub fn router(gateway: Arc<Gateway>, cors_origins: &[String], metrics: HttpMetrics) -> anyhow::Result<Router> {
    let layers = ServiceBuilder::new()
        .map_request(keel_platform::serve::telemetry::drop_unfit_request_id::<Body>)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(RequestSpan::new("gateway")))
        .layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track))
        .option_layer(cors(cors_origins)?);
    let mut routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi));
    if gateway.docs {
        routes = routes.merge(
            crate::docs::routes().route_layer(axum::middleware::from_fn_with_state(gateway.clone(), limit_address)),
        );
    }
    Ok(routes.fallback(transcode).with_state(gateway).layer(layers))
}

fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<&str> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin).with_context(|| format!("CORS origin {origin:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
                // A fetch-based event stream resumes with it.
                HeaderName::from_static(crate::resume::LAST_EVENT_ID),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    ))
}

/// The process is up.
async fn healthz() -> Response {
    json_status(StatusCode::OK, serde_json::json!({ "status": "SERVING" }))
}

/// Every upstream reports SERVING (and the gateway is not stopping).
async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let upstreams = gateway.upstreams.health(Duration::from_secs(2)).await;
    let ready = gateway.ready.load(Ordering::SeqCst) && upstreams.values().all(|serving| *serving);
    let body = serde_json::json!({
        "status": if ready { "SERVING" } else { "NOT_SERVING" },
        "upstreams": upstreams
            .iter()
            .map(|(area, serving)| (area.clone(), serde_json::Value::from(if *serving { "SERVING" } else { "NOT_SERVING" })))
            .collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_status(status, body)
}

async fn openapi(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut response = Response::new(Body::from(gateway.openapi.clone()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Middleware for the API reference's files: they count against the
/// client's address, as requests for unknown routes do.
async fn limit_address(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let client = client_of(&gateway, peer, request.headers());
    match check_address(&gateway, client) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(&gateway.descriptors),
    }
}

/// The client a request is from (the peer, or whom a trusted proxy names),
/// recorded on the request's span.
fn client_of(gateway: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let forwarded = headers.get_all(FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    let client = client_address(peer.ip(), forwarded, &gateway.trusted_proxies);
    audit::record_peer(peer);
    audit::record_client(client);
    client
}

/// The rate limit of a request that counts against the client's address.
fn check_address(gateway: &Gateway, client: IpAddr) -> Result<(), ApiError> {
    let Some(limiter) = &gateway.limiter else {
        return Ok(());
    };
    let key = ClientKey::of(None, client);
    limiter.check(&key).map_err(|wait| {
        audit::rate_limited(&key);
        ApiError::rate_limited(wait)
    })
}

fn json_status(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Every API request: resolve, authenticate, rate-limit, bind, forward,
/// answer.
async fn transcode(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = client_of(&gateway, peer, &parts.headers);
    let resolved = gateway.routes.resolve(parts.method.as_str(), parts.uri.path());
    let template = match &resolved {
        Resolved::Route(route, _) => Some(RouteTemplate(route.openapi_path.clone())),
        _ => None,
    };
    let mut response = match serve(&gateway, client, resolved, parts, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(&gateway.descriptors),
    };
    if let Some(template) = template {
        response.extensions_mut().insert(template);
    }
    // API answers are one caller's: tokens (Login, Refresh), balances,
    // profiles. No shared or browser cache may keep them (RFC 6749 5.1).
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn serve(
    gateway: &Gateway,
    client: IpAddr,
    resolved: Resolved<'_>,
    mut parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(step) = provider_sign_in::Step::of(&parts.method, parts.uri.path()) {
        return sign_in_with_provider(gateway, client, step, parts, body).await;
    }
    if !matches!(resolved, Resolved::Route(..)) {
        // Probing for routes counts against the client's address too.
        check_address(gateway, client)?;
    }
    let (route, bindings) = match resolved {
        Resolved::Route(route, bindings) => (route, bindings),
        Resolved::NotFound => {
            return Err(ApiError::new(
                Code::NotFound,
                format!("no route for {} {}", parts.method, parts.uri.path()),
            ));
        }
        Resolved::MethodNotAllowed(allowed) => {
            let allow = HeaderValue::from_str(&allowed.join(", ")).unwrap_or(HeaderValue::from_static(""));
            return Err(ApiError::new(
                Code::Unimplemented,
                format!("{} does not accept {}", parts.uri.path(), parts.method),
            )
            .with_http_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_header(header::ALLOW, allow));
        }
    };

    let handshake = Handshake::read(&parts.headers)?;
    let upgrade = match &handshake {
        None => None,
        Some(_) if !(route.is_streaming() && route.method == "GET") => {
            return Err(ApiError::bad_request(format!(
                "{} {} does not upgrade to WebSocket: only streaming GET routes do",
                parts.method,
                parts.uri.path()
            )));
        }
        Some(_) => Some(
            parts
                .extensions
                .remove::<OnUpgrade>()
                .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?,
        ),
    };
    // A browser's WebSocket cannot set authorization; its token comes as a
    // subprotocol, and from here on counts as if it had come as the header.
    if let Some(token) = handshake.as_ref().and_then(Handshake::bearer)
        && !parts.headers.contains_key(header::AUTHORIZATION)
    {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::invalid_token(tonic::Status::unauthenticated("the token is not a header value")))?;
        parts.headers.insert(header::AUTHORIZATION, value);
    }

    let token = if route.anonymous {
        None
    } else {
        Some(authenticate(gateway, &parts.headers).await)
    };
    let key = ClientKey::of(
        token.as_ref().and_then(|t| t.as_ref().ok()).map(Verified::principal),
        client,
    );
    if let Some(limiter) = &gateway.limiter {
        limiter.check(&key).map_err(|wait| {
            audit::rate_limited(&key);
            ApiError::rate_limited(wait)
        })?;
    }
    let token = token.transpose()?;
    // Taken before the upstream call, so a client at its cap costs nothing
    // further.
    let stream_place = if route.is_streaming() {
        Some(gateway.streams.open(key, &route.openapi_path)?)
    } else {
        None
    };

    let body = read_body(gateway, &parts.headers, body).await?;
    let input = Input {
        bindings,
        query: parts.uri.query(),
        content_type: parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        body: &body,
    };
    let mut message = bind(route, input)?;
    if let Some(resume) = &route.resume
        && let Some(last_id) = last_event_id(&parts.headers)?
    {
        resume.resume(&mut message, last_id);
    }
    let metadata = metadata(&parts.headers, !route.anonymous, client);

    if let Some(place) = stream_place {
        let replies = gateway
            .upstreams
            .server_streaming(route, message, metadata, gateway.upstream_timeout)
            .await?;
        // The stream ends with its token (expired or revoked), and gives its
        // place back when it ends.
        let replies = match token {
            Some(token) => until_lapsed(replies, token).boxed(),
            None => replies.boxed(),
        };
        let replies = streams::holding(replies, place);
        if let (Some(handshake), Some(upgrade)) = (handshake, upgrade) {
            let session = websocket::Session {
                route: route.clone(),
                descriptors: gateway.descriptors.clone(),
                stop: gateway.stopping.clone(),
                slot: parts.extensions.remove::<ConnectionSlot>(),
                max_message_bytes: gateway.max_body_bytes,
                send_timeout: gateway.send_timeout,
            };
            return Ok(websocket::accept(handshake, upgrade, session, replies));
        }
        return Ok(respond::event_stream(
            route.clone(),
            gateway.descriptors.clone(),
            replies,
            gateway.stopping.clone(),
        ));
    }
    let reply = gateway
        .upstreams
        .unary(route, message, metadata, gateway.upstream_timeout)
        .await?;
    Ok(respond::json(route, &reply)?)
}

/// A provider sign-in route: rate-limited and (for linking) authenticated
/// like any other, then redirects and cookies (see [`provider_sign_in`]).
async fn sign_in_with_provider(
    gateway: &Gateway,
    client: IpAddr,
    step: provider_sign_in::Step,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let token = if step.needs_token() {
        Some(authenticate(gateway, &parts.headers).await)
    } else {
        None
    };
    if let Some(limiter) = &gateway.limiter {
        let key = ClientKey::of(
            token.as_ref().and_then(|t| t.as_ref().ok()).map(Verified::principal),
            client,
        );
        limiter.check(&key).map_err(|wait| {
            audit::rate_limited(&key);
            ApiError::rate_limited(wait)
        })?;
    }
    token.transpose()?;
    let body = read_body(gateway, &parts.headers, body).await?;
    let metadata = provider_sign_in::metadata(&parts.headers, client, step.needs_token());
    provider_sign_in::serve(gateway, step, &parts, body, metadata).await
}

/// The `Last-Event-ID` a reconnecting EventSource sends; an empty one
/// means none (the SSE spec's reset).
fn last_event_id(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(LAST_EVENT_ID) {
        None => Ok(None),
        Some(value) => {
            let id = value
                .to_str()
                .map_err(|_| ApiError::bad_field(LAST_EVENT_ID, "must be visible ASCII"))?;
            Ok(Some(id).filter(|id| !id.is_empty()))
        }
    }
}

/// The request's bearer token, verified; 401 when it is missing or does
/// not verify.
async fn authenticate(gateway: &Gateway, headers: &HeaderMap) -> Result<Verified, ApiError> {
    // A token that does not verify is 401; keys that cannot be fetched
    // (auth down) stay 503, so clients retry instead of signing in again.
    let refused = |err: keel_platform::Error| {
        let status = tonic::Status::from(err);
        audit::refused(&status);
        if status.code() == Code::Unauthenticated {
            ApiError::invalid_token(status)
        } else {
            ApiError::from(status)
        }
    };
    let token = bearer_token(headers).map_err(refused)?.ok_or_else(|| {
        ApiError::new(
            Code::Unauthenticated,
            "this route needs an access token (authorization: Bearer …)",
        )
    })?;
    let verified = gateway.verifier.verify_token(&token).await.map_err(refused)?;
    audit::record_subject(verified.principal());
    Ok(verified)
}

/// The body, refusing more than the limit (413) before reading it when the
/// length is declared, and while reading it otherwise.
async fn read_body(gateway: &Gateway, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = gateway.max_body_bytes;
    let too_large = || {
        ApiError::bad_request(format!("the request body is larger than {limit} bytes"))
            .with_http_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    // A total bound, not one per chunk: a body dripped a byte at a time must
    // not hold the connection either.
    let collected = tokio::time::timeout(gateway.body_timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                tonic::Code::DeadlineExceeded,
                format!("the request body did not arrive within {:?}", gateway.body_timeout),
            )
            .with_http_status(StatusCode::REQUEST_TIMEOUT)
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::bad_request(format!("reading the request body: {err}"))),
    }
}

/// What the services see: the caller's `authorization` as sent (so they
/// check the token again; anonymous routes pass none), the request id and
/// user agent as they arrived, the trace context of the gateway's span, and
/// the client's address (which auth believes when it trusts the gateway).
fn metadata(headers: &HeaderMap, authorized: bool, client: IpAddr) -> MetadataMap {
    let mut metadata = MetadataMap::with_capacity(FORWARDED.len() + 4);
    // The request's span continues the caller's trace; its context makes the
    // service's span a child of the gateway's, not a sibling.
    let trace = current_trace_context();
    for (key, value) in &trace {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(key, value);
        }
    }
    let caller_trace = TRACE_CONTEXT.into_iter().filter(|_| trace.is_empty());
    let forwarded = FORWARDED
        .into_iter()
        .chain(caller_trace)
        .chain(authorized.then_some("authorization"));
    for name in forwarded {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = MetadataValue::try_from(value)
        {
            metadata.insert(name, value);
        }
    }
    if let Ok(value) = MetadataValue::try_from(client.to_string()) {
        metadata.insert(FORWARDED_FOR, value);
    }
    metadata
}
