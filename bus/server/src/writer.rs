//! The single writer: group commit.
//!
//! redb allows one write transaction at a time, and each durable commit
//! costs an fsync. So one thread owns writing: it takes every append that is
//! waiting, across all connections and partitions, commits them in one
//! transaction, and only then answers each one. Under load a commit carries
//! many batches and the fsync is shared; at low load a lone append commits
//! at once, with no timer to wait for.
//!
//! ```text
//!  conn A ─┐                        ┌─▶ ack A
//!  conn B ─┼─▶ queue ─▶ writer ─▶ txn + fsync ─┼─▶ ack B
//!  conn C ─┘                        └─▶ ack C, wake subscribers
//! ```

use std::sync::Arc;

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::Response;
use edgebus_store::{
    Append, AppendError, AppendOutcome, CommitError, ConfigKind, LogStore, OffsetCommit,
    PipelineCommit, PipelineError, RetentionReport, StoreError,
};
use tokio::sync::{mpsc, oneshot};

use crate::notify::Notifier;

/// Appends queued for the writer before producers wait.
const QUEUE_DEPTH: usize = 8192;

/// Result of one append, as the writer reports it.
pub type AppendResult = Result<AppendOutcome, WriteError>;

/// Why an append was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store refused this append; others in the group are unaffected.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The transaction failed; nothing in it was stored.
    #[error("{0}")]
    Store(String),
}

enum Op {
    Append {
        append: Append,
        durable: bool,
        reply: oneshot::Sender<AppendResult>,
    },
    Retention {
        now_ms: i64,
        reply: oneshot::Sender<Result<RetentionReport, StoreError>>,
    },
    Commit {
        commits: Vec<OffsetCommit>,
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    Pipeline {
        commit: Box<PipelineCommit>,
        reply: oneshot::Sender<Result<Vec<u64>, PipelineError>>,
    },
    DeletePipeline {
        name: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn spawn(store: Arc<dyn LogStore>, notifier: Notifier, max_group_bytes: usize) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("edgebus-writer".into())
            .spawn(move || run(store, notifier, max_group_bytes, rx))
            .expect("spawning the writer thread");
        Writer { tx }
    }

    /// Queues an append; the receiver resolves after the commit that holds it.
    pub async fn append(&self, append: Append, durable: bool) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        // If the writer is gone, `reply` is dropped and the receiver reports it.
        let _ = self
            .tx
            .send(Op::Append {
                append,
                durable,
                reply,
            })
            .await;
        rx
    }

    /// Stores consumer-group offsets. Every commit waiting when the writer
    /// gets to it shares one transaction and one fsync.
    pub async fn commit_offsets(&self, commits: Vec<OffsetCommit>) -> Result<(), Response> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Commit { commits, reply })
            .await
            .map_err(|_| Response::error(ErrorCode::ShuttingDown, "writer stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(commit_error(e)),
            Err(_) => Err(Response::error(ErrorCode::ShuttingDown, "writer stopped")),
        }
    }

    /// Commits one exactly-once pipeline step (outputs, plugin state and
    /// source position in one transaction), then wakes subscribers of the
    /// partitions it wrote.
    pub async fn commit_pipeline(&self, commit: PipelineCommit) -> Result<Vec<u64>, PipelineError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || PipelineError::Store(StoreError::Backend("writer stopped".into()));
        self.tx
            .send(Op::Pipeline {
                commit: Box::new(commit),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Deletes a pipeline's definition, positions and state, after every
    /// step already queued.
    pub async fn delete_pipeline(&self, name: String) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || StoreError::Backend("writer stopped".into());
        self.tx
            .send(Op::DeletePipeline { name, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs retention inside the writer, so it never races an append.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Retention { now_ms, reply })
            .await
            .map_err(|_| StoreError::Backend("writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("writer stopped".into()))?
    }
}

fn run(
    store: Arc<dyn LogStore>,
    notifier: Notifier,
    max_group_bytes: usize,
    mut rx: mpsc::Receiver<Op>,
) {
    let mut appends = Vec::new();
    let mut replies = Vec::new();
    let mut commits = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        let mut durable = false;
        let mut bytes = 0;
        while let Some(op) = next.take() {
            match op {
                Op::Append {
                    append,
                    durable: d,
                    reply,
                } => {
                    durable |= d;
                    bytes += append.batch.len();
                    appends.push(append);
                    replies.push(reply);
                }
                Op::Retention { now_ms, reply } => {
                    let _ = reply.send(store.enforce_retention(now_ms));
                }
                Op::Commit { commits: c, reply } => commits.push((c, reply)),
                Op::Pipeline { commit, reply } => {
                    let result = store.commit_pipeline(&commit);
                    if let Ok(bases) = &result {
                        for (append, base) in commit.appends.iter().zip(bases) {
                            let end = base + u64::from(append.header.record_count);
                            notifier.publish(&append.topic, append.partition, end);
                        }
                    }
                    let _ = reply.send(result);
                }
                Op::DeletePipeline { name, reply } => {
                    let deleted = store
                        .put_config(ConfigKind::Pipeline, &name, None)
                        .and_then(|()| store.delete_pipeline_data(&name));
                    let _ = reply.send(deleted);
                }
            }
            if bytes < max_group_bytes && commits.len() < MAX_GROUP_OFFSET_COMMITS {
                next = rx.try_recv().ok();
            }
        }
        if !appends.is_empty() {
            commit(&*store, &notifier, &mut appends, &mut replies, durable);
        }
        if !commits.is_empty() {
            commit_offsets(&*store, &mut commits);
        }
    }
}

/// Offset-commit requests sharing one transaction at most.
const MAX_GROUP_OFFSET_COMMITS: usize = 4096;

type PendingCommit = (Vec<OffsetCommit>, oneshot::Sender<Result<(), CommitError>>);

/// Stores every waiting offset commit in one transaction. If the store
/// refuses the whole group because of one request (an unknown topic), each
/// request is retried alone so the others still land.
fn commit_offsets(store: &dyn LogStore, pending: &mut Vec<PendingCommit>) {
    let all: Vec<OffsetCommit> = pending
        .iter()
        .flat_map(|(c, _)| c.iter().cloned())
        .collect();
    match store.commit_offsets(&all) {
        Ok(()) => {
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
        Err(CommitError::Store(e)) => {
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Err(CommitError::Store(e.clone())));
            }
        }
        Err(_) => {
            for (commits, reply) in pending.drain(..) {
                let _ = reply.send(store.commit_offsets(&commits));
            }
        }
    }
}

fn commit_error(e: CommitError) -> Response {
    let code = match &e {
        CommitError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        CommitError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        CommitError::InvalidGroup(_) => ErrorCode::InvalidRequest,
        _ => ErrorCode::StorageError,
    };
    Response::error(code, e.to_string())
}

fn commit(
    store: &dyn LogStore,
    notifier: &Notifier,
    appends: &mut Vec<Append>,
    replies: &mut Vec<oneshot::Sender<AppendResult>>,
    durable: bool,
) {
    let started = std::time::Instant::now();
    let outcome = store.append(appends, durable);
    tracing::trace!(
        batches = appends.len(),
        durable,
        elapsed_us = started.elapsed().as_micros() as u64,
        "group commit"
    );
    match outcome {
        Ok(results) => {
            for ((append, reply), result) in appends.drain(..).zip(replies.drain(..)).zip(results) {
                if let Ok(AppendOutcome::Appended { base_offset }) = result {
                    let end = base_offset + u64::from(append.header.record_count);
                    notifier.publish(&append.topic, append.partition, end);
                }
                let _ = reply.send(result.map_err(WriteError::from));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batches = appends.len(), "group commit failed");
            appends.clear();
            for reply in replies.drain(..) {
                let _ = reply.send(Err(WriteError::Store(e.to_string())));
            }
        }
    }
}
