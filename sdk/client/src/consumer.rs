//! Subscriptions: the broker pushes batches down a stream as they are
//! appended, and QUIC flow control is the backpressure.
//!
//! A [`Subscription`] reads one partition. It holds at most a few pushed
//! frames of decoded records; while the application does not call
//! [`Subscription::next`], the reader stops reading the stream, the
//! stream's receive window fills, and the broker stops sending. After a lost
//! connection the subscription resumes from the offset after the last record
//! it delivered.

use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::batch::StoredRecord;
use edgebus_proto::frame::{FailurePolicy, PluginRef, Position, Request, Response};
use tokio::sync::{mpsc, watch};

use crate::client::{Client, decode_records, decode_response, unexpected};
use crate::error::ClientError;
use crate::wire;

/// Subscription settings.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    /// Upper bound on bytes per pushed frame.
    pub max_bytes: u32,
    /// Pushed frames (each up to `max_bytes`) buffered ahead of the
    /// application; beyond this, flow control stops the broker.
    pub buffer_frames: usize,
    /// Reconnect after a lost connection instead of ending with an error.
    pub reconnect: bool,
    /// Plugins the broker runs on this subscription's records (read-path
    /// filter or transform); only their results cross the wire, with the
    /// source offsets. Empty for none.
    pub chain: Vec<PluginRef>,
    /// What the chain does with records a plugin fails on.
    pub on_failure: FailurePolicy,
}

impl Default for SubscribeConfig {
    fn default() -> Self {
        SubscribeConfig {
            max_bytes: 1 << 20,
            buffer_frames: 4,
            reconnect: true,
            chain: Vec::new(),
            on_failure: FailurePolicy::default(),
        }
    }
}

/// Records cross from the reader task to the application a pushed frame at a
/// time, so the channel costs one operation per frame, not per record. Each
/// carries the broker's position after that frame.
type Chunk = Result<(Vec<StoredRecord>, u64), ClientError>;

/// A live feed of one partition's records.
#[derive(Debug)]
pub struct Subscription {
    chunks: mpsc::Receiver<Chunk>,
    ready: std::vec::IntoIter<StoredRecord>,
    /// The position after the records in `ready`, published once the
    /// application has taken them all.
    pending: Option<u64>,
    log_end: watch::Receiver<Option<u64>>,
    position_tx: watch::Sender<Option<u64>>,
    position: watch::Receiver<Option<u64>>,
}

impl Subscription {
    /// Subscribes to `topic`/`partition` from `from`.
    pub async fn start(
        client: Client,
        topic: &str,
        partition: u32,
        from: Position,
        config: SubscribeConfig,
    ) -> Result<Subscription, ClientError> {
        let (tx, chunks) = mpsc::channel(config.buffer_frames.max(1));
        let (end_tx, log_end) = watch::channel(None);
        let (position_tx, position) = watch::channel(None);
        let mut reader = Reader {
            client,
            topic: topic.to_owned(),
            partition,
            config,
            records: tx,
            log_end: end_tx,
        };
        let stream = reader.open(from).await?;
        // A batch is served whole: records before an explicit start offset
        // in the same batch are skipped here.
        let floor = match from {
            Position::Offset(o) => Some(o),
            _ => None,
        };
        tokio::spawn(reader.run(stream, from, floor));
        Ok(Subscription {
            chunks,
            ready: Vec::new().into_iter(),
            pending: None,
            log_end,
            position_tx,
            position,
        })
    }

    /// The next record, waiting for one to be appended if needed. `None`
    /// once the subscription has ended; an error ends it.
    pub async fn next(&mut self) -> Option<Result<StoredRecord, ClientError>> {
        loop {
            if let Some(record) = self.ready.next() {
                return Some(Ok(record));
            }
            if let Some(position) = self.pending.take() {
                self.position_tx.send_replace(Some(position));
            }
            match self.chunks.recv().await? {
                Ok((records, position)) => {
                    self.ready = records.into_iter();
                    self.pending = Some(position);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The partition's log end as of the last frame the broker pushed;
    /// `None` before the first frame.
    pub fn log_end(&self) -> Option<u64> {
        *self.log_end.borrow()
    }

    /// The offset this subscription has read up to: every record before it
    /// has been returned by [`Subscription::next`] or filtered out by a
    /// read-path plugin. Advances while `next` waits, so a caller can tell
    /// it has reached an offset even when the last records were filtered.
    pub fn position(&self) -> Option<u64> {
        *self.position.borrow()
    }

    /// A watch of [`Subscription::position`], readable from other tasks.
    pub fn position_watch(&self) -> watch::Receiver<Option<u64>> {
        self.position.clone()
    }

    /// A watch of [`Subscription::log_end`], readable from other tasks.
    pub fn log_end_watch(&self) -> watch::Receiver<Option<u64>> {
        self.log_end.clone()
    }
}

struct Reader {
    client: Client,
    topic: String,
    partition: u32,
    config: SubscribeConfig,
    records: mpsc::Sender<Chunk>,
    log_end: watch::Sender<Option<u64>>,
}

type Stream = (quinn::SendStream, quinn::RecvStream, u32);

impl Reader {
    async fn open(&mut self, from: Position) -> Result<Stream, ClientError> {
        let (mut send, recv) = self.client.open_stream().await?;
        let corr = self.client.next_correlation_id();
        let mut buf = BytesMut::new();
        Request::Subscribe {
            topic: self.topic.clone(),
            partition: self.partition,
            from,
            max_bytes: self.config.max_bytes,
            chain: self.config.chain.clone(),
            on_failure: self.config.on_failure,
        }
        .encode(corr, &mut buf);
        wire::write_frames(&mut send, &buf).await?;
        Ok((send, recv, corr))
    }

    async fn run(mut self, mut stream: Stream, start: Position, mut next_offset: Option<u64>) {
        let mut attempt = 0u32;
        loop {
            let error = self.pump(&mut stream, &mut next_offset).await;
            if self.records.is_closed() {
                return;
            }
            let retriable = error.is_retriable();
            if !(self.config.reconnect && retriable) {
                let _ = self.records.send(Err(error)).await;
                return;
            }
            tracing::debug!(error = %error, "subscription lost, resubscribing");
            loop {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(5))).await;
                // Before the first frame, resume where the caller asked to
                // start, not from the beginning of the log.
                let from = next_offset.map_or(start, Position::Offset);
                match self.open(from).await {
                    Ok(s) => {
                        stream = s;
                        break;
                    }
                    Err(e) if e.is_retriable() && !self.records.is_closed() => continue,
                    Err(e) => {
                        let _ = self.records.send(Err(e)).await;
                        return;
                    }
                }
            }
            attempt = 0;
        }
    }

    /// Forwards pushed records until the stream fails; returns why.
    async fn pump(&mut self, stream: &mut Stream, next_offset: &mut Option<u64>) -> ClientError {
        let max = self.client.max_frame_bytes();
        loop {
            let body = match wire::read_frame(&mut stream.1, max).await {
                Ok(Some(body)) => body,
                Ok(None) => return ClientError::Closed,
                Err(e) => return e.into(),
            };
            let (batches, broker_next) = match decode_response(body, stream.2) {
                Ok(Response::Fetched {
                    log_end,
                    next_offset,
                    batches,
                    ..
                }) => {
                    self.log_end.send_replace(Some(log_end));
                    (batches, next_offset)
                }
                Ok(other) => return unexpected(&other),
                Err(e) => return e,
            };
            let records = match decode_records(&batches, next_offset.unwrap_or(0)) {
                Ok(r) => r,
                Err(e) => return e,
            };
            // The broker's position covers records a read-path plugin
            // filtered out; a resubscription starts after them too.
            let before = *next_offset;
            let after = records.last().map_or(0, |r| r.offset + 1).max(broker_next);
            *next_offset = Some(next_offset.map_or(after, |n| n.max(after)));
            if (!records.is_empty() || *next_offset != before)
                && self
                    .records
                    .send(Ok((records, next_offset.unwrap_or(after))))
                    .await
                    .is_err()
            {
                return ClientError::Closed;
            }
        }
    }
}
