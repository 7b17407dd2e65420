//! `messageReceived` and `chatEvents` subscriptions that hold almost nothing while nobody
//! writes.
//!
//! A chat server spends its life holding the subscriptions of people who are not typing. Run
//! the usual way, each `messageReceived` keeps async-graphql's executing stream alive: its own
//! copy of the parsed document, the query environment, and the resolver's stream wrapped in
//! field and select streams, about 9 KiB per subscription at rest (massif, 3,000 idle
//! connections).
//!
//! So the subscription is started through the schema as usual (every check, limit, error and
//! the resolver itself are the schema's own), but with a [`Handover`] in its request data: the
//! resolver leaves its stream there and returns an empty one, async-graphql's stream ends and
//! is dropped, and the subscription is *parked*: what waits is the resolver's stream and an
//! `Arc` of the document, shared by every subscription that sent the same text. Each item is
//! then turned into its `next` payload: written straight from the document's compiled
//! selection when it has one (`message_selection`: plain fields of a message and its users),
//! else by running the same selection as a query on [`DeliverySchema`], whose root has the
//! same field (`messageReceived` or `chatEvents`), resolved to that item. The payload is the
//! one the subscription would have produced: same selection, aliases, fragments, variables and
//! errors.
//!
//! Only operations that select exactly one of those fields at their root, without arguments or
//! directives there, are parked; anything else runs the usual way.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
};

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Object, Request, Response, Schema, SchemaBuilder,
    ValidationMode, Variables,
    dataloader::DataLoader,
    parser::types::{DocumentOperations, ExecutableDocument, OperationType, Selection},
};
use futures::{
    Stream, StreamExt,
    future::{self, Either},
    stream::{BoxStream, Fuse},
};
use tokio::sync::Semaphore;

use super::{
    error_codes::code_execution_errors, event_nodes::ChatEventNode, message_selection::Plan,
    parsed_queries::DOCUMENT_BYTES_PER_QUERY_BYTE, users::UserLoader,
};
use crate::{client_address::ClientAddress, domain::Message, sessions::RequestAuth};

/// The fields that are parked: what a client holds open all day.
const PARKED_FIELDS: [&str; 2] = ["messageReceived", "chatEvents"];
/// Longer documents are parsed for each subscription (they are rare).
const MAX_CACHED_QUERY_BYTES: usize = 4096;
/// Most memory the cache may hold, by the parse cache's estimate of a document's size. When
/// full it starts over (a miss costs one parse), so distinct documents cannot pin memory.
const MAX_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Most items of one subscription run at once.
const MAX_BATCH: usize = 64;
/// Most batches running at once in the whole server. A batch of 64 needs ~250 KiB while it
/// runs (each delivery clones the document and builds a response); when thousands of clients
/// reconnect at once (a restart) and each replays its backlog, unbounded that was 1.3 GB for
/// 5,000 connections, and the allocator kept much of it. Far more than two cores can run.
const MAX_BATCHES_RUNNING: usize = 64;

/// One item for a parked subscription, as its resolver produced it.
pub(super) enum Item {
    /// For `messageReceived`.
    Message(async_graphql::Result<Message>),
    /// For `chatEvents`.
    Event(ChatEventNode),
}

/// A parked subscription's items.
pub(super) type ItemStream = BoxStream<'static, Item>;

/// Where a parkable resolver leaves its stream when the subscription is parked.
#[derive(Default)]
pub(super) struct Handover(Mutex<Option<ItemStream>>);

impl Handover {
    /// Leaves `items` for the caller.
    fn put(&self, items: ItemStream) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(items);
    }

    fn take(&self) -> Option<ItemStream> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// What a parkable resolver returns: `items` as they are, or, when the subscription is being
/// parked, nothing, having left them (made [`Item`]s by `into_item`) in the request's
/// [`Handover`].
pub(super) fn hand_over<T, S>(
    ctx: &Context<'_>,
    items: S,
    into_item: fn(T) -> Item,
) -> impl Stream<Item = T> + Send + use<T, S>
where
    T: Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    match ctx.data_opt::<Arc<Handover>>() {
        Some(handover) => {
            handover.put(items.map(into_item).boxed());
            Either::Left(futures::stream::empty())
        }
        None => Either::Right(items),
    }
}

/// The schema each parked delivery runs on: the types of the real schema, reached from a
/// root whose only field is the message being delivered.
pub(super) type DeliverySchema = Schema<DeliveryRoot, EmptyMutation, EmptySubscription>;

/// Builds the delivery schema; `data` adds what the message's resolvers read (services, loaders).
pub(super) fn delivery_schema(
    data: impl FnOnce(
        SchemaBuilder<DeliveryRoot, EmptyMutation, EmptySubscription>,
    ) -> SchemaBuilder<DeliveryRoot, EmptyMutation, EmptySubscription>,
) -> DeliverySchema {
    // No extensions: with any, async-graphql runs every field of every delivered message
    // through the extension chain (a boxed future per extension and two registry lookups per
    // field). Errors are coded in `Run::execute` instead: parse and validation errors cannot
    // occur here, every document having been validated against the real schema before it was
    // parked (this schema's validation only guards against fragment cycles).
    let builder = Schema::build(DeliveryRoot, EmptyMutation, EmptySubscription)
        .validation_mode(ValidationMode::Fast);
    data(builder).finish()
}

/// The root of [`DeliverySchema`]: each parked field, resolved to the item being delivered.
pub(super) struct DeliveryRoot;

/// The item one delivery resolves its root field to (taken by that one field).
struct Delivered(Mutex<Option<Item>>);

impl Delivered {
    fn take(ctx: &Context<'_>) -> async_graphql::Result<Item> {
        let item = ctx.data::<Delivered>()?.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        item.ok_or_else(|| "nothing to deliver".into())
    }
}

#[Object]
impl DeliveryRoot {
    async fn message_received(&self, ctx: &Context<'_>) -> async_graphql::Result<Message> {
        match Delivered::take(ctx)? {
            Item::Message(message) => message,
            Item::Event(_) => Err("not a message".into()),
        }
    }

    async fn chat_events(&self, ctx: &Context<'_>) -> async_graphql::Result<ChatEventNode> {
        match Delivered::take(ctx)? {
            Item::Event(event) => Ok(event),
            Item::Message(_) => Err("not an event".into()),
        }
    }
}

/// Which operations are parked, the documents they run as, and the schema they run on.
#[derive(Clone)]
pub(super) struct Parking {
    delivery: DeliverySchema,
    /// Permits for batches running at once ([`MAX_BATCHES_RUNNING`]).
    running: Arc<Semaphore>,
    /// Parkable documents already validated once, rewritten for [`DeliverySchema`]; shared by
    /// every subscription that sent the same text.
    documents: Arc<Mutex<Documents>>,
    /// Loads the users a compiled [`Plan`] shows.
    users: Arc<DataLoader<UserLoader>>,
}

/// A parked document, and its selection compiled when it can be.
struct Compiled {
    document: ExecutableDocument,
    plan: Option<Plan>,
}

impl Compiled {
    fn new(document: ExecutableDocument) -> Self {
        let plan = Plan::compile(&document);
        Compiled { document, plan }
    }
}

type DocumentKey = (String, Option<String>);

/// Documents by query text and operation name, and their estimated size.
#[derive(Default)]
struct Documents {
    by_key: HashMap<DocumentKey, Arc<Compiled>>,
    bytes: usize,
}

/// A parkable subscription's results: the schema's stream until it ends (it yields only a
/// refusal, if any), then the parked deliveries, if the resolver handed its items over.
enum Parked {
    /// Boxed: once delivering, none of it is kept.
    Starting(Box<Starting>),
    Delivering(Deliveries),
    Done,
}

/// What a subscription being parked holds until its schema stream ends.
struct Starting {
    started: BoxStream<'static, Response>,
    handover: Arc<Handover>,
    parkable: Parkable,
    parking: Parking,
    context: (Variables, RequestAuth, ClientAddress),
}

impl Stream for Parked {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Response>> {
        loop {
            match &mut *self {
                Parked::Starting(starting) => {
                    if let Some(response) = std::task::ready!(starting.started.poll_next_unpin(cx))
                    {
                        return Poll::Ready(Some(response));
                    }
                    let Parked::Starting(starting) = std::mem::replace(&mut *self, Parked::Done)
                    else {
                        unreachable!("matched above");
                    };
                    let Starting { handover, parkable, parking, context, .. } = *starting;
                    // Nothing was handed over when the schema refused the operation (it has
                    // said why).
                    if let Some(items) = handover.take() {
                        let Parkable { key, document } = parkable;
                        if let Some(key) = key {
                            parking.remember(key, document.clone());
                        }
                        let (variables, auth, client) = context;
                        *self = Parked::Delivering(
                            parking.deliver(items, document, variables, auth, client),
                        );
                    }
                }
                Parked::Delivering(deliveries) => return deliveries.poll_next_unpin(cx),
                Parked::Done => return Poll::Ready(None),
            }
        }
    }
}

/// A parked subscription's responses.
///
/// Items that are ready together (a backlog page, a burst; at most [`MAX_BATCH`]) run at once,
/// in order: the users they show then load in one batch, where one at a time each waited for
/// the user loader's batch window (a 20,000-message backlog replayed at 2,600 msg/s). Written
/// by hand so that, idle, it holds only the item stream: no batch, no execution.
///
/// A batch runs as a task of its own, not inside the connection's: the connection polls its
/// operations only between writes, and a client that reads slowly (a phone on a bad network)
/// would otherwise keep one of the server's [`MAX_BATCHES_RUNNING`] permits for as long as its
/// writes block, and 64 such clients would stall every other replay. The task borrows the item
/// stream and gathers the rest of the batch only once it has its permit: what is ready meanwhile
/// waits in the delivery's backlog page, whose memory is bounded server-wide
/// (`messages::delivery::PageGate`), rather than in a batch per waiting subscription.
pub(super) struct Deliveries {
    /// Fused: its end may be seen while gathering a batch, and is seen again after it. Lent to
    /// the running batch's task (`None` meanwhile).
    items: Option<Fuse<ItemStream>>,
    run: Arc<Run>,
    /// The batch being executed, which hands the items back; aborted if the subscription ends
    /// first.
    running: Option<tokio::task::JoinHandle<(Fuse<ItemStream>, Vec<Response>)>>,
    /// Its responses, not yet taken.
    ready: std::vec::IntoIter<Response>,
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
}

impl Stream for Deliveries {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Response>> {
        loop {
            if let Some(response) = self.ready.next() {
                return Poll::Ready(Some(response));
            }
            // A spent batch still holds its buffer (up to 64 responses): let it go, or an idle
            // subscription keeps the room of the largest batch it ever delivered.
            self.ready = Vec::new().into_iter();
            if let Some(running) = &mut self.running {
                let finished = std::task::ready!(Pin::new(running).poll(cx));
                self.running = None;
                let Ok((items, responses)) = finished else {
                    // The batch panicked: end the subscription rather than skip its messages
                    // (they are still unacknowledged, and replay when the client resubscribes).
                    tracing::error!("a delivery batch failed; the subscription ends");
                    return Poll::Ready(None);
                };
                self.items = Some(items);
                self.ready = responses.into_iter();
                continue;
            }
            let Some(items) = &mut self.items else {
                return Poll::Ready(None);
            };
            let Some(first) = std::task::ready!(items.poll_next_unpin(cx)) else {
                return Poll::Ready(None);
            };
            let Some(mut items) = self.items.take() else {
                return Poll::Ready(None);
            };
            let run = self.run.clone();
            self.running = Some(tokio::spawn(async move {
                // Never closed, so a permit always comes.
                let _permit = run.running.acquire().await;
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    let next = std::future::poll_fn(|cx| Poll::Ready(items.poll_next_unpin(cx)));
                    match next.await {
                        Poll::Ready(Some(item)) => batch.push(item),
                        // The end, if it came, is seen again when the stream is next polled.
                        _ => break,
                    }
                }
                let responses =
                    future::join_all(batch.into_iter().map(|item| run.execute(item))).await;
                (items, responses)
            }));
        }
    }
}

/// What each delivery of one parked subscription runs.
struct Run {
    schema: DeliverySchema,
    /// Shared by every parked subscription.
    running: Arc<Semaphore>,
    document: Arc<Compiled>,
    users: Arc<DataLoader<UserLoader>>,
    variables: Variables,
    auth: RequestAuth,
    client: ClientAddress,
}

impl Run {
    /// `item` as the subscription's response: rendered by the document's [`Plan`] if it has
    /// one, else run on the delivery schema.
    async fn execute(&self, item: Item) -> Response {
        if let (Some(plan), Item::Message(Ok(message))) = (&self.document.plan, &item)
            && let Some(response) = plan.render(message, &*self.users).await
        {
            return response;
        }
        let mut request = Request::new(String::new())
            .variables(self.variables.clone())
            .data(Delivered(Mutex::new(Some(item))))
            .data(self.auth.clone())
            .data(self.client);
        request.set_parsed_query(self.document.document.clone());
        let mut response = self.schema.execute(request).await;
        code_execution_errors(&mut response);
        response
    }
}

/// A subscription that may be parked: the document it runs as per message.
pub(super) struct Parkable {
    key: Option<DocumentKey>,
    document: Arc<Compiled>,
}

impl Parking {
    /// Parks on `delivery`; documents that compile are rendered by their [`Plan`] instead,
    /// loading users through `users`.
    pub(super) fn new(delivery: DeliverySchema, users: DataLoader<UserLoader>) -> Self {
        let running = Arc::new(Semaphore::new(MAX_BATCHES_RUNNING));
        let users = Arc::new(users);
        Parking { delivery, running, documents: Arc::default(), users }
    }

    /// Whether `request` can be parked, and the document each of its messages runs as.
    pub(super) fn parkable(&self, request: &Request) -> Option<Parkable> {
        // Most operations over a websocket are not this one; they are not parsed here.
        if !PARKED_FIELDS.iter().any(|field| request.query.contains(field)) {
            return None;
        }
        let key = (request.query.len() <= MAX_CACHED_QUERY_BYTES)
            .then(|| (request.query.clone(), request.operation_name.clone()));
        if let Some(key) = &key
            && let Some(document) = self.cached().by_key.get(key)
        {
            return Some(Parkable { key: None, document: document.clone() });
        }
        let document = async_graphql::parser::parse_query(&request.query).ok()?;
        let document = as_delivery_query(document, request.operation_name.as_deref())?;
        Some(Parkable { key, document: Arc::new(Compiled::new(document)) })
    }

    /// Starts `request` through `started` (the real schema's stream, with `handover` in its
    /// data), then, if its resolver handed its items over, delivers them parked.
    pub(super) fn run(
        &self,
        parkable: Parkable,
        started: BoxStream<'static, Response>,
        handover: Arc<Handover>,
        context: (Variables, RequestAuth, ClientAddress),
    ) -> BoxStream<'static, Response> {
        let starting = Starting { started, handover, parkable, parking: self.clone(), context };
        Parked::Starting(Box::new(starting)).boxed()
    }

    /// Each item as the response its subscription asked for (see [`Deliveries`]).
    fn deliver(
        &self,
        items: ItemStream,
        document: Arc<Compiled>,
        variables: Variables,
        auth: RequestAuth,
        client: ClientAddress,
    ) -> Deliveries {
        let schema = self.delivery.clone();
        let running = self.running.clone();
        let users = self.users.clone();
        let run = Run { schema, running, document, users, variables, auth, client };
        let ready = Vec::new().into_iter();
        Deliveries { items: Some(items.fuse()), run: Arc::new(run), running: None, ready }
    }

    fn remember(&self, key: DocumentKey, document: Arc<Compiled>) {
        let bytes = key.0.len() * (DOCUMENT_BYTES_PER_QUERY_BYTE + 1);
        let mut documents = self.cached();
        if documents.bytes + bytes > MAX_CACHE_BYTES {
            *documents = Documents::default();
        }
        if documents.by_key.insert(key, document).is_none() {
            documents.bytes += bytes;
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Documents> {
        self.documents.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `document`'s operation `name` as a query for [`DeliverySchema`], if it is a subscription
/// selecting exactly one parked field at its root, without arguments or directives there.
fn as_delivery_query(
    document: ExecutableDocument,
    name: Option<&str>,
) -> Option<ExecutableDocument> {
    let mut operation = match (document.operations, name) {
        (DocumentOperations::Single(operation), None) => operation,
        (DocumentOperations::Multiple(mut operations), Some(name)) => operations.remove(name)?,
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.into_values().next()?
        }
        // Left for the schema to refuse in its own words.
        _ => return None,
    };
    let node = &operation.node;
    let [selection] = node.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &selection.node else {
        return None;
    };
    let parkable = node.ty == OperationType::Subscription
        && node.directives.is_empty()
        && PARKED_FIELDS.contains(&field.node.name.node.as_str())
        && field.node.arguments.is_empty()
        && field.node.directives.is_empty();
    if !parkable {
        return None;
    }
    operation.node.ty = OperationType::Query;
    Some(ExecutableDocument {
        operations: DocumentOperations::Single(operation),
        fragments: document.fragments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testing, users::Directory};

    /// Parking on a delivery schema without services, with a user loader over `world`'s
    /// store (the documents below select no user).
    fn parking(world: &testing::World) -> Parking {
        let limits = testing::limits(|_| {});
        let directory = Directory::new(world.store.clone(), limits, world.bus.clone());
        Parking::new(delivery_schema(|builder| builder), UserLoader::data_loader(directory))
    }

    fn rewritten(query: &str, name: Option<&str>) -> Option<ExecutableDocument> {
        as_delivery_query(async_graphql::parser::parse_query(query).unwrap(), name)
    }

    #[test]
    fn parks_a_subscription_to_message_received_only() {
        let document = rewritten(
            "subscription S($a: Boolean!) { m: messageReceived { id ...F @include(if: $a) } }
             fragment F on Message { content }",
            None,
        )
        .unwrap();
        let DocumentOperations::Single(operation) = &document.operations else { panic!() };
        assert_eq!(operation.node.ty, OperationType::Query);
        assert_eq!(document.fragments.len(), 1);
    }

    #[test]
    fn parks_chat_events_too() {
        assert!(rewritten("subscription { chatEvents { __typename } }", None).is_some());
    }

    #[test]
    fn the_document_cache_stays_bounded() {
        let world = testing::World::new();
        let parking = parking(&world);
        let document = Arc::new(Compiled::new(
            rewritten("subscription { messageReceived { id } }", None).unwrap(),
        ));
        let padding = "#".repeat(4000);
        for n in 0..100 {
            parking.remember((format!("{padding}{n}"), None), document.clone());
        }
        let documents = parking.cached();
        assert!(documents.bytes <= MAX_CACHE_BYTES);
        assert!(!documents.by_key.is_empty() && documents.by_key.len() < 100);
    }

    fn message(seq: i64) -> Item {
        use crate::domain::{MessageContent, MessageId, UserId};
        Item::Message(Ok(Message {
            id: MessageId::new(format!("m{seq}")),
            seq,
            sender_id: UserId::new("alice"),
            recipient_id: UserId::new("bob"),
            content: MessageContent::from_stored("hi".into()),
            client_message_id: None,
            sent_at: chrono::Utc::now(),
            delivered_at: None,
            read_at: None,
        }))
    }

    /// A subscription whose connection stops polling it (its writes blocked by a client that
    /// reads slowly) must not keep a batch permit: with more such subscriptions than permits,
    /// every other subscription's deliveries would stall.
    #[tokio::test]
    async fn subscriptions_that_stop_being_polled_keep_no_batch_permit() {
        let world = testing::World::new();
        let parking = parking(&world);
        let document = Arc::new(Compiled::new(
            rewritten("subscription { messageReceived { id } }", None).unwrap(),
        ));
        let deliver = |seq| {
            let items = futures::stream::iter([message(seq)]).chain(futures::stream::pending());
            parking.deliver(
                items.boxed(),
                document.clone(),
                Variables::default(),
                RequestAuth::from_token(None),
                ClientAddress::default(),
            )
        };
        // Every permit taken, so the batches below wait for one...
        let taken = parking.running.clone().acquire_many_owned(MAX_BATCHES_RUNNING as u32);
        let taken = taken.await.unwrap();
        let mut stalled: Vec<_> = (0..MAX_BATCHES_RUNNING as i64).map(deliver).collect();
        for deliveries in &mut stalled {
            assert!(futures::poll!(deliveries.next()).is_pending());
        }
        // ...and are given them while their connections no longer poll.
        drop(taken);
        let mut fresh = deliver(1_000);
        let delivered =
            tokio::time::timeout(std::time::Duration::from_secs(10), fresh.next()).await;
        let response = delivered.expect("a batch permit came").expect("a response");
        assert_eq!(response.data.to_string(), r#"{messageReceived: {id: "m1000"}}"#);
    }

    #[test]
    fn picks_the_named_operation() {
        let query = "query Q { me { id } } subscription S { messageReceived { id } }";
        assert!(rewritten(query, Some("S")).is_some());
        assert!(rewritten(query, Some("Q")).is_none());
        assert!(rewritten(query, None).is_none());
        assert!(rewritten(query, Some("Missing")).is_none());
    }

    #[test]
    fn leaves_anything_else_to_the_schema() {
        for query in [
            "subscription { typingChanged { __typename } }",
            "subscription { messageReceived { id } chatEvents { __typename } }",
            "subscription { messageReceived(x: 1) { id } }",
            "subscription { messageReceived @skip(if: false) { id } }",
            "subscription { ...F } fragment F on Subscription { messageReceived { id } }",
            "query { messageReceived { id } }",
        ] {
            assert!(rewritten(query, None).is_none(), "{query}");
        }
    }
}
