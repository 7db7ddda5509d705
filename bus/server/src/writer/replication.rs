//! The writer's cluster side: on a cluster node every partition is driven
//! by its [`Replica`] instead of a bare engine, and the writer thread also
//! executes what replication needs stored: a follower's appends at the
//! leader's offsets and epochs, and its truncations. Network work (fetches,
//! ISR proposals) goes out through [`Outbound`] to async tasks, whose
//! answers come back as [`ClusterOp`]s, in order with the appends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_core::controller::{ClusterState, NodeId};
use edgebus_core::partition::Command;
use edgebus_core::producer::ProducerState;
use edgebus_core::replica::{
    EpochStart, FetchDecision, FetchError, FetchRequest, FetchResponse, LocalLog, Replica,
    ReplicaCommand, ReplicaConfig,
};
use edgebus_store::{LogWrite, ReadError, WriteError};
use tokio::sync::mpsc;

use super::{Driver, Key, Op, Shell, Slot, Writer};

/// Network work the writer thread hands to the cluster's async side.
#[derive(Debug)]
pub enum Outbound {
    /// Send this fetch to the partition's leader; answer with
    /// [`Writer::fetched`].
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The leader to ask.
        leader: NodeId,
        /// Echo in the answer.
        fetch_id: u64,
        /// The request.
        request: FetchRequest,
    },
    /// Propose this in-sync set to the controller; report a refusal with
    /// [`Writer::isr_rejected`].
    ProposeIsr {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The epoch this node leads at.
        leader_epoch: i32,
        /// The partition epoch the set was computed from.
        partition_epoch: u64,
        /// The set.
        isr: Vec<NodeId>,
    },
    /// Ask `sources` for their batch at `offset` and `leader_epoch`, to
    /// mend this node's damaged one; answer with [`Writer::mend_copy`].
    Mend {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Base offset of the damaged batch.
        offset: u64,
        /// Its epoch, from this node's epoch table.
        leader_epoch: i32,
        /// The other replicas, to ask in turn.
        sources: Vec<NodeId>,
    },
    /// Tell the controller the damaged batch at `offset` is mended, or
    /// that no replica had a whole copy of it.
    ReportMend {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Base offset of the damaged batch.
        offset: u64,
        /// The mend mark's partition epoch.
        since: u64,
        /// Whether it is mended.
        mended: bool,
    },
    /// Report this node's copy of the partition as damaged from `offset`
    /// on, as seen at `partition_epoch`.
    ReportDamaged {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Base offset of the damaged batch.
        offset: u64,
        /// The partition epoch of this node's latest metadata.
        partition_epoch: u64,
    },
}

/// What asking the other replicas for a damaged batch found.
#[derive(Debug)]
pub enum MendSource {
    /// A whole copy, checked.
    Copy(Bytes),
    /// Every other replica answered, and none holds the batch whole.
    Nowhere,
    /// No whole copy from those that answered; some did not.
    Unreached,
}

/// Least time between two identical damage reports of one partition: a
/// report lost with a controller change is sent again, a busy reader does
/// not flood the control log.
const DAMAGE_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// One replica's state, for `topic describe`.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    /// Partition.
    pub partition: u32,
    /// The epoch it leads at, if it leads.
    pub leading_epoch: Option<i32>,
    /// Its high watermark.
    pub high_watermark: u64,
    /// Its log end.
    pub log_end: u64,
    /// On a leader, each follower's durable log end.
    pub follower_ends: Vec<(NodeId, u64)>,
}

/// Cluster inputs to the writer thread.
pub(super) enum ClusterOp {
    Attach {
        node: NodeId,
        config: ReplicaConfig,
        outbound: mpsc::UnboundedSender<Outbound>,
    },
    Metadata(Arc<ClusterState>),
    Tick,
    /// Replicas have commands waiting (from a fetch served beside the
    /// thread).
    Work,
    Fetched {
        key: Key,
        fetch_id: u64,
        response: FetchResponse,
        batches: Vec<Bytes>,
    },
    Damaged {
        key: Key,
        offset: u64,
    },
    MendCopy {
        key: Key,
        offset: u64,
        source: MendSource,
    },
    IsrRejected {
        key: Key,
        partition_epoch: u64,
        stale: bool,
    },
}

/// When the replicas' timers next need running: the earliest
/// [`Replica::next_tick`] reported since the last tick. Every tick asks
/// each replica again.
#[derive(Default)]
pub(super) struct Ticks {
    next: Mutex<Option<Instant>>,
    changed: tokio::sync::Notify,
}

impl Ticks {
    /// A replica's timer is due at `at`; wakes the tick task when that is
    /// sooner than what it sleeps until.
    pub(super) fn schedule(&self, at: Instant) {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if next.is_none_or(|n| at < n) {
            *next = Some(at);
            drop(next);
            self.changed.notify_one();
        }
    }

    /// What the tick task sleeps until; `None`: until woken.
    fn next(&self) -> Option<Instant> {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a timer is due at `now`; if so, the tick about to run takes
    /// it (and reports every replica's next one afresh).
    fn take_due(&self, now: Instant) -> bool {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let due = next.is_some_and(|at| at <= now);
        if due {
            *next = None;
        }
        due
    }
}

/// What the writer thread knows of its cluster.
pub(super) struct Replication {
    node: NodeId,
    config: ReplicaConfig,
    outbound: mpsc::UnboundedSender<Outbound>,
}

impl Writer {
    /// Makes this writer a cluster node's: partitions are driven by
    /// replicas once [`Writer::cluster_metadata`] names them. Returns the
    /// network work the writer will ask for.
    pub async fn attach_cluster(
        &self,
        node: NodeId,
        config: ReplicaConfig,
    ) -> mpsc::UnboundedReceiver<Outbound> {
        let (outbound, rx) = mpsc::unbounded_channel();
        self.clustered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self
            .tx
            .send(Op::Cluster(ClusterOp::Attach {
                node,
                config,
                outbound,
            }))
            .await;
        rx
    }

    /// The control plane's state as applied on this node: every replica of
    /// this node's partitions gets its partition's metadata.
    pub async fn cluster_metadata(&self, state: Arc<ClusterState>) {
        let _ = self.tx.send(Op::Cluster(ClusterOp::Metadata(state))).await;
    }

    /// Runs the replicas' timers when the first of them is due (see
    /// [`Replica::next_tick`]), at most once per `min_interval`; between
    /// ticks this sleeps, so an idle node is not woken for nothing.
    /// Returns when the writer stops.
    pub async fn run_cluster_ticks(&self, min_interval: Duration) {
        loop {
            if self.ticks.take_due(Instant::now()) {
                if self.tx.send(Op::Cluster(ClusterOp::Tick)).await.is_err() {
                    return;
                }
                tokio::time::sleep(min_interval).await;
                continue;
            }
            let next = self.ticks.next();
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into());
            tokio::select! {
                () = self.ticks.changed.notified() => {}
                () = sleep, if next.is_some() => {}
            }
        }
    }

    /// A follower's fetch, decided by this node's replica of the
    /// partition. It is decided here, beside the writer thread rather than
    /// in its queue, so it never waits behind a commit: followers copy a
    /// group while the leader's fsync of it runs (see
    /// `Shell::commit_group`). The acks and high watermark it releases go
    /// out at once; what the replica asks the writer to do (an ISR
    /// proposal) waits for the thread's next round, which this wakes.
    pub fn serve_fetch(
        &self,
        topic: String,
        partition: u32,
        request: FetchRequest,
    ) -> FetchDecision {
        let key = (topic, partition);
        let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = engines.get_mut(&key) else {
            return FetchDecision::Refused(FetchError::NotLeader);
        };
        let Driver::Cluster(replica) = &mut slot.engine else {
            return FetchDecision::Refused(FetchError::NotLeader);
        };
        let decision = replica.handle_fetch(Instant::now(), &request);
        let mut raised = false;
        for command in slot.drain(&self.ticks) {
            raised |= matches!(command, Command::HighWatermark(_));
            super::route(&self.watermarks, &self.notifier, &key, slot, command, None);
        }
        if raised {
            // Held fetches of the other followers take the new high
            // watermark to them.
            self.commits.notify_waiters();
        }
        if !slot.replication.is_empty() {
            let _ = self.tx.try_send(Op::Cluster(ClusterOp::Work));
        }
        decision
    }

    /// The leader's answer to a fetch, with the bytes of the batches it
    /// names (already CRC-checked), in order.
    pub async fn fetched(
        &self,
        topic: String,
        partition: u32,
        fetch_id: u64,
        response: FetchResponse,
        batches: Vec<Bytes>,
    ) {
        let op = Op::Cluster(ClusterOp::Fetched {
            key: (topic, partition),
            fetch_id,
            response,
            batches,
        });
        let _ = self.tx.send(op).await;
    }

    /// A read of this node's copy met a batch that fails its CRC (see
    /// [`edgebus_store::ReadError::DamagedBatch`]): on a cluster node the
    /// copy is reported, so it leaves the ISR and is rebuilt from the
    /// leader. A single node can only refuse to serve it.
    pub async fn damaged(&self, topic: String, partition: u32, offset: u64) {
        tracing::error!(%topic, partition, offset, "stored batch fails its CRC; not served");
        let op = Op::Cluster(ClusterOp::Damaged {
            key: (topic, partition),
            offset,
        });
        let _ = self.tx.send(op).await;
    }

    /// What the other replicas had of the damaged batch at `offset`: a
    /// copy is stored over the damaged batch; otherwise the mend is tried
    /// again later.
    pub async fn mend_copy(&self, topic: String, partition: u32, offset: u64, source: MendSource) {
        let op = Op::Cluster(ClusterOp::MendCopy {
            key: (topic, partition),
            offset,
            source,
        });
        let _ = self.tx.send(op).await;
    }

    /// The controller refused the ISR proposal computed from
    /// `partition_epoch`, as `stale` or for another reason (see
    /// [`Replica::handle_isr_rejected`]).
    pub async fn isr_rejected(
        &self,
        topic: String,
        partition: u32,
        partition_epoch: u64,
        stale: bool,
    ) {
        let op = Op::Cluster(ClusterOp::IsrRejected {
            key: (topic, partition),
            partition_epoch,
            stale,
        });
        let _ = self.tx.send(op).await;
    }

    /// Each loaded replica of `topic`: partition, the epoch it leads at (if
    /// it leads), its high watermark, its log end and, on a leader, each
    /// follower's durable log end as last reported.
    pub fn replica_states(&self, topic: &str) -> Vec<ReplicaState> {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut states: Vec<ReplicaState> = engines
            .iter()
            .filter(|((t, _), _)| t == topic)
            .filter_map(|((_, partition), slot)| match &slot.engine {
                Driver::Cluster(replica) => Some(ReplicaState {
                    partition: *partition,
                    leading_epoch: replica.leading_epoch(),
                    high_watermark: replica.high_watermark(),
                    log_end: replica.log_end(),
                    follower_ends: replica.follower_ends().into_iter().collect(),
                }),
                Driver::Single(_) => None,
            })
            .collect();
        states.sort_by_key(|s| s.partition);
        states
    }

    /// Notified after every commit: a leader holding a follower's fetch
    /// for new records waits on it.
    pub fn commits(&self) -> Arc<tokio::sync::Notify> {
        self.commits.clone()
    }
}

impl ClusterOp {
    /// Whether the writes waiting in the group must be committed before
    /// this is handled. The answer to this node's own fetch need not (its
    /// appends join the group; cutting the group for it would cost an
    /// fsync per fetch under load), nor waiting replica work.
    pub(super) fn needs_group_committed(&self) -> bool {
        !matches!(self, ClusterOp::Fetched { .. } | ClusterOp::Work)
    }
}

impl Shell {
    /// Tells the replicas of `keys` how the group carrying their follower
    /// appends went. The group was durable, as a follower reports only
    /// durable log ends. An IO failure has already stopped the node (see
    /// `Shell::failed`).
    pub(super) fn replicated(&mut self, keys: &[Key], stored: bool) {
        if keys.is_empty() {
            return;
        }
        let now = Instant::now();
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            if let Some(slot) = engines.get_mut(key)
                && let Driver::Cluster(replica) = &mut slot.engine
            {
                if stored {
                    replica.handle_replicated(now);
                } else {
                    tracing::error!(topic = %key.0, partition = key.1, "replicated append failed with its group");
                    replica.handle_replicated_failed(now);
                }
                self.drain(key, slot, None);
            }
        }
    }

    pub(super) fn cluster_op(&mut self, op: ClusterOp) {
        let now = Instant::now();
        match op {
            ClusterOp::Attach {
                node,
                config,
                outbound,
            } => {
                self.watermarks.reset();
                self.replication = Some(Replication {
                    node,
                    config,
                    outbound,
                });
            }
            ClusterOp::Metadata(state) => self.metadata(now, &state),
            ClusterOp::Tick => {
                let engines = Arc::clone(&self.engines);
                let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, slot) in engines.iter_mut() {
                    if let Driver::Cluster(replica) = &mut slot.engine {
                        replica.handle_tick(now);
                        self.drain(key, slot, None);
                    }
                }
            }
            ClusterOp::Work => {}
            ClusterOp::Fetched {
                key,
                fetch_id,
                response,
                batches,
            } => {
                let engines = Arc::clone(&self.engines);
                let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = engines.get_mut(&key)
                    && let Driver::Cluster(replica) = &mut slot.engine
                {
                    if let FetchResponse::Records { batches: meta, .. } = &response {
                        slot.fetched = meta.iter().map(|b| b.base_offset).zip(batches).collect();
                    }
                    replica.handle_fetch_response(now, fetch_id, response);
                    self.drain(&key, slot, None);
                }
            }
            ClusterOp::Damaged { key, offset } => {
                let engines = Arc::clone(&self.engines);
                let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
                if let (Some(slot), Some(replication)) = (engines.get_mut(&key), &self.replication)
                    && let Driver::Cluster(replica) = &slot.engine
                    && let Some(partition_epoch) = replica.partition_epoch()
                {
                    let report = (offset, partition_epoch);
                    let repeat = slot.damage_reported.is_some_and(|(last, at)| {
                        last == report && now.duration_since(at) < DAMAGE_REPORT_INTERVAL
                    });
                    if !repeat {
                        slot.damage_reported = Some((report, now));
                        let _ = replication.outbound.send(Outbound::ReportDamaged {
                            topic: key.0.clone(),
                            partition: key.1,
                            offset,
                            partition_epoch,
                        });
                    }
                }
            }
            ClusterOp::MendCopy {
                key,
                offset,
                source,
            } => {
                let engines = Arc::clone(&self.engines);
                let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = engines.get_mut(&key)
                    && let Driver::Cluster(replica) = &mut slot.engine
                    // A copy for a mend no longer in flight (the mark moved,
                    // or the topic was deleted and made again) is dropped.
                    && replica.mending() == Some(offset)
                {
                    let nowhere = matches!(source, MendSource::Nowhere);
                    let copy = match source {
                        MendSource::Copy(copy) => Some(copy),
                        MendSource::Nowhere | MendSource::Unreached => None,
                    };
                    match self.mend(&key, offset, copy) {
                        Ok(true) => replica.handle_mended(now),
                        Ok(false) => replica.handle_mend_failed(now, nowhere),
                        Err(e) => {
                            tracing::error!(topic = %key.0, partition = key.1, offset, error = %e, "mend not stored");
                            if let WriteError::Store(store) = &e
                                && super::reopens(store)
                            {
                                self.stop_if_cluster(&e);
                            }
                            replica.handle_mend_failed(now, false);
                        }
                    }
                    self.drain(&key, slot, None);
                }
            }
            ClusterOp::IsrRejected {
                key,
                partition_epoch,
                stale,
            } => {
                let engines = Arc::clone(&self.engines);
                let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = engines.get_mut(&key)
                    && let Driver::Cluster(replica) = &mut slot.engine
                {
                    replica.handle_isr_rejected(now, partition_epoch, stale);
                    self.drain(&key, slot, None);
                }
            }
        }
        self.replication_work();
    }

    /// Gives every replica of this node its partition's metadata, creating
    /// replicas (from what the store holds) for partitions new here.
    fn metadata(&mut self, now: Instant, state: &ClusterState) {
        let Some(node) = self.replication.as_ref().map(|r| r.node) else {
            return;
        };
        let config = self
            .replication
            .as_ref()
            .map(|r| r.config)
            .unwrap_or_default();
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, meta) in &state.topics {
            for (partition, partition_meta) in meta.partitions.iter().enumerate() {
                if !partition_meta.replicas.contains(&node) {
                    continue;
                }
                let key = (topic.clone(), partition as u32);
                if !engines.contains_key(&key) {
                    match self.local_log(&key) {
                        Ok(log) => {
                            let replica = Replica::new(node, config, log);
                            engines.insert(key.clone(), Slot::new(Driver::Cluster(replica)));
                        }
                        Err(e) => {
                            // The topic is created here before its metadata
                            // is handed on; only a failing store gets here.
                            tracing::error!(topic, partition, error = %e, "replica not loaded");
                            continue;
                        }
                    }
                }
                let Some(slot) = engines.get_mut(&key) else {
                    continue;
                };
                if let Driver::Cluster(replica) = &mut slot.engine {
                    replica.handle_metadata(now, partition_meta, meta.min_insync);
                    self.drain(&key, slot, None);
                }
            }
        }
    }

    /// Stores another replica's copy of the damaged batch at `offset`;
    /// `false` when there is none. A batch retention has deleted meanwhile
    /// needs none: the copy is whole without it.
    fn mend(&self, key: &Key, offset: u64, copy: Option<Bytes>) -> Result<bool, WriteError> {
        let (topic, partition) = (key.0.as_str(), key.1);
        if self.store.offsets(topic, partition)?.log_start > offset {
            tracing::warn!(
                topic,
                partition,
                offset,
                "damaged batch deleted by retention: nothing to mend"
            );
            return Ok(true);
        }
        let Some(copy) = copy else {
            return Ok(false);
        };
        self.store.mend_batch(topic, partition, offset, &copy)?;
        tracing::warn!(topic, partition, offset, "damaged batch mended");
        Ok(true)
    }

    /// What the store holds of a partition, for a replica.
    fn local_log(&self, key: &Key) -> Result<LocalLog, String> {
        let (topic, partition) = (key.0.as_str(), key.1);
        let log_end = self
            .store
            .offsets(topic, partition)
            .map_err(|e| e.to_string())?
            .log_end;
        let epochs = self
            .store
            .epochs(topic, partition)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|e| EpochStart {
                epoch: e.epoch,
                start_offset: e.start_offset,
            })
            .collect();
        let producers = self
            .store
            .producer_states(topic, partition)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, state)| ProducerState::decode(&state).map(|state| (id, state)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(LocalLog {
            log_end,
            epochs,
            producers,
        })
    }

    /// Executes the replicas' commands other than their engines': fetches
    /// and proposals go out, replicated appends and truncations are stored
    /// here, each in its own durable transaction.
    pub(super) fn replication_work(&mut self) {
        let Some(outbound) = self.replication.as_ref().map(|r| r.outbound.clone()) else {
            return;
        };
        loop {
            let engines = Arc::clone(&self.engines);
            let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
            let pending: Vec<(Key, Vec<ReplicaCommand>)> = engines
                .iter_mut()
                .filter(|(_, slot)| !slot.replication.is_empty())
                .map(|(key, slot)| (key.clone(), std::mem::take(&mut slot.replication)))
                .collect();
            if pending.is_empty() {
                return;
            }
            for (key, commands) in pending {
                for command in commands {
                    let Some(slot) = engines.get_mut(&key) else {
                        break;
                    };
                    self.replicate(&key, slot, command, &outbound);
                }
            }
        }
    }

    fn replicate(
        &mut self,
        key: &Key,
        slot: &mut Slot,
        command: ReplicaCommand,
        outbound: &mpsc::UnboundedSender<Outbound>,
    ) {
        let now = Instant::now();
        let Driver::Cluster(replica) = &mut slot.engine else {
            return;
        };
        match command {
            ReplicaCommand::Fetch {
                leader,
                fetch_id,
                request,
            } => {
                let _ = outbound.send(Outbound::Fetch {
                    topic: key.0.clone(),
                    partition: key.1,
                    leader,
                    fetch_id,
                    request,
                });
            }
            ReplicaCommand::ProposeIsr {
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let _ = outbound.send(Outbound::ProposeIsr {
                    topic: key.0.clone(),
                    partition: key.1,
                    leader_epoch,
                    partition_epoch,
                    isr,
                });
            }
            ReplicaCommand::AppendReplicated { batches } => {
                let mut fetched = std::mem::take(&mut slot.fetched);
                let writes: Option<Vec<LogWrite>> = batches
                    .iter()
                    .map(|b| {
                        Some(LogWrite {
                            topic: key.0.clone(),
                            partition: key.1,
                            base_offset: b.base_offset,
                            leader_epoch: b.leader_epoch,
                            batch: fetched.remove(&b.base_offset)?,
                            producer: b
                                .producer
                                .as_ref()
                                .map(|(id, state)| (*id, Bytes::from(state.encode()))),
                        })
                    })
                    .collect();
                match writes {
                    // Into the group commit, with the producers' appends
                    // and other partitions' follower appends: one fsync
                    // for all of them (see `Shell::replicated`).
                    Some(writes) => {
                        let group = &mut self.group;
                        group.bytes += writes.iter().map(|w| w.batch.len()).sum::<usize>();
                        group.writes.extend(writes);
                        group.durable = true;
                        group.replicated.push(key.clone());
                    }
                    None => {
                        tracing::error!(topic = %key.0, partition = key.1, "replicated append failed: a fetched batch's bytes are missing");
                        replica.handle_replicated_failed(now);
                        self.drain(key, slot, None);
                    }
                }
            }
            ReplicaCommand::Truncate { offset, producers } => {
                let producers: Vec<(i64, Bytes)> = producers
                    .iter()
                    .map(|(id, state)| (*id, Bytes::from(state.encode())))
                    .collect();
                match self.store.truncate_from(&key.0, key.1, offset, &producers) {
                    Ok(_) => {
                        tracing::info!(topic = %key.0, partition = key.1, offset, "truncated to the leader's log");
                        replica.handle_local_truncated(now);
                    }
                    Err(e) => {
                        tracing::error!(topic = %key.0, partition = key.1, error = %e, "truncation failed");
                        if let ReadError::Store(store) = &e
                            && super::reopens(store)
                        {
                            self.stop_if_cluster(&e);
                        }
                    }
                }
                self.drain(key, slot, None);
            }
            ReplicaCommand::Mend {
                offset,
                leader_epoch,
                sources,
            } => {
                let _ = outbound.send(Outbound::Mend {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset,
                    leader_epoch,
                    sources,
                });
            }
            ReplicaCommand::ReportMend {
                offset,
                since,
                mended,
            } => {
                let _ = outbound.send(Outbound::ReportMend {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset,
                    since,
                    mended,
                });
            }
            ReplicaCommand::Engine(command) => self.route(key, slot, command, None),
        }
    }
}
