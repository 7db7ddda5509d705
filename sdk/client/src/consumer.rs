//! Subscriptions: the broker pushes batches down a stream as they are
//! appended, and QUIC flow control is the backpressure.
//!
//! A [`Subscription`] reads one partition. It holds at most a few pushed
//! frames of decoded records; while the application does not call
//! [`Subscription::next`], the reader stops reading the stream, the
//! stream's receive window fills, and the broker stops sending. After a lost
//! connection the subscription resumes from the offset after the last record
//! it delivered.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::batch::StoredRecord;
use edgebus_proto::frame::{FailurePolicy, PluginRef, Position, Request, Response};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

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
    /// A name for the chain's plugin state: the broker keeps it per topic,
    /// partition and name, so the next subscription of the name (after a
    /// reconnect or a broker restart too) goes on from it. Empty: the state
    /// lives and dies with the subscription.
    pub plugin_state: String,
}

impl Default for SubscribeConfig {
    fn default() -> Self {
        SubscribeConfig {
            max_bytes: 1 << 20,
            buffer_frames: 4,
            reconnect: true,
            chain: Vec::new(),
            on_failure: FailurePolicy::default(),
            plugin_state: String::new(),
        }
    }
}

/// Records cross from the reader task to the application a pushed frame at a
/// time, so the channel costs one operation per frame, not per record. Each
/// carries the broker's position after that frame.
type Chunk = Result<(Vec<StoredRecord>, u64), ClientError>;

/// A live feed of one partition's records.
///
/// Read it with [`Subscription::next`] or as a [`futures::Stream`]. It
/// follows the partition forever unless bounded by
/// [`Subscription::until_end`] or [`Subscription::until`]. Dropping it (or
/// [`Subscription::close`]) ends its reader task and its stream on the
/// broker.
#[derive(Debug)]
pub struct Subscription {
    chunks: mpsc::Receiver<Chunk>,
    ready: std::vec::IntoIter<StoredRecord>,
    /// The position after the records in `ready`, published once the
    /// application has taken them all.
    pending: Option<u64>,
    /// A bounded read ends before this offset.
    end: Option<u64>,
    log_end: watch::Receiver<Option<u64>>,
    position_tx: watch::Sender<Option<u64>>,
    position: watch::Receiver<Option<u64>>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Subscribes to `topic`/`partition` from `from`, and returns once the
    /// broker has resolved `from` and answered with its first frame: a
    /// record appended after this returns is delivered, even from
    /// [`Position::Latest`]. A refused subscription (unknown topic or
    /// plugin, offset out of range) fails here. With a read-path chain the
    /// first frame holds the chain's output, so this waits for the chain's
    /// first run (and, under [`FailurePolicy::Halt`], until it succeeds).
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
        let reader = Reader {
            client,
            topic: topic.to_owned(),
            partition,
            config,
            records: tx,
            log_end: end_tx,
        };
        let mut stream = reader.open(from).await?;
        // A batch is served whole: records before an explicit start offset
        // in the same batch are skipped here.
        let mut next_offset = match from {
            Position::Offset(o) => Some(o),
            _ => None,
        };
        // The broker resolves `from` before it sends anything, and always
        // sends a first frame (empty when there is nothing to read yet).
        let (first, at) = reader.read_pushed(&mut stream, &mut next_offset).await?;
        let pending = if first.is_empty() {
            position_tx.send_replace(Some(at));
            None
        } else {
            Some(at)
        };
        let task = tokio::spawn(reader.run(stream, from, next_offset));
        Ok(Subscription {
            chunks,
            ready: first.into_iter(),
            pending,
            end: None,
            log_end,
            position_tx,
            position,
            task,
        })
    }

    /// Bounds this subscription to the partition's log end as the broker
    /// last reported it (right after [`Subscription::start`], the end when
    /// the subscription began): it yields the records before that end and
    /// then `None`, instead of waiting for more. This is what
    /// `edgebus consume` does without `--follow`.
    pub fn until_end(self) -> Subscription {
        match self.log_end() {
            Some(end) => self.until(end),
            // `start` has read a frame, and every frame carries the end.
            None => self,
        }
    }

    /// Bounds this subscription to the records before offset `end`: it
    /// yields them and then `None`. Records a read-path plugin filters out
    /// count as read, so it ends even if the last ones never arrive.
    pub fn until(mut self, end: u64) -> Subscription {
        self.end = Some(end);
        self
    }

    /// The next record, waiting for one to be appended if needed. `None`
    /// once the subscription has ended (or reached the bound of
    /// [`Subscription::until`]); an error ends it.
    pub async fn next(&mut self) -> Option<Result<StoredRecord, ClientError>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// Ends the subscription and waits until its reader task has stopped
    /// and its stream is closed. Dropping a subscription does the same
    /// without waiting.
    pub async fn close(self) {
        let Subscription { chunks, task, .. } = self;
        drop(chunks);
        // The task only ends by returning (it is never aborted), and a
        // panic in it has nothing left to report to.
        let _ = task.await;
    }

    /// The partition's log end as of the last frame the broker pushed.
    /// Always `Some` once [`Subscription::start`] has returned.
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

    fn poll_record(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<StoredRecord, ClientError>>> {
        loop {
            if let Some(record) = self.ready.next() {
                match self.end {
                    Some(end) if record.offset >= end => {
                        self.finish(end);
                        return Poll::Ready(None);
                    }
                    _ => return Poll::Ready(Some(Ok(record))),
                }
            }
            if let Some(position) = self.pending.take() {
                self.position_tx.send_replace(Some(position));
            }
            if let Some(end) = self.end
                && self.position().is_some_and(|p| p >= end)
            {
                self.finish(end);
                return Poll::Ready(None);
            }
            match std::task::ready!(self.chunks.poll_recv(cx)) {
                None => return Poll::Ready(None),
                Some(Ok((records, position))) => {
                    self.ready = records.into_iter();
                    self.pending = Some(position);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// Stops a bounded read at `end`: everything before it has been
    /// returned, and the reader task is told to stop.
    fn finish(&mut self, end: u64) {
        self.ready = Vec::new().into_iter();
        self.pending = None;
        self.position_tx.send_if_modified(|p| match p {
            Some(at) if *at >= end => false,
            _ => {
                *p = Some(end);
                true
            }
        });
        self.chunks.close();
    }
}

impl Stream for Subscription {
    type Item = Result<StoredRecord, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_record(cx)
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

type QuicStream = (quinn::SendStream, quinn::RecvStream, u32);

impl Reader {
    async fn open(&self, from: Position) -> Result<QuicStream, ClientError> {
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
            state: self.config.plugin_state.clone(),
        }
        .encode(corr, &mut buf);
        wire::write_frames(&mut send, &buf).await?;
        Ok((send, recv, corr))
    }

    /// Runs until the subscription is dropped or fails for good. Dropping
    /// the stream on the way out finishes it, which ends the broker's feed.
    async fn run(self, stream: QuicStream, start: Position, next_offset: Option<u64>) {
        let records = self.records.clone();
        tokio::select! {
            () = self.follow(stream, start, next_offset) => {}
            () = records.closed() => {}
        }
    }

    async fn follow(&self, mut stream: QuicStream, start: Position, mut next_offset: Option<u64>) {
        let mut attempt = 0u32;
        loop {
            let error = self.pump(&mut stream, &mut next_offset).await;
            let retriable = error.is_retriable() && !self.client.is_closed();
            if !(self.config.reconnect && retriable) {
                let error = if self.client.is_closed() {
                    ClientError::Closed
                } else {
                    error
                };
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
                    Err(e) if e.is_retriable() => continue,
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
    async fn pump(&self, stream: &mut QuicStream, next_offset: &mut Option<u64>) -> ClientError {
        loop {
            let before = *next_offset;
            let (records, position) = match self.read_pushed(stream, next_offset).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            if (!records.is_empty() || *next_offset != before)
                && self.records.send(Ok((records, position))).await.is_err()
            {
                return ClientError::Closed;
            }
        }
    }

    /// Reads one pushed frame and returns its records at or after
    /// `next_offset`, and the position after it, which `next_offset` moves
    /// to.
    async fn read_pushed(
        &self,
        stream: &mut QuicStream,
        next_offset: &mut Option<u64>,
    ) -> Result<(Vec<StoredRecord>, u64), ClientError> {
        let body = wire::read_frame(&mut stream.1, self.client.max_frame_bytes())
            .await?
            .ok_or(ClientError::Closed)?;
        let (batches, broker_next) = match decode_response(body, stream.2)? {
            Response::Fetched {
                log_end,
                next_offset,
                batches,
                ..
            } => {
                self.log_end.send_replace(Some(log_end));
                (batches, next_offset)
            }
            other => return Err(unexpected(&other)),
        };
        let records = decode_records(&batches, next_offset.unwrap_or(0))?;
        // The broker's position covers records a read-path plugin
        // filtered out; a resubscription starts after them too.
        let after = records.last().map_or(0, |r| r.offset + 1).max(broker_next);
        let position = next_offset.map_or(after, |n| n.max(after));
        *next_offset = Some(position);
        Ok((records, position))
    }
}
