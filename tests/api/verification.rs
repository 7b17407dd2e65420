//! Phone verification (`PHONE_VERIFICATION=webhook`): unverified accounts cannot chat, codes
//! are single-use, limited in tries and in texts, a stale claim frees the number, and the
//! webhook sender retries and gives up cleanly. The SMS gateway is a local HTTP receiver.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use chatapp::domain::PhoneNumber;
use serde_json::{Value, json};

use crate::helpers::{
    Incoming, PASSWORD, TestApp, TestUser, error_code, spawn_app, spawn_app_configured, wait_until,
};

const OWNER: &str = "+12025550143";
const FRIEND: &str = "+12025550144";
const VERIFY: &str = "mutation($code: String!) { verifyPhone(code: $code) { id phoneVerified } }";
const RESEND: &str = "mutation { resendVerificationCode { message expiresAt } }";
const LOOKUP: &str = "query($phone: String!) { userByPhoneNumber(phoneNumber: $phone) { id } }";

/// How the fake gateway answers the next request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (until the sender gives up).
    Hang,
}

/// One request the gateway received.
#[derive(Clone, Debug)]
struct Text {
    body: Value,
    authorization: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Default)]
struct GatewayState {
    received: Mutex<Vec<Text>>,
    /// Answers for the next requests, in order; 200 once they run out.
    script: Mutex<VecDeque<Reply>>,
}

/// A local stand-in for an SMS gateway's webhook.
struct Gateway {
    address: SocketAddr,
    state: Arc<GatewayState>,
}

impl Gateway {
    async fn start() -> Gateway {
        let state = Arc::new(GatewayState::default());
        let router = Router::new().route("/sms", post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Gateway { address, state }
    }

    fn url(&self) -> String {
        format!("http://{}/sms", self.address)
    }

    fn answer_next(&self, replies: &[Reply]) {
        self.state.script.lock().unwrap().extend(replies.iter().copied());
    }

    fn texts(&self) -> Vec<Text> {
        self.state.received.lock().unwrap().clone()
    }

    /// The newest code texted to `phone`.
    fn last_code(&self, phone: &str) -> String {
        let texts = self.texts();
        let text = texts.iter().rev().find(|text| text.body["phoneNumber"] == phone);
        let text = text.unwrap_or_else(|| panic!("no text to {phone} in {texts:?}"));
        text.body["code"].as_str().unwrap().to_string()
    }
}

async fn receive(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
    state.received.lock().unwrap().push(Text {
        body,
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
    });
    let reply = state.script.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::OK,
        Some(Reply::Status(status)) => StatusCode::from_u16(status).unwrap(),
        Some(Reply::Hang) => std::future::pending().await,
    }
}

/// A server that verifies numbers through `gateway`, with `settings` on top.
async fn verifying_app(gateway: &Gateway, settings: &[(&str, &str)]) -> TestApp {
    let url = gateway.url();
    let mut all = vec![
        ("PHONE_VERIFICATION", "webhook"),
        ("PHONE_VERIFICATION_WEBHOOK_URL", url.as_str()),
        ("PHONE_VERIFICATION_WEBHOOK_TOKEN", "gateway-secret"),
        ("PHONE_VERIFICATION_WEBHOOK_TIMEOUT", "300ms"),
    ];
    all.extend_from_slice(settings);
    spawn_app_configured(&all).await
}

/// Registers, returning the whole response body.
async fn register(app: &TestApp, phone: &str) -> Value {
    let query = "mutation($input: RegisterInput!) {
        register(input: $input) { token message user { id phoneVerified } } }";
    let input = json!({ "phoneNumber": phone, "username": "someone", "password": PASSWORD });
    app.graphql(query, json!({ "input": input }), None).await
}

/// Registers, asserting success, and returns the (unverified) user.
async fn claim(app: &TestApp, phone: &str) -> TestUser {
    let body = register(app, phone).await;
    let payload = &body["data"]["register"];
    assert_eq!(payload["user"]["phoneVerified"], false, "{body}");
    TestUser {
        id: payload["user"]["id"].as_str().unwrap().to_string(),
        token: payload["token"].as_str().unwrap().to_string(),
        phone_number: phone.to_string(),
    }
}

async fn verify(app: &TestApp, user: &TestUser, code: &str) -> Value {
    app.graphql(VERIFY, json!({ "code": code }), Some(&user.token)).await
}

/// Registers and verifies with the code the gateway received.
async fn verified(app: &TestApp, gateway: &Gateway, phone: &str) -> TestUser {
    let user = claim(app, phone).await;
    let body = verify(app, &user, &gateway.last_code(phone)).await;
    assert_eq!(body["data"]["verifyPhone"]["phoneVerified"], true, "{body}");
    user
}

/// A six-digit code that is not `code`.
fn wrong(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

#[tokio::test]
async fn without_verification_accounts_are_verified_from_the_start() {
    let app = spawn_app().await;
    let body = register(&app, OWNER).await;
    assert_eq!(body["data"]["register"]["user"]["phoneVerified"], true, "{body}");
    let token = body["data"]["register"]["token"].as_str().unwrap();
    let resend = app.graphql(RESEND, json!({}), Some(token)).await;
    assert_eq!(error_code(&resend), "BAD_USER_INPUT", "{resend}");
}

#[tokio::test]
async fn a_new_account_must_prove_its_number_before_it_can_chat() {
    let gateway = Gateway::start().await;
    let app = verifying_app(&gateway, &[]).await;
    let bob = verified(&app, &gateway, FRIEND).await;
    let alice = claim(&app, OWNER).await;

    // The gateway got exactly the documented payload, with the token and an idempotency key.
    let text = gateway.texts().last().cloned().unwrap();
    let code = gateway.last_code(OWNER);
    assert_eq!(text.body, json!({ "phoneNumber": OWNER, "code": code }));
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    assert_eq!(text.authorization.as_deref(), Some("Bearer gateway-secret"));
    assert!(text.idempotency_key.is_some_and(|key| !key.is_empty()));

    // Unverified: cannot send, cannot be found, cannot be written to (answered exactly like an
    // account that does not exist), cannot look others up.
    let sent = app.send(&alice, &bob, "hi", None).await;
    assert_eq!(error_code(&sent), "PHONE_NOT_VERIFIED", "{sent}");
    let found = app.graphql(LOOKUP, json!({ "phone": OWNER }), Some(&bob.token)).await;
    assert_eq!(found["data"]["userByPhoneNumber"], Value::Null, "{found}");
    let to_alice = app.send(&bob, &alice, "hi", None).await;
    let nobody = TestUser { id: "0123456789abcdef01234567".into(), ..alice.clone() };
    let to_nobody = app.send(&bob, &nobody, "hi", None).await;
    assert_eq!(to_alice["errors"][0]["message"], to_nobody["errors"][0]["message"]);
    assert_eq!(error_code(&to_alice), "NOT_FOUND");
    let looked_up = app.graphql(LOOKUP, json!({ "phone": FRIEND }), Some(&alice.token)).await;
    assert_eq!(error_code(&looked_up), "PHONE_NOT_VERIFIED", "{looked_up}");

    // A wrong code says how many tries are left; the right one, typed with a space, verifies.
    let rejected = verify(&app, &alice, &wrong(&code)).await;
    assert_eq!(error_code(&rejected), "BAD_USER_INPUT");
    assert!(rejected["errors"][0]["message"].as_str().unwrap().contains("4 tries left"));
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    let accepted = verify(&app, &alice, &spaced).await;
    assert_eq!(accepted["data"]["verifyPhone"], json!({ "id": alice.id, "phoneVerified": true }));
    let again = verify(&app, &alice, &code).await;
    assert_eq!(again["data"]["verifyPhone"]["phoneVerified"], true, "a retry changes nothing");
    let resend = app.graphql(RESEND, json!({}), Some(&alice.token)).await;
    assert_eq!(error_code(&resend), "BAD_USER_INPUT", "nothing to resend: {resend}");

    // Now a full member.
    app.send_ok(&alice, &bob, "hello, verified").await;
    app.send_ok(&bob, &alice, "welcome").await;
    let found = app.graphql(LOOKUP, json!({ "phone": OWNER }), Some(&bob.token)).await;
    assert_eq!(found["data"]["userByPhoneNumber"]["id"], alice.id.as_str());
}

#[tokio::test]
async fn a_code_dies_after_five_tries_and_a_new_one_replaces_it() {
    let gateway = Gateway::start().await;
    let app = verifying_app(&gateway, &[]).await;
    let alice = claim(&app, OWNER).await;
    let first = gateway.last_code(OWNER);
    for left in (0..5).rev() {
        let body = verify(&app, &alice, &wrong(&first)).await;
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{left} tr")), "{left} left: {message}");
    }
    let too_late = verify(&app, &alice, &first).await;
    assert_eq!(error_code(&too_late), "BAD_USER_INPUT");
    assert!(too_late["errors"][0]["message"].as_str().unwrap().contains("too many"), "{too_late}");
    let me = app.graphql("{ me { phoneVerified } }", json!({}), Some(&alice.token)).await;
    assert_eq!(me["data"]["me"]["phoneVerified"], false);

    let resent = app.graphql(RESEND, json!({}), Some(&alice.token)).await;
    let expires_at = resent["data"]["resendVerificationCode"]["expiresAt"].as_str();
    let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at.unwrap()).unwrap();
    assert!(expires_at > chrono::Utc::now(), "{resent}");
    let second = gateway.last_code(OWNER);
    assert_eq!(gateway.texts().len(), 2);
    if second != first {
        let old = verify(&app, &alice, &first).await;
        assert_eq!(error_code(&old), "BAD_USER_INPUT", "the old code stopped working");
    }
    let body = verify(&app, &alice, &second).await;
    assert_eq!(body["data"]["verifyPhone"]["phoneVerified"], true, "{body}");

    // Tries are also limited per caller (10 account changes a minute by default).
    let mut limited = false;
    for _ in 0..10 {
        let body = verify(&app, &alice, &second).await;
        if body["errors"][0]["extensions"]["code"] == "RATE_LIMITED" {
            limited = true;
            break;
        }
    }
    assert!(limited, "verifyPhone is rate limited per caller");
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let gateway = Gateway::start().await;
    let app = verifying_app(&gateway, &[("PHONE_VERIFICATION_CODE_TTL", "1s")]).await;
    let alice = claim(&app, OWNER).await;
    let code = gateway.last_code(OWNER);
    let deadline = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    wait_until("the code has expired", || async { chrono::Utc::now() > deadline }).await;
    let body = verify(&app, &alice, &code).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("expired"), "{body}");
}

#[tokio::test]
async fn a_squatter_cannot_keep_the_owner_out_once_the_claim_expires() {
    let gateway = Gateway::start().await;
    let settings = [
        ("PHONE_VERIFICATION_CODE_TTL", "1s"),
        ("PHONE_VERIFICATION_CLAIM_TTL", "2s"),
        ("RATE_LIMIT_VERIFICATION_PER_PHONE", "1000"),
        ("RATE_LIMIT_VERIFICATION_PER_ADDRESS", "1000"),
    ];
    let app = verifying_app(&gateway, &settings).await;
    // The squatter registers the owner's number; the code goes to the owner's phone.
    let squatter = claim(&app, OWNER).await;
    let squatters_code = gateway.last_code(OWNER);
    let mut squatters_socket = app.ws(&squatter).await;
    let taken = register(&app, OWNER).await;
    assert_eq!(error_code(&taken), "CONFLICT", "the claim holds the number for now");

    // Once the claim is stale, the squatter cannot even sign in...
    let login = json!({ "input": { "phoneNumber": OWNER, "password": PASSWORD } });
    wait_until("the stale claim no longer signs in", || async {
        let body = app.operation("Login", login.clone(), None).await;
        body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    })
    .await;
    // ...and the owner's registration removes it and takes the number.
    let owner = claim(&app, OWNER).await;
    assert_ne!(owner.id, squatter.id);
    assert_eq!(squatters_socket.recv().await, Incoming::Closed(Some(4401)));
    let me = app.graphql("{ me { id } }", json!({}), Some(&squatter.token)).await;
    assert_eq!(error_code(&me), "UNAUTHENTICATED");
    let owners_code = gateway.last_code(OWNER);
    if owners_code != squatters_code {
        let stale = verify(&app, &owner, &squatters_code).await;
        assert_eq!(error_code(&stale), "BAD_USER_INPUT", "the first code was for another account");
    }
    let body = verify(&app, &owner, &owners_code).await;
    assert_eq!(body["data"]["verifyPhone"]["phoneVerified"], true, "{body}");
    let stored = app.store.user_by_phone(&PhoneNumber::parse(OWNER).unwrap()).await.unwrap();
    assert_eq!(stored.unwrap().id.as_str(), owner.id);
}

#[tokio::test]
async fn texts_are_limited_per_number_and_per_address() {
    let gateway = Gateway::start().await;
    let settings =
        [("RATE_LIMIT_VERIFICATION_PER_PHONE", "2"), ("RATE_LIMIT_VERIFICATION_PER_ADDRESS", "4")];
    let app = verifying_app(&gateway, &settings).await;
    let alice = claim(&app, OWNER).await;
    let resent = app.graphql(RESEND, json!({}), Some(&alice.token)).await;
    assert!(resent["errors"].is_null(), "{resent}");
    let limited = app.graphql(RESEND, json!({}), Some(&alice.token)).await;
    assert_eq!(error_code(&limited), "RATE_LIMITED", "two texts per number: {limited}");
    assert!(limited["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap() > 0);
    assert_eq!(gateway.texts().len(), 2);

    // Every request for a text counts against the address, the refused one too.
    claim(&app, FRIEND).await;
    let third = "+12025550145";
    let refused = register(&app, third).await;
    assert_eq!(error_code(&refused), "RATE_LIMITED", "four requests per address: {refused}");
    assert_eq!(gateway.texts().len(), 3, "nothing sent past the limit");
    let stored = app.store.user_by_phone(&PhoneNumber::parse(third).unwrap()).await.unwrap();
    assert!(stored.is_none(), "no account without a text");
}

#[tokio::test]
async fn the_webhook_is_retried_and_a_text_that_cannot_go_creates_no_account() {
    let gateway = Gateway::start().await;
    let app = verifying_app(&gateway, &[]).await;

    // Two failures, then success: the same text three times, under one idempotency key.
    gateway.answer_next(&[Reply::Status(500), Reply::Status(503)]);
    let alice = claim(&app, OWNER).await;
    let texts = gateway.texts();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts.iter().all(|text| text.body == texts[0].body));
    assert!(texts.iter().all(|text| text.idempotency_key == texts[0].idempotency_key));
    let body = verify(&app, &alice, &gateway.last_code(OWNER)).await;
    assert_eq!(body["data"]["verifyPhone"]["phoneVerified"], true, "{body}");

    // A refusal is final; a gateway that never answers is given up on after three timeouts.
    let phone = PhoneNumber::parse(FRIEND).unwrap();
    for (replies, attempts) in [(vec![Reply::Status(400)], 1), (vec![Reply::Hang; 3], 3)] {
        let before = gateway.texts().len();
        gateway.answer_next(&replies);
        let failed = register(&app, FRIEND).await;
        assert_eq!(error_code(&failed), "SERVICE_UNAVAILABLE", "{failed}");
        let message = failed["errors"][0]["message"].as_str().unwrap();
        assert_eq!(message, "the service is temporarily unavailable, please retry");
        assert_eq!(gateway.texts().len() - before, attempts);
        assert!(app.store.user_by_phone(&phone).await.unwrap().is_none(), "no account left");
    }
    // The number was never taken: it registers once the gateway works.
    verified(&app, &gateway, FRIEND).await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable_not_an_internal_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/sms", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_configured(&[
        ("PHONE_VERIFICATION", "webhook"),
        ("PHONE_VERIFICATION_WEBHOOK_URL", &url),
    ])
    .await;
    let failed = register(&app, OWNER).await;
    assert_eq!(error_code(&failed), "SERVICE_UNAVAILABLE", "{failed}");
    assert!(!failed.to_string().contains(&url), "the URL does not leak: {failed}");
}
