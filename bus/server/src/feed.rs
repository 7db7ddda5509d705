//! Subscriptions: a `Subscribe` turns its stream into a feed that the
//! broker pushes batches down as the partition grows, until the client
//! closes it. QUIC flow control is the backpressure.
//!
//! With a read-path plugin chain, only its results are sent, each with the
//! offset of the source record it came from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch::{self, BatchBuilder, BatchHeader, ProducerStamp, Record, StoredRecord};
use edgebus_proto::frame::{FailurePolicy, PluginRef, Position};
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_store::{LogStore, StoreError};
use quinn::{RecvStream, SendStream};

use crate::attach::Attachments;
use crate::chain::{self, AttachPoint, ChainRunError, ChainRunner, Halt, OutputLimits};
use crate::dlq::{DeadLetterError, DeadLetters};
use crate::error::{self, Coded};
use crate::notify::Notifier;
use crate::plugin_state::ChainState;
use crate::reader::{self, FetchError, Reader};
use crate::registry::Registry;
use crate::wire;
use crate::writer::Writer;

/// What a client subscribed to.
pub struct Subscribe {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Where to start.
    pub from: Position,
    /// Upper bound on bytes per pushed frame.
    pub max_bytes: u32,
    /// Read-path plugins; empty for none.
    pub chain: Vec<PluginRef>,
    /// What the chain does with records a plugin fails on.
    pub on_failure: FailurePolicy,
    /// The name the chain's state is stored under; empty: in memory only.
    pub state: String,
}

/// Why a feed ended with an error frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// Resolving the start or reading failed.
    #[error(transparent)]
    Read(#[from] FetchError),
    /// The read-path chain could not run, or a plugin rejected a batch.
    #[error(transparent)]
    Chain(#[from] ChainRunError),
    /// A stored batch could not be decoded for the chain.
    #[error(transparent)]
    Batch(#[from] DecodeError),
    /// Dead letters could not be stored.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The subscriber left while the chain was halted.
    #[error("subscriber left")]
    SubscriberLeft,
    /// The chain's named state could not be stored.
    #[error("plugin state not stored: {0}")]
    State(#[from] StoreError),
}

impl Coded for FeedError {
    fn code(&self) -> ErrorCode {
        match self {
            FeedError::Read(e) => e.code(),
            FeedError::Chain(e) => e.code(),
            FeedError::Batch(_) => ErrorCode::CorruptBatch,
            FeedError::DeadLetter(e) => e.code(),
            FeedError::SubscriberLeft => ErrorCode::ShuttingDown,
            FeedError::State(e) => e.code(),
        }
    }
}

/// What feeds read from and report to. Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    store: Arc<dyn LogStore>,
    writer: Writer,
    reader: Reader,
    notifier: Notifier,
    registry: Arc<Registry>,
    attachments: Arc<Attachments>,
    dead_letters: DeadLetters,
}

/// A subscription's stream.
struct Feed<'a> {
    send: &'a mut SendStream,
    correlation_id: u32,
    buf: BytesMut,
}

impl Subscriptions {
    /// The partition log-end watches feeds wait on (the MQTT door's
    /// feeds wait on them too).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Feeds that read with `reader`, wake on `notifier`, run read-path
    /// chains from `registry`, and keep named chain state in `store`
    /// through `writer`.
    pub fn new(
        (store, writer): (Arc<dyn LogStore>, Writer),
        reader: Reader,
        notifier: Notifier,
        registry: Arc<Registry>,
        attachments: Arc<Attachments>,
        dead_letters: DeadLetters,
    ) -> Subscriptions {
        Subscriptions {
            store,
            writer,
            reader,
            notifier,
            registry,
            attachments,
            dead_letters,
        }
    }

    /// Serves one subscription on `send` until the client goes, or answers
    /// it with the error that ended it.
    pub async fn serve(
        &self,
        send: &mut SendStream,
        recv: RecvStream,
        correlation_id: u32,
        subscribe: Subscribe,
        buf: BytesMut,
    ) {
        let mut feed = Feed {
            send,
            correlation_id,
            buf,
        };
        if let Err(e) = self.push(&mut feed, recv, subscribe).await {
            let response = error::response(&e);
            let _ = wire::write_response(feed.send, correlation_id, &response, &mut feed.buf).await;
            let _ = feed.send.finish();
        }
    }

    /// Pushes batches as the partition grows. `Ok` when the client left.
    async fn push(
        &self,
        feed: &mut Feed<'_>,
        mut recv: RecvStream,
        s: Subscribe,
    ) -> Result<(), FeedError> {
        let (topic, partition) = (s.topic.as_str(), s.partition);
        let mut cursor = self.reader.resolve(topic, partition, s.from).await?;
        let mut chain = if s.chain.is_empty() {
            None
        } else {
            let stored = (!s.state.is_empty())
                .then(|| ChainState::read_path(self.store.clone(), topic, partition, &s.state));
            if let Some(stored) = &stored
                && stored
                    .stored_through()?
                    .is_some_and(|through| through > cursor)
            {
                // The stored state has seen records this subscription is
                // about to read (a client that lost frames, a group that
                // resumes from an older commit): with it, a dedupe would
                // drop them. Starting without it lets duplicates through
                // instead.
                tracing::info!(%topic, partition, name = %s.state, cursor,
                    "named read-path state is ahead of the subscription; it starts empty");
                stored.forget(&self.writer).await?;
            }
            let state = match &stored {
                Some(stored) => stored.factory(&s.chain),
                None => chain::in_memory_state(),
            };
            let mut runner = ChainRunner::new(
                self.registry.clone(),
                s.chain,
                s.on_failure,
                AttachPoint::ReadPath,
                self.attachments.read_counters(topic),
                state,
            );
            runner.build().await?;
            Some(ReadChain {
                runner,
                halt: Halt::default(),
                stored,
            })
        };
        let mut log_end = self.notifier.watch(topic, partition);
        let mut idle_sent = false;
        let mut scratch = [0u8; 64];
        loop {
            let mut read = self
                .reader
                .read_at(topic, partition, cursor, s.max_bytes)
                .await?;
            let start = cursor;
            if let Some(last) = read.batches.last() {
                let next = BatchHeader::parse(last)
                    .map(|h| h.next_offset())
                    .unwrap_or(cursor);
                cursor = next.max(cursor);
                idle_sent = false;
            } else if idle_sent {
                // Caught up: wait for an append, the client leaving, or a
                // tick (which notices retention and deleted topics).
                tokio::select! {
                    changed = log_end.changed() => if changed.is_err() { return Ok(()) },
                    r = recv.read(&mut scratch) => if !matches!(r, Ok(Some(_))) { return Ok(()) },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            } else {
                // One empty frame tells the client where the log ends.
                idle_sent = true;
            }
            let ran = chain.is_some() && !read.batches.is_empty();
            if let Some(c) = chain.as_mut()
                && ran
            {
                let at = (topic, partition);
                read.batches = c
                    .run(&self.dead_letters, at, start, &read.batches, &mut recv)
                    .await?;
            }
            if let Some(e) = reader::unservable(&read.batches) {
                return Err(e.into());
            }
            let sent =
                wire::write_fetched(feed.send, feed.correlation_id, read, cursor, &mut feed.buf);
            if sent.await.is_err() {
                return Ok(());
            }
            // Stored only once the frame is sent, so stored state never
            // runs ahead of what the subscriber was given.
            if ran && let Some(stored) = chain.as_ref().and_then(|c| c.stored.as_ref()) {
                stored.store_through(&self.writer, cursor).await?;
            }
        }
    }
}

/// A subscription's read-path plugin chain.
struct ReadChain {
    runner: ChainRunner,
    halt: Halt,
    /// Its state in the store, for a subscription that names it.
    stored: Option<ChainState>,
}

impl ReadChain {
    /// Runs the chain on stored batches from offset `from` and returns the
    /// batches to send. Under `halt`, a failure pauses with backoff and
    /// retries the same records on a rebuilt chain.
    async fn run(
        &mut self,
        dead_letters: &DeadLetters,
        (topic, partition): (&str, u32),
        from: u64,
        stored: &[Bytes],
        recv: &mut RecvStream,
    ) -> Result<Vec<Bytes>, FeedError> {
        let mut inputs = Vec::new();
        for b in stored {
            let records = batch::records(b)?;
            inputs.extend(records.into_iter().filter(|r| r.offset >= from));
        }
        // Every output goes out in one frame, each input's fan-out in a
        // batch of its own.
        let limits = OutputLimits {
            max_record_bytes: chain::MAX_OUTPUT_BATCH_BYTES,
            max_batch_bytes: chain::MAX_OUTPUT_BATCH_BYTES,
            overhead_per_input: batch::HEADER_LEN,
        };
        loop {
            match self.runner.run(topic, partition, &inputs, limits).await {
                Ok(run) => {
                    self.halt.clear();
                    if !run.dead_letters.is_empty() {
                        dead_letters.append_once(topic, &run.dead_letters).await?;
                    }
                    return Ok(offset_batches(&inputs, run.outputs));
                }
                Err(ChainRunError::Failed { .. }) => {
                    let pause = self.halt.trip(Instant::now());
                    tracing::warn!(%topic, partition, ?pause, "read-path chain halted");
                    // The rebuilt chain loads its state from the store, as
                    // of the last frame sent: the failed run's changes go.
                    if let Some(stored) = &self.stored {
                        stored.discard();
                    }
                    self.runner.reset();
                    // Pause, but stop at once if the subscriber goes away.
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        r = recv.read(&mut probe) => if !matches!(r, Ok(Some(_))) {
                            return Err(FeedError::SubscriberLeft);
                        },
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Encodes outputs so each keeps the offset of its source record: a run of
/// one-output-per-input records with consecutive source offsets shares a
/// batch; anything else gets a batch of its own at the source offset.
fn offset_batches(inputs: &[StoredRecord], outputs: Vec<(usize, Record)>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run: Option<(BatchBuilder, u64, u64)> = None;
    let flush = |run: &mut Option<(BatchBuilder, u64, u64)>, out: &mut Vec<Bytes>| {
        if let Some((builder, base, _)) = run.take() {
            let mut bytes = BytesMut::from(&builder.finish(ProducerStamp::NONE)[..]);
            batch::set_base_offset(&mut bytes, base);
            out.push(bytes.freeze());
        }
    };
    let mut i = 0;
    while i < outputs.len() {
        let index = outputs[i].0;
        let group = outputs[i..].iter().take_while(|(j, _)| *j == index).count();
        let offset = inputs[index].offset;
        for (_, record) in &outputs[i..i + group] {
            let continues = group == 1 && run.as_ref().is_some_and(|(_, _, next)| *next == offset);
            if !continues {
                flush(&mut run, &mut out);
                run = Some((BatchBuilder::new(), offset, offset));
            }
            let (builder, _, next) = run.as_mut().expect("set above");
            builder.push(record);
            *next = offset + 1;
            if group > 1 {
                flush(&mut run, &mut out);
            }
        }
        i += group;
    }
    flush(&mut run, &mut out);
    out
}
