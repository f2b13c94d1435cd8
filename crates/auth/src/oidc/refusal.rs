//! Why a sign-in through a provider was refused: a stable reason for the
//! caller, a finer cause for the security log, and a count in the metrics.

use keel_platform::{Error, serve::audit};
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family};

/// A refused step of a provider sign-in.
#[derive(Debug)]
pub struct Refusal {
    kind: Kind,
    /// What the log says (never shown to the caller, who must not learn
    /// which check a forged token failed).
    cause: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    UnknownProvider,
    ProviderUnavailable,
    StateInvalid,
    IssuerMismatch,
    IdTokenInvalid,
    TokenExchangeFailed,
    ProviderError,
    EmailUnusable,
    ReturnUrlNotAllowed,
    LocalAccountExists,
    CodeInvalid,
    UserDisabled,
    LastWayIn,
    PasswordRequired,
    IdentityTaken,
}

impl Kind {
    /// The stable reason callers see.
    const fn reason(self) -> &'static str {
        match self {
            Kind::UnknownProvider => "PROVIDER_NOT_FOUND",
            Kind::ProviderUnavailable => "PROVIDER_UNAVAILABLE",
            Kind::StateInvalid => "SIGN_IN_STATE_INVALID",
            Kind::IssuerMismatch => "ISSUER_MISMATCH",
            Kind::IdTokenInvalid => "ID_TOKEN_INVALID",
            Kind::TokenExchangeFailed => "TOKEN_EXCHANGE_FAILED",
            Kind::ProviderError => "PROVIDER_REFUSED",
            Kind::EmailUnusable => "PROVIDER_EMAIL_UNUSABLE",
            Kind::ReturnUrlNotAllowed => "RETURN_URL_NOT_ALLOWED",
            Kind::LocalAccountExists => "LOCAL_ACCOUNT_EXISTS",
            Kind::CodeInvalid => "SIGN_IN_CODE_INVALID",
            Kind::UserDisabled => "USER_DISABLED",
            Kind::LastWayIn => "LAST_SIGN_IN_METHOD",
            Kind::PasswordRequired => "PASSWORD_REQUIRED",
            Kind::IdentityTaken => "IDENTITY_LINKED_ELSEWHERE",
        }
    }
}

impl Refusal {
    fn new(kind: Kind, cause: impl Into<String>) -> Self {
        Self {
            kind,
            cause: cause.into(),
        }
    }

    /// No provider has that id.
    pub fn unknown_provider(id: &str) -> Self {
        Self::new(Kind::UnknownProvider, format!("no provider {id:?}"))
    }

    /// The provider could not be reached or answered nonsense.
    pub fn provider_unavailable(err: anyhow::Error) -> Self {
        Self::new(Kind::ProviderUnavailable, format!("{err:#}"))
    }

    /// The `state` is unknown, spent, expired, or not this browser's.
    pub fn state(cause: &'static str) -> Self {
        Self::new(Kind::StateInvalid, cause)
    }

    /// The authorization response's `iss` is not the provider's (RFC 9207).
    pub fn issuer_mismatch(cause: impl Into<String>) -> Self {
        Self::new(Kind::IssuerMismatch, cause)
    }

    /// The ID token (or userinfo) failed a check.
    pub fn id_token(cause: impl Into<String>) -> Self {
        Self::new(Kind::IdTokenInvalid, cause)
    }

    /// The token endpoint refused the code or misbehaved.
    pub fn token_endpoint(cause: impl Into<String>) -> Self {
        Self::new(Kind::TokenExchangeFailed, cause)
    }

    /// The provider answered the authorization with an error.
    pub fn provider_error(error: &str) -> Self {
        Self::new(Kind::ProviderError, format!("the provider answered error={error:?}"))
    }

    /// The provider shared no email, or one Keel cannot use, for a new
    /// account.
    pub fn email_unusable(cause: &'static str) -> Self {
        Self::new(Kind::EmailUnusable, cause)
    }

    /// The return URL is not on the allow-list.
    pub fn return_url(url: &str) -> Self {
        Self::new(
            Kind::ReturnUrlNotAllowed,
            format!("{url:?} is not an allowed return URL"),
        )
    }

    /// A local account has the provider's email: sign in locally and link.
    pub fn local_account_exists() -> Self {
        Self::new(Kind::LocalAccountExists, "a local account has this email")
    }

    /// The sign-in code is unknown, spent, expired or its verifier wrong.
    pub fn code(cause: &'static str) -> Self {
        Self::new(Kind::CodeInvalid, cause)
    }

    /// The user is disabled.
    pub fn user_disabled() -> Self {
        Self::new(Kind::UserDisabled, "the user is disabled")
    }

    /// Unlinking would leave the user no way to sign in.
    pub fn last_way_in() -> Self {
        Self::new(Kind::LastWayIn, "the identity is the user's only way to sign in")
    }

    /// Linking needs the user's password, and it was missing or wrong.
    pub fn password_required() -> Self {
        Self::new(Kind::PasswordRequired, "linking needs the current password")
    }

    /// The identity belongs to another user.
    pub fn identity_taken() -> Self {
        Self::new(Kind::IdentityTaken, "the identity is linked to another user")
    }

    /// The stable reason.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// Logs the refusal as a security event, counts it, and turns it into
    /// the caller's error.
    pub fn into_error(self, provider: &str, metrics: &ProviderMetrics) -> Error {
        let reason = self.reason();
        tracing::warn!(
            target: audit::TARGET,
            event = "provider_sign_in_refused",
            provider,
            reason,
            cause = %self.cause,
            "provider sign-in refused"
        );
        metrics.count(provider, reason);
        let message = match self.kind {
            Kind::UnknownProvider => return Error::not_found("identity provider"),
            Kind::ProviderUnavailable => {
                return Error::unavailable(reason, "the identity provider cannot be reached; retry later");
            }
            Kind::StateInvalid => "the sign-in expired, was already used, or began in another browser; start again",
            Kind::IssuerMismatch => "the authorization response came from another issuer",
            Kind::IdTokenInvalid => "the identity provider's answer did not verify",
            Kind::TokenExchangeFailed => "the identity provider did not accept the sign-in",
            Kind::ProviderError => "the identity provider refused the sign-in",
            Kind::EmailUnusable => {
                return Error::failed_precondition(
                    reason,
                    "the identity provider shared no usable email address; a new account needs one",
                );
            }
            Kind::ReturnUrlNotAllowed => {
                return Error::invalid_argument(reason, "return_url is not an allowed return URL");
            }
            Kind::LocalAccountExists => {
                return Error::failed_precondition(
                    reason,
                    "an account with this email exists: sign in with its password, then link the provider",
                );
            }
            Kind::CodeInvalid => "the sign-in code is unknown, expired, already used, or its verifier does not match",
            Kind::UserDisabled => "this account is disabled",
            Kind::LastWayIn => {
                return Error::failed_precondition(
                    reason,
                    "this is the account's only way to sign in: set a password or link another provider first",
                );
            }
            Kind::PasswordRequired => return Error::permission_denied(reason, "linking needs the account's password"),
            Kind::IdentityTaken => {
                return Error::failed_precondition(reason, "this provider account is linked to another user");
            }
        };
        Error::unauthenticated(reason, message)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    provider: String,
    outcome: &'static str,
}

/// Provider sign-ins by provider and outcome (`ok`, or the refusal's reason).
#[derive(Debug, Clone, Default)]
pub struct ProviderMetrics {
    outcomes: Family<Labels, Counter>,
}

impl ProviderMetrics {
    /// Registers the counter on `metrics`.
    pub fn register(&self, metrics: &keel_platform::serve::metrics::Metrics) {
        metrics.register(
            "auth_provider_sign_ins",
            "Sign-ins through identity providers, by provider and outcome (ok, or the refusal's reason).",
            self.outcomes.clone(),
        );
    }

    /// Counts one outcome.
    pub fn count(&self, provider: &str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&Labels {
                provider: provider.to_owned(),
                outcome,
            })
            .inc();
    }
}
