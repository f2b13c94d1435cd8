//! Security events (ASVS 7.2): failed and throttled sign-ins, refused tokens,
//! denied permissions, refused service clients, revocations.
//!
//! They go to their own log target, [`TARGET`], at INFO or WARN, so an
//! operator can keep them and alert on them apart from the rest. Each names
//! its subject through the call's span: `subject` (the user or service a
//! verified token names, or the account or client a credential call is
//! about), `client` (the client's address behind trusted proxies) and `peer`
//! (the connection's). Never a secret: tokens, passwords and client secrets
//! are not logged, and nothing a caller wrote is logged unchecked.
//!
//! Refusals are logged once, where every call ends: from the call's status
//! (its code and `ErrorInfo` reason), so no handler can forget one.

use std::{
    fmt::Display,
    net::{IpAddr, SocketAddr},
};

use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

/// The log target of security events.
pub const TARGET: &str = "keel::security";

/// Names who the current call acts for, or whom it is about.
pub fn record_subject(subject: &dyn Display) {
    tracing::Span::current().record("subject", tracing::field::display(subject));
}

/// Names the current call's client address.
pub fn record_client(address: IpAddr) {
    tracing::Span::current().record("client", tracing::field::display(address));
}

/// Names the current call's connection peer.
pub fn record_peer(address: SocketAddr) {
    tracing::Span::current().record("peer", tracing::field::display(address));
}

/// Says why the current call's token was refused, more finely than the
/// reason the caller is told (which must not help a forger).
pub fn record_token_refusal(cause: &'static str) {
    tracing::Span::current().record("token_refusal", cause);
}

/// How a refusal counts as a security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Worth an alert: bad credentials or tokens, denied permissions,
    /// throttling.
    Warn(&'static str),
    /// Expected in normal use (an expired token, a call without one).
    Info(&'static str),
}

fn classify(code: Code, reason: &str) -> Option<Refusal> {
    match code {
        Code::PermissionDenied => Some(Refusal::Warn("permission_denied")),
        Code::Unauthenticated => Some(match reason {
            "TOKEN_EXPIRED" | "MISSING_TOKEN" => Refusal::Info("unauthenticated"),
            _ => Refusal::Warn("unauthenticated"),
        }),
        Code::ResourceExhausted if matches!(reason, "TOO_MANY_ATTEMPTS" | "LOGIN_DELAYED" | "TOO_MANY_REQUESTS") => {
            Some(Refusal::Warn("throttled"))
        }
        _ => None,
    }
}

/// Logs the refusal `status` ended a call with, if it is a security event;
/// says whether it was one.
pub fn refused(status: &tonic::Status) -> bool {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    let code = status.code();
    match classify(code, &reason) {
        Some(Refusal::Warn(event)) => {
            tracing::warn!(target: TARGET, event, ?code, reason, message = status.message(), "call refused");
        }
        Some(Refusal::Info(event)) => {
            tracing::info!(target: TARGET, event, ?code, reason, message = status.message(), "call refused");
        }
        None => return false,
    }
    true
}

/// Logs that the gateway held a client back (its per-client rate limit).
pub fn rate_limited(key: &dyn Display) {
    tracing::warn!(target: TARGET, event = "throttled", reason = "RATE_LIMITED", key = %key, "request refused");
}

/// Logs that sessions of `user_id` ended (`session_id`: one of them; None:
/// all but the caller's, or all) and their access tokens stopped working.
pub fn revoked(user_id: Uuid, session_id: Option<Uuid>, reason: &str, sessions: usize) {
    match session_id {
        Some(session_id) => tracing::info!(
            target: TARGET,
            event = "revoked",
            %user_id,
            %session_id,
            reason,
            sessions,
            "session revoked"
        ),
        None => {
            tracing::info!(target: TARGET, event = "revoked", %user_id, reason, sessions, "user's sessions revoked")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_matter_are_warnings_and_ordinary_ones_info() {
        let warn = |code, reason| classify(code, reason).is_some_and(|r| matches!(r, Refusal::Warn(_)));
        assert!(warn(Code::PermissionDenied, "ADMIN_ONLY"));
        assert!(warn(Code::Unauthenticated, "INVALID_CREDENTIALS"));
        assert!(warn(Code::Unauthenticated, "TOKEN_REVOKED"));
        assert!(warn(Code::ResourceExhausted, "TOO_MANY_ATTEMPTS"));
        assert_eq!(
            classify(Code::Unauthenticated, "TOKEN_EXPIRED"),
            Some(Refusal::Info("unauthenticated"))
        );
        // Load shedding and bad input are not security events.
        assert_eq!(classify(Code::ResourceExhausted, ""), None);
        assert_eq!(classify(Code::InvalidArgument, "INVALID_ARGUMENT"), None);
    }
}
