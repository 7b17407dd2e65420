//! Errors: [`AppError`], what a client is told (every service returns it), and
//! [`StartupError`], what stops the server from starting (told to the operator). Storage
//! failures arrive as facts ([`StoreError`]) and are worded for clients here.
//!
//! Each variant names the `extensions.code` a GraphQL client sees, so a frontend can branch on the
//! code instead of parsing messages. Internal failures are logged in full where they are turned
//! into a client error and reach the client only as a masked message.

use async_graphql::ErrorExtensions;

use crate::{
    domain::InvalidInput,
    store::{Constraint, StoreError},
};

/// What went wrong, phrased as what the client should be told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// The input is malformed or breaks a documented rule (`BAD_USER_INPUT`).
    #[error("{0}")]
    BadUserInput(String),
    /// No valid credentials were presented (`UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (`FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// The caller has not verified their phone number yet, and this needs it
    /// (`PHONE_NOT_VERIFIED`): the client should show the code screen.
    #[error("verify your phone number first: send the code you received to verifyPhone")]
    PhoneNotVerified,
    /// The thing asked for does not exist, or the caller may not know it exists (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with existing data, such as a phone number already registered
    /// (`CONFLICT`).
    #[error("{0}")]
    Conflict(String),
    /// Too many requests; retry after the given number of seconds (`RATE_LIMITED`, with
    /// `extensions.retryAfter`).
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// Whole seconds until a retry can succeed.
        retry_after_seconds: u64,
    },
    /// The backing store cannot be reached right now; retrying later may succeed
    /// (`SERVICE_UNAVAILABLE`).
    #[error("the service is temporarily unavailable, please retry")]
    ServiceUnavailable(String),
    /// Too much work is queued (sign-ins during a flood); retry after the given number of
    /// seconds (`SERVICE_UNAVAILABLE`, with `extensions.retryAfter`).
    #[error("the server is busy, please retry in {retry_after_seconds} s")]
    Overloaded {
        /// Whole seconds until a retry is likely to be served.
        retry_after_seconds: u64,
    },
    /// A bug or an unexpected failure (`INTERNAL_SERVER_ERROR`). The detail is logged, never shown.
    #[error("internal server error")]
    Internal(String),
}

impl AppError {
    /// The machine-readable code placed in `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadUserInput(_) => "BAD_USER_INPUT",
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::PhoneNotVerified => "PHONE_NOT_VERIFIED",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::Conflict(_) => "CONFLICT",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::ServiceUnavailable(_) | AppError::Overloaded { .. } => "SERVICE_UNAVAILABLE",
            AppError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    /// Shorthand for an internal error built from anything printable.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        AppError::Internal(detail.to_string())
    }

    /// The error a client gets when a resolver needs a signed-in caller.
    pub fn unauthenticated() -> Self {
        AppError::Unauthenticated("a valid access token is required".into())
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(error: AppError) -> Self {
        // Log the hidden detail once, here, where it is about to be masked.
        match &error {
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            AppError::ServiceUnavailable(detail) => tracing::warn!(%detail, "unavailable"),
            _ => {}
        }
        let code = error.code();
        let retry_after = match &error {
            AppError::RateLimited { retry_after_seconds, .. }
            | AppError::Overloaded { retry_after_seconds } => Some(*retry_after_seconds),
            _ => None,
        };
        async_graphql::Error::new(error.to_string()).extend_with(|_, extensions| {
            extensions.set("code", code);
            if let Some(seconds) = retry_after {
                extensions.set("retryAfter", seconds);
            }
        })
    }
}

impl From<InvalidInput> for AppError {
    fn from(error: InvalidInput) -> Self {
        AppError::BadUserInput(error.0)
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(Constraint::PhoneNumber) => {
                AppError::Conflict("this phone number is already registered".into())
            }
            StoreError::Unavailable(detail) => AppError::ServiceUnavailable(detail),
            StoreError::Internal(detail) => AppError::Internal(detail),
        }
    }
}

impl From<crate::bus::BusError> for AppError {
    fn from(error: crate::bus::BusError) -> Self {
        AppError::ServiceUnavailable(error.to_string())
    }
}

impl From<StoreError> for async_graphql::Error {
    fn from(error: StoreError) -> Self {
        AppError::from(error).into()
    }
}

impl From<InvalidInput> for async_graphql::Error {
    fn from(error: InvalidInput) -> Self {
        AppError::from(error).into()
    }
}

/// Why the server could not start; printed to the operator, never sent to a client.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is malformed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A setting is well-formed but unusable (for example a too-short `JWT_SECRET`).
    #[error("{0}")]
    Invalid(String),
    /// The data directory or a file in it could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The result type of domain operations.
pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_masked_and_coded() {
        let error: async_graphql::Error = AppError::internal("disk on fire at /var/lib").into();
        assert_eq!(error.message, "internal server error");
        let extensions = error.extensions.expect("extensions are set");
        assert_eq!(
            extensions.get("code"),
            Some(&async_graphql::Value::from("INTERNAL_SERVER_ERROR"))
        );
    }

    #[test]
    fn client_errors_keep_their_message() {
        let error: async_graphql::Error = AppError::Conflict("phone number taken".into()).into();
        assert_eq!(error.message, "phone number taken");
        assert_eq!(
            error.extensions.unwrap().get("code"),
            Some(&async_graphql::Value::from("CONFLICT"))
        );
    }
}
