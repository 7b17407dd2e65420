//! Getting a code to a phone: a [`CodeSender`] per `PHONE_VERIFICATION` mode.
//!
//! The server does not speak to SMS carriers itself. The `webhook` sender POSTs
//! `{"phoneNumber": "+12025550143", "code": "123456"}` to a URL the operator runs (a small
//! function in front of Twilio, Vonage, an in-house gateway...), so any gateway can be plugged
//! in without a change here. The `log` sender writes the code to the server log, for
//! development.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    config::WebhookConfig,
    domain::{PhoneNumber, VerificationCode},
    secret::Secret,
};

/// Attempts the webhook sender makes before it gives up on one code.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Wait before the first retry; doubled before each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Why a code could not be handed over; for the log, never for the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

/// Delivers verification codes to phones.
#[async_trait]
pub trait CodeSender: Send + Sync + 'static {
    /// Hands `code` over for delivery to `phone_number`; `Ok` once the far side accepted it.
    async fn send(
        &self,
        phone_number: &PhoneNumber,
        code: &VerificationCode,
    ) -> Result<(), SendError>;
}

/// Writes codes to the server log (`PHONE_VERIFICATION=log`): a developer reads the code there
/// instead of on a phone. Never for a server that faces the public.
pub struct LogSender;

#[async_trait]
impl CodeSender for LogSender {
    async fn send(
        &self,
        phone_number: &PhoneNumber,
        code: &VerificationCode,
    ) -> Result<(), SendError> {
        tracing::warn!(
            phone_number = phone_number.as_str(),
            code = code.expose(),
            "verification code (PHONE_VERIFICATION=log: for development only)"
        );
        Ok(())
    }
}

/// POSTs codes to a webhook (`PHONE_VERIFICATION=webhook`).
///
/// Each attempt is bounded by the configured timeout; network failures, timeouts, 408, 429
/// and 5xx answers are retried (up to [`WEBHOOK_ATTEMPTS`] in all, waiting 250 ms, then 500 ms);
/// other 4xx answers are final. Every attempt for one code carries the same `Idempotency-Key`
/// header, so a gateway that saw a request whose answer was lost can tell a retry from a new
/// text. Redirects are not followed (the body holds a live code). `https` URLs are checked
/// against the bundled Mozilla root certificates.
pub struct WebhookSender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: hyper::Uri,
    token: Option<Secret<String>>,
    timeout: Duration,
}

/// The JSON body the webhook receives.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    phone_number: &'a str,
    code: &'a str,
}

impl WebhookSender {
    /// A sender for `config`.
    pub fn new(config: &WebhookConfig) -> Result<Self, String> {
        let url =
            config.url.as_str().parse().map_err(|error| {
                format!("PHONE_VERIFICATION_WEBHOOK_URL is not usable: {error}")
            })?;
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|error| format!("cannot set up TLS for the webhook: {error}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(WebhookSender { client, url, token: config.token.clone(), timeout: config.timeout })
    }

    /// One POST; the error says whether a retry may help.
    async fn attempt(&self, body: &Bytes, key: &str) -> Result<(), (SendError, bool)> {
        let mut request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("chatapp/", env!("CARGO_PKG_VERSION")))
            .header("Idempotency-Key", key);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|error| (SendError(format!("cannot build the request: {error}")), false))?;
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err((SendError(format!("no answer within {:?}", self.timeout)), true)),
            // The error names the failure (refused, TLS, reset), not the URL.
            Ok(Err(error)) => Err((SendError(format!("request failed: {}", causes(&error))), true)),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => {
                let status = response.status();
                let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                Err((SendError(format!("the webhook answered {status}")), retry))
            }
        }
    }
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait]
impl CodeSender for WebhookSender {
    async fn send(
        &self,
        phone_number: &PhoneNumber,
        code: &VerificationCode,
    ) -> Result<(), SendError> {
        let payload = Payload { phone_number: phone_number.as_str(), code: code.expose() };
        let body = Bytes::from(serde_json::to_vec(&payload).map_err(|e| SendError(e.to_string()))?);
        let key = uuid::Uuid::new_v4().to_string();
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.attempt(&body, &key).await {
                Ok(()) => return Ok(()),
                Err((error, retry)) if retry && attempt < WEBHOOK_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "verification webhook failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}
