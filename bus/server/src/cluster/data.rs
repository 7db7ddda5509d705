//! The cluster's data plane on one node: topics created through the
//! control log, partition metadata handed to the writer's replicas,
//! followers' fetches sent to leaders and served here, and ISR changes
//! proposed to the controller.
//!
//! Followers fetch over the peer connection, one request at a time per
//! partition (a stream per call, multiplexed on the one QUIC connection
//! between two nodes): QUIC streams are cheap, a call per fetch keeps a
//! slow partition from holding up another (no head-of-line blocking), and
//! the leader holds a fetch that finds nothing new for up to
//! [`FETCH_WAIT_MAX`] until a commit brings records, so an idle partition
//! costs about one call per follower every two seconds and a busy one is
//! fetched as soon as the leader writes.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgebus_core::controller::{
    ClusterState, ControlError, ControlOutcome, ControlRequest, TopicMeta,
};
use edgebus_core::producer::ProducerState;
use edgebus_core::replica::{
    FetchDecision, FetchError, FetchRequest, FetchResponse, ReplicaConfig, ReplicatedBatch,
};
use edgebus_proto::batch::BatchHeader;
use edgebus_proto::frame::{Request, TopicChanges, TopicSpec};
use edgebus_store::{LogStore, ReadError, StoreError, TopicError};
use tokio::sync::mpsc;

use super::Cluster;
use super::peer::{BatchMeta, FetchReply, PeerRequest, PeerResponse, Trailer};
use crate::topics::{TopicAdminError, Topics};
use crate::writer::{Outbound, Writer};

/// Longest a leader holds a follower's fetch that finds nothing new, if
/// the replica lag time allows: each fetch answered empty is a call, so
/// the longer the hold, the less an idle partition costs.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(2);

/// How long a leader holds a follower's fetch that finds nothing new: at
/// most a quarter of the replica lag time, since a follower shows it is
/// caught up only by fetching, and one that fetches less often than the
/// lag time leaves the ISR.
fn fetch_wait(replica_lag_max: Duration) -> Duration {
    FETCH_WAIT_MAX.min(replica_lag_max / 4)
}

/// How often the replicas' timers run at most.
const TICK: Duration = Duration::from_millis(10);

/// A follower's fetch with no answer after this long is sent again.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the cluster needs of the node's data side.
pub(super) struct DataPlane {
    pub(super) writer: Writer,
    pub(super) store: Arc<dyn LogStore>,
    topics: Topics,
    max_fetch_bytes: u32,
    /// See [`fetch_wait`].
    fetch_wait: Duration,
}

impl Cluster {
    /// Starts replicating this node's partitions through `writer`: the
    /// replicas get their metadata from the control log, and their network
    /// work is done here.
    pub async fn attach(
        &self,
        writer: Writer,
        store: Arc<dyn LogStore>,
        topics: Topics,
        max_fetch_bytes: u32,
        replica_lag_max: Duration,
        scrub: super::scrub::Scrub,
    ) {
        let config = ReplicaConfig {
            replica_lag_max,
            fetch_interval: Duration::from_millis(50),
            fetch_timeout: FETCH_TIMEOUT,
            isr_retry: Duration::from_secs(1),
        };
        let outbound = writer.attach_cluster(self.inner.node, config).await;
        let plane = DataPlane {
            writer: writer.clone(),
            store,
            topics,
            max_fetch_bytes,
            fetch_wait: fetch_wait(replica_lag_max),
        };
        {
            let mut data = self
                .inner
                .data
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if data.is_some() {
                return;
            }
            *data = Some(Arc::new(plane));
        }
        self.spawn(self.clone().outbound(outbound));
        self.spawn(self.clone().forward_metadata());
        self.spawn(self.clone().scrub(scrub));
        self.spawn(async move { writer.run_cluster_ticks(TICK).await });
    }

    pub(super) fn data(&self) -> Option<Arc<DataPlane>> {
        self.inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Creates a topic in the cluster: the control log places its replicas
    /// and every replica node creates it locally; returns once this node
    /// has (or once it is placed, if this node holds no replica). A
    /// replication factor or `min.insync.replicas` of 0 takes the default:
    /// 3 (at most the node count) and 2 (at most the replication factor).
    pub async fn create_topic(
        &self,
        spec: TopicSpec,
        replication_factor: u32,
        min_insync: u32,
        unclean_leader_election: bool,
    ) -> Result<(), TopicAdminError> {
        let replication_factor = match replication_factor {
            0 => self.inner.addrs.len().min(3) as u32,
            n => n,
        };
        let min_insync = match min_insync {
            0 => replication_factor.min(2),
            n => n,
        };
        let mut buf = BytesMut::new();
        Request::CreateTopic(spec.clone()).encode(0, &mut buf);
        let request = ControlRequest::CreateTopic {
            name: spec.name.clone(),
            partitions: spec.partitions,
            replication_factor,
            min_insync,
            unclean_leader_election,
            spec: buf[4..].to_vec(),
        };
        let store_error = |detail: String| {
            TopicAdminError::Store(TopicError::Store(edgebus_store::StoreError::Backend(
                detail,
            )))
        };
        match self.propose(request).await {
            Ok(Ok(_)) => {}
            Ok(Err(ControlError::TopicExists(name))) => {
                return Err(TopicAdminError::Store(TopicError::Exists(name)));
            }
            Ok(Err(e)) => return Err(TopicAdminError::Store(TopicError::Invalid(e.to_string()))),
            Err(e) => return Err(store_error(e.to_string())),
        }
        let Some(data) = self.data() else {
            return Ok(());
        };
        let holds_replica = self.state().topics.get(&spec.name).is_some_and(|t| {
            t.partitions
                .iter()
                .any(|p| p.replicas.contains(&self.inner.node))
        });
        if !holds_replica {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while data.topics.spec(&spec.name).is_err() {
            if Instant::now() > deadline {
                return Err(store_error(
                    "the topic is created in the cluster but not yet on this node".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Changes a topic's settings, or adds partitions, through the control
    /// log; every node applies the change to its copy, this one before the
    /// answer. The controller places added partitions; each node then
    /// creates them and its replicas of those it holds.
    pub async fn alter_topic(
        &self,
        name: &str,
        changes: TopicChanges,
    ) -> Result<TopicSpec, TopicAdminError> {
        let unknown =
            || TopicAdminError::UnknownTopic(crate::topics::UnknownTopic(name.to_owned()));
        let old = self
            .state()
            .topics
            .get(name)
            .and_then(|meta| spec_of(name, meta))
            .ok_or_else(unknown)?;
        let new = crate::topics::altered(&old, &changes)?;
        let mut buf = BytesMut::new();
        Request::CreateTopic(new.clone()).encode(0, &mut buf);
        let spec = buf[4..].to_vec();
        let request = if new.partitions > old.partitions {
            ControlRequest::AddPartitions {
                name: name.to_owned(),
                partitions: new.partitions,
                spec,
            }
        } else {
            ControlRequest::AlterTopicSpec {
                name: name.to_owned(),
                spec,
            }
        };
        match self.propose(request).await {
            Ok(Ok(_)) => {}
            Ok(Err(ControlError::UnknownTopic(_))) => return Err(unknown()),
            Ok(Err(e)) => return Err(TopicAdminError::Store(TopicError::Invalid(e.to_string()))),
            Err(e) => {
                return Err(TopicAdminError::Store(TopicError::Store(
                    edgebus_store::StoreError::Backend(e.to_string()),
                )));
            }
        }
        let Some(data) = self.data() else {
            return Ok(new);
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while data
            .topics
            .spec(name)
            .is_ok_and(|local| !differences(&local, &new).is_empty())
        {
            if Instant::now() > deadline {
                return Err(TopicAdminError::Store(TopicError::Store(
                    edgebus_store::StoreError::Backend(
                        "the change is in the cluster but not yet on this node".into(),
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(new)
    }

    /// Deletes a topic through the control log. Every node that holds a
    /// copy deletes it when it applies the change (a node that is down,
    /// when it is back), and the name can be used again once all have.
    pub async fn delete_topic(&self, name: &str) -> Result<(), TopicAdminError> {
        let request = ControlRequest::DeleteTopic {
            name: name.to_owned(),
        };
        match self.propose(request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(ControlError::UnknownTopic(name))) => Err(TopicAdminError::UnknownTopic(
                crate::topics::UnknownTopic(name),
            )),
            Ok(Err(e)) => Err(TopicAdminError::Store(TopicError::Invalid(e.to_string()))),
            Err(e) => Err(TopicAdminError::Store(TopicError::Store(
                edgebus_store::StoreError::Backend(e.to_string()),
            ))),
        }
    }

    /// Hands every applied cluster state to the writer's replicas, once
    /// this node's registration is in it (before that, the state may
    /// predate the re-election a restart causes), creating local copies of
    /// topics first.
    async fn forward_metadata(self) {
        let mut states = self.inner.state.clone();
        loop {
            let state = states.borrow_and_update().clone();
            let registered = state
                .nodes
                .get(&self.inner.node)
                .is_some_and(|meta| meta.incarnation == self.inner.incarnation);
            if registered && let Some(data) = self.data() {
                create_local_topics(&data.topics, &state).await;
                alter_local_topics(&data.topics, &state).await;
                self.delete_local_copies(&data, &state).await;
                data.writer.cluster_metadata(state).await;
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    }

    /// Does the writer's network work.
    async fn outbound(self, mut rx: mpsc::UnboundedReceiver<Outbound>) {
        while let Some(work) = rx.recv().await {
            let cluster = self.clone();
            match work {
                Outbound::Fetch {
                    topic,
                    partition,
                    leader,
                    fetch_id,
                    request,
                } => {
                    tokio::spawn(async move {
                        cluster
                            .fetch(topic, partition, leader, fetch_id, request)
                            .await;
                    });
                }
                Outbound::ProposeIsr {
                    topic,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    isr,
                } => {
                    tokio::spawn(async move {
                        let request = ControlRequest::AlterIsr {
                            topic: topic.clone(),
                            partition,
                            leader: cluster.inner.node,
                            leader_epoch,
                            partition_epoch,
                            isr,
                        };
                        // A proposal whose fate is unknown (no quorum) is
                        // sent again by the replica; a refusal is final.
                        let stale = match cluster.propose(request).await {
                            Ok(Ok(ControlOutcome::IsrChanged { .. })) | Err(_) => return,
                            Ok(Err(ControlError::StaleIsr { .. })) => true,
                            Ok(_) => false,
                        };
                        if let Some(data) = cluster.data() {
                            data.writer
                                .isr_rejected(topic, partition, partition_epoch, stale)
                                .await;
                        }
                    });
                }
                Outbound::Mend {
                    topic,
                    partition,
                    offset,
                    leader_epoch,
                    sources,
                } => {
                    tokio::spawn(async move {
                        cluster
                            .mend(topic, partition, offset, leader_epoch, sources)
                            .await;
                    });
                }
                Outbound::ReportMend {
                    topic,
                    partition,
                    offset,
                    since,
                    mended,
                } => {
                    tokio::spawn(async move {
                        let node = cluster.inner.node;
                        let request = ControlRequest::mend_report(
                            topic.clone(),
                            partition,
                            node,
                            offset,
                            since,
                            mended,
                        );
                        // A lost or refused mended report is repeated by
                        // the replica until its mark is gone; a failure is
                        // reported once per mark.
                        let outcome = cluster.propose(request).await;
                        tracing::warn!(%topic, partition, offset, mended, ?outcome, "reported a mend");
                    });
                }
                Outbound::ReportDamaged {
                    topic,
                    partition,
                    offset,
                    partition_epoch,
                } => {
                    tokio::spawn(async move {
                        let request = ControlRequest::ReplicaDamaged {
                            topic: topic.clone(),
                            partition,
                            node: cluster.inner.node,
                            offset,
                            partition_epoch,
                        };
                        // A refused or lost report is made again at the
                        // next read of the damaged batch (or the next scrub).
                        let outcome = cluster.propose(request).await;
                        tracing::warn!(%topic, partition, offset, ?outcome, "reported a damaged copy");
                    });
                }
            }
        }
    }

    /// A follower's fetch: sends it, checks every batch's CRC, and hands
    /// the answer to the writer. A fetch that fails is answered as refused,
    /// so the replica tries again after a pause.
    async fn fetch(
        &self,
        topic: String,
        partition: u32,
        leader: u64,
        fetch_id: u64,
        request: FetchRequest,
    ) {
        let Some(data) = self.data() else {
            return;
        };
        let call = PeerRequest::Fetch {
            topic: topic.clone(),
            partition,
            request,
            max_bytes: data.max_fetch_bytes,
        };
        let answer = self
            .inner
            .peers
            .call_with_trailer(leader, &call, FETCH_TIMEOUT)
            .await;
        let (response, batches) = match answer {
            Ok((PeerResponse::Fetched(reply), trailer)) => match received(reply, trailer) {
                Ok(received) => received,
                Err(e) => {
                    tracing::error!(%topic, partition, leader, error = %e, "fetched batches refused");
                    (FetchResponse::Refused(FetchError::NotLeader), Vec::new())
                }
            },
            Ok((other, _)) => {
                tracing::debug!(%topic, partition, leader, ?other, "fetch not served");
                (FetchResponse::Refused(FetchError::NotLeader), Vec::new())
            }
            Err(e) => {
                tracing::debug!(%topic, partition, leader, error = %e, "fetch failed");
                (FetchResponse::Refused(FetchError::NotLeader), Vec::new())
            }
        };
        data.writer
            .fetched(topic, partition, fetch_id, response, batches)
            .await;
    }

    /// Serves a follower's fetch as leader: holds it up to [`fetch_wait`]
    /// while there is nothing new (no batch, and no high watermark the
    /// follower lacks), then sends the batches as stored.
    pub(super) async fn serve_fetch(
        &self,
        topic: String,
        partition: u32,
        request: FetchRequest,
        max_bytes: u32,
    ) -> (PeerResponse, Trailer) {
        let Some(data) = self.data() else {
            return fetched(FetchReply::Refused(FetchError::NotLeader));
        };
        let deadline = tokio::time::Instant::now() + data.fetch_wait;
        let commits = data.writer.commits();
        loop {
            let committed = commits.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let decision = data.writer.serve_fetch(topic.clone(), partition, request);
            let (from, to, high_watermark) = match decision {
                FetchDecision::Serve {
                    from,
                    to,
                    high_watermark,
                } => (from, to, high_watermark),
                FetchDecision::Diverging {
                    epoch,
                    end_offset,
                    high_watermark,
                } => {
                    return fetched(FetchReply::Diverging {
                        epoch,
                        end_offset,
                        high_watermark,
                    });
                }
                FetchDecision::Refused(e) => return fetched(FetchReply::Refused(e)),
            };
            let news = from < to || high_watermark > request.high_watermark;
            if !news && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, committed).await;
                continue;
            }
            let store = data.store.clone();
            let (name, max_bytes) = (topic.clone(), max_bytes as usize);
            let read = tokio::task::spawn_blocking(move || {
                read_for_follower(&*store, &name, partition, from, to, max_bytes)
            })
            .await;
            if let Ok(Err(ReadError::DamagedBatch { offset, .. })) = &read {
                data.writer.damaged(topic, partition, *offset).await;
            }
            return match read {
                Ok(Ok((batches, producers, trailer))) => (
                    PeerResponse::Fetched(FetchReply::Records {
                        batches,
                        producers,
                        high_watermark,
                    }),
                    trailer,
                ),
                Ok(Err(e)) => (PeerResponse::Failed(e.to_string()), Vec::new()),
                Err(e) => (PeerResponse::Failed(e.to_string()), Vec::new()),
            };
        }
    }
}

fn fetched(reply: FetchReply) -> (PeerResponse, Trailer) {
    (PeerResponse::Fetched(reply), Vec::new())
}

type Served = (Vec<BatchMeta>, Vec<(i64, u64, Vec<u8>)>, Trailer);

/// Reads batches `from..to` (at most `max_bytes`, at least one) as stored,
/// with the dedup state of every producer whose batch is among them.
fn read_for_follower(
    store: &dyn LogStore,
    topic: &str,
    partition: u32,
    from: u64,
    to: u64,
    max_bytes: usize,
) -> Result<Served, ReadError> {
    let corrupt = |detail: String| {
        ReadError::Store(StoreError::Corrupt {
            table: format!("{topic}/{partition}"),
            detail,
        })
    };
    let read = store.read(topic, partition, from, max_bytes, to)?;
    let mut metas = Vec::with_capacity(read.batches.len());
    let mut end = from;
    for batch in &read.batches {
        let header = BatchHeader::parse(batch).map_err(|e| corrupt(e.to_string()))?;
        end = header.base_offset + u64::from(header.record_count);
        metas.push(BatchMeta {
            base_offset: header.base_offset,
            record_count: header.record_count,
            leader_epoch: header.partition_leader_epoch,
            len: batch.len() as u32,
        });
    }
    let mut producers = Vec::new();
    for (id, state) in store.producer_states(topic, partition)? {
        let decoded = ProducerState::decode(&state).map_err(|e| corrupt(e.to_string()))?;
        if let Some(last) = decoded.last_batch_in(from, end) {
            producers.push((id, last, state.to_vec()));
        }
    }
    Ok((metas, producers, read.batches))
}

/// Turns a leader's answer into the replica's, checking each batch: whole,
/// CRC-valid, and where its description says. A producer's state goes with
/// its last batch sent, forgetting batches the follower does not have yet.
fn received(reply: FetchReply, trailer: Bytes) -> Result<(FetchResponse, Vec<Bytes>), String> {
    let (metas, producers, high_watermark) = match reply {
        FetchReply::Records {
            batches,
            producers,
            high_watermark,
        } => (batches, producers, high_watermark),
        FetchReply::Diverging {
            epoch,
            end_offset,
            high_watermark,
        } => {
            let response = FetchResponse::Diverging {
                epoch,
                end_offset,
                high_watermark,
            };
            return Ok((response, Vec::new()));
        }
        FetchReply::Refused(e) => return Ok((FetchResponse::Refused(e), Vec::new())),
    };
    let mut rest = trailer;
    let mut batches = Vec::with_capacity(metas.len());
    let mut bytes = Vec::with_capacity(metas.len());
    for meta in &metas {
        let len = meta.len as usize;
        if rest.len() < len {
            return Err(format!("batch at {} is cut short", meta.base_offset));
        }
        let batch = rest.split_to(len);
        let header = edgebus_proto::batch::validate(&batch)
            .map_err(|e| format!("batch at {}: {e}", meta.base_offset))?;
        if header.base_offset != meta.base_offset
            || header.record_count != meta.record_count
            || header.partition_leader_epoch != meta.leader_epoch
        {
            return Err(format!(
                "batch at {} does not match its description",
                meta.base_offset
            ));
        }
        batches.push(ReplicatedBatch {
            base_offset: meta.base_offset,
            record_count: meta.record_count,
            leader_epoch: meta.leader_epoch,
            producer: None,
        });
        bytes.push(batch);
    }
    let end = metas
        .last()
        .map_or(0, |m| m.base_offset + u64::from(m.record_count));
    for (id, last, state) in producers {
        let mut state = ProducerState::decode(&state).map_err(|e| e.to_string())?;
        state.truncate(end);
        if let Some(batch) = batches.iter_mut().find(|b| b.base_offset == last) {
            batch.producer = Some((id, state));
        }
    }
    let response = FetchResponse::Records {
        batches,
        high_watermark,
    };
    Ok((response, bytes))
}

impl Cluster {
    /// Deletes this node's copy of every topic being deleted that still
    /// counts it as a holder, and tells the controller. A proposal that is
    /// lost is made again on the next state applied.
    async fn delete_local_copies(&self, data: &DataPlane, state: &ClusterState) {
        let node = self.inner.node;
        for (name, holders) in &state.deleting {
            if !holders.contains(&node) {
                continue;
            }
            match data.topics.delete(name.clone()).await {
                Ok(()) | Err(TopicAdminError::UnknownTopic(_)) => {}
                Err(TopicAdminError::Store(TopicError::NotFound(_))) => {}
                Err(e) => {
                    tracing::error!(topic = %name, error = %e, "deleting the local copy failed");
                    continue;
                }
            }
            // The copy's plugin state goes with it, before the name is
            // free again, so a topic made anew under it starts without.
            let (store, topic) = (data.store.clone(), name.clone());
            let forgotten = tokio::task::spawn_blocking(move || {
                crate::plugin_state::delete_topic_state(&*store, &topic)
            })
            .await;
            if !matches!(forgotten, Ok(Ok(()))) {
                tracing::error!(topic = %name, ?forgotten, "deleting the copy's plugin state failed");
                continue;
            }
            let cluster = self.clone();
            let request = ControlRequest::TopicCopyDeleted {
                name: name.clone(),
                node,
            };
            tokio::spawn(async move {
                if let Err(e) = cluster.propose(request).await {
                    tracing::debug!(error = %e, "copy deletion not committed");
                }
            });
        }
    }
}

/// A topic's settings as the control log holds them. The partition count
/// is the placement's, which only `AddPartitions` changes: the encoded
/// settings of an `AlterTopicSpec` computed before a concurrent
/// `AddPartitions` name the old count.
fn spec_of(name: &str, meta: &TopicMeta) -> Option<TopicSpec> {
    match Request::decode(Bytes::from(meta.spec.clone())) {
        Ok((_, Request::CreateTopic(spec))) => Some(TopicSpec {
            partitions: meta.partitions.len() as u32,
            ..spec
        }),
        other => {
            tracing::error!(topic = %name, ?other, "unreadable topic spec in the control log");
            None
        }
    }
}

/// The settings of `wanted` that `local` lacks, and the partitions it
/// adds (a copy never drops partitions). A `max_message_bytes` of 0
/// is each node's own default, which a node resolved when it created its
/// copy, so it never differs.
fn differences(local: &TopicSpec, wanted: &TopicSpec) -> TopicChanges {
    let changed = |l: i64, w: i64| (l != w).then_some(w);
    TopicChanges {
        partitions: (wanted.partitions > local.partitions).then_some(wanted.partitions),
        retention_ms: changed(local.retention_ms, wanted.retention_ms),
        retention_bytes: changed(local.retention_bytes, wanted.retention_bytes),
        max_message_bytes: (wanted.max_message_bytes != 0
            && local.max_message_bytes != wanted.max_message_bytes)
            .then_some(wanted.max_message_bytes),
    }
}

/// Brings this node's copies to the settings the control log holds.
async fn alter_local_topics(topics: &Topics, state: &ClusterState) {
    for (name, meta) in &state.topics {
        let Ok(local) = topics.spec(name) else {
            continue;
        };
        let Some(wanted) = spec_of(name, meta) else {
            continue;
        };
        let changes = differences(&local, &wanted);
        if changes.is_empty() {
            continue;
        }
        if let Err(e) = topics.alter(name, changes).await {
            tracing::error!(topic = %name, error = %e, "altering the local copy failed");
        }
    }
}

/// Creates here every topic of the cluster state this node does not have.
async fn create_local_topics(topics: &Topics, state: &ClusterState) {
    for (name, meta) in &state.topics {
        if topics.spec(name).is_ok() {
            continue;
        }
        let Some(spec) = spec_of(name, meta) else {
            continue;
        };
        match topics.create(spec).await {
            Ok(()) | Err(TopicAdminError::Store(TopicError::Exists(_))) => {}
            Err(e) => tracing::error!(topic = %name, error = %e, "creating the local copy failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_what_changed_and_leave_a_default_record_size_alone() {
        let local = TopicSpec {
            max_message_bytes: 1 << 20,
            ..TopicSpec::new("t", 1)
        };
        let mut wanted = TopicSpec {
            max_message_bytes: 0,
            ..local.clone()
        };
        assert!(differences(&local, &wanted).is_empty());
        wanted.retention_bytes = 1_000;
        wanted.max_message_bytes = 2 << 20;
        assert_eq!(
            differences(&local, &wanted),
            TopicChanges {
                partitions: None,
                retention_ms: None,
                retention_bytes: Some(1_000),
                max_message_bytes: Some(2 << 20),
            }
        );
    }
}
