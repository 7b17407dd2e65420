//! Messages rendered straight from a compiled selection.
//!
//! A parked `messageReceived` used to run its document as a query on the delivery schema for
//! every message: clone the document, validate it, build a query environment, and resolve each
//! field through async-graphql's executor (a boxed future and a context per field). That was
//! the largest part of a message's cost after the durable write (15% of the server's CPU at
//! saturation, `perf`), and all of a replay's. `sendMessage` rendered its result the same way
//! (8%).
//!
//! Yet what clients select on a message is nearly always plain data: the message's own fields
//! and a few of its sender's and recipient's. So such a selection is compiled
//! ([`MessageSelection`]) into the list of values to write, and each message is rendered from
//! it directly: once per parked document ([`Plan`], shared by every subscription that sent the
//! same text), and per request for `sendMessage`'s result ([`SentMessage`]). Anything else
//! (arguments, directives, a field that reads more than the message and its two users, a
//! fragment on another type) is not compiled and runs on the schema as before, and so does a
//! message whose users cannot be loaded (the schema then reports why). The tests hold both
//! paths to the same output.

use std::{borrow::Cow, collections::HashMap};

use async_graphql::{
    ContextSelectionSet, Name, OutputType, Positioned, Response, ScalarType, ServerResult, Value,
    dataloader::DataLoader,
    indexmap::IndexMap,
    parser::types::{
        DocumentOperations, ExecutableDocument, Field, FragmentDefinition, Selection, SelectionSet,
    },
    registry::Registry,
};

use super::{Timestamp, messages::MessageStatus, users::UserLoader};
use crate::{
    domain::{Message, User, UserId},
    messages::Sent,
};

/// How deep fragments may nest in a compiled selection (validation has already refused cycles;
/// this only bounds the walk).
const MAX_FRAGMENT_DEPTH: usize = 16;

/// A parked `messageReceived` document compiled: its root key and the message's selection.
#[derive(Debug)]
pub(super) struct Plan {
    /// The root field's response key (its alias, or `messageReceived`).
    key: Name,
    selection: MessageSelection,
}

/// The fields a selection on `Message` writes, in response order.
#[derive(Debug)]
pub(super) struct MessageSelection(Vec<(Name, MessageField)>);

#[derive(Debug)]
enum MessageField {
    Typename,
    Id,
    SenderId,
    RecipientId,
    Content,
    SentAt,
    DeliveredAt,
    ReadAt,
    Status,
    ClientMessageId,
    Sender(Vec<(Name, UserField)>),
    Recipient(Vec<(Name, UserField)>),
}

#[derive(Debug)]
enum UserField {
    Typename,
    Id,
    Username,
    PhoneVerified,
}

type Fragments = HashMap<Name, Positioned<FragmentDefinition>>;

impl Plan {
    /// Compiles `document` (a parked `messageReceived`, already rewritten as a delivery query
    /// and validated), or `None` if any of it needs the schema.
    pub(super) fn compile(document: &ExecutableDocument) -> Option<Plan> {
        let DocumentOperations::Single(operation) = &document.operations else {
            return None;
        };
        let [root] = operation.node.selection_set.node.items.as_slice() else {
            return None;
        };
        let Selection::Field(root) = &root.node else {
            return None;
        };
        if root.node.name.node != "messageReceived" {
            return None;
        }
        let selection =
            MessageSelection::compile(&root.node.selection_set.node, &document.fragments)?;
        Some(Plan { key: root.node.response_key().node.clone(), selection })
    }

    /// `message` as its subscription's response, or `None` if one of its users cannot be
    /// loaded (the schema's path then says why).
    pub(super) async fn render(&self, message: &Message, users: &impl Users) -> Option<Response> {
        let mut data = IndexMap::with_capacity(1);
        data.insert(self.key.clone(), self.selection.render(message, users).await?);
        Some(Response::new(Value::Object(data)))
    }
}

impl MessageSelection {
    /// Compiles `set` (a selection on `Message`, already validated), or `None` if any of it
    /// needs the schema.
    pub(super) fn compile(set: &SelectionSet, fragments: &Fragments) -> Option<Self> {
        let fields = grouped(set, "Message", fragments)?
            .into_iter()
            .map(|(key, occurrences)| {
                let field = match occurrences[0].name.node.as_str() {
                    "__typename" => MessageField::Typename,
                    "id" => MessageField::Id,
                    "senderId" => MessageField::SenderId,
                    "recipientId" => MessageField::RecipientId,
                    "content" => MessageField::Content,
                    "sentAt" => MessageField::SentAt,
                    "deliveredAt" => MessageField::DeliveredAt,
                    "readAt" => MessageField::ReadAt,
                    "status" => MessageField::Status,
                    "clientMessageId" => MessageField::ClientMessageId,
                    "sender" => MessageField::Sender(user_fields(&occurrences, fragments)?),
                    "recipient" => MessageField::Recipient(user_fields(&occurrences, fragments)?),
                    _ => return None,
                };
                Some((key, field))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(MessageSelection(fields))
    }

    /// `message` as this selection shows it, or `None` if one of its users cannot be found.
    pub(super) async fn render(&self, message: &Message, users: &impl Users) -> Option<Value> {
        let mut object = IndexMap::with_capacity(self.0.len());
        for (key, field) in &self.0 {
            let value = match field {
                MessageField::Typename => Value::String("Message".into()),
                MessageField::Id => Value::String(message.id.to_string()),
                MessageField::SenderId => Value::String(message.sender_id.to_string()),
                MessageField::RecipientId => Value::String(message.recipient_id.to_string()),
                MessageField::Content => Value::String(message.content.as_str().into()),
                MessageField::SentAt => Timestamp(message.sent_at).to_value(),
                MessageField::DeliveredAt => time(message.delivered_at),
                MessageField::ReadAt => time(message.read_at),
                MessageField::Status => MessageStatus::from(message.status()).into(),
                MessageField::ClientMessageId => message
                    .client_message_id
                    .as_ref()
                    .map_or(Value::Null, |id| Value::String(id.as_str().into())),
                MessageField::Sender(fields) => user(&message.sender_id, fields, users).await?,
                MessageField::Recipient(fields) => {
                    user(&message.recipient_id, fields, users).await?
                }
            };
            object.insert(key.clone(), value);
        }
        Some(Value::Object(object))
    }
}

/// `sendMessage`'s result: the [`Message`], rendered from its compiled selection when it can
/// (with the users the send read), and otherwise resolved as `Message` is. The schema sees the
/// `Message` type.
pub(super) struct SentMessage(pub Sent);

impl OutputType for SentMessage {
    fn type_name() -> Cow<'static, str> {
        Message::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        Message::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        // The request's fragments are reached through `query_env`: public, though left out of
        // async-graphql's docs (its derived resolvers read it); nothing else leads to them.
        let fragments = &ctx.query_env.fragments;
        if let Some(selection) =
            MessageSelection::compile(&field.node.selection_set.node, fragments)
            && let Some(value) = selection.render(&self.0.message, &self.0).await
        {
            return Ok(value);
        }
        self.0.message.resolve(ctx, field).await
    }
}

fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    at.map_or(Value::Null, |at| Timestamp(at).to_value())
}

/// Where a rendered message's users come from.
pub(super) trait Users: Sync {
    /// The user `id`, or `None` if it cannot be had (the schema's path then says why).
    fn user(&self, id: &UserId) -> impl Future<Output = Option<User>> + Send;
}

/// Through the user loader, batched with every other load waiting at the moment.
impl Users for DataLoader<UserLoader> {
    async fn user(&self, id: &UserId) -> Option<User> {
        self.load_one(id.clone()).await.ok()?
    }
}

/// Users already read: `sendMessage`'s, which its checks read just before.
impl Users for Sent {
    async fn user(&self, id: &UserId) -> Option<User> {
        let mut known = self.sender.iter().chain([&self.recipient]);
        known.find(|user| user.id == *id).cloned()
    }
}

/// The user `id` as `fields` select them.
async fn user(id: &UserId, fields: &[(Name, UserField)], users: &impl Users) -> Option<Value> {
    let user = users.user(id).await?;
    let object = fields.iter().map(|(key, field)| {
        let value = match field {
            UserField::Typename => Value::String("User".into()),
            UserField::Id => Value::String(user.id.to_string()),
            UserField::Username => Value::String(user.username.as_str().into()),
            UserField::PhoneVerified => Value::Boolean(user.phone_verified),
        };
        (key.clone(), value)
    });
    Some(Value::Object(object.collect()))
}

/// The `User` fields selected by every occurrence of one `sender` or `recipient` key (a key
/// selected twice has its selections merged, as GraphQL asks).
fn user_fields(occurrences: &[&Field], fragments: &Fragments) -> Option<Vec<(Name, UserField)>> {
    let mut fields = Vec::new();
    for field in occurrences {
        flatten(&field.selection_set.node, "User", fragments, 0, &mut fields)?;
    }
    by_key(fields)
        .into_iter()
        .map(|(key, occurrences)| {
            let field = match occurrences[0].name.node.as_str() {
                "__typename" => UserField::Typename,
                "id" => UserField::Id,
                "username" => UserField::Username,
                "phoneVerified" => UserField::PhoneVerified,
                _ => return None,
            };
            Some((key, field))
        })
        .collect()
}

/// The fields of `set` (on type `on`) by response key, in the order the keys first appear,
/// fragments inlined; `None` if anything in it is more than plain fields.
fn grouped<'a>(
    set: &'a SelectionSet,
    on: &str,
    fragments: &'a Fragments,
) -> Option<Vec<(Name, Vec<&'a Field>)>> {
    let mut fields = Vec::new();
    flatten(set, on, fragments, 0, &mut fields)?;
    Some(by_key(fields))
}

/// `fields` by response key, in the order the keys first appear.
fn by_key(fields: Vec<&Field>) -> Vec<(Name, Vec<&Field>)> {
    let mut grouped: Vec<(Name, Vec<&Field>)> = Vec::new();
    for field in fields {
        let key = field.response_key().node.clone();
        match grouped.iter_mut().find(|(seen, _)| *seen == key) {
            // Validation guarantees fields sharing a key are the same field.
            Some((_, occurrences)) => occurrences.push(field),
            None => grouped.push((key, vec![field])),
        }
    }
    grouped
}

fn flatten<'a>(
    set: &'a SelectionSet,
    on: &str,
    fragments: &'a Fragments,
    depth: usize,
    out: &mut Vec<&'a Field>,
) -> Option<()> {
    if depth > MAX_FRAGMENT_DEPTH {
        return None;
    }
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => {
                let field = &field.node;
                if !field.arguments.is_empty() || !field.directives.is_empty() {
                    return None;
                }
                out.push(field);
            }
            Selection::FragmentSpread(spread) => {
                let fragment = &fragments.get(&spread.node.fragment_name.node)?.node;
                if !spread.node.directives.is_empty()
                    || !fragment.directives.is_empty()
                    || fragment.type_condition.node.on.node != on
                {
                    return None;
                }
                flatten(&fragment.selection_set.node, on, fragments, depth + 1, out)?;
            }
            Selection::InlineFragment(inline) => {
                let inline = &inline.node;
                let condition = inline.type_condition.as_ref().map(|c| c.node.on.node.as_str());
                if !inline.directives.is_empty() || condition.is_some_and(|c| c != on) {
                    return None;
                }
                flatten(&inline.selection_set.node, on, fragments, depth + 1, out)?;
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests;
