//! The `messageReceived` stream: replay the undelivered backlog, then go live, with no gap and no
//! duplicate at the seam.
//!
//! The order of operations is what makes the handover safe:
//! 1. subscribe to the bus first, so every message published from now on is buffered;
//! 2. read the backlog from the store, page by page, oldest first;
//! 3. then drain the buffered live events, skipping those the backlog already contained.
//!
//! A message sent during step 2 is either committed before the page that would hold it was read
//! (it is replayed, and its live event is skipped) or after (it is not in the backlog, and its
//! live event delivers it). If the bus reports that this subscriber lagged, the stream makes a
//! *pass*: it re-reads the whole unacknowledged backlog from the start (not from where the last
//! read stopped: MongoDB may commit seq 5 after seq 6 was read), emitting only what it has not
//! emitted before.
//!
//! What has been emitted is remembered exactly, by `seq`, for as long as the message can come
//! back from the store: a pass forgets the messages it no longer finds there (they were
//! acknowledged). So nothing is ever sent twice however large the backlog, and the memory is
//! about 16 bytes per emitted, unacknowledged message. A connection that only receives live
//! messages makes a pass now and then for the same reason (see `Emitted::wants_compaction`).

use std::{
    collections::{BTreeSet, VecDeque},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use async_trait::async_trait;
use futures::{Stream, StreamExt, future::BoxFuture};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    bus::{BusEvent, BusResult, BusSubscription, MessageBus},
    domain::{Message, UserId},
    store::{Store, StoreResult},
};

/// Bytes of message content a backlog read aims to hold, so a page of long messages does not
/// pin megabytes per connection. The number of messages per read follows from the previous
/// page's average size, between [`MIN_PAGE`] and [`MAX_PAGE`].
const PAGE_BYTES: usize = 64 * 1024;
/// Fewest messages per backlog read (at the largest content size, 4,000 four-byte characters,
/// one page is then about 256 KiB).
const MIN_PAGE: usize = 16;
/// Most messages per backlog read: one delivery batch (`schema::parked`'s `MAX_BATCH`), which
/// takes the whole page at once, so the page's [`PageGate`] permit is given back before the
/// batch runs. (At 500, replay of 100,000 for one client measured 44,000 msg/s; see
/// BENCHMARKS for 64.)
const MAX_PAGE: usize = 64;
/// Messages per read before anything is known about their size.
const FIRST_PAGE: usize = 64;
/// Bytes counted per message besides its content (ids, timestamps, allocation).
const MESSAGE_OVERHEAD: usize = 160;
/// Emitted messages remembered before a live connection makes its first compaction pass: at
/// most about 4 KiB per connection (16 bytes a message) for a client that acknowledges what
/// it gets, for one nearly empty backlog read per 256 live messages. (It was 4,096: up to
/// 64 KiB kept by a connection that had gone quiet after a busy hour.)
const COMPACT_AFTER: usize = 256;

/// `seq`s per read when a pass skims what it has already sent (8 bytes each, no content).
const SEQ_PAGE: usize = 512;

/// Most backlog pages held at once in the whole server, read but not yet handed on.
const MAX_PAGES_HELD: usize = 128;

/// Bounds the backlog pages held at once, server-wide ([`MAX_PAGES_HELD`]). When thousands of
/// clients reconnect together (a restart), each read its first page at once and held it while
/// it waited its turn to be delivered: ~25 KiB per connection for 64 short messages, which the
/// allocator kept after the replay (32-40 KiB per connection afterwards, 5,000 connections).
/// A stream takes a permit before it reads a page and gives it back once the page is handed
/// on (a page is at most [`MAX_PAGE`] messages and about [`PAGE_BYTES`], 256 KiB at worst: at
/// most ~32 MB for all of them, ~3 MB for short messages).
#[derive(Clone)]
pub struct PageGate(Arc<Semaphore>);

impl Default for PageGate {
    fn default() -> Self {
        PageGate(Arc::new(Semaphore::new(MAX_PAGES_HELD)))
    }
}

/// All messages for `user_id`: first the unacknowledged backlog oldest first, then live ones.
///
/// Listening has started when this returns, before the stream is first polled.
pub async fn replay_then_live(
    store: Arc<dyn Store>,
    bus: &dyn MessageBus,
    user_id: UserId,
    pages: &PageGate,
) -> BusResult<impl Stream<Item = StoreResult<Message>> + Send + use<>> {
    let live = bus.subscribe(&user_id).await?;
    Ok(stream(StoreBacklog { store, user_id }, live, pages.clone()))
}

/// Where the backlog comes from: one user's unacknowledged messages in the store. Cloned for
/// each read, which then borrows nothing of the stream.
#[async_trait]
trait Backlog: Clone + Unpin + Send + Sync + 'static {
    /// Unacknowledged messages with `seq > after_seq`, oldest first, at most `limit`.
    async fn read(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<Message>>;
    /// The `seq`s of the same messages.
    async fn read_seqs(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<i64>>;
}

#[derive(Clone)]
struct StoreBacklog {
    store: Arc<dyn Store>,
    user_id: UserId,
}

#[async_trait]
impl Backlog for StoreBacklog {
    async fn read(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<Message>> {
        self.store.undelivered_messages(&self.user_id, after_seq, limit).await
    }

    async fn read_seqs(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<i64>> {
        self.store.undelivered_seqs(&self.user_id, after_seq, limit).await
    }
}

fn stream<B: Backlog>(
    backlog: B,
    live: BusSubscription,
    pages: PageGate,
) -> impl Stream<Item = StoreResult<Message>> + Send {
    Delivery {
        backlog,
        live,
        pages,
        held: None,
        phase: Phase::Replaying,
        skim: false,
        read_up_to: 0,
        page_size: FIRST_PAGE,
        reading: None,
        pending: VecDeque::new(),
        emitted: Emitted::default(),
    }
}

enum Phase {
    /// Reading the backlog from the store after `read_up_to`.
    Replaying,
    /// The pass has read its last page; it ends once that page has been recorded (ending it
    /// before counted the last page as acknowledged and sized the next compaction without it:
    /// with a small threshold, a client that had not acknowledged made passes back to back
    /// forever).
    PassRead,
    /// Forwarding bus events.
    Live,
    /// The stream ended (after an error, or when the bus closed).
    Done,
}

/// A backlog read under way.
type PageRead = BoxFuture<'static, Read>;

enum Read {
    /// A page of messages, and the permit to hold it (see [`PageGate`]).
    Messages(StoreResult<Vec<Message>>, Option<OwnedSemaphorePermit>),
    /// A page of `seq`s only.
    Seqs(StoreResult<Vec<i64>>),
}

struct Delivery<B> {
    backlog: B,
    /// Subscribed before the backlog is read; buffers live events meanwhile.
    live: BusSubscription,
    phase: Phase,
    /// Whether the pass reads `seq`s before messages. A pass re-reads mostly what it has sent
    /// already (a client that does not acknowledge has it all still in the store), and for
    /// those the `seq`s are enough: whole messages (content, ids, allocations) are read only
    /// from the first one not sent yet to the end of the pass. Off for the first replay, which
    /// has sent nothing.
    skim: bool,
    /// Highest `seq` read from the store's backlog in this pass so far.
    read_up_to: i64,
    /// Messages to ask for in the next backlog read.
    page_size: usize,
    /// Permits to hold a backlog page.
    pages: PageGate,
    /// This stream's permit, while `pending` holds a page.
    held: Option<OwnedSemaphorePermit>,
    /// The backlog read under way (its permit first).
    reading: Option<PageRead>,
    /// Backlog messages read but not yet emitted.
    pending: VecDeque<Message>,
    emitted: Emitted,
}

/// Written by hand rather than as an `unfold` of an `async` block, which kept the state twice
/// (once in the block, once for the next item) in every idle subscription.
impl<B: Backlog> Stream for Delivery<B> {
    type Item = StoreResult<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while let Some(message) = this.pending.pop_front() {
                if this.pending.is_empty() {
                    // The page is handed on: another stream may read one.
                    this.held = None;
                }
                if this.emitted.record_read(message.seq) {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            // Also when the page was empty, or held only what had been emitted already.
            this.held = None;
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Replaying => {
                    let (after_seq, limit) = (this.read_up_to, this.page_size);
                    let skim = this.skim;
                    let reading = this.reading.get_or_insert_with(|| {
                        let backlog = this.backlog.clone();
                        let pages = this.pages.0.clone();
                        Box::pin(async move {
                            if skim {
                                return Read::Seqs(backlog.read_seqs(after_seq, SEQ_PAGE).await);
                            }
                            // Never closed, so a permit always comes.
                            let permit = pages.acquire_owned().await.ok();
                            Read::Messages(backlog.read(after_seq, limit).await, permit)
                        })
                    });
                    let read = std::task::ready!(reading.as_mut().poll(cx));
                    this.reading = None;
                    let page = match read {
                        Read::Seqs(Ok(seqs)) => {
                            this.skimmed(&seqs);
                            continue;
                        }
                        Read::Messages(Ok(page), permit) => {
                            this.held = permit;
                            page
                        }
                        Read::Seqs(Err(error)) | Read::Messages(Err(error), _) => {
                            this.phase = Phase::Done;
                            return Poll::Ready(Some(Err(error)));
                        }
                    };
                    this.page_size = next_page_size(&page);
                    if let Some(last) = page.last() {
                        this.read_up_to = last.seq;
                    }
                    if page.len() < limit {
                        this.phase = Phase::PassRead;
                    }
                    this.pending.extend(page);
                }
                Phase::PassRead => {
                    this.emitted.end_pass();
                    // The pass's pages are emitted: give their room back, or a connection that
                    // replayed a backlog keeps it (~200 bytes a message) while it idles.
                    this.pending = VecDeque::new();
                    this.phase = Phase::Live;
                }
                Phase::Live => {
                    if this.emitted.wants_compaction() {
                        this.start_pass();
                        continue;
                    }
                    // Unconstrained: with the task's tokio budget spent, a subscription that
                    // has events buffered answers "not ready", which here would be taken for
                    // "nothing buffered" and forget acknowledged messages whose live events are
                    // still queued: they would be sent again.
                    let live = &mut this.live;
                    let mut next =
                        tokio::task::coop::unconstrained(futures::future::poll_fn(|cx| {
                            live.poll_next_unpin(cx)
                        }));
                    let Poll::Ready(event) = Pin::new(&mut next).poll(cx) else {
                        // Nothing buffered: every event published before now has been seen,
                        // so messages the last pass found acknowledged cannot come back.
                        this.emitted.forget_retired();
                        return Poll::Pending;
                    };
                    match event {
                        Some(BusEvent::Message(message)) => {
                            if this.emitted.record_live(message.seq) {
                                return Poll::Ready(Some(Ok(Message::clone(&message))));
                            }
                        }
                        Some(BusEvent::Lagged) => {
                            tracing::warn!("subscriber lagged; catching up from the store");
                            this.start_pass();
                        }
                        // Inbox topics carry only messages; anything else is ignored.
                        Some(
                            BusEvent::SessionEnded | BusEvent::SessionsEnded(_) | BusEvent::Chat(_),
                        ) => {}
                        None => this.phase = Phase::Done,
                    }
                }
            }
        }
    }
}

impl<B: Backlog> Delivery<B> {
    /// Re-reads the backlog from its start, emitting what was missed and forgetting what has
    /// been acknowledged.
    fn start_pass(&mut self) {
        self.emitted.start_pass();
        self.read_up_to = 0;
        self.skim = true;
        self.phase = Phase::Replaying;
    }

    /// Takes a page of `seq`s: those sent before the first that was not are recorded as read
    /// and the pass goes on after them, reading whole messages from that first one on.
    fn skimmed(&mut self, seqs: &[i64]) {
        let sent = seqs.iter().take_while(|&&seq| self.emitted.contains(seq)).count();
        for &seq in &seqs[..sent] {
            self.emitted.record_read(seq);
        }
        if let Some(&last) = seqs[..sent].last() {
            self.read_up_to = last;
        }
        if sent < seqs.len() {
            self.skim = false;
        } else if seqs.len() < SEQ_PAGE {
            self.phase = Phase::PassRead;
        }
    }
}

/// Messages to ask for next, so that a page holds about [`PAGE_BYTES`].
fn next_page_size(page: &[Message]) -> usize {
    if page.is_empty() {
        return FIRST_PAGE;
    }
    let bytes: usize = page.iter().map(|m| m.content.len() + MESSAGE_OVERHEAD).sum();
    (PAGE_BYTES * page.len() / bytes).clamp(MIN_PAGE, MAX_PAGE)
}

/// The `seq`s of the messages this stream has emitted that may still come back from the store.
///
/// During a pass, what was emitted before it sits in `unconfirmed`; each message the pass reads
/// moves back to `current`. What the pass did not find was acknowledged, but its live event may
/// still be buffered on the bus, so it is kept in `retired` until the live buffer has been seen
/// empty.
#[derive(Default)]
struct Emitted {
    current: BTreeSet<i64>,
    unconfirmed: BTreeSet<i64>,
    retired: BTreeSet<i64>,
    /// Size of `current` at which a live connection makes a compaction pass.
    compact_at: usize,
}

impl Emitted {
    fn contains(&self, seq: i64) -> bool {
        self.current.contains(&seq)
            || self.unconfirmed.contains(&seq)
            || self.retired.contains(&seq)
    }

    /// Records a message read from the store; true if it had not been emitted.
    fn record_read(&mut self, seq: i64) -> bool {
        if self.unconfirmed.remove(&seq) || self.retired.remove(&seq) {
            self.current.insert(seq);
            return false;
        }
        self.current.insert(seq)
    }

    /// Records a message heard on the bus; true if it had not been emitted.
    fn record_live(&mut self, seq: i64) -> bool {
        !self.contains(seq) && self.current.insert(seq)
    }

    fn start_pass(&mut self) {
        let current = std::mem::take(&mut self.current);
        self.unconfirmed.extend(current);
    }

    fn end_pass(&mut self) {
        let gone = std::mem::take(&mut self.unconfirmed);
        self.retired.extend(gone);
        self.compact_at = COMPACT_AFTER.max(2 * self.current.len());
    }

    fn forget_retired(&mut self) {
        self.retired.clear();
    }

    /// Whether so much has been emitted since the last pass that it is worth re-reading the
    /// backlog to forget what was acknowledged. The threshold doubles with what the pass could
    /// not forget, so a client that never acknowledges costs O(1) reads per message.
    fn wants_compaction(&self) -> bool {
        self.current.len() > self.compact_at.max(COMPACT_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashMap},
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use chrono::Utc;
    use futures::FutureExt;

    use super::*;
    use crate::{
        bus::InProcessBus,
        domain::{MessageContent, MessageId},
    };

    type ReadHook = Box<dyn FnMut(usize) + Send>;

    /// A backlog in memory; reads can be counted and can publish while a pass is under way.
    #[derive(Clone, Default)]
    struct Inbox {
        messages: Arc<Mutex<BTreeMap<i64, Message>>>,
        /// Reads of either kind.
        reads: Arc<AtomicUsize>,
        /// Reads of whole messages.
        message_reads: Arc<AtomicUsize>,
        /// Called before each read returns, with the number of reads so far.
        during_read: Arc<Mutex<Option<ReadHook>>>,
    }

    impl Inbox {
        fn add(&self, seq: i64, content: &str) -> Message {
            let message = Message {
                id: MessageId::new(format!("m{seq}")),
                seq,
                sender_id: UserId::new("alice"),
                recipient_id: UserId::new("bob"),
                content: MessageContent::from_stored(content.into()),
                client_message_id: None,
                sent_at: Utc::now(),
                delivered_at: None,
                read_at: None,
            };
            self.messages.lock().unwrap().insert(seq, message.clone());
            message
        }

        fn acknowledge_up_to(&self, seq: i64) {
            self.messages.lock().unwrap().retain(|s, _| *s > seq);
        }

        fn count_read(&self) {
            let reads = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(hook) = self.during_read.lock().unwrap().as_mut() {
                hook(reads);
            }
        }
    }

    #[async_trait]
    impl Backlog for Inbox {
        async fn read(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<Message>> {
            self.message_reads.fetch_add(1, Ordering::SeqCst);
            self.count_read();
            let messages = self.messages.lock().unwrap();
            Ok(messages.range(after_seq + 1..).take(limit).map(|(_, m)| m.clone()).collect())
        }

        async fn read_seqs(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<i64>> {
            self.count_read();
            let messages = self.messages.lock().unwrap();
            Ok(messages.range(after_seq + 1..).take(limit).map(|(seq, _)| *seq).collect())
        }
    }

    async fn publish(bus: &InProcessBus, message: Message) {
        bus.publish(Arc::new(message)).await;
    }

    /// Bob's delivery stream over `inbox`, listening on `bus`.
    async fn bobs_stream(
        inbox: &Inbox,
        bus: &InProcessBus,
    ) -> Pin<Box<impl Stream<Item = StoreResult<Message>> + use<>>> {
        let live = bus.subscribe(&UserId::new("bob")).await.unwrap();
        Box::pin(stream(inbox.clone(), live, PageGate::default()))
    }

    /// Stores and publishes message `seq`, and checks that it is the stream's next.
    async fn deliver_live(
        bus: &InProcessBus,
        inbox: &Inbox,
        stream: &mut (impl Stream<Item = StoreResult<Message>> + Unpin),
        seq: i64,
    ) {
        publish(bus, inbox.add(seq, "live")).await;
        let got = stream.next().await.expect("stream ended").expect("read failed");
        assert_eq!(got.seq, seq);
    }

    /// Collects `count` messages, failing on a duplicate.
    async fn take_unique(
        stream: &mut (impl Stream<Item = StoreResult<Message>> + Unpin),
        count: usize,
    ) -> Vec<i64> {
        let mut seen = HashMap::new();
        let mut order = Vec::with_capacity(count);
        while order.len() < count {
            let message = stream.next().await.expect("stream ended").expect("read failed");
            if let Some(first) = seen.insert(message.seq, order.len()) {
                panic!(
                    "seq {} emitted twice (first as #{first}, again as #{})",
                    message.seq,
                    order.len()
                );
            }
            order.push(message.seq);
        }
        order
    }

    #[tokio::test]
    async fn a_lag_during_a_huge_backlog_resends_nothing() {
        // More than the 100,000 ids the stream used to remember.
        const BACKLOG: i64 = 150_000;
        let inbox = Inbox::default();
        for seq in 1..=BACKLOG {
            inbox.add(seq, "hi");
        }
        let bus = Arc::new(InProcessBus::default());
        // Halfway through the replay, a burst larger than the bus buffers makes the stream lag.
        let burst_bus = bus.clone();
        let burst_inbox = inbox.clone();
        *inbox.during_read.lock().unwrap() = Some(Box::new(move |reads| {
            if reads == 200 {
                for seq in BACKLOG + 1..=BACKLOG + 50 {
                    let message = burst_inbox.add(seq, "burst");
                    let bus = burst_bus.clone();
                    futures::executor::block_on(publish(&bus, message));
                }
            }
        }));
        let mut stream = bobs_stream(&inbox, &bus).await;
        let seqs = take_unique(&mut stream, BACKLOG as usize + 50).await;
        assert_eq!(seqs[..BACKLOG as usize], (1..=BACKLOG).collect::<Vec<_>>());
        // And nothing more is queued: the next item would be a duplicate or a hang.
        assert!(stream.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn messages_committed_below_the_read_position_arrive_once_after_a_lag() {
        let inbox = Inbox::default();
        let bus = InProcessBus::default();
        let mut stream = bobs_stream(&inbox, &bus).await;
        inbox.add(2, "read first");
        assert_eq!(take_unique(&mut stream, 1).await, vec![2]);
        // seq 1 commits late (as MongoDB may) and its live event is lost in a lag.
        inbox.add(1, "late");
        for seq in 3..=40 {
            publish(&bus, inbox.add(seq, "burst")).await;
        }
        let mut rest = take_unique(&mut stream, 39).await;
        rest.sort();
        assert_eq!(rest, (1..=40).filter(|s| *s != 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_pass_forgets_acknowledged_messages_but_never_resends_them() {
        let inbox = Inbox::default();
        let bus = InProcessBus::default();
        let mut stream = bobs_stream(&inbox, &bus).await;
        let total = 3 * COMPACT_AFTER as i64;
        for seq in 1..=total {
            deliver_live(&bus, &inbox, &mut stream, seq).await;
            inbox.acknowledge_up_to(seq);
        }
        // Compaction passes ran and forgot what was acknowledged...
        assert!(inbox.reads.load(Ordering::SeqCst) > 1, "no compaction pass ran");
        assert!(stream.next().now_or_never().is_none(), "something was re-sent");
        // ...and a lag after them still sends each new message exactly once.
        for seq in total + 1..=total + 40 {
            publish(&bus, inbox.add(seq, "burst")).await;
        }
        let seqs = take_unique(&mut stream, 40).await;
        assert_eq!(seqs.len(), 40);
        assert!(seqs.iter().all(|s| *s > total));
    }

    #[tokio::test]
    async fn a_client_that_never_acknowledges_costs_few_reads() {
        let inbox = Inbox::default();
        let bus = InProcessBus::default();
        let mut stream = bobs_stream(&inbox, &bus).await;
        let total = 4 * COMPACT_AFTER as i64;
        for seq in 1..=total {
            deliver_live(&bus, &inbox, &mut stream, seq).await;
            // Passes re-read the whole unacknowledged backlog, several pages each; each must
            // leave the next one twice as far away, not make passes back to back.
            assert!(inbox.reads.load(Ordering::SeqCst) < 40, "passes back to back at {seq}");
        }
        assert!(stream.next().now_or_never().is_none(), "something was re-sent");
        // Every message came live, so the passes skimmed seqs: whole messages were read once for
        // the (empty) backlog at the start, then once per pass, from the newest message (stored,
        // its live event not yet taken when the pass began) on. Not a page per 64 messages.
        let passes = 2; // at 257 and 515 unacknowledged messages
        assert_eq!(inbox.message_reads.load(Ordering::SeqCst), 1 + passes);
    }

    #[tokio::test]
    async fn a_pass_reads_whole_messages_from_the_first_it_has_not_sent() {
        let inbox = Inbox::default();
        let bus = InProcessBus::default();
        let mut stream = bobs_stream(&inbox, &bus).await;
        // Sent live, never acknowledged: one past the point where the stream makes a pass.
        let compacting = COMPACT_AFTER as i64 + 1;
        for seq in 1..=compacting {
            deliver_live(&bus, &inbox, &mut stream, seq).await;
        }
        // Then one is stored whose live event never comes (as if lost with a lag): the pass
        // that starts before the next live message must find it.
        let missed = compacting + 1;
        inbox.add(missed, "missed");
        let reads_before = inbox.message_reads.load(Ordering::SeqCst);
        publish(&bus, inbox.add(missed + 1, "live")).await;
        let order = take_unique(&mut stream, 2).await;
        assert_eq!(order, [missed, missed + 1]);
        // The seqs before it were skimmed; whole messages were read from it on, in one page.
        assert_eq!(inbox.message_reads.load(Ordering::SeqCst), reads_before + 1);
        assert!(stream.next().now_or_never().is_none(), "something was re-sent");
    }

    #[tokio::test]
    async fn backlog_pages_waiting_to_be_delivered_are_bounded_server_wide() {
        let inbox = Inbox::default();
        for seq in 1..=3 {
            inbox.add(seq, "hi");
        }
        let bus = InProcessBus::default();
        let pages = PageGate::default();
        let mut streams = Vec::new();
        for _ in 0..=MAX_PAGES_HELD {
            let live = bus.subscribe(&UserId::new("bob")).await.unwrap();
            streams.push(Box::pin(stream(inbox.clone(), live, pages.clone())));
        }
        // Each of the first MAX_PAGES_HELD reads its page and hands on its first message,
        // holding the rest; the last waits without reading.
        for stream in &mut streams[..MAX_PAGES_HELD] {
            assert_eq!(stream.next().await.unwrap().unwrap().seq, 1);
        }
        let last = streams.last_mut().unwrap();
        assert!(futures::poll!(last.next()).is_pending());
        assert_eq!(inbox.reads.load(Ordering::SeqCst), MAX_PAGES_HELD);
        // One page handed on whole lets it read.
        for seq in 2..=3 {
            assert_eq!(streams[0].next().await.unwrap().unwrap().seq, seq);
        }
        assert_eq!(streams.last_mut().unwrap().next().await.unwrap().unwrap().seq, 1);
    }

    #[test]
    fn pages_hold_about_the_byte_budget() {
        let inbox = Inbox::default();
        let short: Vec<_> = (1..=10).map(|seq| inbox.add(seq, "hi")).collect();
        assert_eq!(next_page_size(&short), MAX_PAGE);
        let long: Vec<_> = (1..=10).map(|seq| inbox.add(seq, &"😀".repeat(4000))).collect();
        assert_eq!(next_page_size(&long), MIN_PAGE);
        let medium: Vec<_> = (1..=10).map(|seq| inbox.add(seq, &"x".repeat(1000))).collect();
        let size = next_page_size(&medium);
        assert!(size * (1000 + MESSAGE_OVERHEAD) <= PAGE_BYTES && size > MIN_PAGE, "{size}");
        assert_eq!(next_page_size(&[]), FIRST_PAGE);
    }
}
