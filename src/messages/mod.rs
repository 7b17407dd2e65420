//! Messages: sending, acknowledging, reading history, and the live stream.
//!
//! A message is stored before anyone hears of it: [`Messaging::send`] writes it durably, then
//! publishes it on the bus for live subscribers. The store is the source of truth; the bus is
//! only a wake-up call, so a subscriber that misses a bus event still gets the message from the
//! store (see [`delivery`]).

pub mod delivery;

use std::{collections::HashSet, sync::Arc};

use chrono::Utc;
use futures::Stream;

use crate::{
    bus::{BusEvent, MessageBus},
    domain::{
        ChatEvent, ClientMessageId, Conversation, Cursor, Message, MessageContent, MessageId,
        NewMessage, PageSize, User, UserId, Viewer,
    },
    error::{AppError, AppResult},
    rate_limits::RateLimits,
    store::{Inserted, Store, StoreResult},
};

/// Most message ids one `markDelivered` call may acknowledge.
pub const MAX_ACK_BATCH: usize = 500;

/// Sends, acknowledges and reads messages.
#[derive(Clone)]
pub struct Messaging {
    /// Where messages are kept: the source of truth.
    store: Arc<dyn Store>,
    /// Wakes the recipient's open subscriptions once a message is stored.
    bus: Arc<dyn MessageBus>,
    /// The per-sender message limit.
    limits: Arc<RateLimits>,
    /// Bounds the backlog pages held by replaying subscriptions, server-wide.
    pages: delivery::PageGate,
}

/// What a client asked to send, already parsed.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The recipient's user id.
    pub recipient_id: UserId,
    /// The text.
    pub content: MessageContent,
    /// Optional idempotency key.
    pub client_message_id: Option<ClientMessageId>,
}

/// One page of a conversation, oldest first within the page.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The messages, in the order they were sent.
    pub messages: Vec<Message>,
    /// Whether older messages exist before this page.
    pub has_older: bool,
}

/// A message just sent, with the two users it is between as the send found them, so a caller
/// that shows them (`sendMessage`'s result) needs no second read.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: Message,
    /// `None` only if the sender's account has no row (it is then refused by the store).
    pub sender: Option<User>,
    pub recipient: User,
}

/// One page of the chat list, newest activity first.
#[derive(Debug, Clone)]
pub struct ChatListPage {
    /// The conversations on this page.
    pub conversations: Vec<Conversation>,
    /// Whether more (older) conversations follow.
    pub has_more: bool,
}

impl Messaging {
    /// The service over `store`, waking subscribers through `bus`.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn MessageBus>, limits: Arc<RateLimits>) -> Self {
        Messaging { store, bus, limits, pages: delivery::PageGate::default() }
    }

    /// Stores a message from `viewer` and wakes the recipient's live subscriptions.
    ///
    /// A retry with the same `client_message_id` returns the first message and publishes
    /// nothing.
    #[tracing::instrument(skip_all, fields(sender = %viewer.user_id))]
    pub async fn send(&self, viewer: &Viewer, request: SendRequest) -> AppResult<Sent> {
        self.limits.check_send(viewer.user_id.as_str()).await?;
        if request.recipient_id == viewer.user_id {
            return Err(AppError::BadUserInput("you cannot send a message to yourself".into()));
        }
        // Two primary-key reads (cached statements, microseconds each on SQLite; one batched
        // `IN` read of both, its statement compiled per call, cost 6-30% of saturation
        // throughput in an A/B run). A recipient who
        // blocks the sender, or has not verified their number, is answered exactly like one
        // who does not exist (a deleted account), so the sender learns nothing about the block
        // or the unfinished sign-up.
        let sender = self.store.user_by_id(&viewer.user_id).await?;
        if sender.as_ref().is_some_and(|sender| !sender.phone_verified) {
            return Err(AppError::PhoneNotVerified);
        }
        let recipient = self.store.user_by_id(&request.recipient_id).await?;
        let not_found = || AppError::NotFound("recipient not found".into());
        let recipient = recipient
            .filter(|recipient| !recipient.is_deleted() && recipient.phone_verified)
            .ok_or_else(not_found)?;
        if self.store.blocks(&request.recipient_id, &viewer.user_id).await? {
            return Err(not_found());
        }
        let inserted = self
            .store
            .insert_message(NewMessage {
                sender_id: viewer.user_id.clone(),
                recipient_id: request.recipient_id,
                content: request.content,
                client_message_id: request.client_message_id,
                sent_at: Utc::now(),
            })
            .await?;
        let message = match inserted {
            Inserted::Created(message) => {
                let message = Arc::new(message);
                self.bus.publish(message.clone()).await;
                // The sender's other devices show what was sent from this one.
                let sent = Arc::new(ChatEvent::MessageSent(Message::clone(&message)));
                self.bus.publish_event(&viewer.user_id, sent).await;
                Arc::unwrap_or_clone(message)
            }
            Inserted::Existing(message) => message,
        };
        Ok(Sent { message, sender, recipient })
    }

    /// Acknowledges messages on behalf of their recipient, returning them in the order asked.
    ///
    /// Nothing changes unless every id exists and is addressed to `viewer`.
    #[tracing::instrument(skip_all, fields(recipient = %viewer.user_id, count = ids.len()))]
    pub async fn mark_delivered(
        &self,
        viewer: &Viewer,
        ids: Vec<MessageId>,
    ) -> AppResult<Vec<Message>> {
        if ids.len() > MAX_ACK_BATCH {
            return Err(AppError::BadUserInput(format!(
                "at most {MAX_ACK_BATCH} messages can be acknowledged at once"
            )));
        }
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::new();
        for id in &ids {
            if seen.insert(id) {
                unique.push(id.clone());
            }
        }
        let found = self.store.messages_by_ids(&unique).await?;
        if found.len() != unique.len() {
            return Err(AppError::NotFound("one or more messages were not found".into()));
        }
        if found.iter().any(|message| message.recipient_id != viewer.user_id) {
            return Err(AppError::Forbidden("only the recipient can acknowledge a message".into()));
        }
        self.store.mark_delivered(&viewer.user_id, &unique, Utc::now()).await?;
        let updated = self.store.messages_by_ids(&unique).await?;
        let newly_delivered = updated.iter().filter(|message| {
            found.iter().any(|before| before.id == message.id && before.delivered_at.is_none())
        });
        self.announce_status(newly_delivered.cloned().collect()).await;
        let mut ordered = Vec::with_capacity(unique.len());
        for id in &unique {
            if let Some(message) = updated.iter().find(|message| &message.id == id) {
                ordered.push(message.clone());
            }
        }
        Ok(ordered)
    }

    /// Reads a page of the messages between `viewer` and `other_user_id` sent before the
    /// cursor.
    #[tracing::instrument(skip_all, fields(user = %viewer.user_id))]
    pub async fn history(
        &self,
        viewer: &Viewer,
        other_user_id: &UserId,
        page_size: PageSize,
        before: Option<Cursor>,
    ) -> AppResult<HistoryPage> {
        let limit = page_size.get();
        if self.store.user_by_id(other_user_id).await?.is_none() {
            return Err(AppError::NotFound("user not found".into()));
        }
        let before_seq = before.map(Cursor::seq);
        let mut messages =
            self.store.conversation(&viewer.user_id, other_user_id, before_seq, limit + 1).await?;
        let has_older = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(HistoryPage { messages, has_older })
    }

    /// The caller's chat list, newest activity first, after `after` (the cursor of the last
    /// conversation of the previous page). Cursors point at activity, so they stay valid while
    /// new messages arrive (a conversation with new activity moves to the top).
    pub async fn chat_list(
        &self,
        viewer: &Viewer,
        page_size: PageSize,
        after: Option<Cursor>,
    ) -> AppResult<ChatListPage> {
        let limit = page_size.get();
        let after_seq = after.map(Cursor::seq);
        let mut conversations =
            self.store.conversations(&viewer.user_id, after_seq, limit + 1).await?;
        let has_more = conversations.len() > limit;
        conversations.truncate(limit);
        Ok(ChatListPage { conversations, has_more })
    }

    /// Marks read everything `with` sent the caller up to message `up_to` (which may be a
    /// message in either direction of that conversation). Idempotent and monotonic: marking an
    /// older message changes nothing. Returns the conversation with its new unread count.
    #[tracing::instrument(skip_all, fields(reader = %viewer.user_id))]
    pub async fn mark_read(
        &self,
        viewer: &Viewer,
        with: &UserId,
        up_to: &MessageId,
    ) -> AppResult<Conversation> {
        let not_found = || AppError::NotFound("message not found in this conversation".into());
        let found = self.store.messages_by_ids(std::slice::from_ref(up_to)).await?;
        let message = found.into_iter().next().ok_or_else(not_found)?;
        let participants = [&message.sender_id, &message.recipient_id];
        if !participants.contains(&&viewer.user_id) || !participants.contains(&with) {
            return Err(not_found());
        }
        if with != &viewer.user_id {
            let marked =
                self.store.mark_read(&viewer.user_id, with, message.seq, Utc::now()).await?;
            if !marked.is_empty() {
                self.announce_status(self.store.messages_by_ids(&marked).await?).await;
            }
        }
        self.store.conversation_with(&viewer.user_id, with).await?.ok_or_else(not_found)
    }

    /// Tells each message's sender, live, that it was delivered or read. Best effort: the
    /// status is state on the message, so a sender who misses this sees it by querying.
    async fn announce_status(&self, mut messages: Vec<Message>) {
        messages.sort_by_key(|message| message.seq);
        for message in messages {
            let sender = message.sender_id.clone();
            let changed = Arc::new(ChatEvent::MessageStatusChanged(message));
            self.bus.publish_event(&sender, changed).await;
        }
    }

    /// Events about the viewer's own messages, live, for as long as the stream is held:
    /// messages they sent from any device, and status changes of messages they sent. `None`
    /// marks where events were dropped because the connection fell behind.
    pub async fn events(
        &self,
        viewer: &Viewer,
    ) -> AppResult<impl Stream<Item = Option<Arc<ChatEvent>>> + use<>> {
        use futures::StreamExt;
        let events = self.bus.subscribe_events(&viewer.user_id).await?;
        Ok(events.filter_map(|event| async move {
            match event {
                BusEvent::Chat(event) => Some(Some(event)),
                BusEvent::Lagged => Some(None),
                BusEvent::Message(_) | BusEvent::SessionEnded | BusEvent::SessionsEnded(_) => None,
            }
        }))
    }

    /// Every message for `viewer`: the unacknowledged backlog, then live ones (see
    /// [`delivery`]). Listening has started when this returns.
    pub async fn subscribe(
        &self,
        viewer: &Viewer,
    ) -> AppResult<impl Stream<Item = StoreResult<Message>> + use<>> {
        let user = viewer.user_id.clone();
        let (store, bus) = (self.store.clone(), self.bus.as_ref());
        Ok(delivery::replay_then_live(store, bus, user, &self.pages).await?)
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;
    use crate::{bus::BusEvent, domain::MessageStatus, testing::World};

    fn messaging(world: &World) -> Messaging {
        let limits = crate::testing::limits(|l| l.messages_per_second_per_user = 1000);
        Messaging::new(world.store.clone(), world.bus.clone(), limits)
    }

    /// The event waiting on `events`, if any.
    fn next(
        events: &mut (impl Stream<Item = Option<Arc<ChatEvent>>> + Unpin),
    ) -> Option<ChatEvent> {
        events.next().now_or_never().flatten().flatten().map(|event| (*event).clone())
    }

    fn request(to: &UserId, content: &str, key: Option<&str>) -> SendRequest {
        SendRequest {
            recipient_id: to.clone(),
            content: MessageContent::parse(content.into()).unwrap(),
            client_message_id: key.map(|key| ClientMessageId::parse(key.into()).unwrap()),
        }
    }

    #[tokio::test]
    async fn a_sent_message_is_stored_then_published_once_even_when_retried() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let sender = world.viewer(&alice).await;
        let mut inbox = world.bus.subscribe(&bob.id).await.unwrap();
        let messaging = messaging(&world);

        let Sent { message: sent, sender: from, recipient: to } =
            messaging.send(&sender, request(&bob.id, "hi", Some("k1"))).await.unwrap();
        // With the users it is between, as the checks read them (`sendMessage` shows them).
        assert_eq!((from.map(|user| user.id), to.id), (Some(alice.id.clone()), bob.id.clone()));
        let stored = world.store.undelivered_messages(&bob.id, 0, 10).await.unwrap();
        assert_eq!(stored, vec![sent.clone()]);
        match inbox.next().await {
            Some(BusEvent::Message(published)) => assert_eq!(*published, sent),
            other => panic!("expected the message on the bus, got {other:?}"),
        }

        let retried =
            messaging.send(&sender, request(&bob.id, "hi", Some("k1"))).await.unwrap().message;
        assert_eq!(retried, sent, "the retry returns the original");
        assert!(inbox.next().now_or_never().is_none(), "and publishes nothing");
        assert_eq!(world.store.undelivered_messages(&bob.id, 0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn messages_go_to_someone_else_who_exists() {
        let world = World::new();
        let alice = world.user("+12025550143").await;
        let sender = world.viewer(&alice).await;
        let messaging = messaging(&world);
        let to_self = messaging.send(&sender, request(&alice.id, "hi", None)).await.unwrap_err();
        assert_eq!(to_self.code(), "BAD_USER_INPUT");
        let nobody = UserId::new("nobody");
        let missing = messaging.send(&sender, request(&nobody, "hi", None)).await.unwrap_err();
        assert_eq!(missing.code(), "NOT_FOUND");
        assert!(world.store.undelivered_messages(&alice.id, 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_recipient_acknowledges_and_all_or_nothing() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let (as_alice, as_bob) = (world.viewer(&alice).await, world.viewer(&bob).await);
        let messaging = messaging(&world);
        let first = messaging.send(&as_alice, request(&bob.id, "one", None)).await.unwrap().message;
        let second =
            messaging.send(&as_alice, request(&bob.id, "two", None)).await.unwrap().message;

        let by_sender = messaging.mark_delivered(&as_alice, vec![first.id.clone()]).await;
        assert_eq!(by_sender.unwrap_err().code(), "FORBIDDEN");
        let with_unknown =
            messaging.mark_delivered(&as_bob, vec![first.id.clone(), MessageId::new("nope")]).await;
        assert_eq!(with_unknown.unwrap_err().code(), "NOT_FOUND");
        assert_eq!(world.store.undelivered_messages(&bob.id, 0, 10).await.unwrap().len(), 2);

        let asked = vec![second.id.clone(), first.id.clone(), second.id.clone()];
        let acknowledged = messaging.mark_delivered(&as_bob, asked).await.unwrap();
        let ids: Vec<_> = acknowledged.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec![second.id, first.id], "in the order asked, once each");
        assert!(acknowledged.iter().all(|m| m.delivered_at.is_some()));
        assert!(world.store.undelivered_messages(&bob.id, 0, 10).await.unwrap().is_empty());

        let too_many = (0..=MAX_ACK_BATCH).map(|n| MessageId::new(n.to_string())).collect();
        assert_eq!(
            messaging.mark_delivered(&as_bob, too_many).await.unwrap_err().code(),
            "BAD_USER_INPUT"
        );
    }

    #[tokio::test]
    async fn history_pages_back_from_the_newest() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let as_alice = world.viewer(&alice).await;
        let messaging = messaging(&world);
        for n in 0..5 {
            messaging.send(&as_alice, request(&bob.id, &format!("m{n}"), None)).await.unwrap();
        }
        let content = |page: &HistoryPage| -> Vec<String> {
            page.messages.iter().map(|m| m.content.as_str().to_string()).collect()
        };
        let size = PageSize::parse(Some(2), "last").unwrap();
        let newest = messaging.history(&as_alice, &bob.id, size, None).await.unwrap();
        assert_eq!((content(&newest), newest.has_older), (vec!["m3".into(), "m4".into()], true));
        let cursor = Cursor::at(newest.messages[0].seq);
        let older = messaging.history(&as_alice, &bob.id, size, Some(cursor)).await.unwrap();
        assert_eq!(content(&older), ["m1", "m2"]);
        let cursor = Cursor::at(older.messages[0].seq);
        let oldest = messaging.history(&as_alice, &bob.id, size, Some(cursor)).await.unwrap();
        assert_eq!((content(&oldest), oldest.has_older), (vec!["m0".into()], false));
        let nobody = UserId::new("nobody");
        let missing = messaging.history(&as_alice, &nobody, size, None).await.unwrap_err();
        assert_eq!(missing.code(), "NOT_FOUND");
    }

    #[tokio::test]
    async fn senders_hear_their_messages_sent_delivered_and_read() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let (as_alice, as_bob) = (world.viewer(&alice).await, world.viewer(&bob).await);
        let messaging = messaging(&world);
        let mut alices = Box::pin(messaging.events(&as_alice).await.unwrap());
        let mut bobs = Box::pin(messaging.events(&as_bob).await.unwrap());

        let sent = messaging.send(&as_alice, request(&bob.id, "hi", None)).await.unwrap().message;
        assert_eq!(next(&mut alices), Some(ChatEvent::MessageSent(sent.clone())));
        assert_eq!(next(&mut bobs), None, "events are about one's own messages");

        messaging.mark_delivered(&as_bob, vec![sent.id.clone()]).await.unwrap();
        let Some(ChatEvent::MessageStatusChanged(delivered)) = next(&mut alices) else {
            panic!("no delivery event")
        };
        assert_eq!(
            (delivered.id.clone(), delivered.status()),
            (sent.id.clone(), MessageStatus::Delivered)
        );
        messaging.mark_delivered(&as_bob, vec![sent.id.clone()]).await.unwrap();
        assert_eq!(next(&mut alices), None, "acknowledging twice announces once");

        messaging.mark_read(&as_bob, &alice.id, &sent.id).await.unwrap();
        let Some(ChatEvent::MessageStatusChanged(read)) = next(&mut alices) else {
            panic!("no read event")
        };
        assert_eq!(read.status(), MessageStatus::Read);
        messaging.mark_read(&as_bob, &alice.id, &sent.id).await.unwrap();
        assert_eq!(next(&mut alices), None, "reading twice announces once");
    }

    #[tokio::test]
    async fn a_subscription_replays_the_backlog_then_goes_live() {
        let world = World::new();
        let (alice, bob) = (world.user("+12025550143").await, world.user("+12025550144").await);
        let (as_alice, as_bob) = (world.viewer(&alice).await, world.viewer(&bob).await);
        let messaging = messaging(&world);
        let missed =
            messaging.send(&as_alice, request(&bob.id, "while away", None)).await.unwrap().message;
        let mut stream = Box::pin(messaging.subscribe(&as_bob).await.unwrap());
        assert_eq!(stream.next().await.unwrap().unwrap(), missed);
        let live = messaging.send(&as_alice, request(&bob.id, "now", None)).await.unwrap().message;
        assert_eq!(stream.next().await.unwrap().unwrap(), live);
    }
}
