use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
use chrono::{TimeDelta, Utc};

use super::*;
use crate::{
    domain::{ClientMessageId, MessageContent, MessageId},
    messages::Sent,
    testing::{self, World},
    users::Directory,
};

/// A root with the message twice: as `Message` (what the delivery schema's root resolves an
/// item to) and as `sendMessage` returns it, with the users the send read.
struct Root(Sent);

#[Object]
impl Root {
    async fn message_received(&self) -> Message {
        self.0.message.clone()
    }

    async fn sent(&self) -> SentMessage {
        SentMessage(self.0.clone())
    }
}

/// The one value under `data` in `response`.
fn only_value(response: &Response) -> serde_json::Value {
    let data = serde_json::to_value(&response.data).unwrap();
    let object = data.as_object().unwrap();
    assert_eq!(object.len(), 1, "{data}");
    object.values().next().unwrap().clone()
}

fn compiled(query: &str) -> Option<Plan> {
    Plan::compile(&async_graphql::parser::parse_query(query).unwrap())
}

/// Documents a plan must render exactly as the schema does: aliases, every plain field,
/// fragments named and inline, keys selected twice (merged), `__typename` at each level.
const PLANNED: &[&str] = &[
    "{ messageReceived { id } }",
    "{ m: messageReceived { id senderId recipientId content sentAt deliveredAt readAt status
       clientMessageId __typename } }",
    "{ messageReceived { ...F } } fragment F on Message { id content sender { id username } }",
    "{ messageReceived { id sender { __typename id } recipient { id username phoneVerified }
       content } }",
    "{ messageReceived { ... on Message { id } ... { content } text: content } }",
    "{ messageReceived { id ...F sender { username } id }
       } fragment F on Message { sender { id } recipient { ...U } } fragment U on User { id }",
    "{ messageReceived { from: sender { name: username } to: recipient { id } at: sentAt } }",
];

#[tokio::test]
async fn a_plan_renders_what_the_schema_would() {
    let world = World::new();
    let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
    let sent_at = Utc::now();
    let messages = [
        Message {
            id: MessageId::new("0190a1b2c3d4e5f60718293a4b5c6d7e"),
            seq: 7,
            sender_id: alice.id.clone(),
            recipient_id: bob.id.clone(),
            content: MessageContent::parse("hi \"there\" \u{1f44b}\n".into()).unwrap(),
            client_message_id: Some(ClientMessageId::parse("key-1".into()).unwrap()),
            sent_at,
            delivered_at: Some(sent_at + TimeDelta::milliseconds(1500)),
            read_at: Some(sent_at + TimeDelta::seconds(2)),
        },
        Message {
            id: MessageId::new("0190a1b2c3d4e5f60718293a4b5c6d7f"),
            seq: 8,
            sender_id: bob.id.clone(),
            recipient_id: alice.id.clone(),
            content: MessageContent::parse("back".into()).unwrap(),
            client_message_id: None,
            sent_at,
            delivered_at: None,
            read_at: None,
        },
    ];
    let directory = Directory::new(world.store.clone(), testing::limits(|_| {}), world.bus.clone());
    let users = UserLoader::data_loader(directory.clone());
    for message in messages {
        let (sender, recipient) = if message.sender_id == alice.id {
            (alice.clone(), bob.clone())
        } else {
            (bob.clone(), alice.clone())
        };
        let sent = Sent { message: message.clone(), sender: Some(sender), recipient };
        let schema = Schema::build(Root(sent), EmptyMutation, EmptySubscription)
            .data(UserLoader::data_loader(directory.clone()))
            .finish();
        for query in PLANNED {
            let plan = compiled(query).unwrap_or_else(|| panic!("not compiled: {query}"));
            let rendered = plan.render(&message, &users).await.expect("users load");
            let executed = schema.execute(*query).await;
            assert!(executed.errors.is_empty(), "{query}: {:?}", executed.errors);
            assert_eq!(
                serde_json::to_value(&rendered).unwrap(),
                serde_json::to_value(&executed).unwrap(),
                "{query}"
            );
            // The same selection on `sendMessage`'s result type.
            let sent = schema.execute(query.replace("messageReceived", "sent")).await;
            assert!(sent.errors.is_empty(), "{query}: {:?}", sent.errors);
            assert_eq!(only_value(&sent), only_value(&executed), "{query}");
        }
        // What a plan cannot hold, `sendMessage`'s result resolves as `Message` does.
        for query in [
            "{ messageReceived { id sender { phoneNumber online } } }",
            "{ messageReceived { ...F } } fragment F on Message { id @include(if: true) }",
        ] {
            let executed = schema.execute(query).await;
            let sent = schema.execute(query.replace("messageReceived", "sent")).await;
            assert!(executed.errors.is_empty() && sent.errors.is_empty(), "{query}");
            assert_eq!(only_value(&sent), only_value(&executed), "{query}");
        }
    }
}

#[tokio::test]
async fn keys_come_in_the_order_they_were_selected() {
    let world = World::new();
    let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
    let message = world.message(&alice, &bob, "hello").await;
    let directory = Directory::new(world.store.clone(), testing::limits(|_| {}), world.bus.clone());
    let plan = compiled("{ messageReceived { sender { id } content id sender { username } } }");
    let rendered = plan.unwrap().render(&message, &UserLoader::data_loader(directory)).await;
    let text = serde_json::to_string(&rendered.unwrap()).unwrap();
    let expected = format!(
        r#"{{"data":{{"messageReceived":{{"sender":{{"id":"{}","username":"someone"}},"content":"hello","id":"{}"}}}}}}"#,
        alice.id, message.id
    );
    assert_eq!(text, expected);
}

#[tokio::test]
async fn a_message_whose_user_is_gone_is_left_to_the_schema() {
    let world = World::new();
    let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
    let mut message = world.message(&alice, &bob, "hello").await;
    message.sender_id = UserId::new("nobody");
    let directory = Directory::new(world.store.clone(), testing::limits(|_| {}), world.bus.clone());
    let plan = compiled("{ messageReceived { id sender { id } } }").unwrap();
    assert!(plan.render(&message, &UserLoader::data_loader(directory)).await.is_none());
}

#[test]
fn anything_more_than_plain_fields_is_left_to_the_schema() {
    for query in [
        // Fields that read more than the message and its users, or take arguments.
        "{ messageReceived { sender { online } } }",
        "{ messageReceived { recipient { lastSeenAt } } }",
        "{ messageReceived { sender { phoneNumber } } }",
        "{ messageReceived { id unknownField } }",
        "{ messageReceived { id(x: 1) } }",
        // Directives anywhere, whose outcome depends on variables.
        "query($a: Boolean!) { messageReceived { id @include(if: $a) } }",
        "query($a: Boolean!) { messageReceived { ...F @skip(if: $a) } } fragment F on Message { id }",
        "query($a: Boolean!) { messageReceived { ... @include(if: $a) { id } } }",
        // Fragments on other types.
        "{ messageReceived { ... on User { id } } }",
        "{ messageReceived { ...F } } fragment F on Node { id }",
        // Not a message.
        "{ chatEvents { __typename } }",
        "{ messageReceived { id } other: messageReceived { id } }",
    ] {
        assert!(compiled(query).is_none(), "{query}");
    }
}
