//! The producer: batching, partitioning, pipelined acks, retries and
//! idempotence.
//!
//! ```text
//!  send() ──▶ accumulator task ──sealed batch──▶ lane (topic, partition) ──▶ QUIC stream
//!               (linger, size)                    ▲ window of in-flight     │
//!                                                 └──── ordered acks ◀──────┘
//! ```
//!
//! Each partition gets one lane: a long-lived stream on which batches are
//! pipelined up to `window` deep and acknowledged in order. When a stream
//! or connection fails, the lane reconnects and resends every unacknowledged
//! batch with its original sequence number; the broker's dedup state turns a
//! resend of a batch it already stored into a `Duplicate` ack, so a retry
//! after a lost ack never duplicates a record.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{BatchBuilder, BatchHeader, Compression, ProducerStamp, Record};
use edgebus_proto::frame::{Acks, RecordAcks, RecordFate, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{Client, decode_response, unexpected};
use crate::error::ClientError;
use crate::wire;

pub use edgebus_proto::limits::{DEFAULT_BATCH_MAX_BYTES, MAX_IDEMPOTENT_IN_FLIGHT};
pub use edgebus_proto::partitioner::partition_for_key;

/// How long a lane waits for an ack before it asks whether the partition's
/// leader moved.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// Producer settings. The defaults batch adaptively: a record goes out at
/// once when its partition has room in its `window` of batches in flight,
/// and records that arrive while the window is full share one batch that
/// goes out as soon as a slot frees (or once it reaches
/// `batch_max_bytes`). So there is no latency cost at low rates and batches
/// fill by themselves at high rates. A non-zero `linger` switches to fixed
/// batching instead: each batch waits that long for more records.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level; `Durable` (fsync before ack) by default.
    pub acks: Acks,
    /// Zero (the default): adaptive batching, as described above. Else
    /// how long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once it reaches this many encoded bytes;
    /// [`DEFAULT_BATCH_MAX_BYTES`] (250,000) by default.
    pub batch_max_bytes: usize,
    /// Batches in flight per partition, 8 by default; at most
    /// [`MAX_IDEMPOTENT_IN_FLIGHT`] (32) when idempotent.
    pub window: usize,
    /// Stamp batches with a producer id and sequence so retries never
    /// duplicate; on by default. Requires acks other than `None`.
    pub idempotent: bool,
    /// Give up on a batch that could not be delivered within this time;
    /// 120 s by default.
    pub delivery_timeout: Duration,
    /// Codec for the records of each batch (the batch's attribute bits say
    /// which). The broker stores and serves compressed batches as they are.
    /// `None`, `Lz4` and `Zstd` are supported.
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Durable,
            linger: Duration::ZERO,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            window: 8,
            idempotent: true,
            delivery_timeout: Duration::from_secs(120),
            compression: Compression::None,
        }
    }
}

/// What became of one sent record, as the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition the record went to.
    pub partition: u32,
    /// Its offset in the topic (of its first output record, for a record an
    /// ingest plugin fanned out); `None` when it is not in the topic
    /// (filtered, dead-lettered, dropped), with `acks=none`, and for a
    /// retry whose offsets the broker no longer knows.
    pub offset: Option<u64>,
    /// What happened to it.
    pub status: DeliveryStatus,
}

/// The fate of one acknowledged record. Every status but `Sent` is a
/// delivery: the broker has decided about the record for good, and
/// sending it again would store it again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// Stored at `offset`, or at `offset..offset + count` when an ingest
    /// plugin turned it into several records.
    Stored {
        /// Records it became (1 unless fanned out).
        count: u32,
    },
    /// Stored by an earlier attempt of the same batch whose ack was lost;
    /// nothing new was stored. `offset` is set when the broker still knows
    /// it.
    Duplicate,
    /// The topic's ingest chain filtered it out.
    Filtered,
    /// An ingest plugin failed on it, and it was stored in the dead-letter
    /// topic instead.
    DeadLettered {
        /// The dead-letter topic.
        topic: String,
        /// Its offset there (partition 0).
        offset: u64,
    },
    /// An ingest plugin failed on it and the topic's failure policy skips
    /// such records.
    Dropped {
        /// Why the plugin failed.
        reason: String,
    },
    /// Sent with `acks=none`: the broker does not answer.
    Sent,
}

impl DeliveryStatus {
    /// The status's name as the CLI prints it.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryStatus::Stored { .. } => "stored",
            DeliveryStatus::Duplicate => "duplicate",
            DeliveryStatus::Filtered => "filtered",
            DeliveryStatus::DeadLettered { .. } => "dead-lettered",
            DeliveryStatus::Dropped { .. } => "dropped",
            DeliveryStatus::Sent => "sent",
        }
    }
}

type Ack = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// Resolves when the broker acknowledges one record.
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

enum Command {
    Send {
        topic: String,
        partition: Option<u32>,
        record: Record,
        ack: Ack,
    },
    Flush(oneshot::Sender<()>),
}

/// Sends records to a broker. Cheap to clone; clones share batches.
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
    client: Client,
    topics: Topics,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// Partition counts and record size limits of the topics sent to, shared
/// by `send` (which checks the topic before queueing) and the accumulator.
type Topics = Arc<Mutex<HashMap<String, TopicLimits>>>;

/// The limits of `topic`, from `topics` or asked of the broker once.
async fn topic_limits(
    client: &Client,
    topics: &Topics,
    topic: &str,
) -> Result<TopicLimits, ClientError> {
    let cached = topics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(topic)
        .copied();
    if let Some(limits) = cached {
        return Ok(limits);
    }
    let (spec, _) = client.describe_topic(topic).await?;
    let limits = TopicLimits {
        partitions: spec.partitions,
        max_message_bytes: spec.max_message_bytes as usize,
    };
    topics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(topic.to_owned(), limits);
    Ok(limits)
}

impl Producer {
    /// Starts a producer. With `idempotent`, asks the broker for a producer id.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        if config.idempotent
            && config.acks != Acks::None
            && config.window > MAX_IDEMPOTENT_IN_FLIGHT
        {
            return Err(ClientError::Config(format!(
                "an idempotent producer may have at most {MAX_IDEMPOTENT_IN_FLIGHT} batches in \
                 flight per partition (window {}): the broker recognises retries of that many",
                config.window
            )));
        }
        if !config.compression.is_supported() {
            return Err(ClientError::Config(format!(
                "compression {} is not supported; use none, lz4 or zstd",
                config.compression
            )));
        }
        let stamp = if config.idempotent && config.acks != Acks::None {
            match client.request(&Request::InitProducer).await? {
                Response::ProducerInit {
                    producer_id,
                    producer_epoch,
                } => Some((producer_id, producer_epoch)),
                other => return Err(unexpected(&other)),
            }
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(4096);
        let (freed, freed_rx) = mpsc::unbounded_channel();
        let topics = Topics::default();
        let acc = Accumulator {
            client: client.clone(),
            config,
            producer: stamp,
            partitions: topics.clone(),
            sticky: HashMap::new(),
            open: HashMap::new(),
            lanes: HashMap::new(),
            freed,
        };
        tokio::spawn(acc.run(rx, freed_rx));
        Ok(Producer { tx, client, topics })
    }

    /// Queues a record for `topic`; the partition comes from the key's hash,
    /// or sticks to one partition per batch for keyless records. Waits only
    /// when the producer's buffer is full, and the first time a topic is
    /// used, to learn its partition count: an unknown topic is an error
    /// here, not on the delivery future. The returned future resolves when
    /// the record is acknowledged.
    pub async fn send(&self, topic: &str, record: Record) -> Result<DeliveryFuture, ClientError> {
        self.enqueue(topic, None, record).await
    }

    /// Like [`Producer::send`], to an explicit partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        record: Record,
    ) -> Result<DeliveryFuture, ClientError> {
        self.enqueue(topic, Some(partition), record).await
    }

    async fn enqueue(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: Record,
    ) -> Result<DeliveryFuture, ClientError> {
        let limits = topic_limits(&self.client, &self.topics, topic).await?;
        if let Some(p) = partition
            && p >= limits.partitions
        {
            return Err(ClientError::broker(
                ErrorCode::UnknownPartition as u16,
                format!(
                    "topic {topic:?} has {} partitions, not {}",
                    limits.partitions,
                    p + 1
                ),
            ));
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Command::Send {
                topic: topic.to_owned(),
                partition,
                record,
                ack,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends every open batch now, without waiting for linger. Await the
    /// delivery futures to know they were acknowledged.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    acks: Vec<Ack>,
    /// When a fixed linger seals it; `None` when batching adaptively.
    deadline: Option<Instant>,
}

struct Sealed {
    batch: Bytes,
    acks: Vec<Ack>,
    created: Instant,
    /// Its place in its lane's window, given back when it is dropped.
    _slot: WindowSlot,
}

/// One sealed batch counted against its lane's window from the moment it
/// is sealed until it is dropped (acknowledged, failed or given up on),
/// when the accumulator hears that the lane has room again.
struct WindowSlot {
    in_flight: Arc<AtomicUsize>,
    key: Key,
    freed: mpsc::UnboundedSender<Key>,
}

impl Drop for WindowSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The accumulator outlives every lane's batches but the last ones
        // at shutdown, when nobody needs to hear.
        let _ = self.freed.send(self.key.clone());
    }
}

type Key = (String, u32);

struct Accumulator {
    client: Client,
    config: ProducerConfig,
    producer: Option<(i64, i16)>,
    partitions: Topics,
    sticky: HashMap<String, u32>,
    open: HashMap<Key, OpenBatch>,
    lanes: HashMap<Key, Lane>,
    /// Told the lane of each batch that leaves its window.
    freed: mpsc::UnboundedSender<Key>,
}

#[derive(Debug, Clone, Copy)]
struct TopicLimits {
    partitions: u32,
    max_message_bytes: usize,
}

struct Lane {
    tx: mpsc::Sender<Sealed>,
    next_sequence: i32,
    /// Batches sealed for this lane and not yet dropped.
    in_flight: Arc<AtomicUsize>,
}

impl Accumulator {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut freed: mpsc::UnboundedReceiver<Key>,
    ) {
        loop {
            let deadline = self.open.values().filter_map(|b| b.deadline).min();
            tokio::select! {
                Some(key) = freed.recv() => {
                    if self.config.linger.is_zero()
                        && self.open.contains_key(&key)
                        && self.has_room(&key)
                    {
                        self.seal(&key).await;
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::Send { topic, partition, record, ack }) => {
                        self.add(topic, partition, record, ack).await;
                    }
                    Some(Command::Flush(done)) => {
                        let keys: Vec<Key> = self.open.keys().cloned().collect();
                        for key in keys {
                            self.seal(&key).await;
                        }
                        let _ = done.send(());
                    }
                    None => break,
                },
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    let due: Vec<Key> = self
                        .open
                        .iter()
                        .filter(|(_, b)| b.deadline.is_some_and(|d| d <= now))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        self.seal(&key).await;
                    }
                }
            }
        }
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            self.seal(&key).await;
        }
    }

    async fn add(&mut self, topic: String, partition: Option<u32>, record: Record, ack: Ack) {
        let limits = match topic_limits(&self.client, &self.partitions, &topic).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ack.send(Err(e));
                return;
            }
        };
        // Checked here, with the widest possible varints, so the broker never
        // refuses a batch for size: a refused batch would leave a gap in the
        // idempotent sequence and fail every batch behind it.
        let size = BatchBuilder::record_size(&record, i64::MIN, u32::MAX);
        if size > limits.max_message_bytes {
            let _ = ack.send(Err(ClientError::broker(
                ErrorCode::RecordTooLarge as u16,
                format!(
                    "record of {size} bytes exceeds max.message.bytes {} of topic {topic:?}",
                    limits.max_message_bytes
                ),
            )));
            return;
        }
        let count = limits.partitions;
        let partition = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => *self
                .sticky
                .entry(topic.clone())
                .or_insert_with(|| rand_partition(count)),
        };
        if partition >= count {
            let _ = ack.send(Err(ClientError::Config(format!(
                "topic {topic:?} has {count} partitions, not {}",
                partition + 1
            ))));
            return;
        }
        let key = (topic, partition);
        let delta = self
            .open
            .get(&key)
            .map(|b| {
                BatchBuilder::record_size(&record, 0, b.builder.len()) + b.builder.size_bytes()
            })
            .unwrap_or(0);
        if delta > self.config.batch_max_bytes {
            self.seal(&key).await;
        }
        let linger = self.config.linger;
        let cap = self.config.batch_max_bytes;
        let open = self.open.entry(key.clone()).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(cap),
            acks: Vec::new(),
            deadline: (!linger.is_zero()).then(|| Instant::now() + linger),
        });
        open.builder.push(&record);
        open.acks.push(ack);
        let full = open.builder.size_bytes() >= self.config.batch_max_bytes;
        // Adaptive: nothing is waiting in the lane's window, so waiting
        // here would only add latency; when the window is full, the batch
        // grows until a slot frees.
        if full || (linger.is_zero() && self.has_room(&key)) {
            self.seal(&key).await;
        }
    }

    /// Whether `key`'s lane has fewer batches in flight than its window.
    fn has_room(&self, key: &Key) -> bool {
        self.lanes
            .get(key)
            .is_none_or(|lane| lane.in_flight.load(Ordering::Acquire) < self.config.window.max(1))
    }

    async fn seal(&mut self, key: &Key) {
        let Some(open) = self.open.remove(key) else {
            return;
        };
        let count = open.builder.len();
        if self.sticky.get(&key.0) == Some(&key.1) {
            let partitions = self
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key.0)
                .map_or(1, |l| l.partitions);
            self.sticky
                .insert(key.0.clone(), (key.1 + 1) % partitions.max(1));
        }
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| Lane {
            tx: LaneTask::spawn(self.client.clone(), key.clone(), self.config.clone()),
            next_sequence: 0,
            in_flight: Arc::new(AtomicUsize::new(0)),
        });
        let stamp = match self.producer {
            Some((producer_id, producer_epoch)) => ProducerStamp {
                producer_id,
                producer_epoch,
                base_sequence: lane.next_sequence,
            },
            None => ProducerStamp::NONE,
        };
        let batch = match open
            .builder
            .finish_compressed(stamp, self.config.compression)
        {
            Ok(batch) => batch,
            Err(e) => {
                fail_all(open.acks, || ClientError::Config(e.to_string()));
                return;
            }
        };
        lane.next_sequence = lane.next_sequence.wrapping_add(count as i32) & i32::MAX;
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
        let sealed = Sealed {
            batch,
            acks: open.acks,
            created: Instant::now(),
            _slot: WindowSlot {
                in_flight: Arc::clone(&lane.in_flight),
                key: key.clone(),
                freed: self.freed.clone(),
            },
        };
        if let Err(mpsc::error::SendError(sealed)) = lane.tx.send(sealed).await {
            fail_all(sealed.acks, || ClientError::Closed);
        }
    }
}

fn rand_partition(count: u32) -> u32 {
    // The sticky partitioner only needs producers to start at different
    // partitions; the clock's sub-second nanos are enough for that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % count.max(1)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn fail_all(acks: Vec<Ack>, err: impl Fn() -> ClientError) {
    for ack in acks {
        let _ = ack.send(Err(err()));
    }
}

/// One partition's pipeline of batches on one stream, to the node leading
/// the partition.
struct LaneTask {
    client: Client,
    /// The partition leader's client while a stream is open.
    leader: Option<Client>,
    topic: String,
    partition: u32,
    config: ProducerConfig,
    in_flight: VecDeque<(u32, Sealed)>,
    /// Set once a batch was given up on (or the broker reported a sequence
    /// gap): its sequence numbers may never reach the broker, so every
    /// later batch would be out of order. The lane then restarts under a
    /// producer id of its own.
    needs_identity: bool,
    /// The lane's own identity after such a restart: every batch is
    /// restamped with it and its next sequence.
    identity: Option<ProducerStamp>,
}

/// A stream's write half, and a channel fed by a task that reads its
/// responses (so reading never has to be cancelled mid-frame).
struct LaneStream {
    send: quinn::SendStream,
    responses: mpsc::Receiver<Result<bytes::Bytes, ClientError>>,
}

impl LaneTask {
    fn spawn(client: Client, key: Key, config: ProducerConfig) -> mpsc::Sender<Sealed> {
        let (tx, rx) = mpsc::channel(config.window.max(1));
        let task = LaneTask {
            client,
            leader: None,
            topic: key.0,
            partition: key.1,
            config,
            in_flight: VecDeque::new(),
            needs_identity: false,
            identity: None,
        };
        tokio::spawn(task.run(rx));
        tx
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Sealed>) {
        let mut stream: Option<LaneStream> = None;
        let mut attempt = 0u32;
        let mut input_open = true;
        loop {
            if !input_open && self.in_flight.is_empty() {
                return;
            }
            if self.needs_identity
                && let Err(e) = self.new_identity().await
            {
                attempt += 1;
                self.expire(&e);
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            if stream.is_none() {
                match self.reconnect().await {
                    Ok(s) => {
                        stream = Some(s);
                        attempt = 0;
                    }
                    Err(e) => {
                        self.client.forget_leader(&self.topic, self.partition);
                        attempt += 1;
                        self.expire(&e);
                        if !input_open && self.in_flight.is_empty() {
                            return;
                        }
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            let room = self.in_flight.len() < self.config.window.max(1);
            tokio::select! {
                // A leader killed outright does not refuse anything: its
                // connection only times out. So a lane whose acks have
                // stalled asks who leads now, and moves if that changed.
                () = tokio::time::sleep(STALL_CHECK), if !self.in_flight.is_empty() => {
                    let now = self.client.refresh_leader(&self.topic, self.partition).await;
                    if self.leader.as_ref().is_some_and(|l| !l.same_node(&now)) {
                        tracing::debug!(topic = %self.topic, partition = self.partition,
                            "partition leader moved, resending there");
                        stream = None;
                    }
                }
                sealed = rx.recv(), if input_open && room => match sealed {
                    Some(sealed) => {
                        if let Err(e) = self.write(s, sealed).await {
                            tracing::debug!(error = %e, "producer stream failed, resending");
                            stream = None;
                        }
                    }
                    None => input_open = false,
                },
                response = s.responses.recv(), if !self.in_flight.is_empty() => {
                    let outcome = match response {
                        Some(Ok(body)) => self.complete(body),
                        Some(Err(e)) => Err(e),
                        None => Err(ClientError::Closed),
                    };
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "producer stream failed, resending");
                        self.client.forget_leader(&self.topic, self.partition);
                        attempt += 1;
                        self.expire(&e);
                        stream = None;
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
    }

    /// Opens a stream to the partition's leader and resends everything in
    /// flight, in order.
    async fn reconnect(&mut self) -> Result<LaneStream, ClientError> {
        let leader = self.client.leader(&self.topic, self.partition).await;
        let (send, mut recv) = leader.open_stream().await?;
        self.leader = Some(leader);
        let (tx, responses) = mpsc::channel(self.config.window.max(1) + 1);
        let max = self.client.max_frame_bytes();
        tokio::spawn(async move {
            loop {
                let item = match wire::read_frame(&mut recv, max).await {
                    Ok(Some(body)) => Ok(body),
                    Ok(None) => Err(ClientError::Closed),
                    Err(e) => Err(e.into()),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        let mut stream = LaneStream { send, responses };
        let mut buf = BytesMut::new();
        let resend: Vec<(u32, Bytes)> = self
            .in_flight
            .iter_mut()
            .map(|(corr, sealed)| {
                *corr = self.client.next_correlation_id();
                (*corr, sealed.batch.clone())
            })
            .collect();
        for (corr, batch) in resend {
            self.produce_request(batch).encode(corr, &mut buf);
        }
        if !buf.is_empty() {
            wire::write_frames(&mut stream.send, &buf).await?;
        }
        Ok(stream)
    }

    fn produce_request(&self, batch: Bytes) -> Request {
        Request::Produce {
            topic: self.topic.clone(),
            partition: self.partition,
            acks: self.config.acks,
            batch,
        }
    }

    async fn write(&mut self, s: &mut LaneStream, mut sealed: Sealed) -> Result<(), ClientError> {
        sealed.batch = restamp_next(&mut self.identity, &sealed.batch);
        let corr = self.client.next_correlation_id();
        let mut buf = BytesMut::with_capacity(sealed.batch.len() + 64);
        self.produce_request(sealed.batch.clone())
            .encode(corr, &mut buf);
        if self.config.acks == Acks::None {
            let result = wire::write_frames(&mut s.send, &buf).await;
            let partition = self.partition;
            for ack in sealed.acks {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(RecordMetadata {
                        partition,
                        offset: None,
                        status: DeliveryStatus::Sent,
                    }),
                    Err(e) => Err(ClientError::Protocol(e.to_string())),
                });
            }
            return Ok(());
        }
        self.in_flight.push_back((corr, sealed));
        wire::write_frames(&mut s.send, &buf).await?;
        Ok(())
    }

    /// Handles the response to the oldest in-flight batch. `Err` means the
    /// stream must be replaced and the remaining batches resent.
    fn complete(&mut self, body: bytes::Bytes) -> Result<(), ClientError> {
        let Some((corr, _)) = self.in_flight.front() else {
            return Err(ClientError::Protocol(
                "response with nothing in flight".into(),
            ));
        };
        match decode_response(body, *corr) {
            Ok(Response::Produced {
                base_offset,
                duplicate,
                records,
            }) => {
                let (_, sealed) = self.in_flight.pop_front().expect("front exists");
                let metadata = record_metadata(
                    self.partition,
                    base_offset,
                    duplicate,
                    records,
                    sealed.acks.len(),
                );
                match metadata {
                    Ok(metadata) => {
                        for (ack, metadata) in sealed.acks.into_iter().zip(metadata) {
                            let _ = ack.send(Ok(metadata));
                        }
                    }
                    Err(e) => fail_all(sealed.acks, || ClientError::Protocol(e.clone())),
                }
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            // A full disk does not clear within a retry's backoff: the
            // caller hears at once (the error stays retriable for them).
            // The batches behind it meet the same disk, or, once space is
            // freed, a sequence gap that restarts the lane's sequence.
            Err(e) if e.code() == Some(ErrorCode::StorageFull) => {
                self.fail_front(&e);
                Ok(())
            }
            Err(e) if e.is_retriable() => Err(e),
            // A topic the control log has created that the leader it names
            // has not applied yet: as Kafka's retriable
            // UNKNOWN_TOPIC_OR_PARTITION, the lane asks who leads and tries
            // again. Once no node names a leader, the refusal is final.
            Err(e)
                if e.code() == Some(ErrorCode::UnknownTopic)
                    && self.client.names_leader(&self.topic, self.partition) =>
            {
                Err(e)
            }
            // A retry of a batch older than the broker's dedup window: it
            // was stored (the broker accepted later sequences), but where
            // is no longer known. Delivered, never a failure: sending it
            // again would store it twice.
            Err(e) if e.code() == Some(ErrorCode::DuplicateSequence) && self.idempotent() => {
                let (_, sealed) = self.in_flight.pop_front().expect("front exists");
                for ack in sealed.acks {
                    let _ = ack.send(Ok(RecordMetadata {
                        partition: self.partition,
                        offset: None,
                        status: DeliveryStatus::Duplicate,
                    }));
                }
                Ok(())
            }
            // A gap before this batch (an earlier one was given up on):
            // restart the sequence and resend everything in flight.
            Err(e) if e.code() == Some(ErrorCode::OutOfOrderSequence) && self.idempotent() => {
                self.needs_identity = true;
                Err(e)
            }
            Err(e) => {
                self.fail_front(&e);
                Ok(())
            }
        }
    }

    /// Fails the oldest in-flight batch's records with the broker's
    /// refusal `e`, code and message as the broker sent them.
    fn fail_front(&mut self, e: &ClientError) {
        let (_, sealed) = self.in_flight.pop_front().expect("front exists");
        let (code, message) = match e {
            ClientError::Broker { code, message, .. } => (*code, message.clone()),
            other => (0, other.to_string()),
        };
        fail_all(sealed.acks, || ClientError::broker(code, message.clone()));
    }

    /// Fails batches that have waited longer than the delivery timeout.
    fn expire(&mut self, cause: &ClientError) {
        let timeout = self.config.delivery_timeout;
        while let Some((_, sealed)) = self.in_flight.front() {
            if sealed.created.elapsed() < timeout {
                break;
            }
            let (_, sealed) = self.in_flight.pop_front().expect("front exists");
            let detail = format!("delivery timeout after {timeout:?}: {cause}");
            fail_all(sealed.acks, || ClientError::Timeout(detail.clone()));
            self.needs_identity |= self.idempotent();
        }
    }

    fn idempotent(&self) -> bool {
        self.config.idempotent && self.config.acks != Acks::None
    }

    /// Restarts the lane's sequence under a new producer id and restamps
    /// the batches still in flight, in order. A batch whose ack was lost
    /// before the restart may then be stored twice: the price of giving up
    /// on a batch, as with Kafka's epoch bump.
    async fn new_identity(&mut self) -> Result<(), ClientError> {
        let (producer_id, producer_epoch) =
            match self.client.request(&Request::InitProducer).await? {
                Response::ProducerInit {
                    producer_id,
                    producer_epoch,
                } => (producer_id, producer_epoch),
                other => return Err(unexpected(&other)),
            };
        self.identity = Some(ProducerStamp {
            producer_id,
            producer_epoch,
            base_sequence: 0,
        });
        for (_, sealed) in self.in_flight.iter_mut() {
            sealed.batch = restamp_next(&mut self.identity, &sealed.batch);
        }
        self.needs_identity = false;
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            producer_id,
            "producer lane restarted its sequence"
        );
        Ok(())
    }
}

/// Each record's metadata from a `Produced` answer to a batch of `count`
/// records.
fn record_metadata(
    partition: u32,
    base_offset: u64,
    duplicate: bool,
    records: RecordAcks,
    count: usize,
) -> Result<Vec<RecordMetadata>, String> {
    let metadata = |offset, status| RecordMetadata {
        partition,
        offset,
        status,
    };
    match records {
        RecordAcks::AsSent => Ok((0..count as u64)
            .map(|i| {
                let status = if duplicate {
                    DeliveryStatus::Duplicate
                } else {
                    DeliveryStatus::Stored { count: 1 }
                };
                metadata(Some(base_offset + i), status)
            })
            .collect()),
        RecordAcks::Unknown => Ok((0..count)
            .map(|_| metadata(None, DeliveryStatus::Duplicate))
            .collect()),
        RecordAcks::Each {
            dead_letter_topic,
            fates,
        } => {
            if fates.len() != count {
                return Err(format!(
                    "the broker answered for {} records of a batch of {count}",
                    fates.len()
                ));
            }
            Ok(fates
                .into_iter()
                .map(|fate| match fate {
                    RecordFate::Stored { offset, count } => {
                        metadata(Some(offset), DeliveryStatus::Stored { count })
                    }
                    RecordFate::Filtered => metadata(None, DeliveryStatus::Filtered),
                    RecordFate::DeadLettered { offset } => metadata(
                        None,
                        DeliveryStatus::DeadLettered {
                            topic: dead_letter_topic.clone(),
                            offset,
                        },
                    ),
                    RecordFate::Dropped { reason } => {
                        metadata(None, DeliveryStatus::Dropped { reason })
                    }
                })
                .collect())
        }
    }
}

/// Restamps a batch with the lane's identity and advances its sequence.
fn restamp_next(identity: &mut Option<ProducerStamp>, batch: &Bytes) -> Bytes {
    let Some(stamp) = identity.as_mut() else {
        return batch.clone();
    };
    let count = BatchHeader::parse(batch).map_or(0, |h| h.record_count);
    let out = edgebus_proto::batch::restamp(batch, *stamp);
    stamp.base_sequence = stamp.base_sequence.wrapping_add(count as i32) & i32::MAX;
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stored_as_sent_acks_record_i_at_base_plus_i() {
        let m = record_metadata(2, 10, false, RecordAcks::AsSent, 3).unwrap();
        let offsets: Vec<_> = m.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![Some(10), Some(11), Some(12)]);
        assert!(
            m.iter()
                .all(|m| m.partition == 2 && m.status == DeliveryStatus::Stored { count: 1 })
        );
    }

    /// Regression: a retry the broker recognised was reported as a failure,
    /// and a user who sent it again stored it twice.
    #[test]
    fn a_recognised_retry_is_delivered_with_the_offsets_the_broker_knows() {
        let m = record_metadata(0, 7, true, RecordAcks::AsSent, 2).unwrap();
        assert_eq!(
            m.iter().map(|m| (m.offset, &m.status)).collect::<Vec<_>>(),
            vec![
                (Some(7), &DeliveryStatus::Duplicate),
                (Some(8), &DeliveryStatus::Duplicate)
            ]
        );
        let m = record_metadata(0, 7, true, RecordAcks::Unknown, 2).unwrap();
        assert!(
            m.iter()
                .all(|m| m.offset.is_none() && m.status == DeliveryStatus::Duplicate)
        );
    }

    #[test]
    fn per_record_fates_map_one_to_one_and_a_count_mismatch_is_an_error() {
        let fates = vec![
            RecordFate::Stored {
                offset: 4,
                count: 3,
            },
            RecordFate::Filtered,
            RecordFate::DeadLettered { offset: 9 },
            RecordFate::Dropped {
                reason: "trap".into(),
            },
        ];
        let acks = RecordAcks::Each {
            dead_letter_topic: "t.dlq".into(),
            fates,
        };
        let m = record_metadata(1, 4, false, acks.clone(), 4).unwrap();
        assert_eq!(
            m.into_iter()
                .map(|m| (m.offset, m.status))
                .collect::<Vec<_>>(),
            vec![
                (Some(4), DeliveryStatus::Stored { count: 3 }),
                (None, DeliveryStatus::Filtered),
                (
                    None,
                    DeliveryStatus::DeadLettered {
                        topic: "t.dlq".into(),
                        offset: 9
                    }
                ),
                (
                    None,
                    DeliveryStatus::Dropped {
                        reason: "trap".into()
                    }
                ),
            ]
        );
        assert!(record_metadata(1, 4, false, acks, 5).is_err());
    }
}
