//! One partition on one node of a cluster, leader or follower, with no IO:
//! Kafka's replication protocol (followers pull, the high watermark is the
//! minimum durable log end over the in-sync replicas, truncation by leader
//! epoch as in KIP-101/279/320), driven by the control plane's
//! [`PartitionMeta`].
//!
//! ```text
//!  controller ──handle_metadata──▶ ┌─────────┐ ──ProposeIsr──────────▶ controller
//!  producers ───handle_append────▶ │ Replica │ ──Engine(Append/Ack/HW)─▶ writer, producers, readers
//!  follower ────handle_fetch─────▶ │         │ ──Fetch────────────────▶ leader
//!  leader ──handle_fetch_response▶ │         │ ──AppendReplicated─────▶ writer
//!  writer ──handle_written/…─────▶ └─────────┘ ──Truncate─────────────▶ writer
//! ```
//!
//! # Roles
//!
//! - **Leader**: a [`PartitionEngine`] decides appends; every follower's
//!   fetch reports the log end it has made durable, and the engine's high
//!   watermark is the minimum over the in-sync set. The set the watermark is
//!   computed over is the *maximal* one (committed ISR plus a pending
//!   expansion, minus nothing pending removal), so a change the controller
//!   has not committed never lets the watermark pass a replica that may still
//!   be needed. A follower that has not caught up to the leader's log end for
//!   `replica_lag_max` is proposed for removal; one whose durable end reaches
//!   the high watermark and the start of the leader's epoch is proposed back.
//! - **Follower**: fetches from the leader with the epoch of its last batch;
//!   the leader answers with batches at its offsets and epochs, or with where
//!   the follower's log diverges from its own, and the follower truncates
//!   there: never to a high watermark, always by epoch.
//! - **Retiring**: a former leader whose appends are still being written.
//!   Its waiting producers are answered [`AppendError::NotLeader`] at once;
//!   it follows or leads again once its log is settled on disk.
//!
//! A replica leads only at an epoch newer than every epoch in its log, and
//! the controller bumps the epoch at every election and every restart of a
//! leader (see [`crate::controller`]), so two replicas never write different
//! batches at one offset and epoch.
//!
//! # Driving it
//!
//! The shell executes [`ReplicaCommand`]s in the order polled:
//! - `Engine(..)`: as for a single node (see [`crate::partition`]); report
//!   with [`Replica::handle_written`] and [`Replica::handle_write_failed`].
//! - `Fetch`: send the request to the leader, serve it there with
//!   [`Replica::handle_fetch`] (reading the batches the answer names from
//!   the store, with the producer state each was stored with), and hand the
//!   answer back with [`Replica::handle_fetch_response`]; a fetch that gets
//!   no answer times out by itself.
//! - `AppendReplicated`: store the batches at their offsets and epochs, with
//!   their producer states and the epoch table entries they start, in one
//!   fsync'd transaction, then call [`Replica::handle_replicated`] (or
//!   [`Replica::handle_replicated_failed`]).
//! - `Truncate`: remove every batch at or after the offset, the epoch table
//!   entries starting there and the producer batches there, durably, then
//!   call [`Replica::handle_local_truncated`].
//! - `ProposeIsr`: propose the ISR change to the controller.
//! - `Mend`: replace the damaged batch at the offset with the batch one of
//!   the sources stores there at that epoch (checked: its CRC, base offset
//!   and epoch), durably, then call [`Replica::handle_mended`] (or
//!   [`Replica::handle_mend_failed`] when no source had it).
//! - `ReportMend`: tell the controller
//!   ([`crate::controller::ControlRequest::ReplicaMended`], or
//!   [`crate::controller::ControlRequest::ReplicaMendFailed`]).
//!
//! [`Replica::handle_tick`] runs the timers (fetch pacing and timeouts, ISR
//! lag, proposal retries); the shell calls it at least every
//! `fetch_interval`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::controller::{NodeId, PartitionMeta, Rebuild};
use crate::partition::{
    AckLevel, AppendError, AppendRequest, Command, PartitionEngine, PartitionState, WriteId,
    WrittenError,
};
use crate::producer::ProducerState;

/// Timers of the replication protocol.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaConfig {
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this
    /// long leaves the in-sync set.
    pub replica_lag_max: Duration,
    /// Pause before the next fetch after a refused one, or an empty one the
    /// leader answered sooner than this (a leader holds a fetch that finds
    /// nothing new, so one held this long is followed at once).
    pub fetch_interval: Duration,
    /// A fetch with no answer after this long is given up and sent again.
    pub fetch_timeout: Duration,
    /// An ISR proposal not seen committed after this long is sent again.
    pub isr_retry: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            replica_lag_max: Duration::from_secs(10),
            fetch_interval: Duration::from_millis(50),
            fetch_timeout: Duration::from_secs(2),
            isr_retry: Duration::from_secs(1),
        }
    }
}

/// The start of an epoch in the log: batches from `start_offset` on, up to
/// the next entry's start, were appended by the leader of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    /// Leader epoch.
    pub epoch: i32,
    /// Its first offset.
    pub start_offset: u64,
}

/// What the store holds for the partition when the node starts; all of it
/// is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalLog {
    /// Offset the next batch gets.
    pub log_end: u64,
    /// The epoch table, oldest first.
    pub epochs: Vec<EpochStart>,
    /// Every producer's dedup state.
    pub producers: Vec<(i64, ProducerState)>,
}

/// A follower's fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The follower.
    pub replica: NodeId,
    /// The leader epoch the follower believes current.
    pub leader_epoch: i32,
    /// The follower's log end: the next batch it needs.
    pub fetch_offset: u64,
    /// How much of its log the follower has fsync'd.
    pub durable_end: u64,
    /// Epoch of the follower's last batch, for the divergence check.
    pub last_fetched_epoch: Option<i32>,
    /// The [`Rebuild::since`] of the controller's mark on this replica,
    /// once its log is cut back to the mark: only such a fetch can bring a
    /// rebuilt replica back into the ISR.
    #[serde(default)]
    pub rebuilt: Option<u64>,
    /// The high watermark the follower knows: a leader holding a fetch
    /// that finds nothing new answers at once when its own is ahead, so
    /// followers serve what is committed without waiting for more writes.
    #[serde(default)]
    pub high_watermark: u64,
}

/// Why a leader would not serve a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FetchError {
    /// This replica does not lead the partition.
    #[error("not the leader")]
    NotLeader,
    /// The follower's leader epoch is older than the leader's.
    #[error("fenced: the leader is at epoch {current}")]
    FencedLeaderEpoch {
        /// The leader's epoch.
        current: i32,
    },
    /// The follower knows a newer epoch than this leader: this leader is
    /// deposed and does not know it yet.
    #[error("unknown leader epoch: this leader is at epoch {current}")]
    UnknownLeaderEpoch {
        /// The leader's epoch.
        current: i32,
    },
    /// The fetching node is not a replica of the partition.
    #[error("not a replica")]
    NotReplica,
}

/// The leader's answer to a fetch, before the shell reads the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchDecision {
    /// Send the batches stored in `from..to` (possibly none), with their
    /// producer states.
    Serve {
        /// First offset to send.
        from: u64,
        /// Send nothing at or past this offset.
        to: u64,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// The follower's log diverges: see [`FetchResponse::Diverging`].
    Diverging {
        /// The leader's largest epoch at or below the follower's last one,
        /// `None` if it has none.
        epoch: Option<i32>,
        /// Where that epoch ends in the leader's log.
        end_offset: u64,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// Not served.
    Refused(FetchError),
}

/// One batch sent to a follower, as the leader stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedBatch {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Records it holds; at least one.
    pub record_count: u32,
    /// The epoch it was stamped with.
    pub leader_epoch: i32,
    /// The producer state stored with it.
    pub producer: Option<(i64, ProducerState)>,
}

/// What a follower gets back for a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResponse {
    /// Batches from the fetch offset on, in order, possibly none.
    Records {
        /// The batches.
        batches: Vec<ReplicatedBatch>,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// Truncate to `end_offset`, or to where the follower's own log leaves
    /// `epoch` if that is lower, then fetch again.
    Diverging {
        /// See [`FetchDecision::Diverging`].
        epoch: Option<i32>,
        /// See [`FetchDecision::Diverging`].
        end_offset: u64,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// Not served.
    Refused(FetchError),
}

/// What the shell must do, polled in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaCommand {
    /// A command of the leader's partition engine.
    Engine(Command),
    /// Send a fetch to the leader.
    Fetch {
        /// The leader.
        leader: NodeId,
        /// Echo in [`Replica::handle_fetch_response`].
        fetch_id: u64,
        /// The request.
        request: FetchRequest,
    },
    /// Store these batches at their offsets, durably, in one transaction.
    AppendReplicated {
        /// The batches, contiguous from the log end.
        batches: Vec<ReplicatedBatch>,
    },
    /// Truncate the log at this offset, durably, and store these dedup
    /// states in the same transaction.
    Truncate {
        /// The new log end.
        offset: u64,
        /// Each producer with batches at or past `offset`, and its dedup
        /// state without them.
        producers: Vec<(i64, ProducerState)>,
    },
    /// Propose this ISR to the controller.
    ProposeIsr {
        /// The epoch this replica leads at.
        leader_epoch: i32,
        /// The partition epoch the proposal was computed from.
        partition_epoch: u64,
        /// The new in-sync set.
        isr: Vec<NodeId>,
    },
    /// Replace the damaged batch at `offset` with the one a source stores
    /// at that offset and epoch (see [`Rebuild::mend`]), durably.
    Mend {
        /// Base offset of the damaged batch.
        offset: u64,
        /// The epoch the local epoch table gives that batch.
        leader_epoch: i32,
        /// The other replicas, to ask in turn.
        sources: Vec<NodeId>,
    },
    /// Tell the controller the damaged batch is mended, or (once per
    /// mark) that no source had a whole copy: a topic that allows unclean
    /// elections then stops waiting for the mend.
    ReportMend {
        /// Base offset of the damaged batch.
        offset: u64,
        /// The mark's [`Rebuild::since`].
        since: u64,
        /// Whether it is mended.
        mended: bool,
    },
}

/// What a replica is doing, for describe output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    /// Not (yet) leading or following: no metadata, no leader, or not a
    /// replica.
    Idle,
    /// Leading.
    Leader,
    /// Finishing writes from its leadership before following.
    Retiring,
    /// Following.
    Follower,
}

/// One partition on one node. See the [module docs](self).
#[derive(Debug)]
pub struct Replica {
    local: NodeId,
    config: ReplicaConfig,
    /// The log as the store holds it when no engine is active.
    log_end: u64,
    epochs: Vec<EpochStart>,
    producers: HashMap<i64, ProducerState>,
    /// The highest high watermark this replica knows of.
    high_watermark: u64,
    meta: Option<PartitionMeta>,
    min_insync: usize,
    role: Role,
    /// A replicated append or truncation the shell is executing.
    busy: Option<Busy>,
    /// The [`Rebuild::since`] of the last rebuild mark this replica cut
    /// its log back for (in memory: after a restart it cuts again, which
    /// costs a re-fetch and nothing else).
    cut_for: Option<u64>,
    /// The [`Rebuild::since`] of the mend mark this replica mended its
    /// batch for, and when it last reported it (in memory too: after a
    /// restart it mends again, which rewrites the same bytes).
    mended: Option<(u64, Instant)>,
    /// A mend no source could serve: the mark's [`Rebuild::since`], and
    /// when it is tried again.
    mend_retry: Option<(u64, Instant)>,
    /// The [`Rebuild::since`] of the last mark whose failed mend was
    /// reported.
    mend_failure_reported: Option<u64>,
    fetches: u64,
    commands: VecDeque<ReplicaCommand>,
}

#[derive(Debug)]
enum Role {
    Idle,
    Leader(Box<Leading>),
    Retiring(Box<PartitionEngine>),
    Follower(Following),
}

#[derive(Debug)]
struct Leading {
    engine: PartitionEngine,
    epoch: i32,
    /// The log end at the election: followers must reach it to rejoin.
    epoch_start_offset: u64,
    replicas: Vec<NodeId>,
    /// The committed in-sync set.
    isr: Vec<NodeId>,
    partition_epoch: u64,
    pending: Option<PendingIsr>,
    followers: BTreeMap<NodeId, Track>,
}

#[derive(Debug)]
struct PendingIsr {
    isr: Vec<NodeId>,
    /// The partition epoch it was computed from; a newer one settles it.
    from: u64,
    sent: Instant,
    /// The controller refused it as stale: not sent again, but still part
    /// of the maximal set, since an earlier send may have been applied with
    /// its answer lost.
    refused: bool,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Track {
    durable_end: Option<u64>,
    /// When the follower last had everything the leader had.
    caught_up: Instant,
    last_fetch: Option<(Instant, u64)>,
}

#[derive(Debug)]
struct Following {
    leader: NodeId,
    epoch: i32,
    outstanding: Option<(u64, Instant)>,
    next_fetch: Instant,
}

#[derive(Debug)]
enum Busy {
    Appending {
        batches: Vec<ReplicatedBatch>,
        leader_high_watermark: u64,
    },
    Truncating {
        offset: u64,
    },
    Mending {
        offset: u64,
        since: u64,
    },
}

impl Replica {
    /// A replica recovered from `log`, waiting for metadata.
    pub fn new(local: NodeId, config: ReplicaConfig, log: LocalLog) -> Self {
        Replica {
            local,
            config,
            log_end: log.log_end,
            epochs: log.epochs,
            producers: log.producers.into_iter().collect(),
            high_watermark: 0,
            meta: None,
            min_insync: 1,
            role: Role::Idle,
            busy: None,
            cut_for: None,
            mended: None,
            mend_retry: None,
            mend_failure_reported: None,
            fetches: 0,
            commands: VecDeque::new(),
        }
    }

    /// The controller's state of the partition, with its topic's
    /// `min.insync.replicas`. Older states than the last one seen (by leader
    /// epoch, then partition epoch) are ignored.
    pub fn handle_metadata(&mut self, now: Instant, meta: &PartitionMeta, min_insync: u32) {
        self.min_insync = min_insync as usize;
        if let Some(current) = &self.meta
            && (meta.leader_epoch, meta.partition_epoch)
                <= (current.leader_epoch, current.partition_epoch)
        {
            return;
        }
        self.meta = Some(meta.clone());
        self.reconcile(now);
    }

    /// A producer request. Answered [`AppendError::NotLeader`] unless this
    /// replica leads.
    pub fn handle_append(&mut self, now: Instant, request: AppendRequest) {
        match &mut self.role {
            Role::Leader(leading) => {
                leading.engine.handle_append(now, request);
                self.drain_engine();
            }
            _ if request.acks == AckLevel::None => {}
            _ => self
                .commands
                .push_back(ReplicaCommand::Engine(Command::Ack {
                    id: request.id,
                    result: Err(AppendError::NotLeader),
                })),
        }
    }

    /// The shell committed the engine's appends through `through`; see
    /// [`PartitionEngine::handle_written`].
    pub fn handle_written(
        &mut self,
        now: Instant,
        through: WriteId,
        durable: bool,
    ) -> Result<(), WrittenError> {
        match &mut self.role {
            Role::Leader(leading) => leading.engine.handle_written(now, through, durable)?,
            Role::Retiring(engine) => engine.handle_written(now, through, durable)?,
            _ => return Err(WrittenError::UnknownWrite(through)),
        }
        self.drain_engine();
        self.settle_retiring(now);
        Ok(())
    }

    /// The transaction holding the engine's unreported appends failed; see
    /// [`PartitionEngine::handle_write_failed`].
    pub fn handle_write_failed(&mut self, now: Instant) {
        match &mut self.role {
            Role::Leader(leading) => leading.engine.handle_write_failed(now),
            Role::Retiring(engine) => engine.handle_write_failed(now),
            _ => return,
        }
        self.drain_engine();
        self.settle_retiring(now);
    }

    /// Serves a follower's fetch: decides what to send and records the
    /// follower's progress, which may advance the high watermark (emitting
    /// acks) or propose it back into the in-sync set.
    pub fn handle_fetch(&mut self, now: Instant, request: &FetchRequest) -> FetchDecision {
        let Role::Leader(leading) = &mut self.role else {
            return FetchDecision::Refused(FetchError::NotLeader);
        };
        if request.leader_epoch < leading.epoch {
            return FetchDecision::Refused(FetchError::FencedLeaderEpoch {
                current: leading.epoch,
            });
        }
        if request.leader_epoch > leading.epoch {
            return FetchDecision::Refused(FetchError::UnknownLeaderEpoch {
                current: leading.epoch,
            });
        }
        if request.replica == self.local || !leading.replicas.contains(&request.replica) {
            return FetchDecision::Refused(FetchError::NotReplica);
        }
        let written_end = leading.engine.written_end();
        let high_watermark = leading.engine.high_watermark();
        let epochs = leader_epochs(&self.epochs, &leading.engine);
        let diverges = match request.last_fetched_epoch {
            Some(epoch) => match end_offset_for_epoch(&epochs, written_end, epoch) {
                Some((found, end)) if found == epoch && end >= request.fetch_offset => None,
                Some((found, end)) => Some((Some(found), end)),
                None => Some((None, epochs.first().map_or(0, |e| e.start_offset))),
            },
            None if request.fetch_offset > written_end => Some((None, 0)),
            None => None,
        };
        if let Some((epoch, end_offset)) = diverges {
            return FetchDecision::Diverging {
                epoch,
                end_offset,
                high_watermark,
            };
        }
        let durable = request.durable_end.min(request.fetch_offset);
        let track = leading.followers.entry(request.replica).or_insert(Track {
            durable_end: None,
            caught_up: now,
            last_fetch: None,
        });
        if durable >= written_end {
            track.caught_up = now;
        } else if let Some((at, leader_end)) = track.last_fetch
            && durable >= leader_end
        {
            track.caught_up = track.caught_up.max(at);
        }
        track.last_fetch = Some((now, written_end));
        track.durable_end = Some(durable);
        leading
            .engine
            .handle_replica_progress(now, request.replica, durable);
        // A replica rebuilding from a damaged copy proves it has cut its
        // log back; a report sent before the cut is not taken.
        let whole = self
            .meta
            .as_ref()
            .and_then(|m| m.rebuilding.get(&request.replica))
            .is_none_or(|mark| request.rebuilt == Some(mark.since));
        let rejoin = !leading.isr.contains(&request.replica)
            && leading.pending.is_none()
            && whole
            && durable
                >= leading
                    .engine
                    .high_watermark()
                    .max(leading.epoch_start_offset);
        if rejoin {
            let mut isr = leading.isr.clone();
            isr.push(request.replica);
            propose(leading, &mut self.commands, now, isr);
        }
        let high_watermark = leading.engine.high_watermark();
        self.drain_engine();
        FetchDecision::Serve {
            from: request.fetch_offset,
            to: written_end,
            high_watermark,
        }
    }

    /// The leader's answer to fetch `fetch_id`. Answers to fetches given up
    /// on, or to another role's fetches, are ignored.
    pub fn handle_fetch_response(&mut self, now: Instant, fetch_id: u64, response: FetchResponse) {
        let Role::Follower(following) = &mut self.role else {
            return;
        };
        if following.outstanding.map(|(id, _)| id) != Some(fetch_id) || self.busy.is_some() {
            return;
        }
        let sent = following.outstanding.take().map_or(now, |(_, sent)| sent);
        let pause = now + self.config.fetch_interval;
        match response {
            FetchResponse::Records {
                batches,
                high_watermark,
            } => {
                let last_epoch = self.epochs.last().map_or(i32::MIN, |e| e.epoch);
                let mut expected = self.log_end;
                let mut epoch = last_epoch;
                let valid = batches.iter().all(|b| {
                    let ok = b.base_offset == expected
                        && b.record_count > 0
                        && b.leader_epoch >= epoch
                        && b.leader_epoch <= following.epoch;
                    expected = b.base_offset + u64::from(b.record_count);
                    epoch = b.leader_epoch;
                    ok
                });
                if batches.is_empty() || !valid {
                    following.next_fetch = pause;
                    // An answer that only moves the high watermark is
                    // progress, not an idle leader: fetch again at once.
                    // So is an empty one the leader held for a pause or
                    // longer (it waits for news before answering): pausing
                    // after it would leave a record written in the pause
                    // waiting out the rest of it for its `acks=all`.
                    let held = now.saturating_duration_since(sent) >= self.config.fetch_interval;
                    let raised = valid && self.raise_high_watermark(high_watermark);
                    if raised || (valid && held) {
                        self.after_local_change(now, now);
                    }
                    return;
                }
                self.commands.push_back(ReplicaCommand::AppendReplicated {
                    batches: batches.clone(),
                });
                self.busy = Some(Busy::Appending {
                    batches,
                    leader_high_watermark: high_watermark,
                });
            }
            FetchResponse::Diverging {
                epoch, end_offset, ..
            } => {
                let local_end = match epoch {
                    Some(epoch) => end_offset_for_epoch(&self.epochs, self.log_end, epoch)
                        .map_or(0, |(_, end)| end),
                    None => 0,
                };
                let offset = end_offset.min(local_end).min(self.log_end);
                if offset < self.log_end {
                    self.commands.push_back(self.truncation(offset));
                    self.busy = Some(Busy::Truncating { offset });
                } else {
                    following.next_fetch = pause;
                }
            }
            FetchResponse::Refused(_) => following.next_fetch = pause,
        }
    }

    /// The batches of the last `AppendReplicated` are stored durably.
    pub fn handle_replicated(&mut self, now: Instant) {
        let Some(Busy::Appending {
            batches,
            leader_high_watermark,
        }) = self.busy.take()
        else {
            return;
        };
        for batch in batches {
            if self
                .epochs
                .last()
                .is_none_or(|e| e.epoch < batch.leader_epoch)
            {
                self.epochs.push(EpochStart {
                    epoch: batch.leader_epoch,
                    start_offset: batch.base_offset,
                });
            }
            if let Some((id, state)) = batch.producer {
                self.producers.insert(id, state);
            }
            self.log_end = batch.base_offset + u64::from(batch.record_count);
        }
        self.raise_high_watermark(leader_high_watermark);
        self.after_local_change(now, now);
    }

    /// A follower learned the leader's high watermark: every record below
    /// it and below its own log end is committed (its log matches the
    /// leader's up to its fetch offset, or the leader would have said it
    /// diverges), so readers here may see them.
    /// Returns whether it moved.
    fn raise_high_watermark(&mut self, leader_high_watermark: u64) -> bool {
        let known = leader_high_watermark.min(self.log_end);
        if known > self.high_watermark {
            self.high_watermark = known;
            self.commands
                .push_back(ReplicaCommand::Engine(Command::HighWatermark(known)));
            return true;
        }
        false
    }

    /// The last `AppendReplicated` stored nothing.
    pub fn handle_replicated_failed(&mut self, now: Instant) {
        if matches!(self.busy, Some(Busy::Appending { .. })) {
            self.busy = None;
            self.after_local_change(now, now + self.config.fetch_interval);
        }
    }

    /// The command cutting the log at `offset`.
    fn truncation(&self, offset: u64) -> ReplicaCommand {
        let mut producers: Vec<(i64, ProducerState)> = self
            .producers
            .iter()
            .filter(|(_, state)| state.last_batch_in(offset, u64::MAX).is_some())
            .map(|(id, state)| {
                let mut state = state.clone();
                state.truncate(offset);
                (*id, state)
            })
            .collect();
        producers.sort_by_key(|(id, _)| *id);
        ReplicaCommand::Truncate { offset, producers }
    }

    /// The last `Truncate` is done.
    pub fn handle_local_truncated(&mut self, now: Instant) {
        let Some(Busy::Truncating { offset }) = self.busy.take() else {
            return;
        };
        self.log_end = offset;
        self.epochs.retain(|e| e.start_offset < offset);
        for state in self.producers.values_mut() {
            state.truncate(offset);
        }
        // The high watermark stays: a cut for divergence never goes below
        // it, and a cut of a damaged copy drops committed records that come
        // back from the leader unchanged, so readers keep their bound (and
        // wait at the log end meanwhile).
        self.after_local_change(now, now);
    }

    /// The last `Mend` is done: the batch is replaced, durably.
    pub fn handle_mended(&mut self, now: Instant) {
        let Some(Busy::Mending { offset, since }) = self.busy else {
            return;
        };
        self.busy = None;
        self.mended = Some((since, now));
        self.commands.push_back(ReplicaCommand::ReportMend {
            offset,
            since,
            mended: true,
        });
        self.reconcile(now);
    }

    /// The last `Mend` failed: no source served the batch (down, cut off,
    /// or damaged too). It is tried again after `isr_retry`. `nowhere`:
    /// every source answered and none holds it whole, which is reported
    /// (once per mark).
    pub fn handle_mend_failed(&mut self, now: Instant, nowhere: bool) {
        let Some(Busy::Mending { offset, since }) = self.busy else {
            return;
        };
        self.busy = None;
        self.mend_retry = Some((since, now + self.config.isr_retry));
        if nowhere && self.mend_failure_reported != Some(since) {
            self.mend_failure_reported = Some(since);
            self.commands.push_back(ReplicaCommand::ReportMend {
                offset,
                since,
                mended: false,
            });
        }
        self.reconcile(now);
    }

    /// The offset of the damaged batch the last `Mend` asked for, while it
    /// is in flight: a copy arriving for anything else is not stored.
    pub fn mending(&self) -> Option<u64> {
        match self.busy {
            Some(Busy::Mending { offset, .. }) => Some(offset),
            _ => None,
        }
    }

    /// Runs the timers: fetch pacing and timeouts on a follower, ISR lag
    /// and proposal retries on a leader.
    pub fn handle_tick(&mut self, now: Instant) {
        if let Some(mark) = self.rebuild_mark().filter(|m| m.mend) {
            match self.mended {
                Some((since, sent))
                    if since == mark.since
                        && now.saturating_duration_since(sent) >= self.config.isr_retry =>
                {
                    self.mended = Some((since, now));
                    self.commands.push_back(ReplicaCommand::ReportMend {
                        offset: mark.from,
                        since,
                        mended: true,
                    });
                }
                Some((since, _)) if since == mark.since => {}
                _ if self
                    .mend_retry
                    .is_some_and(|(since, at)| since == mark.since && now >= at) =>
                {
                    self.reconcile(now)
                }
                _ => {}
            }
        }
        let rebuilt = self
            .rebuild_mark()
            .map(|mark| mark.since)
            .filter(|since| self.cut_for == Some(*since));
        match &mut self.role {
            Role::Leader(leading) => {
                if let Some(pending) = &mut leading.pending {
                    if !pending.refused
                        && now.saturating_duration_since(pending.sent) >= self.config.isr_retry
                    {
                        pending.sent = now;
                        self.commands.push_back(ReplicaCommand::ProposeIsr {
                            leader_epoch: leading.epoch,
                            partition_epoch: pending.from,
                            isr: pending.isr.clone(),
                        });
                    }
                    return;
                }
                let lag_max = self.config.replica_lag_max;
                let local = self.local;
                let lagging: BTreeSet<NodeId> = leading
                    .isr
                    .iter()
                    .copied()
                    .filter(|n| *n != local)
                    .filter(|n| {
                        leading
                            .followers
                            .get(n)
                            .is_none_or(|t| now.saturating_duration_since(t.caught_up) > lag_max)
                    })
                    .collect();
                if !lagging.is_empty() {
                    let isr = leading
                        .isr
                        .iter()
                        .copied()
                        .filter(|n| !lagging.contains(n))
                        .collect();
                    propose(leading, &mut self.commands, now, isr);
                }
            }
            Role::Follower(following) => {
                if let Some((_, sent)) = following.outstanding
                    && now.saturating_duration_since(sent) >= self.config.fetch_timeout
                {
                    following.outstanding = None;
                    following.next_fetch = now;
                }
                if following.outstanding.is_none()
                    && self.busy.is_none()
                    && now >= following.next_fetch
                {
                    self.fetches += 1;
                    following.outstanding = Some((self.fetches, now));
                    let request = FetchRequest {
                        replica: self.local,
                        leader_epoch: following.epoch,
                        fetch_offset: self.log_end,
                        durable_end: self.log_end,
                        last_fetched_epoch: self
                            .epochs
                            .iter()
                            .rev()
                            .find(|e| e.start_offset < self.log_end)
                            .map(|e| e.epoch),
                        rebuilt,
                        high_watermark: self.high_watermark,
                    };
                    self.commands.push_back(ReplicaCommand::Fetch {
                        leader: following.leader,
                        fetch_id: self.fetches,
                        request,
                    });
                }
            }
            Role::Idle | Role::Retiring(_) => {}
        }
    }

    /// The first instant at which [`Replica::handle_tick`] has something
    /// to do, unless another input comes first; `None` if only an input
    /// can give it work. An instant at or before `now` means at once. The
    /// shell sleeps until then instead of ticking an idle replica, so this
    /// is never later than a tick would act (the simulator checks that a
    /// tick before it does nothing).
    pub fn next_tick(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        // An instant past what `Instant` holds is never.
        let mut at = |from: Instant, wait: Duration| {
            if let Some(t) = from.checked_add(wait) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(mark) = self.rebuild_mark().filter(|m| m.mend) {
            match (self.mended, self.mend_retry) {
                (Some((since, sent)), _) if since == mark.since => at(sent, self.config.isr_retry),
                (_, Some((since, retry))) if since == mark.since => at(retry, Duration::ZERO),
                _ => {}
            }
        }
        match &self.role {
            Role::Leader(leading) => match &leading.pending {
                Some(pending) if !pending.refused => at(pending.sent, self.config.isr_retry),
                Some(_) => {}
                None => {
                    for node in leading.isr.iter().filter(|n| **n != self.local) {
                        match leading.followers.get(node) {
                            // It lags once strictly more than the lag time
                            // has passed since it was caught up.
                            Some(track) => at(
                                track.caught_up,
                                self.config
                                    .replica_lag_max
                                    .saturating_add(Duration::from_nanos(1)),
                            ),
                            None => at(now, Duration::ZERO),
                        }
                    }
                }
            },
            Role::Follower(following) => match following.outstanding {
                Some((_, sent)) => at(sent, self.config.fetch_timeout),
                None if self.busy.is_none() => at(following.next_fetch, Duration::ZERO),
                None => {}
            },
            Role::Idle | Role::Retiring(_) => {}
        }
        next
    }

    /// The controller refused this replica's ISR proposal computed from
    /// `partition_epoch`; a refusal of an older proposal is ignored.
    ///
    /// Refused as `stale` (the partition moved past the epoch the proposal
    /// was computed from), the proposal is not sent again but stays in the
    /// set the high watermark is computed over until newer metadata
    /// arrives: a resend's refusal does not mean an earlier send was not
    /// applied with its answer lost, and a leader that dropped the proposed
    /// member could acknowledge records the controller's ISR does not hold.
    ///
    /// Refused for any other reason (a fenced node, say), it was checked
    /// against the very partition epoch it was computed from, so no earlier
    /// send was applied: it is dropped, and proposed again when it applies.
    pub fn handle_isr_rejected(&mut self, now: Instant, partition_epoch: u64, stale: bool) {
        let Role::Leader(leading) = &mut self.role else {
            return;
        };
        if leading
            .pending
            .as_ref()
            .is_none_or(|p| p.from != partition_epoch)
        {
            return;
        }
        if stale {
            if let Some(pending) = &mut leading.pending {
                pending.refused = true;
            }
            return;
        }
        leading.pending = None;
        apply_isr(leading, now, self.min_insync);
        self.drain_engine();
    }

    /// The next command for the shell, oldest first.
    pub fn poll_command(&mut self) -> Option<ReplicaCommand> {
        self.commands.pop_front()
    }

    /// The partition epoch of the last metadata seen, which a damage
    /// report names (see [`crate::controller::ControlRequest::ReplicaDamaged`]).
    pub fn partition_epoch(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| m.partition_epoch)
    }

    /// What this replica is doing.
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Idle => RoleKind::Idle,
            Role::Leader(_) => RoleKind::Leader,
            Role::Retiring(_) => RoleKind::Retiring,
            Role::Follower(_) => RoleKind::Follower,
        }
    }

    /// The leader epoch this replica leads at, if it leads.
    pub fn leading_epoch(&self) -> Option<i32> {
        match &self.role {
            Role::Leader(leading) => Some(leading.epoch),
            _ => None,
        }
    }

    /// Readers may see every record below this offset. On a follower, the
    /// highest watermark it heard of, capped at its log end.
    pub fn high_watermark(&self) -> u64 {
        match &self.role {
            Role::Leader(leading) => leading.engine.high_watermark(),
            _ => self.high_watermark,
        }
    }

    /// The end of the committed local log.
    pub fn log_end(&self) -> u64 {
        match &self.role {
            Role::Leader(leading) => leading.engine.written_end(),
            Role::Retiring(engine) => engine.written_end(),
            _ => self.log_end,
        }
    }

    /// On a leader, the offset the next decided append gets (counting
    /// appends not yet written); elsewhere the log end.
    pub fn decided_end(&self) -> u64 {
        match &self.role {
            Role::Leader(leading) => leading.engine.log_end(),
            _ => self.log_end(),
        }
    }

    /// On a leader, [`PartitionEngine::duplicate_of`]; `None` elsewhere.
    pub fn duplicate_of(
        &self,
        stamp: edgebus_proto::batch::ProducerStamp,
        record_count: u32,
    ) -> Option<u64> {
        match &self.role {
            Role::Leader(leading) => leading.engine.duplicate_of(stamp, record_count),
            _ => None,
        }
    }

    /// On a leader, the dedup state of one producer as its engine checks
    /// the next append against it: with every append decided so far and
    /// without what truncations removed.
    pub fn leader_producer_state(&self, producer_id: i64) -> Option<ProducerState> {
        match &self.role {
            Role::Leader(leading) => leading.engine.producer_state(producer_id).cloned(),
            _ => None,
        }
    }

    /// On a leader, the durable log end each follower last reported.
    pub fn follower_ends(&self) -> BTreeMap<NodeId, u64> {
        match &self.role {
            Role::Leader(leading) => leading
                .followers
                .iter()
                .filter_map(|(n, t)| t.durable_end.map(|end| (*n, end)))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Moves the engine's commands to the replica's queue. A retiring
    /// engine's high watermark is not published: readers get new records
    /// only from a current leader.
    fn drain_engine(&mut self) {
        let (engine, leading) = match &mut self.role {
            Role::Leader(leading) => (&mut leading.engine, true),
            Role::Retiring(engine) => (&mut **engine, false),
            _ => return,
        };
        for command in engine.drain_commands() {
            if let Command::HighWatermark(hw) = command {
                if !leading {
                    continue;
                }
                self.high_watermark = self.high_watermark.max(hw);
            }
            self.commands.push_back(ReplicaCommand::Engine(command));
        }
    }

    /// A retiring leader whose writes are all settled hands its log to the
    /// replica, which then follows or leads as the metadata says.
    fn settle_retiring(&mut self, now: Instant) {
        let Role::Retiring(engine) = &self.role else {
            return;
        };
        if !engine.is_settled() {
            return;
        }
        let Role::Retiring(engine) = std::mem::replace(&mut self.role, Role::Idle) else {
            unreachable!("matched above");
        };
        self.absorb(&engine);
        self.reconcile(now);
    }

    /// Takes a settled engine's log state as the replica's own.
    fn absorb(&mut self, engine: &PartitionEngine) {
        self.log_end = engine.written_end();
        if let Some(start) = engine.epoch_start()
            && start < self.log_end
            && self
                .epochs
                .last()
                .is_none_or(|e| e.epoch < engine.leader_epoch())
        {
            self.epochs.push(EpochStart {
                epoch: engine.leader_epoch(),
                start_offset: start,
            });
        }
        self.producers = engine.producer_states().into_iter().collect();
    }

    fn after_local_change(&mut self, now: Instant, next_fetch: Instant) {
        if let Role::Follower(following) = &mut self.role {
            following.next_fetch = next_fetch;
        }
        self.reconcile(now);
        // Fetch again at once rather than at the next tick: the leader
        // learns this follower's new log end a tick sooner, and with it
        // `acks=all` producers.
        self.handle_tick(now);
    }

    /// Brings the role in line with the metadata, as far as the local log
    /// allows: a replica with a replicated write or truncation in flight,
    /// or a retiring leader, changes role once it is settled.
    fn reconcile(&mut self, now: Instant) {
        let Some(meta) = self.meta.clone() else {
            return;
        };
        let leads = meta.leader == Some(self.local);
        let mark = meta.rebuilding.get(&self.local).copied();
        // A rebuild mark this replica has not cut its log back for yet.
        let pending_cut = mark.filter(|mark| !mark.mend && self.cut_for != Some(mark.since));
        match &mut self.role {
            Role::Leader(leading) if leads && leading.epoch == meta.leader_epoch => {
                leading.isr = meta.isr.clone();
                leading.replicas = meta.replicas.clone();
                leading.partition_epoch = meta.partition_epoch;
                if leading
                    .pending
                    .as_ref()
                    .is_some_and(|p| meta.partition_epoch > p.from)
                {
                    leading.pending = None;
                }
                apply_isr(leading, now, self.min_insync);
                self.drain_engine();
                return;
            }
            Role::Leader(_) => {
                let Role::Leader(leading) = std::mem::replace(&mut self.role, Role::Idle) else {
                    unreachable!("matched above");
                };
                let mut engine = leading.engine;
                engine.abandon(now);
                self.role = Role::Retiring(Box::new(engine));
                self.drain_engine();
                self.settle_retiring(now);
                return;
            }
            Role::Retiring(_) => return,
            Role::Follower(following)
                if !leads
                    && meta.leader == Some(following.leader)
                    && meta.replicas.contains(&self.local)
                    && pending_cut.is_none() =>
            {
                following.epoch = meta.leader_epoch;
                return;
            }
            Role::Follower(_) | Role::Idle => {}
        }
        if self.busy.is_some() {
            return;
        }
        if !meta.replicas.contains(&self.local) {
            self.role = Role::Idle;
            return;
        }
        if let Some(mark) = mark.filter(|m| m.mend) {
            self.role = Role::Idle;
            self.mend(now, mark, &meta);
            return;
        }
        if let Some(mark) = pending_cut {
            // Part of this copy failed its CRC: drop it from the damaged
            // batch on, then fetch it again from the leader.
            self.cut_for = Some(mark.since);
            if self.log_end > mark.from {
                self.role = Role::Idle;
                self.commands.push_back(self.truncation(mark.from));
                self.busy = Some(Busy::Truncating { offset: mark.from });
                return;
            }
        }
        match meta.leader {
            Some(leader) if leader == self.local => self.lead(now, &meta),
            Some(leader) => {
                self.role = Role::Follower(Following {
                    leader,
                    epoch: meta.leader_epoch,
                    outstanding: None,
                    next_fetch: now,
                });
            }
            None => self.role = Role::Idle,
        }
    }

    /// The controller's rebuild mark on this replica, if any.
    fn rebuild_mark(&self) -> Option<Rebuild> {
        self.meta.as_ref()?.rebuilding.get(&self.local).copied()
    }

    /// Asks the shell to mend the damaged batch of a mend mark, unless it
    /// is mended already (the report is repeated by the tick) or a failed
    /// attempt is waiting out its retry pause.
    fn mend(&mut self, now: Instant, mark: Rebuild, meta: &PartitionMeta) {
        if self.mended.is_some_and(|(since, _)| since == mark.since)
            || self
                .mend_retry
                .is_some_and(|(since, at)| since == mark.since && now < at)
        {
            return;
        }
        self.mend_retry = None;
        let epoch = self
            .epochs
            .iter()
            .rev()
            .find(|e| e.start_offset <= mark.from)
            .map(|e| e.epoch);
        let (Some(leader_epoch), true) = (epoch, mark.from < self.log_end) else {
            // The log no longer holds the damaged offset: nothing to mend.
            self.mended = Some((mark.since, now));
            self.commands.push_back(ReplicaCommand::ReportMend {
                offset: mark.from,
                since: mark.since,
                mended: true,
            });
            return;
        };
        let sources = meta
            .replicas
            .iter()
            .copied()
            .filter(|n| *n != self.local)
            .collect();
        self.commands.push_back(ReplicaCommand::Mend {
            offset: mark.from,
            leader_epoch,
            sources,
        });
        self.busy = Some(Busy::Mending {
            offset: mark.from,
            since: mark.since,
        });
    }

    /// Starts leading at `meta.leader_epoch`, if it is newer than every
    /// epoch in the local log; otherwise stays idle, since leading at an
    /// epoch that may already hold other batches could put two batches at
    /// one offset and epoch.
    fn lead(&mut self, now: Instant, meta: &PartitionMeta) {
        let last = self.epochs.last().copied();
        if last.is_some_and(|e| e.epoch >= meta.leader_epoch) {
            self.role = Role::Idle;
            return;
        }
        let state = PartitionState {
            log_end: self.log_end,
            leader_epoch: last.map_or(-1, |e| e.epoch),
            epoch_start: last.map(|e| e.start_offset),
            producers: self
                .producers
                .iter()
                .map(|(id, s)| (*id, s.clone()))
                .collect(),
        };
        let mut engine =
            PartitionEngine::new(state, self.local).with_high_watermark(self.high_watermark);
        if engine.become_leader(now, meta.leader_epoch).is_err() {
            self.role = Role::Idle;
            return;
        }
        let followers = meta
            .replicas
            .iter()
            .filter(|n| **n != self.local)
            .map(|n| {
                (
                    *n,
                    Track {
                        durable_end: None,
                        caught_up: now,
                        last_fetch: None,
                    },
                )
            })
            .collect();
        let mut leading = Box::new(Leading {
            engine,
            epoch: meta.leader_epoch,
            epoch_start_offset: self.log_end,
            replicas: meta.replicas.clone(),
            isr: meta.isr.clone(),
            partition_epoch: meta.partition_epoch,
            pending: None,
            followers,
        });
        apply_isr(&mut leading, now, self.min_insync);
        // Readers may see what this replica knew to be committed as a
        // follower; the engine only announces advances.
        let high_watermark = leading.engine.high_watermark();
        self.role = Role::Leader(leading);
        self.commands
            .push_back(ReplicaCommand::Engine(Command::HighWatermark(
                high_watermark,
            )));
        self.drain_engine();
    }
}

/// Records an ISR proposal and emits it; the engine's watermark set becomes
/// the union of the committed and proposed sets.
fn propose(
    leading: &mut Leading,
    commands: &mut VecDeque<ReplicaCommand>,
    now: Instant,
    isr: Vec<NodeId>,
) {
    commands.push_back(ReplicaCommand::ProposeIsr {
        leader_epoch: leading.epoch,
        partition_epoch: leading.partition_epoch,
        isr: isr.clone(),
    });
    leading.pending = Some(PendingIsr {
        isr,
        from: leading.partition_epoch,
        sent: now,
        refused: false,
    });
    let maximal: BTreeSet<NodeId> = leading
        .isr
        .iter()
        .chain(leading.pending.iter().flat_map(|p| p.isr.iter()))
        .copied()
        .collect();
    leading.engine.set_in_sync(now, maximal);
}

/// Gives the engine the maximal in-sync set and the committed set's size.
fn apply_isr(leading: &mut Leading, now: Instant, min_insync: usize) {
    let maximal: BTreeSet<NodeId> = leading
        .isr
        .iter()
        .chain(leading.pending.iter().flat_map(|p| p.isr.iter()))
        .copied()
        .collect();
    leading.engine.set_in_sync(now, maximal);
    leading
        .engine
        .set_min_insync(now, leading.isr.len(), min_insync);
}

/// The leader's epoch table: the stored one plus its own epoch once a batch
/// of it is written.
fn leader_epochs(stored: &[EpochStart], engine: &PartitionEngine) -> Vec<EpochStart> {
    let mut epochs = stored.to_vec();
    if let Some(start) = engine.epoch_start()
        && start < engine.written_end()
        && epochs
            .last()
            .is_none_or(|e| e.epoch < engine.leader_epoch())
    {
        epochs.push(EpochStart {
            epoch: engine.leader_epoch(),
            start_offset: start,
        });
    }
    epochs
}

/// Kafka's end offset for an epoch: the largest epoch at or below `epoch`
/// in the table, and where it ends (the next epoch's start, or the log end).
pub fn end_offset_for_epoch(epochs: &[EpochStart], log_end: u64, epoch: i32) -> Option<(i32, u64)> {
    let found = epochs.iter().rposition(|e| e.epoch <= epoch)?;
    let end = epochs
        .get(found + 1)
        .map_or(log_end, |next| next.start_offset);
    Some((epochs[found].epoch, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(leader: NodeId, epoch: i32, isr: &[NodeId], partition_epoch: u64) -> PartitionMeta {
        PartitionMeta {
            replicas: vec![1, 2, 3],
            leader: Some(leader),
            leader_epoch: epoch,
            isr: isr.to_vec(),
            partition_epoch,
            rebuilding: BTreeMap::new(),
        }
    }

    /// A log of `log_end` offsets, all written at leader epoch `epoch`,
    /// with no producer state.
    fn one_epoch_log(epoch: i32, log_end: u64) -> LocalLog {
        LocalLog {
            log_end,
            epochs: vec![EpochStart {
                epoch,
                start_offset: 0,
            }],
            producers: Vec::new(),
        }
    }

    fn drain(replica: &mut Replica) -> Vec<ReplicaCommand> {
        std::iter::from_fn(|| replica.poll_command()).collect()
    }

    fn append(id: u64, records: u32, acks: AckLevel) -> AppendRequest {
        AppendRequest {
            id,
            record_count: records,
            sequence: None,
            acks,
        }
    }

    fn fetch(replica: NodeId, epoch: i32, offset: u64, last: Option<i32>) -> FetchRequest {
        FetchRequest {
            replica,
            leader_epoch: epoch,
            fetch_offset: offset,
            durable_end: offset,
            last_fetched_epoch: last,
            rebuilt: None,
            high_watermark: 0,
        }
    }

    fn acks(commands: &[ReplicaCommand]) -> Vec<(u64, AckResultKind)> {
        commands
            .iter()
            .filter_map(|c| match c {
                ReplicaCommand::Engine(Command::Ack { id, result }) => Some((
                    *id,
                    match result {
                        Ok(_) => AckResultKind::Ok,
                        Err(AppendError::NotLeader) => AckResultKind::NotLeader,
                        Err(AppendError::NotEnoughReplicas { .. }) => AckResultKind::NotEnough,
                        Err(_) => AckResultKind::Other,
                    },
                )),
                _ => None,
            })
            .collect()
    }

    #[derive(Debug, PartialEq)]
    enum AckResultKind {
        Ok,
        NotLeader,
        NotEnough,
        Other,
    }

    /// A leader of a fresh partition at epoch 1 with the given ISR, one
    /// `All` append of 2 records written and fsync'd.
    fn leader_with_write(now: Instant, isr: &[NodeId], min_insync: u32) -> Replica {
        let mut r = Replica::new(1, ReplicaConfig::default(), LocalLog::default());
        r.handle_metadata(now, &meta(1, 1, isr, 1), min_insync);
        assert_eq!(r.role(), RoleKind::Leader);
        r.handle_append(now, append(7, 2, AckLevel::All));
        let commands = drain(&mut r);
        let write = commands
            .iter()
            .find_map(|c| match c {
                ReplicaCommand::Engine(Command::Append { write, .. }) => Some(*write),
                _ => None,
            })
            .expect("an append");
        r.handle_written(now, write, true).unwrap();
        r
    }

    #[test]
    fn all_is_acked_only_once_every_isr_follower_has_it_durably() {
        let now = Instant::now();
        let mut r = leader_with_write(now, &[1, 2, 3], 2);
        assert!(
            acks(&drain(&mut r)).is_empty(),
            "followers have nothing yet"
        );
        assert_eq!(r.high_watermark(), 0);
        let served = r.handle_fetch(now, &fetch(2, 1, 2, Some(1)));
        assert!(matches!(served, FetchDecision::Serve { to: 2, .. }));
        assert!(acks(&drain(&mut r)).is_empty(), "follower 3 is in sync too");
        r.handle_fetch(now, &fetch(3, 1, 2, Some(1)));
        assert_eq!(acks(&drain(&mut r)), vec![(7, AckResultKind::Ok)]);
        assert_eq!(r.high_watermark(), 2);
    }

    #[test]
    fn all_is_refused_while_the_isr_is_below_min_insync() {
        let now = Instant::now();
        let mut r = Replica::new(1, ReplicaConfig::default(), LocalLog::default());
        r.handle_metadata(now, &meta(1, 1, &[1], 1), 2);
        r.handle_append(now, append(7, 1, AckLevel::All));
        assert_eq!(acks(&drain(&mut r)), vec![(7, AckResultKind::NotEnough)]);
        r.handle_append(now, append(8, 1, AckLevel::Durable));
        assert!(
            drain(&mut r)
                .iter()
                .any(|c| matches!(c, ReplicaCommand::Engine(Command::Append { id: 8, .. }))),
            "lower ack levels are served as on one node"
        );
    }

    #[test]
    fn a_follower_ahead_in_an_old_epoch_is_told_where_to_truncate() {
        let now = Instant::now();
        // The leader holds epoch 0 at 0..3 and was elected at epoch 2.
        let log = one_epoch_log(0, 3);
        let mut r = Replica::new(1, ReplicaConfig::default(), log);
        r.handle_metadata(now, &meta(1, 2, &[1, 2], 3), 1);
        assert_eq!(
            r.handle_fetch(now, &fetch(2, 2, 5, Some(0))),
            FetchDecision::Diverging {
                epoch: Some(0),
                end_offset: 3,
                high_watermark: 0
            }
        );
        assert_eq!(
            r.handle_fetch(now, &fetch(2, 2, 5, Some(1))),
            FetchDecision::Diverging {
                epoch: Some(0),
                end_offset: 3,
                high_watermark: 0
            },
            "an epoch the leader never had ends where the leader's earlier one does"
        );
        assert!(matches!(
            r.handle_fetch(now, &fetch(2, 2, 3, Some(0))),
            FetchDecision::Serve { from: 3, to: 3, .. }
        ));
        assert_eq!(
            r.handle_fetch(now, &fetch(2, 1, 3, Some(0))),
            FetchDecision::Refused(FetchError::FencedLeaderEpoch { current: 2 })
        );
        assert_eq!(
            r.handle_fetch(now, &fetch(2, 3, 3, Some(0))),
            FetchDecision::Refused(FetchError::UnknownLeaderEpoch { current: 2 })
        );
    }

    /// The dedup state of producer `id` after one-record batches stored at
    /// `offsets`.
    fn batches_at(id: i64, offsets: &[u64]) -> ProducerState {
        let mut state = None;
        for (seq, offset) in offsets.iter().enumerate() {
            let stamp = edgebus_proto::batch::ProducerStamp {
                producer_id: id,
                producer_epoch: 0,
                base_sequence: seq as i32,
            };
            state = Some(crate::producer::record(state, stamp, 1, *offset));
        }
        state.expect("at least one batch")
    }

    #[test]
    fn a_follower_truncates_by_epoch_never_to_its_high_watermark() {
        let now = Instant::now();
        let log = LocalLog {
            log_end: 7,
            epochs: vec![
                EpochStart {
                    epoch: 0,
                    start_offset: 0,
                },
                EpochStart {
                    epoch: 1,
                    start_offset: 4,
                },
            ],
            producers: vec![(9, batches_at(9, &[1, 5])), (10, batches_at(10, &[2]))],
        };
        let mut r = Replica::new(2, ReplicaConfig::default(), log);
        r.handle_metadata(now, &meta(1, 2, &[1, 2], 3), 1);
        r.handle_tick(now);
        let commands = drain(&mut r);
        let Some(ReplicaCommand::Fetch {
            leader: 1,
            fetch_id,
            request,
        }) = commands.first().cloned()
        else {
            panic!("a fetch: {commands:?}");
        };
        assert_eq!(request.fetch_offset, 7);
        assert_eq!(request.last_fetched_epoch, Some(1));
        r.handle_fetch_response(
            now,
            fetch_id,
            FetchResponse::Diverging {
                epoch: Some(0),
                end_offset: 5,
                high_watermark: 2,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::Truncate {
                offset: 4,
                // Producer 9 loses its batch at 5 and keeps the one at 1;
                // nothing of producer 10's is cut.
                producers: vec![(9, batches_at(9, &[1]))]
            }],
            "epoch 0 ends at 4 here, before the leader's end of it"
        );
        r.handle_local_truncated(now);
        assert_eq!(r.log_end(), 4);
        r.handle_tick(now);
        let Some(ReplicaCommand::Fetch { request, .. }) = drain(&mut r).first().cloned() else {
            panic!("fetches again at once");
        };
        assert_eq!(
            (request.fetch_offset, request.last_fetched_epoch),
            (4, Some(0))
        );
    }

    #[test]
    fn a_lagging_follower_is_proposed_out_and_back_in_once_caught_up() {
        let t0 = Instant::now();
        let config = ReplicaConfig::default();
        let mut r = Replica::new(1, config, LocalLog::default());
        r.handle_metadata(t0, &meta(1, 1, &[1, 2, 3], 1), 1);
        r.handle_fetch(t0, &fetch(2, 1, 0, None));
        r.handle_fetch(t0, &fetch(3, 1, 0, None));
        drain(&mut r);
        let later = t0 + config.replica_lag_max + Duration::from_millis(1);
        r.handle_fetch(later, &fetch(2, 1, 0, None));
        r.handle_tick(later);
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::ProposeIsr {
                leader_epoch: 1,
                partition_epoch: 1,
                isr: vec![1, 2]
            }]
        );
        r.handle_metadata(later, &meta(1, 1, &[1, 2], 2), 1);
        r.handle_fetch(later, &fetch(3, 1, 0, None));
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::ProposeIsr {
                leader_epoch: 1,
                partition_epoch: 2,
                isr: vec![1, 2, 3]
            }]
        );
    }

    fn marked(mut meta: PartitionMeta, node: NodeId, from: u64) -> PartitionMeta {
        let since = meta.partition_epoch;
        meta.rebuilding.insert(
            node,
            Rebuild {
                from,
                since,
                mend: false,
            },
        );
        meta
    }

    /// The last in-sync replica, the leader, finds batch 3 damaged: it
    /// keeps its log, steps down, mends the batch from the others, reports
    /// it, and leads again at the next epoch with its log whole.
    #[test]
    fn a_damaged_last_isr_member_mends_its_batch_and_leads_again() {
        let start = Instant::now();
        let log = LocalLog {
            log_end: 9,
            epochs: vec![
                EpochStart {
                    epoch: 1,
                    start_offset: 0,
                },
                EpochStart {
                    epoch: 2,
                    start_offset: 6,
                },
            ],
            producers: Vec::new(),
        };
        let config = ReplicaConfig::default();
        let mut r = Replica::new(1, config, log);
        r.handle_metadata(start, &meta(1, 3, &[1], 5), 1);
        assert_eq!(r.role(), RoleKind::Leader);
        drain(&mut r);

        let mut marked = meta(1, 4, &[1], 6);
        marked.leader = None;
        marked.rebuilding.insert(
            1,
            Rebuild {
                from: 3,
                since: 6,
                mend: true,
            },
        );
        r.handle_metadata(start, &marked, 1);
        assert_eq!(r.role(), RoleKind::Idle);
        let mend = ReplicaCommand::Mend {
            offset: 3,
            leader_epoch: 1,
            sources: vec![2, 3],
        };
        assert_eq!(drain(&mut r), vec![mend.clone()], "mends, never cuts");

        // A source did not answer: tried again, not reported.
        r.handle_mend_failed(start, false);
        assert!(drain(&mut r).is_empty());
        r.handle_tick(start + config.isr_retry);
        assert_eq!(drain(&mut r), vec![mend.clone()]);
        // No source had it: reported once, tried again once the retry
        // pause is over.
        let start = start + config.isr_retry;
        r.handle_mend_failed(start, true);
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::ReportMend {
                offset: 3,
                since: 6,
                mended: false,
            }]
        );
        r.handle_tick(start + config.isr_retry / 2);
        assert!(drain(&mut r).is_empty());
        let now = start + config.isr_retry;
        r.handle_tick(now);
        assert_eq!(drain(&mut r), vec![mend.clone()]);
        r.handle_mend_failed(now, true);
        r.handle_tick(now + config.isr_retry);
        assert_eq!(drain(&mut r), vec![mend], "the failure is reported once");
        let now = now + config.isr_retry;

        r.handle_mended(now);
        let report = ReplicaCommand::ReportMend {
            offset: 3,
            since: 6,
            mended: true,
        };
        assert_eq!(drain(&mut r), vec![report.clone()]);
        r.handle_tick(now + config.isr_retry);
        assert_eq!(drain(&mut r), vec![report], "repeated until cleared");
        assert_eq!(r.log_end(), 9, "nothing was cut");

        r.handle_metadata(now, &meta(1, 5, &[1], 7), 1);
        assert_eq!(r.role(), RoleKind::Leader);
        assert_eq!(r.leading_epoch(), Some(5));
    }

    #[test]
    fn a_damaged_follower_cuts_its_log_back_and_says_so_in_its_fetches() {
        let now = Instant::now();
        let log = one_epoch_log(1, 9);
        let mut r = Replica::new(2, ReplicaConfig::default(), log);
        r.handle_metadata(now, &meta(1, 2, &[1, 2, 3], 3), 1);
        r.handle_tick(now);
        let first = drain(&mut r);
        assert!(
            matches!(first.as_slice(), [ReplicaCommand::Fetch { request, .. }] if request.rebuilt.is_none())
        );
        r.handle_metadata(now, &marked(meta(1, 2, &[1, 3], 4), 2, 5), 1);
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::Truncate {
                offset: 5,
                producers: Vec::new()
            }]
        );
        r.handle_tick(now);
        assert!(
            drain(&mut r).is_empty(),
            "no fetch while the cut is on disk"
        );
        r.handle_local_truncated(now);
        let Some(ReplicaCommand::Fetch { request, .. }) = drain(&mut r).first().cloned() else {
            panic!("fetches once cut back");
        };
        assert_eq!((request.fetch_offset, request.rebuilt), (5, Some(4)));
    }

    #[test]
    fn a_rebuilding_replica_rejoins_only_on_a_fetch_sent_after_its_cut() {
        let now = Instant::now();
        let mut r = Replica::new(1, ReplicaConfig::default(), LocalLog::default());
        r.handle_metadata(now, &marked(meta(1, 1, &[1, 3], 2), 2, 0), 1);
        drain(&mut r);
        r.handle_fetch(now, &fetch(2, 1, 0, None));
        assert!(
            drain(&mut r).is_empty(),
            "a report from before the cut proves nothing"
        );
        let stale = FetchRequest {
            rebuilt: Some(1),
            ..fetch(2, 1, 0, None)
        };
        r.handle_fetch(now, &stale);
        assert!(drain(&mut r).is_empty(), "an older mark proves nothing");
        let rebuilt = FetchRequest {
            rebuilt: Some(2),
            ..fetch(2, 1, 0, None)
        };
        r.handle_fetch(now, &rebuilt);
        assert_eq!(
            drain(&mut r),
            vec![ReplicaCommand::ProposeIsr {
                leader_epoch: 1,
                partition_epoch: 2,
                isr: vec![1, 3, 2]
            }]
        );
    }

    #[test]
    fn a_deposed_leader_answers_not_leader_and_follows_once_settled() {
        let now = Instant::now();
        let mut r = Replica::new(1, ReplicaConfig::default(), LocalLog::default());
        r.handle_metadata(now, &meta(1, 1, &[1, 2], 1), 1);
        r.handle_append(now, append(7, 1, AckLevel::Durable));
        let write = drain(&mut r)
            .iter()
            .find_map(|c| match c {
                ReplicaCommand::Engine(Command::Append { write, .. }) => Some(*write),
                _ => None,
            })
            .unwrap();
        r.handle_metadata(now, &meta(2, 2, &[2], 2), 1);
        assert_eq!(acks(&drain(&mut r)), vec![(7, AckResultKind::NotLeader)]);
        assert_eq!(
            r.role(),
            RoleKind::Retiring,
            "its write is still on its way"
        );
        r.handle_append(now, append(8, 1, AckLevel::Leader));
        assert_eq!(acks(&drain(&mut r)), vec![(8, AckResultKind::NotLeader)]);
        r.handle_written(now, write, true).unwrap();
        assert_eq!(r.role(), RoleKind::Follower);
        assert_eq!(r.log_end(), 1);
        r.handle_tick(now);
        let Some(ReplicaCommand::Fetch {
            leader, request, ..
        }) = drain(&mut r).first().cloned()
        else {
            panic!("follows");
        };
        assert_eq!(leader, 2);
        assert_eq!(request.last_fetched_epoch, Some(1), "its own epoch-1 batch");
    }

    #[test]
    fn a_replica_never_leads_at_an_epoch_its_log_already_holds() {
        let now = Instant::now();
        let log = one_epoch_log(4, 3);
        let mut r = Replica::new(1, ReplicaConfig::default(), log);
        r.handle_metadata(now, &meta(1, 4, &[1], 1), 1);
        assert_eq!(r.role(), RoleKind::Idle);
        r.handle_metadata(now, &meta(1, 5, &[1], 2), 1);
        assert_eq!(r.role(), RoleKind::Leader);
    }

    #[test]
    fn a_follower_publishes_the_high_watermark_it_learns_up_to_its_log_end() {
        let now = Instant::now();
        let log = one_epoch_log(0, 5);
        let mut r = Replica::new(2, ReplicaConfig::default(), log);
        let meta = PartitionMeta {
            replicas: vec![1, 2],
            leader: Some(1),
            leader_epoch: 0,
            isr: vec![1, 2],
            partition_epoch: 0,
            rebuilding: BTreeMap::new(),
        };
        r.handle_metadata(now, &meta, 1);
        r.handle_tick(now);
        let commands: Vec<_> = std::iter::from_fn(|| r.poll_command()).collect();
        let Some(ReplicaCommand::Fetch { fetch_id, .. }) = commands.first().cloned() else {
            panic!("a fetch: {commands:?}");
        };
        r.handle_fetch_response(
            now,
            fetch_id,
            FetchResponse::Records {
                batches: Vec::new(),
                high_watermark: 9,
            },
        );
        let commands: Vec<_> = std::iter::from_fn(|| r.poll_command()).collect();
        assert_eq!(
            commands.first(),
            Some(&ReplicaCommand::Engine(Command::HighWatermark(5))),
            "capped at its own log end"
        );
        assert_eq!(r.high_watermark(), 5);
        // An answer that moved the high watermark is progress: the next
        // fetch goes at once, and tells the leader what it knows.
        assert!(
            matches!(
                commands.get(1),
                Some(ReplicaCommand::Fetch { request, .. }) if request.high_watermark == 5
            ),
            "{commands:?}"
        );
        assert_eq!(commands.len(), 2, "{commands:?}");
    }

    /// An empty answer the leader held (it had nothing new) is followed by
    /// the next fetch at once; one it gave at once is followed after the
    /// pause, so a leader that does not hold fetches is not polled in a
    /// tight loop.
    #[test]
    fn a_follower_fetches_again_at_once_after_a_held_empty_answer_only() {
        let start = Instant::now();
        let config = ReplicaConfig::default();
        let log = one_epoch_log(0, 5);
        let mut r = Replica::new(2, config, log);
        r.handle_metadata(start, &meta(1, 0, &[1, 2], 0), 1);
        let empty = || FetchResponse::Records {
            batches: Vec::new(),
            high_watermark: 0,
        };
        let fetch_id = |commands: &[ReplicaCommand]| match commands {
            [ReplicaCommand::Fetch { fetch_id, .. }] => Some(*fetch_id),
            _ => None,
        };
        r.handle_tick(start);
        let first = fetch_id(&drain(&mut r)).expect("a fetch");
        let quick = start + config.fetch_interval / 2;
        r.handle_fetch_response(quick, first, empty());
        assert_eq!(drain(&mut r), Vec::new(), "a quick empty answer pauses");
        r.handle_tick(quick);
        assert_eq!(drain(&mut r), Vec::new(), "still pausing");
        let resumed = quick + config.fetch_interval;
        r.handle_tick(resumed);
        let second = fetch_id(&drain(&mut r)).expect("a fetch after the pause");
        // The server holds a fetch that finds nothing new (up to 2 s).
        r.handle_fetch_response(resumed + Duration::from_millis(500), second, empty());
        assert!(
            fetch_id(&drain(&mut r)).is_some(),
            "a held empty answer is followed at once"
        );
    }
}
