//! The partition engine: the decisions a broker makes about one partition's
//! appends, with no IO.
//!
//! ```text
//!  QUIC task ──handle_append──▶ ┌─────────────────┐ ──Append{write, base_offset, …}──▶ writer thread
//!            ◀──────── Ack ──── │ PartitionEngine │ ◀──handle_written(write, durable)── (group commit)
//!  follower ─handle_replica_──▶ │                 │ ◀──handle_write_failed────────────
//!            progress           └─────────────────┘ ──HighWatermark(offset)──▶ readers
//! ```
//!
//! [`PartitionEngine::handle_append`] decides at once: the offset a batch
//! gets, the producer dedup outcome and the leader epoch it is stamped with.
//! Offsets come from a tentative log end, so many appends can be decided
//! before the writer stores any of them, and one transaction then holds
//! them all. The engine tracks three ends, each at or below the one before:
//!
//! - the **log end**: past every decided append ([`PartitionEngine::log_end`]);
//! - the **written end**: past every committed append
//!   ([`PartitionEngine::written_end`]);
//! - the **durable end**: past every fsync'd append
//!   ([`PartitionEngine::durable_end`]);
//!
//! and the **high watermark**, the minimum durable log end over the in-sync
//! replicas, which never moves backwards and is all readers may see.
//!
//! # Acks
//!
//! | level               | released when the batch is |
//! |---------------------|----------------------------|
//! | [`AckLevel::None`]  | never: no ack at all, not even a refusal |
//! | [`AckLevel::Leader`]| written |
//! | [`AckLevel::Durable`]| durable |
//! | [`AckLevel::All`]   | durable and below the high watermark |
//!
//! On a single node the local replica is the whole in-sync set, so the high
//! watermark is the durable end and `All` behaves as `Durable`.
//!
//! A refusal is acked at once: it promises nothing about stored data. A
//! duplicate, though, promises that the original batch is stored at the
//! level asked, and the original may still be in flight; so a duplicate, like
//! a request that stores nothing, is acked once every append decided before
//! it meets its level, and fails if those writes fail. Acks of one level
//! therefore come in request order, but a refusal can overtake earlier
//! requests and a `Leader` ack earlier `Durable` ones: the shell matches acks
//! to requests by id.
//!
//! # Driving it
//!
//! Each [`Command::Append`] carries a [`WriteId`], increasing in the order
//! the commands are emitted. The shell must:
//!
//! 1. Build the engine with [`PartitionEngine::new`] from what the store
//!    holds after opening it; everything recovered counts as durable.
//! 2. Execute Append commands in the order polled. Any run of them may share
//!    one write transaction (group commit), but each one's batch (stored at
//!    `base_offset`, stamped with `leader_epoch`; none when `record_count` is
//!    0), its `producer` state and its `epoch_start` entry of the epoch table
//!    go in the same transaction. A later state of a producer replaces an
//!    earlier one.
//! 3. After a commit, call [`PartitionEngine::handle_written`] with the last
//!    write it held, and `durable` when the commit was fsync'd (which makes
//!    every earlier write durable too). Eventually make every write durable:
//!    `Durable` and `All` acks wait for it.
//! 4. When a commit fails, call [`PartitionEngine::handle_write_failed`] and
//!    discard every Append command it polled but has not reported written:
//!    the engine has rolled them back and will hand out their offsets again.
//!    If the store is then reopened, build a new engine from it and fail
//!    every request still waiting, since writes not yet durable may be gone.
//! 5. Send each [`Command::Ack`] to its requester, and publish each
//!    [`Command::HighWatermark`] to readers.
//! 6. Report followers with [`PartitionEngine::handle_replica_progress`] and
//!    [`PartitionEngine::set_in_sync`], elections with
//!    [`PartitionEngine::become_leader`], and a truncation it committed with
//!    [`PartitionEngine::handle_truncated`].
//!
//! Every input takes `now`, as quinn's do, so the time-based rules the
//! cluster brings (replica lag, request deadlines) need no new signatures;
//! no rule reads it yet.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use edgebus_proto::batch::ProducerStamp;

use crate::producer::{self, AppendRefused, Decision, ProducerState, SequenceSpan};

/// Identifies a replica (a node) of a partition.
pub type ReplicaId = u64;

/// What the store holds for a partition when it is opened. Everything in
/// the store is durable, so the engine starts with its written and durable
/// ends, and on a single node its high watermark, at `log_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Offset the next record gets.
    pub log_end: u64,
    /// The newest leader epoch: the last one in the epoch table, or the one
    /// this node was elected at.
    pub leader_epoch: i32,
    /// Where `leader_epoch` starts in the epoch table; `None` when the table
    /// has no entry for it yet (a fresh partition, or no batch stored since
    /// the election), so the next batch records one.
    pub epoch_start: Option<u64>,
    /// The stored dedup state of each producer, by producer id.
    pub producers: Vec<(i64, ProducerState)>,
}

/// How stored a batch must be before its producer hears about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Fire and forget: no ack is ever sent.
    None,
    /// Committed on the leader.
    Leader,
    /// Fsync'd on the leader.
    Durable,
    /// Fsync'd on every in-sync replica: below the high watermark.
    All,
}

/// One producer request to append to the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendRequest {
    /// The caller's token, echoed in the request's [`Command::Append`] and
    /// [`Command::Ack`].
    pub id: u64,
    /// How many records to store. 0 stores nothing (an ingest plugin dropped
    /// every record): with an idempotent `sequence` it only advances the
    /// producer's sequence, without one it is just acked at the log end.
    pub record_count: u32,
    /// The producer's batch as sent, for deduplication; `None`, or a
    /// non-idempotent stamp, for a producer without a producer id.
    pub sequence: Option<SequenceSpan>,
    /// When to ack.
    pub acks: AckLevel,
}

/// Orders the [`Command::Append`]s of one engine: each gets the next
/// number, and a number is never handed out twice, even after a rollback.
///
/// The shell reports progress by write rather than by log end because a
/// sequence-only append stores no records: a log end cannot tell whether it
/// was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// What the shell must do, polled from the engine in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store a batch, in one transaction with its producer state and epoch
    /// table entry.
    Append {
        /// The request's token.
        id: u64,
        /// This write's place in the write order.
        write: WriteId,
        /// Offset of the batch's first record, to write into the batch.
        base_offset: u64,
        /// Records to store; 0 means store no batch, only `producer`.
        record_count: u32,
        /// Leader epoch to stamp into the batch.
        leader_epoch: i32,
        /// `(epoch, start offset)` to add to the epoch table: this is the
        /// first batch of the epoch.
        epoch_start: Option<(i32, u64)>,
        /// `(producer id, state)` to store for the partition.
        producer: Option<(i64, ProducerState)>,
    },
    /// Answer a request.
    Ack {
        /// The request's token.
        id: u64,
        /// The answer.
        result: AckResult,
    },
    /// Readers may now see every record below this offset.
    HighWatermark(u64),
}

/// The answer to an append request.
pub type AckResult = Result<AppendOutcome, AppendError>;

/// What happened to an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this base offset; for a request storing no records, the
    /// log end when it was decided.
    Appended {
        /// Offset of the first record.
        base_offset: u64,
    },
    /// A retry of a batch already stored at this base offset; nothing new
    /// was stored.
    Duplicate {
        /// Offset of the first record of the original batch.
        base_offset: u64,
    },
}

impl AppendOutcome {
    /// Base offset of the stored batch, new or original.
    pub fn base_offset(&self) -> u64 {
        match self {
            AppendOutcome::Appended { base_offset } | AppendOutcome::Duplicate { base_offset } => {
                *base_offset
            }
        }
    }
}

/// Why an append request was not acknowledged as stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The producer dedup rules refused the batch.
    #[error(transparent)]
    Refused(#[from] AppendRefused),
    /// The transaction that was to store the batch failed; nothing was
    /// stored and a retry may succeed.
    #[error("the write holding the batch failed; nothing was stored")]
    StorageFailed,
    /// The log was truncated below the batch before it was acknowledged.
    #[error("the log was truncated at offset {offset} before the batch was acknowledged")]
    Truncated {
        /// Where the log now ends.
        offset: u64,
    },
    /// This replica stopped leading the partition before the batch met its
    /// ack level; it may or may not be kept by the new leader, and a retry
    /// there is deduplicated.
    #[error("this replica is no longer the partition's leader")]
    NotLeader,
    /// An `All` batch was refused before it was stored: fewer replicas are in
    /// sync than the partition's `min.insync.replicas`.
    #[error("only {in_sync} replicas are in sync, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas {
        /// In-sync replicas, the leader included.
        in_sync: usize,
        /// The partition's minimum.
        min: usize,
    },
    /// An `All` batch reached every in-sync replica, but the in-sync set had
    /// shrunk below `min.insync.replicas` meanwhile; it is stored, and a retry
    /// is deduplicated.
    #[error(
        "stored, but only {in_sync} replicas were in sync, fewer than min.insync.replicas {min}"
    )]
    NotEnoughReplicasAfterAppend {
        /// In-sync replicas, the leader included.
        in_sync: usize,
        /// The partition's minimum.
        min: usize,
    },
}

/// Why [`PartitionEngine::handle_written`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrittenError {
    /// No Append command with this write is outstanding: it was never
    /// emitted, or was rolled back by a write failure.
    #[error("unknown write {0:?}")]
    UnknownWrite(WriteId),
}

/// Why [`PartitionEngine::become_leader`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    /// Leader epochs only grow.
    #[error("leader epoch {got} is not newer than the current {current}")]
    NotNewer {
        /// The engine's epoch.
        current: i32,
        /// The epoch asked for.
        got: i32,
    },
}

/// Why [`PartitionEngine::handle_truncated`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TruncateError {
    /// Appends are decided but not yet written or failed.
    #[error("appends are still being written")]
    WritesInFlight,
    /// Records below the high watermark may have been acknowledged to
    /// `All` producers and read by consumers.
    #[error("cannot truncate at {offset}, below the high watermark {high_watermark}")]
    BelowHighWatermark {
        /// Offset asked for.
        offset: u64,
        /// The high watermark.
        high_watermark: u64,
    },
    /// The log does not reach that far.
    #[error("cannot truncate at {offset}, past the written end {written_end}")]
    BeyondWrittenEnd {
        /// Offset asked for.
        offset: u64,
        /// The written end.
        written_end: u64,
    },
}

/// The sans-IO engine of one partition. See the [module docs](self).
#[derive(Debug)]
pub struct PartitionEngine {
    local: ReplicaId,
    /// Tentative: past every decided append.
    log_end: u64,
    leader_epoch: i32,
    /// Tentative, like `log_end`.
    epoch_start: Option<u64>,
    /// Tentative: includes decided appends not yet written.
    producers: HashMap<i64, ProducerState>,
    /// Write ids handed out so far.
    issued: u64,
    /// Every write up to this one is committed.
    written: WriteId,
    written_end: u64,
    /// Every write up to this one is fsync'd.
    durable: WriteId,
    durable_end: u64,
    high_watermark: u64,
    /// Writes not yet durable, in order, with what undoes them.
    writes: VecDeque<Write>,
    /// Requests whose ack is not yet due, in request order.
    waiting: VecDeque<Waiting>,
    /// In-sync replicas other than the local one, which always is.
    in_sync: BTreeSet<ReplicaId>,
    /// The durable log end each follower last reported, since the last
    /// election; a follower in the in-sync set without one holds the high
    /// watermark back.
    progress: BTreeMap<ReplicaId, u64>,
    /// Members of the committed in-sync set, the leader included: what
    /// `min_insync` is checked against. `in_sync` may be larger while an
    /// expansion is being committed.
    isr_size: usize,
    /// `min.insync.replicas`: `All` batches need this many in-sync replicas.
    min_insync: usize,
    commands: VecDeque<Command>,
}

/// An emitted Append command that is not yet durable.
#[derive(Debug)]
struct Write {
    id: WriteId,
    end: u64,
    /// The producer state before this write, to restore if it fails.
    producer_before: Option<(i64, Option<ProducerState>)>,
    /// Whether this write records the epoch start.
    starts_epoch: bool,
}

/// A request waiting for its ack level.
#[derive(Debug)]
struct Waiting {
    id: u64,
    due: Due,
    /// The write whose state the answer relies on.
    write: WriteId,
    /// The log end the answer relies on.
    end: u64,
    outcome: AppendOutcome,
}

/// The ack levels that send an ack.
#[derive(Debug, Clone, Copy)]
enum Due {
    Written,
    Durable,
    Replicated,
}

impl Due {
    fn of(acks: AckLevel) -> Option<Due> {
        match acks {
            AckLevel::None => None,
            AckLevel::Leader => Some(Due::Written),
            AckLevel::Durable => Some(Due::Durable),
            AckLevel::All => Some(Due::Replicated),
        }
    }
}

impl PartitionEngine {
    /// An engine for a partition recovered with `state`, on the replica
    /// `local`, leading at `state.leader_epoch` with itself as the only
    /// in-sync replica.
    pub fn new(state: PartitionState, local: ReplicaId) -> Self {
        PartitionEngine {
            local,
            log_end: state.log_end,
            leader_epoch: state.leader_epoch,
            epoch_start: state.epoch_start,
            producers: state.producers.into_iter().collect(),
            issued: 0,
            written: WriteId(0),
            written_end: state.log_end,
            durable: WriteId(0),
            durable_end: state.log_end,
            high_watermark: state.log_end,
            writes: VecDeque::new(),
            waiting: VecDeque::new(),
            in_sync: BTreeSet::new(),
            progress: BTreeMap::new(),
            isr_size: 1,
            min_insync: 1,
            commands: VecDeque::new(),
        }
    }

    /// The same engine starting with readers held at `high_watermark` (at
    /// most the log end) instead of the log end: a replica elected leader
    /// of a cluster partition may hold records no other in-sync replica has
    /// confirmed, and must not show them until the followers do.
    pub fn with_high_watermark(mut self, high_watermark: u64) -> Self {
        self.high_watermark = high_watermark.min(self.log_end);
        self
    }

    /// Decides what to do with an append request and queues the result: a
    /// [`Command::Append`], or a [`Command::Ack`] when nothing is to be
    /// stored (refusal, duplicate, or no records and no sequence), subject
    /// to the ack rules of the [module docs](self).
    ///
    /// A sequence-only request (`record_count` 0 with an idempotent span)
    /// gets an Append command with `record_count` 0: only the producer state
    /// is persisted, and the ack names the log end.
    pub fn handle_append(&mut self, _now: Instant, request: AppendRequest) {
        if request.acks == AckLevel::All && self.isr_size < self.min_insync {
            self.commands.push_back(Command::Ack {
                id: request.id,
                result: Err(AppendError::NotEnoughReplicas {
                    in_sync: self.isr_size,
                    min: self.min_insync,
                }),
            });
            return;
        }
        let span = request
            .sequence
            .filter(|span| span.producer.is_idempotent());
        let decision = match span {
            Some(span) => producer::check(
                self.producers.get(&span.producer.producer_id),
                span.producer,
                span.record_count,
            ),
            None => Ok(Decision::Append),
        };
        match decision {
            Err(refused) => {
                if Due::of(request.acks).is_some() {
                    self.commands.push_back(Command::Ack {
                        id: request.id,
                        result: Err(refused.into()),
                    });
                }
            }
            Ok(Decision::Duplicate { base_offset }) => {
                self.wait_for_decided(request, AppendOutcome::Duplicate { base_offset });
            }
            Ok(Decision::Append) if request.record_count == 0 && span.is_none() => {
                let base_offset = self.log_end;
                self.wait_for_decided(request, AppendOutcome::Appended { base_offset });
            }
            Ok(Decision::Append) => self.append(request, span),
        }
    }

    /// The shell committed every Append command up to and including
    /// `through`; with `durable`, the commit was fsync'd, so every earlier
    /// write is durable too. `through` may be an already written write, to
    /// report a later fsync.
    ///
    /// Emits [`Command::HighWatermark`] if it advances, then the acks now
    /// due, in request order.
    pub fn handle_written(
        &mut self,
        _now: Instant,
        through: WriteId,
        durable: bool,
    ) -> Result<(), WrittenError> {
        if through > self.written && !self.writes.iter().any(|w| w.id == through) {
            return Err(WrittenError::UnknownWrite(through));
        }
        for write in self.writes.iter() {
            if write.id > self.written && write.id <= through {
                self.written_end = write.end;
            }
        }
        self.written = self.written.max(through);
        if durable {
            while let Some(write) = self.writes.pop_front_if(|w| w.id <= through) {
                self.durable_end = write.end;
            }
            self.durable = self.durable.max(through);
        }
        self.advance_high_watermark();
        self.release();
        Ok(())
    }

    /// The transaction holding every Append command not yet reported
    /// written failed and stored nothing. Rolls the log end, producer states
    /// and epoch start back to the written state, drops those commands if
    /// still queued, and fails every request relying on them with
    /// [`AppendError::StorageFailed`], in request order. The offsets they
    /// had are handed out again, so the log stays dense.
    pub fn handle_write_failed(&mut self, _now: Instant) {
        let written = self.written;
        while let Some(write) = self.writes.pop_back_if(|w| w.id > written) {
            if let Some((producer_id, before)) = write.producer_before {
                match before {
                    Some(state) => self.producers.insert(producer_id, state),
                    None => self.producers.remove(&producer_id),
                };
            }
            if write.starts_epoch {
                self.epoch_start = None;
            }
        }
        self.log_end = self.written_end;
        self.commands
            .retain(|c| !matches!(c, Command::Append { write, .. } if *write > written));
        let commands = &mut self.commands;
        self.waiting.retain(|w| {
            if w.write <= written {
                return true;
            }
            commands.push_back(Command::Ack {
                id: w.id,
                result: Err(AppendError::StorageFailed),
            });
            false
        });
    }

    /// The follower `replica` has durably stored every record below
    /// `log_end`. Emits [`Command::HighWatermark`] and the `All` acks this
    /// allows. Reports about the local replica are ignored: its progress is
    /// its durable end.
    pub fn handle_replica_progress(&mut self, _now: Instant, replica: ReplicaId, log_end: u64) {
        if replica == self.local {
            return;
        }
        self.progress.insert(replica, log_end);
        self.advance_high_watermark();
        self.release();
    }

    /// Replaces the in-sync replica set; the local replica is always in it,
    /// listed or not. A follower that has not reported progress since the
    /// last election holds the high watermark where it is. The high
    /// watermark never moves back, so removing a lagging follower can only
    /// advance it (emitting what that releases), and adding one only holds
    /// it.
    pub fn set_in_sync(&mut self, _now: Instant, replicas: impl IntoIterator<Item = ReplicaId>) {
        let local = self.local;
        self.in_sync = replicas.into_iter().filter(|r| *r != local).collect();
        self.advance_high_watermark();
        self.release();
    }

    /// The committed in-sync set has `isr_size` members, the leader included,
    /// and the partition's `min.insync.replicas` is `min_insync`. `All`
    /// batches are refused with [`AppendError::NotEnoughReplicas`] while the
    /// set is smaller, and one whose set shrank below it while it waited is
    /// answered with [`AppendError::NotEnoughReplicasAfterAppend`].
    pub fn set_min_insync(&mut self, _now: Instant, isr_size: usize, min_insync: usize) {
        self.isr_size = isr_size.max(1);
        self.min_insync = min_insync;
    }

    /// This replica stopped leading: every request still waiting for its
    /// ack level fails with [`AppendError::NotLeader`], in request order.
    /// Appends already emitted are still the shell's to finish and report;
    /// see [`PartitionEngine::is_settled`].
    pub fn abandon(&mut self, _now: Instant) {
        for waiting in self.waiting.drain(..) {
            self.commands.push_back(Command::Ack {
                id: waiting.id,
                result: Err(AppendError::NotLeader),
            });
        }
    }

    /// Whether every emitted append is durable or rolled back: the log the
    /// engine describes is then the one on disk.
    pub fn is_settled(&self) -> bool {
        self.writes.is_empty()
    }

    /// Where the current leader epoch starts, once an append of it is
    /// decided.
    pub fn epoch_start(&self) -> Option<u64> {
        self.epoch_start
    }

    /// One producer's dedup state, counting decided appends.
    pub fn producer_state(&self, producer_id: i64) -> Option<&ProducerState> {
        self.producers.get(&producer_id)
    }

    /// Every producer's dedup state, counting decided appends.
    pub fn producer_states(&self) -> Vec<(i64, ProducerState)> {
        self.producers
            .iter()
            .map(|(id, state)| (*id, state.clone()))
            .collect()
    }

    /// Makes this replica the leader at `epoch`, which must be newer than
    /// the current one. Appends decided from now on are stamped with it, and
    /// the first one storing records carries its `epoch_start`. Follower
    /// progress from the old epoch is forgotten: followers must report again
    /// before the high watermark moves.
    pub fn become_leader(&mut self, _now: Instant, epoch: i32) -> Result<(), EpochError> {
        if epoch <= self.leader_epoch {
            return Err(EpochError::NotNewer {
                current: self.leader_epoch,
                got: epoch,
            });
        }
        self.leader_epoch = epoch;
        self.epoch_start = None;
        self.progress.clear();
        Ok(())
    }

    /// The shell truncated the log at `offset`, durably, in one transaction
    /// that also removed the epoch table entries starting at or after
    /// `offset` and stored, for every producer of the partition, its state
    /// after [`ProducerState::truncate`] at `offset`.
    ///
    /// The engine applies the same to its own state: its log end, written
    /// and durable ends become `offset` (the commit made everything before
    /// durable), producer states forget batches at or after `offset`, and a
    /// request still waiting on a batch there fails with
    /// [`AppendError::Truncated`]; other waiting requests are released if
    /// now due. Truncating at the written end changes nothing.
    ///
    /// Refused while appends are in flight, below the high watermark (what
    /// may have been acknowledged to `All` or read stays), and past the
    /// written end.
    pub fn handle_truncated(&mut self, _now: Instant, offset: u64) -> Result<(), TruncateError> {
        if self.writes.back().is_some_and(|w| w.id > self.written) {
            return Err(TruncateError::WritesInFlight);
        }
        if offset < self.high_watermark {
            return Err(TruncateError::BelowHighWatermark {
                offset,
                high_watermark: self.high_watermark,
            });
        }
        if offset > self.written_end {
            return Err(TruncateError::BeyondWrittenEnd {
                offset,
                written_end: self.written_end,
            });
        }
        if offset == self.written_end {
            return Ok(());
        }
        self.log_end = offset;
        self.written_end = offset;
        self.durable_end = offset;
        self.durable = self.written;
        self.writes.clear();
        for state in self.producers.values_mut() {
            state.truncate(offset);
        }
        if self.epoch_start.is_some_and(|start| start >= offset) {
            self.epoch_start = None;
        }
        let commands = &mut self.commands;
        self.waiting.retain(|w| {
            if w.end <= offset && w.outcome.base_offset() < offset {
                return true;
            }
            commands.push_back(Command::Ack {
                id: w.id,
                result: Err(AppendError::Truncated { offset }),
            });
            false
        });
        self.advance_high_watermark();
        self.release();
        Ok(())
    }

    /// The next command for the shell, oldest first.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Every queued command, oldest first.
    pub fn drain_commands(&mut self) -> impl Iterator<Item = Command> + '_ {
        self.commands.drain(..)
    }

    /// The base offset of the stored batch that a producer batch stamped
    /// `stamp` with `record_count` sequences retries, if it is one, counting
    /// appends decided but not yet written. Lets the broker answer a retry
    /// without running an ingest plugin chain again; it then still submits
    /// the request, which the engine answers as a duplicate once the
    /// original meets the request's ack level.
    pub fn duplicate_of(&self, stamp: ProducerStamp, record_count: u32) -> Option<u64> {
        producer::stored_offset(self.producers.get(&stamp.producer_id), stamp, record_count)
    }

    /// The tentative log end: the offset the next decided append gets.
    pub fn log_end(&self) -> u64 {
        self.log_end
    }

    /// The end of the committed log.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// The end of the fsync'd log.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// Readers may see every record below this offset, and nothing at or
    /// past it.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// The epoch appends are stamped with.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// Decides a request that stores records or advances a sequence.
    fn append(&mut self, request: AppendRequest, span: Option<SequenceSpan>) {
        self.issued += 1;
        let write = WriteId(self.issued);
        let base_offset = self.log_end;
        let end = base_offset + u64::from(request.record_count);
        let epoch_start = (request.record_count > 0 && self.epoch_start.is_none())
            .then_some((self.leader_epoch, base_offset));
        if epoch_start.is_some() {
            self.epoch_start = Some(base_offset);
        }
        let mut producer_before = None;
        let producer = span.map(|span| {
            let producer_id = span.producer.producer_id;
            let before = self.producers.remove(&producer_id);
            let after = producer::record(
                before.clone(),
                span.producer,
                span.record_count,
                base_offset,
            );
            self.producers.insert(producer_id, after.clone());
            producer_before = Some((producer_id, before));
            (producer_id, after)
        });
        self.log_end = end;
        self.writes.push_back(Write {
            id: write,
            end,
            producer_before,
            starts_epoch: epoch_start.is_some(),
        });
        self.commands.push_back(Command::Append {
            id: request.id,
            write,
            base_offset,
            record_count: request.record_count,
            leader_epoch: self.leader_epoch,
            epoch_start,
            producer,
        });
        if let Some(due) = Due::of(request.acks) {
            self.waiting.push_back(Waiting {
                id: request.id,
                due,
                write,
                end,
                outcome: AppendOutcome::Appended { base_offset },
            });
        }
    }

    /// Queues the ack of a request that stores nothing new, due once every
    /// append decided before it meets the request's level: a duplicate's
    /// original is among them.
    fn wait_for_decided(&mut self, request: AppendRequest, outcome: AppendOutcome) {
        let Some(due) = Due::of(request.acks) else {
            return;
        };
        let write = self.writes.back().map_or(self.durable, |w| w.id);
        self.waiting.push_back(Waiting {
            id: request.id,
            due,
            write,
            end: self.log_end,
            outcome,
        });
        self.release();
    }

    /// Raises the high watermark to the minimum durable log end over the
    /// in-sync replicas, if that is higher.
    fn advance_high_watermark(&mut self) {
        let mut candidate = self.durable_end;
        for replica in &self.in_sync {
            match self.progress.get(replica) {
                Some(&log_end) => candidate = candidate.min(log_end),
                None => return,
            }
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            self.commands.push_back(Command::HighWatermark(candidate));
        }
    }

    /// Acks every waiting request whose level is now met, in request order.
    fn release(&mut self) {
        let (written, durable, high_watermark) = (self.written, self.durable, self.high_watermark);
        let (isr_size, min_insync) = (self.isr_size, self.min_insync);
        let commands = &mut self.commands;
        self.waiting.retain(|w| {
            let met = match w.due {
                Due::Written => w.write <= written,
                Due::Durable => w.write <= durable,
                Due::Replicated => w.write <= durable && w.end <= high_watermark,
            };
            if met {
                let result = match w.due {
                    Due::Replicated if isr_size < min_insync => {
                        Err(AppendError::NotEnoughReplicasAfterAppend {
                            in_sync: isr_size,
                            min: min_insync,
                        })
                    }
                    _ => Ok(w.outcome),
                };
                commands.push_back(Command::Ack { id: w.id, result });
            }
            !met
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: ReplicaId = 1;
    const FOLLOWER: ReplicaId = 2;
    const PID: i64 = 7;
    const EPOCH: i32 = 3;

    /// A recovered partition ending at `log_end`, whose epoch is already in
    /// the epoch table.
    fn engine_at(log_end: u64) -> PartitionEngine {
        PartitionEngine::new(
            PartitionState {
                log_end,
                leader_epoch: EPOCH,
                epoch_start: Some(0),
                producers: Vec::new(),
            },
            LOCAL,
        )
    }

    fn drain(engine: &mut PartitionEngine) -> Vec<Command> {
        engine.drain_commands().collect()
    }

    fn stamp(epoch: i16, seq: i32) -> ProducerStamp {
        ProducerStamp {
            producer_id: PID,
            producer_epoch: epoch,
            base_sequence: seq,
        }
    }

    /// A request without a producer id.
    fn plain(id: u64, record_count: u32, acks: AckLevel) -> AppendRequest {
        AppendRequest {
            id,
            record_count,
            sequence: None,
            acks,
        }
    }

    /// A request from producer `PID` at epoch 0, storing every record of its
    /// batch.
    fn batch(id: u64, seq: i32, record_count: u32, acks: AckLevel) -> AppendRequest {
        AppendRequest {
            id,
            record_count,
            sequence: Some(SequenceSpan {
                producer: stamp(0, seq),
                record_count,
            }),
            acks,
        }
    }

    /// Producer `PID`'s state after epoch-0 batches `(seq, count, base)`.
    fn state_after(batches: &[(i32, u32, u64)]) -> ProducerState {
        let mut state = None;
        for &(seq, count, base) in batches {
            state = Some(producer::record(state, stamp(0, seq), count, base));
        }
        state.expect("at least one batch")
    }

    fn append(id: u64, write: u64, base_offset: u64, record_count: u32) -> Command {
        Command::Append {
            id,
            write: WriteId(write),
            base_offset,
            record_count,
            leader_epoch: EPOCH,
            epoch_start: None,
            producer: None,
        }
    }

    /// An Append of producer `PID`, which persists its state after `batches`.
    fn append_by(
        id: u64,
        write: u64,
        base_offset: u64,
        record_count: u32,
        batches: &[(i32, u32, u64)],
    ) -> Command {
        Command::Append {
            id,
            write: WriteId(write),
            base_offset,
            record_count,
            leader_epoch: EPOCH,
            epoch_start: None,
            producer: Some((PID, state_after(batches))),
        }
    }

    fn appended(id: u64, base_offset: u64) -> Command {
        Command::Ack {
            id,
            result: Ok(AppendOutcome::Appended { base_offset }),
        }
    }

    fn duplicate(id: u64, base_offset: u64) -> Command {
        Command::Ack {
            id,
            result: Ok(AppendOutcome::Duplicate { base_offset }),
        }
    }

    fn failed(id: u64, error: impl Into<AppendError>) -> Command {
        Command::Ack {
            id,
            result: Err(error.into()),
        }
    }

    /// Four one-record appends at offsets 0..4, one per ack level, decided
    /// and polled but not yet written.
    fn one_per_level(now: Instant) -> PartitionEngine {
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 1, AckLevel::Leader));
        engine.handle_append(now, plain(2, 1, AckLevel::Durable));
        engine.handle_append(now, plain(3, 1, AckLevel::All));
        engine.handle_append(now, plain(4, 1, AckLevel::None));
        drain(&mut engine);
        engine
    }

    #[test]
    fn new_engine_starts_written_durable_and_visible_at_log_end() {
        let engine = engine_at(42);
        assert_eq!(
            (
                engine.log_end(),
                engine.written_end(),
                engine.durable_end(),
                engine.high_watermark(),
                engine.leader_epoch()
            ),
            (42, 42, 42, 42, EPOCH)
        );
    }

    #[test]
    fn append_before_any_write_assigns_dense_offsets_from_tentative_end() {
        let now = Instant::now();
        let mut engine = engine_at(10);
        engine.handle_append(now, plain(1, 3, AckLevel::Leader));
        engine.handle_append(now, plain(2, 2, AckLevel::Durable));
        engine.handle_append(now, plain(3, 1, AckLevel::None));
        assert_eq!(
            vec![
                append(1, 1, 10, 3),
                append(2, 2, 13, 2),
                append(3, 3, 15, 1)
            ],
            drain(&mut engine)
        );
        assert_eq!(
            (engine.log_end(), engine.written_end(), engine.durable_end()),
            (16, 10, 10)
        );
    }

    #[test]
    fn written_without_fsync_acks_leader_level_only() {
        let now = Instant::now();
        let mut engine = one_per_level(now);
        engine.handle_written(now, WriteId(4), false).unwrap();
        assert_eq!(vec![appended(1, 0)], drain(&mut engine));
        assert_eq!((engine.written_end(), engine.durable_end()), (4, 0));
    }

    #[test]
    fn fsync_after_write_acks_durable_and_all_on_single_node() {
        let now = Instant::now();
        let mut engine = one_per_level(now);
        engine.handle_written(now, WriteId(4), false).unwrap();
        drain(&mut engine);
        engine.handle_written(now, WriteId(4), true).unwrap();
        assert_eq!(
            vec![Command::HighWatermark(4), appended(2, 1), appended(3, 2)],
            drain(&mut engine)
        );
    }

    #[test]
    fn durable_write_acks_every_level_but_none_in_request_order() {
        let now = Instant::now();
        let mut engine = one_per_level(now);
        engine.handle_written(now, WriteId(4), true).unwrap();
        assert_eq!(
            vec![
                Command::HighWatermark(4),
                appended(1, 0),
                appended(2, 1),
                appended(3, 2)
            ],
            drain(&mut engine)
        );
    }

    #[test]
    fn written_through_some_appends_acks_only_those() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 2, AckLevel::Leader));
        engine.handle_append(now, plain(2, 2, AckLevel::Leader));
        drain(&mut engine);
        engine.handle_written(now, WriteId(1), false).unwrap();
        assert_eq!(vec![appended(1, 0)], drain(&mut engine));
        assert_eq!(engine.written_end(), 2);
    }

    #[test]
    fn ack_none_is_never_sent() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 2, AckLevel::None));
        drain(&mut engine);
        engine.handle_written(now, WriteId(1), true).unwrap();
        assert_eq!(vec![Command::HighWatermark(2)], drain(&mut engine));
    }

    #[test]
    fn high_watermark_on_single_node_follows_durable_end_not_written_end() {
        let now = Instant::now();
        let mut engine = engine_at(5);
        engine.handle_append(now, plain(1, 3, AckLevel::None));
        drain(&mut engine);
        engine.handle_written(now, WriteId(1), false).unwrap();
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        engine.handle_written(now, WriteId(1), true).unwrap();
        assert_eq!(vec![Command::HighWatermark(8)], drain(&mut engine));
        assert_eq!(engine.high_watermark(), engine.durable_end());
    }

    #[test]
    fn duplicate_of_durable_batch_is_acked_at_once_with_original_offset() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::Durable));
        engine.handle_written(now, WriteId(1), true).unwrap();
        drain(&mut engine);
        engine.handle_append(now, batch(9, 0, 2, AckLevel::Durable));
        assert_eq!(vec![duplicate(9, 0)], drain(&mut engine));
    }

    #[test]
    fn duplicate_of_unwritten_batch_waits_for_the_original_write() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::Durable));
        drain(&mut engine);
        engine.handle_append(now, batch(9, 0, 2, AckLevel::Durable));
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        engine.handle_written(now, WriteId(1), true).unwrap();
        assert_eq!(
            vec![Command::HighWatermark(2), appended(1, 0), duplicate(9, 0)],
            drain(&mut engine)
        );
    }

    #[test]
    fn duplicate_of_failed_batch_fails_with_it() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::Leader));
        engine.handle_append(now, batch(9, 0, 2, AckLevel::Leader));
        drain(&mut engine);
        engine.handle_write_failed(now);
        assert_eq!(
            vec![
                failed(1, AppendError::StorageFailed),
                failed(9, AppendError::StorageFailed)
            ],
            drain(&mut engine)
        );
    }

    /// Recovered dedup state must answer retries of batches stored before a
    /// restart.
    #[test]
    fn recovered_producer_state_answers_retry_as_duplicate() {
        let now = Instant::now();
        let mut engine = PartitionEngine::new(
            PartitionState {
                log_end: 5,
                leader_epoch: EPOCH,
                epoch_start: Some(0),
                producers: vec![(PID, state_after(&[(0, 2, 3)]))],
            },
            LOCAL,
        );
        assert_eq!(engine.duplicate_of(stamp(0, 0), 2), Some(3));
        assert_eq!(engine.duplicate_of(stamp(0, 2), 1), None);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::All));
        assert_eq!(vec![duplicate(1, 3)], drain(&mut engine));
    }

    #[test]
    fn duplicate_of_counts_unwritten_appends_and_changes_nothing() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::Leader));
        drain(&mut engine);
        assert_eq!(engine.duplicate_of(stamp(0, 0), 2), Some(0));
        assert_eq!(engine.duplicate_of(stamp(0, 2), 2), None);
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        assert_eq!(engine.log_end(), 2);
    }

    #[test]
    fn append_from_older_producer_epoch_is_refused_fenced_at_once() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(
            now,
            AppendRequest {
                sequence: Some(SequenceSpan {
                    producer: stamp(1, 0),
                    record_count: 1,
                }),
                ..batch(1, 0, 1, AckLevel::None)
            },
        );
        drain(&mut engine);
        engine.handle_append(now, batch(2, 1, 1, AckLevel::Durable));
        assert_eq!(
            vec![failed(
                2,
                AppendRefused::ProducerFenced {
                    producer_id: PID,
                    epoch: 0,
                    current: 1
                }
            )],
            drain(&mut engine)
        );
    }

    #[test]
    fn append_with_sequence_gap_is_refused_out_of_order() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::None));
        drain(&mut engine);
        engine.handle_append(now, batch(2, 5, 1, AckLevel::Leader));
        assert_eq!(
            vec![failed(
                2,
                AppendRefused::OutOfOrderSequence {
                    producer_id: PID,
                    expected: 2,
                    got: 5
                }
            )],
            drain(&mut engine)
        );
        assert_eq!(engine.log_end(), 2);
    }

    #[test]
    fn retry_older_than_dedup_window_is_refused_stale() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        for seq in 0..=producer::DEDUP_WINDOW as i32 {
            engine.handle_append(now, batch(seq as u64, seq, 1, AckLevel::None));
        }
        drain(&mut engine);
        engine.handle_append(now, batch(99, 0, 1, AckLevel::All));
        assert_eq!(
            vec![failed(
                99,
                AppendRefused::StaleDuplicate {
                    producer_id: PID,
                    sequence: 0
                }
            )],
            drain(&mut engine)
        );
    }

    #[test]
    fn refusal_with_acks_none_sends_nothing() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 3, 1, AckLevel::None));
        drain(&mut engine);
        engine.handle_append(now, batch(2, 9, 1, AckLevel::None));
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
    }

    #[test]
    fn idempotent_span_of_no_records_is_refused() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 0, AckLevel::Leader));
        assert_eq!(
            vec![failed(
                1,
                AppendRefused::EmptySequenceSpan { producer_id: PID }
            )],
            drain(&mut engine)
        );
    }

    #[test]
    fn sequence_only_append_advances_sequence_for_next_batch() {
        let now = Instant::now();
        let mut engine = engine_at(4);
        engine.handle_append(
            now,
            AppendRequest {
                record_count: 0,
                ..batch(1, 0, 3, AckLevel::Durable)
            },
        );
        assert_eq!(
            vec![append_by(1, 1, 4, 0, &[(0, 3, 4)])],
            drain(&mut engine)
        );
        engine.handle_append(now, batch(2, 3, 1, AckLevel::Durable));
        assert_eq!(
            vec![append_by(2, 2, 4, 1, &[(0, 3, 4), (3, 1, 4)])],
            drain(&mut engine)
        );
        engine.handle_written(now, WriteId(2), true).unwrap();
        assert_eq!(
            vec![Command::HighWatermark(5), appended(1, 4), appended(2, 4)],
            drain(&mut engine)
        );
    }

    #[test]
    fn sequence_only_append_is_acked_once_written_not_before() {
        let now = Instant::now();
        let mut engine = engine_at(4);
        engine.handle_append(
            now,
            AppendRequest {
                record_count: 0,
                ..batch(1, 0, 3, AckLevel::Leader)
            },
        );
        drain(&mut engine);
        engine.handle_written(now, WriteId(1), false).unwrap();
        assert_eq!(vec![appended(1, 4)], drain(&mut engine));
    }

    #[test]
    fn empty_request_without_producer_is_acked_at_log_end_without_append() {
        let now = Instant::now();
        let mut engine = engine_at(4);
        engine.handle_append(now, plain(1, 0, AckLevel::Durable));
        assert_eq!(vec![appended(1, 4)], drain(&mut engine));
    }

    #[test]
    fn write_failure_rolls_back_offsets_and_producer_state() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::Leader));
        engine.handle_written(now, WriteId(1), false).unwrap();
        engine.handle_append(now, batch(2, 2, 2, AckLevel::Leader));
        engine.handle_append(now, plain(3, 5, AckLevel::Leader));
        drain(&mut engine);
        engine.handle_write_failed(now);
        assert_eq!(
            vec![
                failed(2, AppendError::StorageFailed),
                failed(3, AppendError::StorageFailed)
            ],
            drain(&mut engine)
        );
        assert_eq!(engine.log_end(), 2);
        assert_eq!(engine.duplicate_of(stamp(0, 2), 2), None);
        engine.handle_append(now, batch(4, 2, 2, AckLevel::Leader));
        assert_eq!(
            vec![append_by(4, 4, 2, 2, &[(0, 2, 0), (2, 2, 2)])],
            drain(&mut engine),
            "the retry gets the rolled-back offsets and a fresh write id"
        );
    }

    #[test]
    fn write_failure_drops_unpolled_append_commands() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 2, AckLevel::Leader));
        engine.handle_append(now, plain(2, 2, AckLevel::None));
        engine.handle_write_failed(now);
        assert_eq!(
            vec![failed(1, AppendError::StorageFailed)],
            drain(&mut engine)
        );
        assert_eq!(engine.log_end(), 0);
    }

    #[test]
    fn write_failure_leaves_written_requests_waiting_for_fsync() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 2, AckLevel::Durable));
        engine.handle_append(now, plain(2, 2, AckLevel::Durable));
        engine.handle_written(now, WriteId(1), false).unwrap();
        drain(&mut engine);
        engine.handle_write_failed(now);
        assert_eq!(
            vec![failed(2, AppendError::StorageFailed)],
            drain(&mut engine)
        );
        engine.handle_written(now, WriteId(1), true).unwrap();
        assert_eq!(
            vec![Command::HighWatermark(2), appended(1, 0)],
            drain(&mut engine)
        );
    }

    #[test]
    fn handle_written_with_unknown_write_is_refused() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        assert_eq!(
            engine.handle_written(now, WriteId(1), false),
            Err(WrittenError::UnknownWrite(WriteId(1)))
        );
        engine.handle_append(now, plain(1, 1, AckLevel::Leader));
        engine.handle_write_failed(now);
        assert_eq!(
            engine.handle_written(now, WriteId(1), false),
            Err(WrittenError::UnknownWrite(WriteId(1))),
            "a rolled-back write cannot be reported written"
        );
    }

    #[test]
    fn ack_all_with_follower_in_sync_waits_for_replica_progress() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.set_in_sync(now, [LOCAL, FOLLOWER]);
        engine.handle_append(now, plain(1, 2, AckLevel::All));
        engine.handle_append(now, plain(2, 3, AckLevel::All));
        engine.handle_written(now, WriteId(2), true).unwrap();
        assert_eq!(
            vec![append(1, 1, 0, 2), append(2, 2, 2, 3)],
            drain(&mut engine)
        );
        engine.handle_replica_progress(now, FOLLOWER, 2);
        assert_eq!(
            vec![Command::HighWatermark(2), appended(1, 0)],
            drain(&mut engine)
        );
        engine.handle_replica_progress(now, FOLLOWER, 5);
        assert_eq!(
            vec![Command::HighWatermark(5), appended(2, 2)],
            drain(&mut engine)
        );
    }

    #[test]
    fn replica_ahead_of_leader_does_not_lift_high_watermark_past_durable_end() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.set_in_sync(now, [FOLLOWER]);
        engine.handle_append(now, plain(1, 2, AckLevel::All));
        engine.handle_written(now, WriteId(1), false).unwrap();
        drain(&mut engine);
        engine.handle_replica_progress(now, FOLLOWER, 10);
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        assert_eq!(engine.high_watermark(), 0);
    }

    #[test]
    fn removing_lagging_follower_from_in_sync_set_advances_high_watermark() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.set_in_sync(now, [FOLLOWER]);
        engine.handle_replica_progress(now, FOLLOWER, 0);
        engine.handle_append(now, plain(1, 2, AckLevel::All));
        engine.handle_written(now, WriteId(1), true).unwrap();
        drain(&mut engine);
        engine.set_in_sync(now, []);
        assert_eq!(
            vec![Command::HighWatermark(2), appended(1, 0)],
            drain(&mut engine)
        );
    }

    #[test]
    fn adding_lagging_follower_to_in_sync_set_holds_high_watermark_without_moving_it_back() {
        let now = Instant::now();
        let mut engine = engine_at(10);
        engine.set_in_sync(now, [FOLLOWER]);
        engine.handle_replica_progress(now, FOLLOWER, 4);
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        assert_eq!(engine.high_watermark(), 10);
        engine.handle_append(now, plain(1, 2, AckLevel::All));
        engine.handle_written(now, WriteId(1), true).unwrap();
        assert_eq!(vec![append(1, 1, 10, 2)], drain(&mut engine));
        engine.handle_replica_progress(now, FOLLOWER, 12);
        assert_eq!(
            vec![Command::HighWatermark(12), appended(1, 10)],
            drain(&mut engine)
        );
    }

    #[test]
    fn progress_of_local_replica_is_ignored() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.set_in_sync(now, [LOCAL, FOLLOWER]);
        engine.handle_replica_progress(now, LOCAL, 100);
        assert_eq!(Vec::<Command>::new(), drain(&mut engine));
        assert_eq!(engine.high_watermark(), 0);
    }

    #[test]
    fn become_leader_stamps_new_epoch_and_records_its_start_on_first_batch() {
        let now = Instant::now();
        let mut engine = engine_at(6);
        engine.become_leader(now, 4).unwrap();
        engine.handle_append(
            now,
            AppendRequest {
                record_count: 0,
                ..batch(1, 0, 1, AckLevel::Leader)
            },
        );
        engine.handle_append(now, plain(2, 2, AckLevel::Leader));
        engine.handle_append(now, plain(3, 1, AckLevel::Leader));
        let stamped =
            |id, write, base_offset, record_count, epoch_start, producer| Command::Append {
                id,
                write: WriteId(write),
                base_offset,
                record_count,
                leader_epoch: 4,
                epoch_start,
                producer,
            };
        assert_eq!(
            vec![
                stamped(1, 1, 6, 0, None, Some((PID, state_after(&[(0, 1, 6)])))),
                stamped(2, 2, 6, 2, Some((4, 6)), None),
                stamped(3, 3, 8, 1, None, None),
            ],
            drain(&mut engine),
            "a sequence-only append stores no batch, so the epoch starts with the next"
        );
        assert_eq!(engine.leader_epoch(), 4);
    }

    #[test]
    fn become_leader_with_epoch_not_newer_is_refused() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        assert_eq!(
            engine.become_leader(now, EPOCH),
            Err(EpochError::NotNewer {
                current: EPOCH,
                got: EPOCH
            })
        );
        assert_eq!(
            engine.become_leader(now, EPOCH - 1),
            Err(EpochError::NotNewer {
                current: EPOCH,
                got: EPOCH - 1
            })
        );
        assert_eq!(engine.leader_epoch(), EPOCH);
    }

    /// A follower's progress from the old epoch may cover a log that the new
    /// leader does not have; it must not count toward the new high
    /// watermark.
    #[test]
    fn become_leader_waits_for_followers_to_report_again() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.set_in_sync(now, [FOLLOWER]);
        engine.handle_replica_progress(now, FOLLOWER, 100);
        engine.become_leader(now, EPOCH + 1).unwrap();
        engine.handle_append(now, plain(1, 2, AckLevel::All));
        engine.handle_written(now, WriteId(1), true).unwrap();
        drain(&mut engine);
        assert_eq!(engine.high_watermark(), 0);
        engine.handle_replica_progress(now, FOLLOWER, 2);
        assert_eq!(
            vec![Command::HighWatermark(2), appended(1, 0)],
            drain(&mut engine)
        );
    }

    #[test]
    fn fresh_partition_records_epoch_start_with_first_batch() {
        let now = Instant::now();
        let mut engine = PartitionEngine::new(
            PartitionState {
                log_end: 0,
                leader_epoch: 0,
                epoch_start: None,
                producers: Vec::new(),
            },
            LOCAL,
        );
        engine.handle_append(now, plain(1, 1, AckLevel::Leader));
        engine.handle_append(now, plain(2, 1, AckLevel::Leader));
        assert_eq!(
            vec![
                Command::Append {
                    id: 1,
                    write: WriteId(1),
                    base_offset: 0,
                    record_count: 1,
                    leader_epoch: 0,
                    epoch_start: Some((0, 0)),
                    producer: None,
                },
                Command::Append {
                    id: 2,
                    write: WriteId(2),
                    base_offset: 1,
                    record_count: 1,
                    leader_epoch: 0,
                    epoch_start: None,
                    producer: None,
                },
            ],
            drain(&mut engine)
        );
    }

    #[test]
    fn write_failure_of_epoch_start_records_it_again_with_next_batch() {
        let now = Instant::now();
        let mut engine = engine_at(6);
        engine.become_leader(now, 4).unwrap();
        engine.handle_append(now, plain(1, 2, AckLevel::None));
        drain(&mut engine);
        engine.handle_write_failed(now);
        engine.handle_append(now, plain(2, 1, AckLevel::None));
        assert_eq!(
            vec![Command::Append {
                id: 2,
                write: WriteId(2),
                base_offset: 6,
                record_count: 1,
                leader_epoch: 4,
                epoch_start: Some((4, 6)),
                producer: None,
            }],
            drain(&mut engine)
        );
    }

    #[test]
    fn truncate_moves_ends_back_and_forgets_producer_batches_past_offset() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, batch(1, 0, 2, AckLevel::None));
        engine.handle_append(now, batch(2, 2, 2, AckLevel::None));
        engine.handle_written(now, WriteId(2), false).unwrap();
        drain(&mut engine);
        engine.handle_truncated(now, 2).unwrap();
        assert_eq!(vec![Command::HighWatermark(2)], drain(&mut engine));
        assert_eq!(
            (engine.log_end(), engine.written_end(), engine.durable_end()),
            (2, 2, 2)
        );
        engine.handle_append(now, batch(3, 2, 2, AckLevel::None));
        assert_eq!(
            vec![append_by(3, 3, 2, 2, &[(0, 2, 0), (2, 2, 2)])],
            drain(&mut engine),
            "the truncated batch's retry is stored again, not answered as a duplicate"
        );
    }

    #[test]
    fn truncate_fails_requests_past_offset_and_releases_the_rest() {
        let now = Instant::now();
        let mut engine = engine_at(0);
        engine.handle_append(now, plain(1, 2, AckLevel::Durable));
        engine.handle_append(now, plain(2, 2, AckLevel::Durable));
        engine.handle_written(now, WriteId(2), false).unwrap();
        drain(&mut engine);
        engine.handle_truncated(now, 2).unwrap();
        assert_eq!(
            vec![
                failed(2, AppendError::Truncated { offset: 2 }),
                Command::HighWatermark(2),
                appended(1, 0)
            ],
            drain(&mut engine)
        );
    }

    #[test]
    fn truncate_at_epoch_start_records_epoch_again_with_next_batch() {
        let now = Instant::now();
        let mut engine = engine_at(6);
        engine.set_in_sync(now, [FOLLOWER]);
        engine.handle_replica_progress(now, FOLLOWER, 6);
        engine.become_leader(now, 4).unwrap();
        engine.handle_append(now, plain(1, 2, AckLevel::None));
        engine.handle_written(now, WriteId(1), true).unwrap();
        drain(&mut engine);
        engine.handle_truncated(now, 6).unwrap();
        engine.handle_append(now, plain(2, 1, AckLevel::None));
        assert_eq!(
            vec![Command::Append {
                id: 2,
                write: WriteId(2),
                base_offset: 6,
                record_count: 1,
                leader_epoch: 4,
                epoch_start: Some((4, 6)),
                producer: None,
            }],
            drain(&mut engine)
        );
    }

    #[test]
    fn truncate_below_high_watermark_past_written_end_or_with_writes_in_flight_is_refused() {
        let now = Instant::now();
        let mut engine = engine_at(5);
        assert_eq!(
            engine.handle_truncated(now, 3),
            Err(TruncateError::BelowHighWatermark {
                offset: 3,
                high_watermark: 5
            })
        );
        assert_eq!(
            engine.handle_truncated(now, 6),
            Err(TruncateError::BeyondWrittenEnd {
                offset: 6,
                written_end: 5
            })
        );
        engine.handle_append(now, plain(1, 1, AckLevel::Leader));
        assert_eq!(
            engine.handle_truncated(now, 5),
            Err(TruncateError::WritesInFlight)
        );
    }

    /// A random workload against a model of what the shell has seen.
    mod random {
        use std::collections::{BTreeMap, BTreeSet};

        use proptest::prelude::*;
        use proptest::test_runner::TestCaseError;

        use super::*;

        const FOLLOWERS: [ReplicaId; 2] = [2, 3];
        const PRODUCERS: [i64; 2] = [10, 11];

        /// Producer id, producer epoch, first sequence, sequence count.
        type SpanKey = (i64, i16, i32, u32);

        /// Which sequence a request carries.
        #[derive(Debug, Clone)]
        enum Sequence {
            NoProducer,
            Next,
            /// The n-th most recent batch of the producer, or the next
            /// sequence if it has none.
            Retry(usize),
            Gap,
            OldEpoch,
            NewEpoch,
        }

        #[derive(Debug, Clone)]
        enum Op {
            Append {
                acks: AckLevel,
                record_count: u32,
                producer: usize,
                sequence: Sequence,
                span: u32,
            },
            Written {
                pick: usize,
                durable: bool,
            },
            WriteFailed,
            Progress {
                follower: usize,
                pick: u64,
            },
            InSync {
                mask: u8,
            },
            BecomeLeader {
                stale: bool,
            },
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            let acks = prop_oneof![
                Just(AckLevel::None),
                Just(AckLevel::Leader),
                Just(AckLevel::Durable),
                Just(AckLevel::All),
            ];
            let sequence = prop_oneof![
                2 => Just(Sequence::NoProducer),
                4 => Just(Sequence::Next),
                2 => (0usize..8).prop_map(Sequence::Retry),
                1 => Just(Sequence::Gap),
                1 => Just(Sequence::OldEpoch),
                1 => Just(Sequence::NewEpoch),
            ];
            prop_oneof![
                8 => (acks, 0u32..4, 0usize..2, sequence, 1u32..4).prop_map(
                    |(acks, record_count, producer, sequence, span)| Op::Append {
                        acks,
                        record_count,
                        producer,
                        sequence,
                        span,
                    }
                ),
                4 => (any::<usize>(), any::<bool>())
                    .prop_map(|(pick, durable)| Op::Written { pick, durable }),
                1 => Just(Op::WriteFailed),
                3 => (0usize..2, any::<u64>())
                    .prop_map(|(follower, pick)| Op::Progress { follower, pick }),
                1 => (0u8..8).prop_map(|mask| Op::InSync { mask }),
                1 => any::<bool>().prop_map(|stale| Op::BecomeLeader { stale }),
            ]
        }

        /// A request as the shell sent it, and what it heard back.
        struct Request {
            acks: AckLevel,
            record_count: u32,
            span: Option<SpanKey>,
            /// The write of its Append command, if it got one.
            write: Option<WriteId>,
            rolled_back: bool,
            acks_seen: u32,
        }

        /// An Append command not rolled back.
        struct Issued {
            write: WriteId,
            base: u64,
            end: u64,
            epoch: i32,
            starts_epoch: bool,
            span: Option<SpanKey>,
        }

        /// The engine, and what the shell knows from the commands it got.
        struct Sim {
            engine: PartitionEngine,
            now: Instant,
            requests: BTreeMap<u64, Request>,
            issued: Vec<Issued>,
            last_write: WriteId,
            initial_end: u64,
            initial_epoch_recorded: bool,
            log_end: u64,
            written: WriteId,
            written_end: u64,
            durable: WriteId,
            durable_end: u64,
            high_watermark: u64,
            epoch: i32,
            epoch_recorded: bool,
            in_sync: BTreeSet<ReplicaId>,
            progress: BTreeMap<ReplicaId, u64>,
            producer_epochs: [i16; 2],
        }

        impl Sim {
            fn new(log_end: u64, epoch_recorded: bool) -> Self {
                let engine = PartitionEngine::new(
                    PartitionState {
                        log_end,
                        leader_epoch: 0,
                        epoch_start: epoch_recorded.then_some(0),
                        producers: Vec::new(),
                    },
                    LOCAL,
                );
                Sim {
                    engine,
                    now: Instant::now(),
                    requests: BTreeMap::new(),
                    issued: Vec::new(),
                    last_write: WriteId(0),
                    initial_end: log_end,
                    initial_epoch_recorded: epoch_recorded,
                    log_end,
                    written: WriteId(0),
                    written_end: log_end,
                    durable: WriteId(0),
                    durable_end: log_end,
                    high_watermark: log_end,
                    epoch: 0,
                    epoch_recorded,
                    in_sync: BTreeSet::new(),
                    progress: BTreeMap::new(),
                    producer_epochs: [0; 2],
                }
            }

            fn end_of(&self, write: WriteId) -> u64 {
                self.issued
                    .iter()
                    .find(|w| w.write == write)
                    .map_or(self.initial_end, |w| w.end)
            }

            fn next_sequence(&self, producer: usize) -> i32 {
                let (id, epoch) = (PRODUCERS[producer], self.producer_epochs[producer]);
                self.issued
                    .iter()
                    .rev()
                    .filter_map(|w| w.span)
                    .find(|span| span.0 == id && span.1 == epoch)
                    .map_or(0, |span| span.2 + span.3 as i32)
            }

            fn apply(&mut self, op: Op, id: u64) -> Result<(), TestCaseError> {
                match op {
                    Op::Append {
                        acks,
                        record_count,
                        producer,
                        sequence,
                        span,
                    } => {
                        let pid = PRODUCERS[producer];
                        let epoch = self.producer_epochs[producer];
                        let next = self.next_sequence(producer);
                        let key = match sequence {
                            Sequence::NoProducer => None,
                            Sequence::Next => Some((pid, epoch, next, span)),
                            Sequence::Retry(back) => {
                                let mine: Vec<SpanKey> = self
                                    .issued
                                    .iter()
                                    .filter_map(|w| w.span)
                                    .filter(|s| s.0 == pid)
                                    .collect();
                                Some(match mine.len() {
                                    0 => (pid, epoch, next, span),
                                    n => mine[n - 1 - back % n],
                                })
                            }
                            Sequence::Gap => Some((pid, epoch, next + 2, span)),
                            Sequence::OldEpoch => Some((pid, epoch - 1, 0, span)),
                            Sequence::NewEpoch => {
                                self.producer_epochs[producer] += 1;
                                Some((pid, epoch + 1, 0, span))
                            }
                        };
                        self.requests.insert(
                            id,
                            Request {
                                acks,
                                record_count,
                                span: key,
                                write: None,
                                rolled_back: false,
                                acks_seen: 0,
                            },
                        );
                        let sequence =
                            key.map(|(producer_id, producer_epoch, base_sequence, count)| {
                                SequenceSpan {
                                    producer: ProducerStamp {
                                        producer_id,
                                        producer_epoch,
                                        base_sequence,
                                    },
                                    record_count: count,
                                }
                            });
                        self.engine.handle_append(
                            self.now,
                            AppendRequest {
                                id,
                                record_count,
                                sequence,
                                acks,
                            },
                        );
                        self.check_commands(Some(id), false)?;
                    }
                    Op::Written { pick, durable } => {
                        let unwritten: Vec<WriteId> = self
                            .issued
                            .iter()
                            .map(|w| w.write)
                            .filter(|w| *w > self.written)
                            .collect();
                        let through = match unwritten.len() {
                            0 => self.written,
                            n => unwritten[pick % n],
                        };
                        self.written(through, durable)?;
                    }
                    Op::WriteFailed => {
                        self.engine.handle_write_failed(self.now);
                        for w in self.issued.iter().filter(|w| w.write > self.written) {
                            for request in self.requests.values_mut() {
                                if request.write == Some(w.write) {
                                    request.rolled_back = true;
                                }
                            }
                        }
                        let written = self.written;
                        self.issued.retain(|w| w.write <= written);
                        self.log_end = self.written_end;
                        self.epoch_recorded = (self.epoch == 0 && self.initial_epoch_recorded)
                            || self
                                .issued
                                .iter()
                                .any(|w| w.epoch == self.epoch && w.starts_epoch);
                        self.check_commands(None, true)?;
                    }
                    Op::Progress { follower, pick } => {
                        let replica = FOLLOWERS[follower];
                        let log_end = pick % (self.written_end + 1);
                        self.engine
                            .handle_replica_progress(self.now, replica, log_end);
                        self.progress.insert(replica, log_end);
                        self.check_commands(None, false)?;
                    }
                    Op::InSync { mask } => {
                        self.in_sync = FOLLOWERS
                            .iter()
                            .enumerate()
                            .filter(|(bit, _)| mask & (1 << bit) != 0)
                            .map(|(_, r)| *r)
                            .collect();
                        let mut listed: Vec<ReplicaId> = self.in_sync.iter().copied().collect();
                        if mask & 4 != 0 {
                            listed.push(LOCAL);
                        }
                        self.engine.set_in_sync(self.now, listed);
                        self.check_commands(None, false)?;
                    }
                    Op::BecomeLeader { stale } => {
                        if stale {
                            prop_assert_eq!(
                                self.engine.become_leader(self.now, self.epoch),
                                Err(EpochError::NotNewer {
                                    current: self.epoch,
                                    got: self.epoch
                                })
                            );
                        } else {
                            self.engine
                                .become_leader(self.now, self.epoch + 1)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            self.epoch += 1;
                            self.epoch_recorded = false;
                            self.progress.clear();
                        }
                        self.check_commands(None, false)?;
                    }
                }
                prop_assert_eq!(self.engine.log_end(), self.log_end);
                prop_assert_eq!(self.engine.written_end(), self.written_end);
                prop_assert_eq!(self.engine.durable_end(), self.durable_end);
                prop_assert_eq!(self.engine.high_watermark(), self.high_watermark);
                Ok(())
            }

            /// Reports every write through `through` committed, and checks
            /// that the newly written batches continue the written log.
            fn written(&mut self, through: WriteId, durable: bool) -> Result<(), TestCaseError> {
                self.engine
                    .handle_written(self.now, through, durable)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for w in &self.issued {
                    if w.write > self.written && w.write <= through {
                        prop_assert_eq!(w.base, self.written_end, "written offsets are dense");
                        self.written_end = w.end;
                    }
                }
                self.written = self.written.max(through);
                if durable {
                    self.durable = self.durable.max(through);
                    self.durable_end = self.end_of(self.durable);
                }
                self.check_commands(None, false)
            }

            /// Checks each command the engine emitted for the input just
            /// given: `request` is the append request it was, `failing`
            /// whether it was a write failure.
            fn check_commands(
                &mut self,
                request: Option<u64>,
                failing: bool,
            ) -> Result<(), TestCaseError> {
                let commands: Vec<Command> = self.engine.drain_commands().collect();
                for command in commands {
                    match command {
                        Command::Append {
                            id,
                            write,
                            base_offset,
                            record_count,
                            leader_epoch,
                            epoch_start,
                            producer,
                        } => {
                            prop_assert_eq!(Some(id), request);
                            prop_assert_eq!(base_offset, self.log_end, "offsets are dense");
                            prop_assert!(write > self.last_write, "write ids are never reused");
                            prop_assert_eq!(leader_epoch, self.epoch);
                            let first = record_count > 0 && !self.epoch_recorded;
                            prop_assert_eq!(
                                epoch_start,
                                first.then_some((self.epoch, base_offset))
                            );
                            self.epoch_recorded |= first;
                            let req = self.requests.get_mut(&id).expect("request was made");
                            prop_assert_eq!(record_count, req.record_count);
                            prop_assert_eq!(producer.map(|(pid, _)| pid), req.span.map(|k| k.0));
                            req.write = Some(write);
                            self.issued.push(Issued {
                                write,
                                base: base_offset,
                                end: base_offset + u64::from(record_count),
                                epoch: leader_epoch,
                                starts_epoch: first,
                                span: req.span,
                            });
                            self.last_write = write;
                            self.log_end = base_offset + u64::from(record_count);
                        }
                        Command::Ack { id, result } => {
                            self.check_ack(id, result, request, failing)?
                        }
                        Command::HighWatermark(offset) => {
                            prop_assert!(
                                offset > self.high_watermark,
                                "the high watermark only grows"
                            );
                            prop_assert!(offset <= self.durable_end);
                            for replica in &self.in_sync {
                                prop_assert!(
                                    self.progress.get(replica).is_some_and(|p| *p >= offset),
                                    "in-sync replica {} has not reached {}",
                                    replica,
                                    offset
                                );
                            }
                            self.high_watermark = offset;
                        }
                    }
                }
                Ok(())
            }

            fn check_ack(
                &mut self,
                id: u64,
                result: AckResult,
                request: Option<u64>,
                failing: bool,
            ) -> Result<(), TestCaseError> {
                let req = self.requests.get_mut(&id).expect("request was made");
                prop_assert_ne!(req.acks, AckLevel::None);
                req.acks_seen += 1;
                prop_assert_eq!(req.acks_seen, 1, "request {} acked twice", id);
                let (acks, write, rolled_back, span) =
                    (req.acks, req.write, req.rolled_back, req.span);
                let (record_count, stored) = (
                    req.record_count,
                    write.and_then(|w| self.issued.iter().find(|i| i.write == w)),
                );
                match result {
                    Ok(AppendOutcome::Appended { base_offset }) => {
                        prop_assert!(!rolled_back);
                        match stored {
                            Some(original) => {
                                prop_assert_eq!(original.base, base_offset);
                                self.check_level(acks, original.write, original.end)?;
                            }
                            None => prop_assert!(record_count == 0 && span.is_none()),
                        }
                    }
                    Ok(AppendOutcome::Duplicate { base_offset }) => {
                        let original = self
                            .issued
                            .iter()
                            .find(|i| i.span.is_some() && i.span == span && i.base == base_offset);
                        prop_assert!(original.is_some(), "duplicate of nothing stored");
                        if let Some(original) = original {
                            self.check_level(acks, original.write, original.end)?;
                        }
                    }
                    Err(AppendError::Refused(_)) => {
                        prop_assert_eq!(request, Some(id), "refusals are immediate");
                    }
                    Err(AppendError::StorageFailed) => {
                        prop_assert!(failing);
                        prop_assert!(write.is_none() || rolled_back);
                    }
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                Ok(())
            }

            /// Checks that a batch written by `write`, ending at `end`, is
            /// stored as `acks` promises.
            fn check_level(
                &self,
                acks: AckLevel,
                write: WriteId,
                end: u64,
            ) -> Result<(), TestCaseError> {
                match acks {
                    AckLevel::None => prop_assert!(false, "acks none got an ack"),
                    AckLevel::Leader => prop_assert!(write <= self.written),
                    AckLevel::Durable => prop_assert!(write <= self.durable),
                    AckLevel::All => {
                        prop_assert!(write <= self.durable);
                        prop_assert!(end <= self.high_watermark);
                    }
                }
                Ok(())
            }

            /// Writes everything durably and drops every follower, then checks
            /// that each request was answered as its ack level says.
            fn settle(&mut self) -> Result<(), TestCaseError> {
                let last = self.issued.last().map_or(self.written, |w| w.write);
                self.written(last.max(self.written), true)?;
                self.engine.set_in_sync(self.now, []);
                self.in_sync.clear();
                self.check_commands(None, false)?;
                for (id, request) in &self.requests {
                    let expected = u32::from(request.acks != AckLevel::None);
                    prop_assert_eq!(request.acks_seen, expected, "acks of request {}", id);
                }
                Ok(())
            }
        }

        proptest! {
            /// Whatever the producers send and however writes and replicas
            /// fare: offsets stay dense and are never reused, no ack comes
            /// before what its level promises, every request with acks gets
            /// exactly one, and the high watermark only grows and never
            /// passes the durable end or an in-sync replica.
            #[test]
            fn random_workload_keeps_offsets_dense_and_acks_honest(
                log_end in 0u64..5,
                epoch_recorded in any::<bool>(),
                ops in proptest::collection::vec(arb_op(), 1..120),
            ) {
                let mut sim = Sim::new(log_end, epoch_recorded);
                for (id, op) in (1u64..).zip(ops) {
                    sim.apply(op, id)?;
                }
                sim.settle()?;
            }
        }
    }
}
