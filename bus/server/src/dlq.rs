//! Dead-letter topics: `<topic>.dlq` holds the records a plugin failed on
//! under the `dead-letter` policy, created on first use.
//!
//! Each record a plugin fails on is dead-lettered once:
//!
//! - ingest: in the transaction of the batch it came from
//!   ([`crate::writer::Append::dead_letters`]), so a crash never writes it
//!   twice or loses it, and a producer retry, answered from the dedup state,
//!   does not run the chain again;
//! - pipelines: in the step's transaction, with its source position;
//! - read path: every subscriber runs its own chain over the same stored
//!   records, so [`DeadLetters::append_once`] remembers which source records
//!   were dead-lettered (read back from the dead-letter topic after a
//!   restart) and writes each once, whichever subscriber hits it first
//!   (on a cluster node: once per node, each reading its own copy).
//!
//! On a cluster node the dead-letter topic is a replicated topic created
//! through the control log, and its leader may be another node, so no
//! transaction can hold both a batch and its dead letters. There they are
//! stored apart ([`DeadLetters::store_apart`]), through a
//! [`DeadLetterRoute`], with `acks=all`, before the batch or step they came
//! from: a failed record is never taken as handled before its dead letter
//! is on every in-sync replica, and a batch retried after a failure in
//! between dead-letters its records again (at least once).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use futures::future::BoxFuture;

use edgebus_core::partition::AckLevel;
use edgebus_proto::batch::{self, Compression, Header, Record};
use edgebus_proto::frame::TopicSpec;
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_store::TopicError;
use tokio::sync::oneshot;

use crate::chain::{self, ATTACH_POINT_HEADER, AttachPoint};
use crate::error::Coded;
use crate::reader::{FetchError, Reader};
use crate::topics::{TopicAdminError, Topics};
use crate::writer::{Append, AppendFailure, Writer};

/// Why dead letters were not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The dead-letter topic could not be created.
    #[error(transparent)]
    Topic(#[from] TopicAdminError),
    /// A dead-letter batch could not be encoded.
    #[error(transparent)]
    Batch(#[from] DecodeError),
    /// The writer refused the append.
    #[error(transparent)]
    Write(#[from] AppendFailure),
    /// The dead-letter topic could not be read back.
    #[error(transparent)]
    Read(#[from] FetchError),
    /// The node leading the dead-letter topic refused them or could not
    /// be reached (a cluster).
    #[error("dead letters not stored through node {node}: {detail}")]
    Remote {
        /// The node.
        node: u64,
        /// Its answer's code (`NotLeader` when it did not answer).
        code: ErrorCode,
        /// What it said.
        detail: String,
    },
}

impl Coded for DeadLetterError {
    fn code(&self) -> ErrorCode {
        match self {
            DeadLetterError::Topic(e) => e.code(),
            DeadLetterError::Batch(_) => ErrorCode::CorruptBatch,
            DeadLetterError::Write(e) => e.code(),
            DeadLetterError::Read(e) => e.code(),
            DeadLetterError::Remote { code, .. } => *code,
        }
    }
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Source records (partition, offset) of a topic whose read-path dead
/// letter is written; `None` until read back from the dead-letter topic.
type Written = Arc<tokio::sync::Mutex<Option<HashSet<(u32, u64)>>>>;

/// How a cluster node creates dead-letter topics and writes to them: on
/// the topic's leader, wherever it is.
pub trait DeadLetterRoute: Send + Sync {
    /// Creates a dead-letter topic through the control log with the
    /// cluster's default replication; an existing topic is no error.
    fn create(&self, spec: TopicSpec) -> BoxFuture<'static, Result<(), TopicAdminError>>;

    /// Appends one encoded batch to partition 0 of `topic` on its leader
    /// with `acks=all`, following leader changes for a while; returns its
    /// base offset.
    fn append(
        &self,
        topic: String,
        batch: Bytes,
        record_count: u32,
    ) -> BoxFuture<'static, Result<u64, DeadLetterError>>;
}

/// Where failed records go. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    topics: Topics,
    writer: Writer,
    reader: Reader,
    read_path: Arc<Mutex<HashMap<String, Written>>>,
    /// Set once on a cluster node, before it serves clients.
    route: Arc<OnceLock<Arc<dyn DeadLetterRoute>>>,
}

impl DeadLetters {
    /// Dead letters created in `topics`, written through `writer` and read
    /// back through `reader`.
    pub fn new(topics: Topics, writer: Writer, reader: Reader) -> DeadLetters {
        DeadLetters {
            topics,
            writer,
            reader,
            read_path: Arc::default(),
            route: Arc::default(),
        }
    }

    /// Makes this a cluster node's dead letters: topics are created and
    /// written through `route`.
    pub fn set_route(&self, route: Arc<dyn DeadLetterRoute>) {
        let _ = self.route.set(route);
    }

    /// Whether dead letters must be stored apart from the batch they came
    /// from ([`DeadLetters::store_apart`]): on a cluster node.
    pub fn apart(&self) -> bool {
        self.route.get().is_some()
    }

    /// Writes read-path dead letters of `topic`, skipping those whose
    /// source record already has one (from any subscriber, before or after
    /// a restart), and waits for the commit.
    pub async fn append_once(
        &self,
        topic: &str,
        letters: &[Record],
    ) -> Result<(), DeadLetterError> {
        let slot = {
            let mut map = self
                .read_path
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.entry(topic.to_owned()).or_default().clone()
        };
        // Held across the write, so two subscribers failing on the same
        // record cannot both find it missing.
        let mut guard = slot.lock().await;
        let written = match &mut *guard {
            Some(written) => written,
            empty => empty.insert(self.read_back(topic).await?),
        };
        let fresh: Vec<Record> = letters
            .iter()
            .filter(|r| source_of(&r.headers).is_none_or(|at| !written.contains(&at)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.store_apart(topic, &fresh).await?;
        written.extend(fresh.iter().filter_map(|r| source_of(&r.headers)));
        Ok(())
    }

    /// Forgets which records of a deleted topic were dead-lettered: a topic
    /// recreated under the name starts at offset 0 again. (Deleting the
    /// dead-letter topic itself is read back anew the same way.)
    pub fn topic_deleted(&self, topic: &str) {
        let mut map = self
            .read_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(topic);
        if let Some(source) = topic.strip_suffix(".dlq") {
            map.remove(source);
        }
    }

    /// The source records of `topic` that have a read-path dead letter,
    /// read from its dead-letter topic.
    async fn read_back(&self, topic: &str) -> Result<HashSet<(u32, u64)>, DeadLetterError> {
        let dlq = dlq_topic(topic);
        let mut written = HashSet::new();
        if self.topics.spec(&dlq).is_err() {
            return Ok(written);
        }
        let mut cursor = 0;
        loop {
            let read = self.reader.read_at(&dlq, 0, cursor, u32::MAX).await?;
            let Some(last) = read.batches.last() else {
                return Ok(written);
            };
            cursor = batch::BatchHeader::parse(last)?.next_offset();
            for b in &read.batches {
                written.extend(
                    batch::records(b)?
                        .iter()
                        .filter_map(|r| source_of(&r.headers)),
                );
            }
        }
    }

    /// The dead-letter topic of `topic`, created (one partition, kept
    /// forever) on first use.
    pub async fn ensure(&self, topic: &str) -> Result<String, TopicAdminError> {
        let dlq = dlq_topic(topic);
        if self.topics.spec(&dlq).is_err() {
            let spec = TopicSpec {
                name: dlq.clone(),
                partitions: 1,
                retention_ms: -1,
                retention_bytes: -1,
                max_message_bytes: 0,
                compression: Compression::None,
            };
            let created = match self.route.get() {
                Some(route) => route.create(spec).await,
                None => self.topics.create(spec).await,
            };
            match created {
                Ok(()) | Err(TopicAdminError::Store(TopicError::Exists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dlq)
    }

    /// Stores dead letters of `topic` on their own, before the batch or
    /// step they came from, and returns the offset of the first (none for
    /// no letters): on a
    /// cluster node through the route with `acks=all`, on a single node
    /// durably. See the module's doc for why and what it promises.
    pub async fn store_apart(
        &self,
        topic: &str,
        letters: &[Record],
    ) -> Result<Option<u64>, DeadLetterError> {
        let dlq = self.ensure(topic).await?;
        let mut first = None;
        for output in chain::outputs(&dlq, 0, letters)? {
            let base_offset = match self.route.get() {
                Some(route) => {
                    route
                        .append(output.topic, output.batch, output.record_count)
                        .await?
                }
                None => {
                    let batch = (output.batch, output.record_count);
                    append_letters(&self.writer, output.topic, batch, AckLevel::Durable).await?
                }
            };
            first.get_or_insert(base_offset);
        }
        Ok(first)
    }

    /// Dead letters of `topic`, in batches of the default size, to be
    /// written with the batch they came from (see
    /// [`crate::writer::Append::dead_letters`]); creates the dead-letter
    /// topic on first use.
    ///
    /// The receiver learns the offset of the first dead letter in
    /// partition 0 of the dead-letter topic, once they are placed.
    pub async fn prepare(
        &self,
        topic: &str,
        letters: &[Record],
    ) -> Result<(crate::writer::DeadLetters, oneshot::Receiver<u64>), DeadLetterError> {
        let dlq = self.ensure(topic).await?;
        let batches = chain::outputs(&dlq, 0, letters)?
            .into_iter()
            .map(|o| (o.batch, o.record_count))
            .collect();
        let (placed, at) = oneshot::channel();
        let letters = crate::writer::DeadLetters {
            topic: dlq,
            batches,
            placed: Some(placed),
        };
        Ok((letters, at))
    }
}

/// Appends one batch of dead letters (with its record count) to partition
/// 0 of the dead-letter topic `topic` through this node's writer at `acks`,
/// and waits for it; returns its base offset.
pub(crate) async fn append_letters(
    writer: &Writer,
    topic: String,
    (batch, record_count): (Bytes, u32),
    acks: AckLevel,
) -> Result<u64, AppendFailure> {
    let append = Append {
        topic,
        partition: 0,
        batch,
        record_count,
        sequence: None,
        acks,
        dead_letters: None,
        state: None,
    };
    match writer.append(append).await.await {
        Ok(result) => result.map(|outcome| outcome.base_offset()),
        Err(_) => Err(AppendFailure::Stopped),
    }
}

/// The source position of a read-path dead letter, from its headers.
fn source_of(headers: &[Header]) -> Option<(u32, u64)> {
    let header = |key: &str| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    };
    if header(ATTACH_POINT_HEADER)? != AttachPoint::ReadPath.name() {
        return None;
    }
    let partition = header("edgebus-source-partition")?.parse().ok()?;
    let offset = header("edgebus-source-offset")?.parse().ok()?;
    Some((partition, offset))
}
