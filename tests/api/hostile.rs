//! The bad-input catalogue: every mutation and query, fed what a prober would send. Each entry
//! must fail with its documented `extensions.code`, never with a 500 or an internal error, and
//! the store must be exactly as it was before the whole catalogue ran.

use serde_json::{Value, json};

use chatapp::domain::PhoneNumber;

use crate::helpers::{TestApp, TestUser, spawn_app_configured};

/// Whose token an entry sends.
#[derive(Clone, Copy)]
enum Caller {
    Nobody,
    Alice,
    Bob,
    /// A string that is not a JWT at all.
    Garbage,
}

/// One probe: a name for failure messages, the operation, its variables, the caller and the
/// code the first error must carry.
struct Probe {
    name: &'static str,
    query: &'static str,
    variables: Value,
    caller: Caller,
    code: &'static str,
}

const REGISTER: &str =
    "mutation($input: RegisterInput!) { register(input: $input) { token profileId } }";
const LOGIN: &str = "mutation($input: LoginInput!) { login(input: $input) { token } }";
const SEND: &str = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }";
const ACK: &str = "mutation($ids: [ID!]!) { markDelivered(messageIds: $ids) { id } }";
const CONVERSATION: &str = "query($with: ID!, $last: Int, $before: String) {
    conversation(withUserId: $with, last: $last, before: $before) { edges { cursor } } }";
const BY_PHONE: &str = "query($phone: String!) { userByPhoneNumber(phoneNumber: $phone) { id } }";
const REVOKE: &str = "mutation($id: ID!) { revokeSession(id: $id) { message } }";
const MARK_READ: &str =
    "mutation($with: ID!, $upTo: ID!) { markRead(withUserId: $with, upTo: $upTo) { id } }";
const SET_TYPING: &str =
    "mutation($with: ID!, $typing: Boolean!) { setTyping(withUserId: $with, typing: $typing) }";
const VERIFY: &str = "mutation($code: String!) { verifyPhone(code: $code) { id } }";
const CHAT_LIST: &str = "query($first: Int, $after: String) {
    conversations(first: $first, after: $after) { edges { cursor } } }";

/// A phone number no test account uses: register probes with it must never create anyone.
const FRESH_PHONE: &str = "+12025550150";

fn register(phone: &str, username: &str, password: &str) -> Value {
    json!({ "input": { "phoneNumber": phone, "username": username, "password": password } })
}

fn login(phone: &str, password: &str) -> Value {
    json!({ "input": { "phoneNumber": phone, "password": password } })
}

fn send(recipient: &Value, content: &str, client_message_id: Option<&str>) -> Value {
    json!({ "input": { "recipientId": recipient, "content": content, "clientMessageId": client_message_id } })
}

/// Everything the catalogue could have changed, read straight from the store.
async fn snapshot(app: &TestApp, users: &[&TestUser]) -> String {
    let store = &app.store;
    let mut state = Vec::new();
    for user in users {
        let id = user.user_id();
        state.push(format!("{:?}", store.user_by_id(&id).await.unwrap()));
        let mut sessions: Vec<_> =
            store.user_sessions(&id).await.unwrap().into_iter().map(|s| s.id).collect();
        sessions.sort();
        state.push(format!("{sessions:?}"));
        state.push(format!("{:?}", store.undelivered_messages(&id, 0, 1000).await.unwrap()));
        for other in users {
            let history = store.conversation(&id, &other.user_id(), None, 1000).await.unwrap();
            state.push(format!("{history:?}"));
        }
    }
    let fresh = PhoneNumber::parse(FRESH_PHONE).unwrap();
    state.push(format!("{:?}", store.user_by_phone(&fresh).await.unwrap()));
    state.join("\n")
}

fn catalogue(
    alice: &TestUser,
    bob: &TestUser,
    bobs_message: &str,
    bobs_session: &str,
) -> Vec<Probe> {
    use Caller::*;
    let huge = "x".repeat(20_000);
    let alice_id = json!(alice.id);
    let bob_id = json!(bob.id);
    let alice_phone_reformatted = "+1 (202) 555-0141";
    assert_eq!(alice.phone_number, "+12025550141");
    let probe =
        |name, query, variables, caller, code| Probe { name, query, variables, caller, code };
    vec![
        // register: phone numbers
        probe(
            "register: empty phone",
            REGISTER,
            register("", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: no country code",
            REGISTER,
            register("2025550150", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: letters in phone",
            REGISTER,
            register("+1202555CALL", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: unassigned number",
            REGISTER,
            register("+10000000000", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: NUL in phone",
            REGISTER,
            register("+1202555\u{0}0150", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: huge phone",
            REGISTER,
            register(&format!("+1{huge}"), "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: arabic-indic digits",
            REGISTER,
            register("+١٢٠٢٥٥٥٠١٥٠", "mallory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: taken number, other format",
            REGISTER,
            register(alice_phone_reformatted, "mallory", "correct-horse-battery"),
            Nobody,
            "CONFLICT",
        ),
        // register: usernames
        probe(
            "register: empty username",
            REGISTER,
            register(FRESH_PHONE, "", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: blank username",
            REGISTER,
            register(FRESH_PHONE, " \t\u{3000} ", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: one-letter username",
            REGISTER,
            register(FRESH_PHONE, "m", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: 33-character username",
            REGISTER,
            register(FRESH_PHONE, &"é".repeat(33), "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: huge username",
            REGISTER,
            register(FRESH_PHONE, &huge, "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: bell in username",
            REGISTER,
            register(FRESH_PHONE, "mal\u{7}lory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: newline in username",
            REGISTER,
            register(FRESH_PHONE, "mal\nlory", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: zero-width username",
            REGISTER,
            register(FRESH_PHONE, "\u{200B}\u{200B}\u{200B}", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: right-to-left override",
            REGISTER,
            register(FRESH_PHONE, "alice\u{202E}nimda", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        // register: passwords
        probe(
            "register: one of the most common passwords",
            REGISTER,
            register(FRESH_PHONE, "mallory", "Password123"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: empty password",
            REGISTER,
            register(FRESH_PHONE, "mallory", ""),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: 7-character password",
            REGISTER,
            register(FRESH_PHONE, "mallory", "1234567"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: 72-byte password",
            REGISTER,
            register(FRESH_PHONE, "mallory", &"p".repeat(72)),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "register: 36 two-byte characters",
            REGISTER,
            register(FRESH_PHONE, "mallory", &"é".repeat(36)),
            Nobody,
            "BAD_USER_INPUT",
        ),
        // register: shape
        probe(
            "register: phone as a number",
            REGISTER,
            json!({ "input": { "phoneNumber": 12025550150u64, "username": "mallory", "password": "correct-horse-battery" } }),
            Nobody,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "register: missing password",
            REGISTER,
            json!({ "input": { "phoneNumber": FRESH_PHONE, "username": "mallory" } }),
            Nobody,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "register: null input",
            REGISTER,
            json!({ "input": null }),
            Nobody,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "register: unknown field",
            REGISTER,
            json!({ "input": { "phoneNumber": FRESH_PHONE, "username": "mallory", "password": "correct-horse-battery", "admin": true } }),
            Nobody,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        // login
        probe(
            "login: wrong password",
            LOGIN,
            login(&alice.phone_number, "wrong password"),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "login: unknown number",
            LOGIN,
            login(FRESH_PHONE, "correct-horse-battery"),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "login: empty password",
            LOGIN,
            login(&alice.phone_number, ""),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "login: huge password",
            LOGIN,
            login(&alice.phone_number, &huge),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "login: password with NUL",
            LOGIN,
            login(&alice.phone_number, "correct-horse-battery\u{0}"),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "login: invalid phone",
            LOGIN,
            login("not a phone", "correct-horse-battery"),
            Nobody,
            "BAD_USER_INPUT",
        ),
        probe(
            "login: password as a list",
            LOGIN,
            json!({ "input": { "phoneNumber": alice.phone_number, "password": ["correct-horse-battery"] } }),
            Nobody,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        // sendMessage
        probe("send: no token", SEND, send(&bob_id, "hi", None), Nobody, "UNAUTHENTICATED"),
        probe("send: garbage token", SEND, send(&bob_id, "hi", None), Garbage, "UNAUTHENTICATED"),
        probe("send: to yourself", SEND, send(&alice_id, "hi", None), Alice, "BAD_USER_INPUT"),
        probe(
            "send: unknown recipient",
            SEND,
            send(&json!(uuid::Uuid::new_v4().to_string()), "hi", None),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "send: malformed recipient",
            SEND,
            send(&json!("../../users/1' OR '1'='1"), "hi", None),
            Alice,
            "NOT_FOUND",
        ),
        probe("send: empty recipient", SEND, send(&json!(""), "hi", None), Alice, "NOT_FOUND"),
        probe("send: numeric recipient", SEND, send(&json!(42), "hi", None), Alice, "NOT_FOUND"),
        probe(
            "send: recipient as an object",
            SEND,
            send(&json!({ "id": bob.id }), "hi", None),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe("send: empty content", SEND, send(&bob_id, "", None), Alice, "BAD_USER_INPUT"),
        probe(
            "send: blank content",
            SEND,
            send(&bob_id, " \n\t\u{2003} ", None),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "send: NUL in content",
            SEND,
            send(&bob_id, "hi\u{0}there", None),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "send: content one over the limit",
            SEND,
            send(&bob_id, &"é".repeat(4001), None),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe("send: huge content", SEND, send(&bob_id, &huge, None), Alice, "BAD_USER_INPUT"),
        probe(
            "send: null content",
            SEND,
            json!({ "input": { "recipientId": bob.id, "content": null } }),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "send: empty clientMessageId",
            SEND,
            send(&bob_id, "hi", Some("")),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "send: long clientMessageId",
            SEND,
            send(&bob_id, "hi", Some(&"k".repeat(129))),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "send: control character in clientMessageId",
            SEND,
            send(&bob_id, "hi", Some("key\u{1b}[2J")),
            Alice,
            "BAD_USER_INPUT",
        ),
        // markDelivered
        probe("ack: no token", ACK, json!({ "ids": [bobs_message] }), Nobody, "UNAUTHENTICATED"),
        probe(
            "ack: someone else's message",
            ACK,
            json!({ "ids": [bobs_message] }),
            Alice,
            "FORBIDDEN",
        ),
        probe(
            "ack: unknown id",
            ACK,
            json!({ "ids": [uuid::Uuid::new_v4().to_string()] }),
            Bob,
            "NOT_FOUND",
        ),
        probe(
            "ack: malformed id",
            ACK,
            json!({ "ids": ["'; DROP TABLE messages; --"] }),
            Bob,
            "NOT_FOUND",
        ),
        probe(
            "ack: one good, one unknown",
            ACK,
            json!({ "ids": [bobs_message, "nope"] }),
            Bob,
            "NOT_FOUND",
        ),
        probe(
            "ack: too many ids",
            ACK,
            json!({ "ids": vec![bobs_message; 501] }),
            Bob,
            "BAD_USER_INPUT",
        ),
        probe(
            "ack: ids as a string",
            ACK,
            json!({ "ids": { "id": bobs_message } }),
            Bob,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        // queries
        probe("me: no token", "{ me { id } }", json!({}), Nobody, "UNAUTHENTICATED"),
        probe("me: garbage token", "{ me { id } }", json!({}), Garbage, "UNAUTHENTICATED"),
        probe(
            "user: no token",
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": bob.id }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "userByPhoneNumber: no token",
            BY_PHONE,
            json!({ "phone": bob.phone_number }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "userByPhoneNumber: invalid phone",
            BY_PHONE,
            json!({ "phone": "call me maybe" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversation: no token",
            CONVERSATION,
            json!({ "with": bob.id }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "conversation: unknown user",
            CONVERSATION,
            json!({ "with": "nobody" }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "conversation: last 0",
            CONVERSATION,
            json!({ "with": bob.id, "last": 0 }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversation: last negative",
            CONVERSATION,
            json!({ "with": bob.id, "last": -5 }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversation: last too big",
            CONVERSATION,
            json!({ "with": bob.id, "last": 101 }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversation: last beyond Int",
            CONVERSATION,
            json!({ "with": bob.id, "last": 4_294_967_296u64 }),
            Alice,
            // A variable that cannot be coerced is a request error (GraphQL over HTTP), caught
            // while the page's complexity is computed.
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "conversation: garbage cursor",
            CONVERSATION,
            json!({ "with": bob.id, "before": "bXNnOi0x" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversation: unicode cursor",
            CONVERSATION,
            json!({ "with": bob.id, "before": "💣💣" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        // chat list and read receipts
        probe("conversations: no token", CHAT_LIST, json!({}), Nobody, "UNAUTHENTICATED"),
        probe("conversations: first 0", CHAT_LIST, json!({ "first": 0 }), Alice, "BAD_USER_INPUT"),
        probe(
            "conversations: first too big",
            CHAT_LIST,
            json!({ "first": 101 }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "conversations: first beyond Int",
            CHAT_LIST,
            json!({ "first": 4_294_967_296u64 }),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "conversations: garbage cursor",
            CHAT_LIST,
            json!({ "after": "💣💣" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "markRead: no token",
            MARK_READ,
            json!({ "with": alice.id, "upTo": bobs_message }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "markRead: with yourself",
            MARK_READ,
            json!({ "with": alice.id, "upTo": bobs_message }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "markRead: with someone not in it",
            MARK_READ,
            json!({ "with": "nobody", "upTo": bobs_message }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "markRead: malformed message id",
            MARK_READ,
            json!({ "with": alice.id, "upTo": "\u{0}'; DROP TABLE messages; --" }),
            Bob,
            "NOT_FOUND",
        ),
        probe(
            "markRead: upTo as an object",
            MARK_READ,
            json!({ "with": bob.id, "upTo": { "$gt": "" } }),
            Bob,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "setTyping: no token",
            SET_TYPING,
            json!({ "with": bob.id, "typing": true }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "setTyping: unknown user",
            SET_TYPING,
            json!({ "with": "'; DROP TABLE users; --", "typing": true }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "setTyping: to yourself",
            SET_TYPING,
            json!({ "with": alice.id, "typing": true }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "setTyping: typing as a string",
            SET_TYPING,
            json!({ "with": bob.id, "typing": "yes" }),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "setPresenceVisible: no token",
            "mutation { setPresenceVisible(visible: false) }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "setPresenceVisible: visible as a string",
            "mutation($v: Boolean!) { setPresenceVisible(visible: $v) }",
            json!({ "v": "false" }),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "updateProfile: no token",
            "mutation { updateProfile(username: \"eve\") { id } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "updateProfile: right-to-left override",
            "mutation($n: String!) { updateProfile(username: $n) { id } }",
            json!({ "n": "evil\u{202E}gpj.exe" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "updateProfile: empty",
            "mutation($n: String!) { updateProfile(username: $n) { id } }",
            json!({ "n": "   " }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "changePassword: no token",
            "mutation { changePassword(currentPassword: \"a\", newPassword: \"b\") { message } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "changePassword: new one too long for bcrypt",
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { message } }",
            json!({ "c": "correct-horse-battery", "n": "€".repeat(24) }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "changePassword: new one is common",
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { message } }",
            json!({ "c": "correct-horse-battery", "n": "password123" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "deleteAccount: no token",
            "mutation { deleteAccount(password: \"correct-horse-battery\") }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "deleteAccount: wrong password",
            "mutation($p: String!) { deleteAccount(password: $p) }",
            json!({ "p": "correct-horse-battery\u{0}" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "blockedUsers: no token",
            "{ blockedUsers { id } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "blockUser: no token",
            "mutation($id: ID!) { blockUser(id: $id) }",
            json!({ "id": bob.id }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "blockUser: unknown id",
            "mutation($id: ID!) { blockUser(id: $id) }",
            json!({ "id": "{\"$ne\": null}" }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "blockUser: yourself",
            "mutation($id: ID!) { blockUser(id: $id) }",
            json!({ "id": alice.id }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "unblockUser: no token",
            "mutation($id: ID!) { unblockUser(id: $id) }",
            json!({ "id": bob.id }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "verifyPhone: no token",
            "mutation { verifyPhone(code: \"123456\") { id } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "verifyPhone: ten thousand digits",
            VERIFY,
            json!({ "code": "1".repeat(10_000) }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe("verifyPhone: letters", VERIFY, json!({ "code": "12a456" }), Alice, "BAD_USER_INPUT"),
        probe(
            "verifyPhone: digits of another script",
            VERIFY,
            json!({ "code": "١٢٣٤٥٦" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "verifyPhone: query operators",
            VERIFY,
            json!({ "code": "{\"$gt\": \"\"}" }),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe(
            "resendVerificationCode: no token",
            "mutation { resendVerificationCode { expiresAt } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "resendVerificationCode: already verified",
            "mutation { resendVerificationCode { expiresAt } }",
            json!({}),
            Alice,
            "BAD_USER_INPUT",
        ),
        probe("sessions: no token", "{ sessions { id } }", json!({}), Nobody, "UNAUTHENTICATED"),
        // sessions
        probe(
            "logout: no token",
            "mutation { logout { message } }",
            json!({}),
            Nobody,
            "UNAUTHENTICATED",
        ),
        probe(
            "logout: garbage token",
            "mutation { logout(allSessions: true) { message } }",
            json!({}),
            Garbage,
            "UNAUTHENTICATED",
        ),
        probe(
            "revokeSession: someone else's",
            REVOKE,
            json!({ "id": bobs_session }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "revokeSession: malformed id",
            REVOKE,
            json!({ "id": "\u{0}\u{ffff}" }),
            Alice,
            "NOT_FOUND",
        ),
        probe(
            "revokeSession: no token",
            REVOKE,
            json!({ "id": bobs_session }),
            Nobody,
            "UNAUTHENTICATED",
        ),
        // documents
        probe("syntax error", "mutation { sendMessage(", json!({}), Alice, "GRAPHQL_PARSE_FAILED"),
        probe(
            "unknown field",
            "{ me { id passwordHash } }",
            json!({}),
            Alice,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        probe(
            "subscription over HTTP POST",
            "subscription { messageReceived { id } }",
            json!({}),
            Alice,
            "BAD_USER_INPUT",
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_is_refused_with_its_code_and_changes_nothing() {
    // Failed logins in the catalogue must not trip the backoff; it has its own test.
    let app = spawn_app_configured(&[("LOGIN_FAILURES_BEFORE_BACKOFF", "1000")]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let bobs_message =
        app.send_ok(&alice, &bob, "for bob only").await["id"].as_str().unwrap().to_string();
    let sessions = app.graphql("{ sessions { id } }", json!({}), Some(&bob.token)).await;
    let bobs_session = sessions["data"]["sessions"][0]["id"].as_str().unwrap().to_string();

    let before = snapshot(&app, &[&alice, &bob]).await;
    let probes = catalogue(&alice, &bob, &bobs_message, &bobs_session);
    let mut failures = Vec::new();
    for probe in &probes {
        let token = match probe.caller {
            Caller::Nobody => None,
            Caller::Alice => Some(alice.token.as_str()),
            Caller::Bob => Some(bob.token.as_str()),
            Caller::Garbage => Some("not.a.jwt"),
        };
        let mut request = app
            .http
            .post(app.url("/graphql"))
            .json(&json!({ "query": probe.query, "variables": probe.variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = &body["errors"][0]["extensions"]["code"];
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        let leaks = ["sqlite", "SQL", "panicked", "src/", "thread '"]
            .iter()
            .any(|word| message.contains(word));
        if status.is_server_error()
            || code != probe.code
            || !body["data"].is_null() && has_data(&body)
            || leaks
        {
            failures.push(format!(
                "{}: HTTP {status}, expected {}, got {body}",
                probe.name, probe.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} probes misbehaved:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
    assert_eq!(snapshot(&app, &[&alice, &bob]).await, before, "the catalogue changed the store");
    assert!(probes.len() >= 70, "the catalogue shrank to {}", probes.len());
}

/// Whether any root field of the response carries a value (a refused operation has none).
fn has_data(body: &Value) -> bool {
    body["data"].as_object().is_some_and(|fields| fields.values().any(|value| !value.is_null()))
}

/// An operation is validated in full once, and later requests for it whose variables settle its
/// validation skip it: a bad variable must still be refused as before, by the same document, after
/// it has run many times.
#[tokio::test]
async fn a_document_that_ran_before_still_refuses_bad_variables() {
    let app = spawn_app_configured(&[]).await;
    let alice = app.register("+12025550141", "alice").await;
    let bob = app.register("+12025550142", "bob").await;
    let bob_id = json!(bob.id);
    for n in 0..3 {
        let body = app.graphql(SEND, send(&bob_id, &format!("hi {n}"), None), Some(&alice.token));
        assert!(body.await["data"]["sendMessage"]["id"].is_string());
    }
    let before = snapshot(&app, &[&alice, &bob]).await;
    let invalid = "GRAPHQL_VALIDATION_FAILED";
    let refused = [
        (json!({ "input": { "recipientId": bob_id, "content": 5 } }), invalid),
        (json!({ "input": { "recipientId": 1.5, "content": "hi" } }), invalid),
        (json!({ "input": { "recipientId": bob_id } }), invalid),
        (json!({ "input": { "recipientId": bob_id, "content": "hi", "admin": true } }), invalid),
        (json!({ "input": { "recipientId": bob_id, "content": null } }), invalid),
        (json!({ "input": null }), invalid),
        // A variable left out fails when the resolver asks for it, as it always has.
        (json!({}), "BAD_USER_INPUT"),
    ];
    for (variables, expected) in refused {
        let body = app.graphql(SEND, variables.clone(), Some(&alice.token)).await;
        let code = &body["errors"][0]["extensions"]["code"];
        assert_eq!(code, expected, "{variables}: {body}");
        assert!(!has_data(&body), "{variables}: {body}");
    }
    assert_eq!(snapshot(&app, &[&alice, &bob]).await, before);
    // And the document still works.
    let body = app.graphql(SEND, send(&bob_id, "still here", None), Some(&alice.token)).await;
    assert!(body["data"]["sendMessage"]["id"].is_string(), "{body}");
}
