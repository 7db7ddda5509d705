//! The cluster's control plane as a deterministic state machine: the nodes,
//! the topics, and for every partition its replicas, leader, leader epoch
//! and in-sync set.
//!
//! Every change is a [`ControlRequest`] applied in log order by
//! [`ClusterState::apply`]; the broker commits requests through openraft and
//! applies them on every node, so every node computes the same state from
//! the same log, and the simulator applies them the same way. Nothing here
//! reads a clock: [`Liveness`] turns heartbeats and the time the caller
//! passes into the fence and unfence requests the controller proposes.
//!
//! # Elections
//!
//! A partition's leader is always a member of its in-sync set (ISR), unless
//! the topic allows unclean elections. When a leader is fenced (missed its
//! session) or restarts (registers a new incarnation), the first other
//! unfenced ISR member in replica order leads at the next epoch; when there
//! is none, the partition has no leader, and its ISR keeps the last member,
//! which leads again at a new epoch once it is back (the "last replica
//! standing" of KIP-966). Every election bumps the leader epoch, so a
//! restarted leader never writes again at an epoch it may have written at
//! before it crashed.
//!
//! ISR changes proposed by a leader ([`ControlRequest::AlterIsr`]) carry the
//! leader epoch and partition epoch they were computed from, and are refused
//! when either is stale: a deposed leader cannot shrink a set it no longer
//! owns (the Kafka 2013 case), and two proposals cannot race.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::partition::ReplicaId;

mod registry;

pub use registry::{
    IngestMeta, MAX_PIPELINE_STATE_BYTES, MAX_REPLICATED_PLUGIN_BYTES, PipelineMeta,
    PipelineStateCheckpoint, PluginMeta, base64_bytes,
};

/// A node of the cluster; the same ids replicas use.
pub type NodeId = ReplicaId;

/// What the cluster knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Where clients and peers reach it, `host:port`.
    pub address: String,
    /// Changes every time the node process starts.
    pub incarnation: u64,
    /// Missed its session or has not registered yet: it leads nothing and
    /// is in no in-sync set it could be elected from.
    pub fenced: bool,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Nodes holding a copy, in preference order.
    pub replicas: Vec<NodeId>,
    /// The node producers and consumers use; `None` when no in-sync replica
    /// is available.
    pub leader: Option<NodeId>,
    /// Bumped at every election; stamped into every batch appended.
    pub leader_epoch: i32,
    /// Replicas that hold every record below the high watermark; always
    /// holds the leader when there is one.
    pub isr: Vec<NodeId>,
    /// Bumped at every change of this partition, leader or ISR, so a
    /// proposal computed from an older state is refused.
    pub partition_epoch: u64,
    /// Replicas whose copy failed its CRC, until they are whole again: each
    /// drops its log from the damaged batch on and copies it again from the
    /// leader, or, as the last in-sync replica, mends the batch (see
    /// [`Rebuild::mend`]). They lead nothing, clean or unclean, meanwhile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rebuilding: BTreeMap<NodeId, Rebuild>,
}

/// A replica being rebuilt: see [`PartitionMeta::rebuilding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// Its log is dropped from here on: the damaged batch's base offset.
    pub from: u64,
    /// The partition epoch the mark was set at. A follower's fetch names it
    /// once its log is cut back, so the leader never takes a report sent
    /// before the cut as proof that the replica is whole again.
    pub since: u64,
    /// The replica was the last in-sync one: no leader holds what it alone
    /// may hold past the damage, so instead of cutting its log it stays in
    /// the ISR and replaces the damaged batch with the batch another
    /// replica stores at the same offset and epoch (the same bytes: two
    /// replicas never hold different batches at one offset and epoch), then
    /// reports [`ControlRequest::ReplicaMended`] and may lead again. While
    /// it is live no election passes over it, not even an unclean one,
    /// until it reports that no replica had a whole copy
    /// ([`ControlRequest::ReplicaMendFailed`]); a leader elected then turns
    /// the mark into a cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mend: bool,
}

/// A topic's cluster-wide settings and partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Copies of each partition.
    pub replication_factor: u32,
    /// `min.insync.replicas` for `acks=all`.
    pub min_insync: u32,
    /// Whether a partition with no in-sync replica left may elect an
    /// out-of-sync one, losing what only the ISR had.
    pub unclean_leader_election: bool,
    /// The broker's own topic settings (retention, limits, plugins), opaque
    /// here.
    pub spec: Vec<u8>,
    /// By partition number.
    pub partitions: Vec<PartitionMeta>,
}

/// A change to the cluster state, in the order the control log holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// A node process started: records its address and incarnation and
    /// unfences it. A new incarnation of a node that leads partitions
    /// re-elects them at a new epoch.
    RegisterNode {
        /// The node.
        node: NodeId,
        /// Its address.
        address: String,
        /// Unique per process start.
        incarnation: u64,
    },
    /// The node missed its session: it leaves every ISR it is not the last
    /// member of, and its partitions elect new leaders.
    FenceNode {
        /// The node.
        node: NodeId,
    },
    /// A fenced node is heard from again: leaderless partitions whose ISR
    /// holds it elect it.
    UnfenceNode {
        /// The node.
        node: NodeId,
    },
    /// Creates a topic, placing its replicas.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Partition count.
        partitions: u32,
        /// Copies of each partition.
        replication_factor: u32,
        /// `min.insync.replicas`.
        min_insync: u32,
        /// `unclean.leader.election`.
        unclean_leader_election: bool,
        /// The broker's topic settings.
        spec: Vec<u8>,
    },
    /// Deletes a topic: it leaves the cluster's topics at once, and its
    /// name stays taken until every node that held a copy has deleted it
    /// (a node that is down deletes its copy when it is back).
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Replaces a topic's broker settings (not its partitions).
    AlterTopicSpec {
        /// Topic name.
        name: String,
        /// The broker's topic settings.
        spec: Vec<u8>,
    },
    /// Grows a topic to `partitions`, placing the new ones as its first
    /// were placed, and replaces its broker settings (which name the new
    /// count). Partitions are never removed: their records would go.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new partition count, above the current one.
        partitions: u32,
        /// The broker's topic settings.
        spec: Vec<u8>,
    },
    /// A consumer group commits offsets: they survive the loss of any
    /// node, whichever node the group's clients reach next.
    CommitOffsets {
        /// Consumer group.
        group: String,
        /// `(topic, partition, offset)`: the next offset the group reads.
        offsets: Vec<(String, u32, u64)>,
    },
    /// Removes a group's committed offsets.
    DeleteGroupOffsets {
        /// Consumer group.
        group: String,
    },
    /// `node` deleted its copy of a topic being deleted.
    TopicCopyDeleted {
        /// Topic name.
        name: String,
        /// The node.
        node: NodeId,
    },
    /// `node` found a batch of its copy that fails its CRC: a damaged copy
    /// must not lead, so a new leader is elected if it led. It leaves the
    /// ISR and rebuilds from `offset` on, or, as the last ISR member, stays
    /// and mends that batch (see [`Rebuild::mend`]).
    ReplicaDamaged {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The node holding the damaged copy.
        node: NodeId,
        /// Base offset of the damaged batch.
        offset: u64,
        /// The partition epoch the node saw when it found the damage. A
        /// report from an older state is refused: it may predate a rebuild
        /// that already replaced the damaged copy (the node reports again
        /// at its next read or scrub).
        partition_epoch: u64,
    },
    /// `node`, the last in-sync replica, replaced its damaged batch at
    /// `offset` with another replica's copy: its mark is cleared and it may
    /// lead again.
    ReplicaMended {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The mended node.
        node: NodeId,
        /// Base offset of the mended batch.
        offset: u64,
        /// The [`Rebuild::since`] of the mark it mended for: a report for
        /// an older mark proves nothing about the current one.
        since: u64,
    },
    /// `node`, mending its damaged batch at `offset`, found no replica
    /// with a whole copy. On a topic with `unclean.leader.election`, it
    /// leaves the ISR and another live replica may lead (its copy is then
    /// rebuilt from that leader); otherwise nothing changes and the
    /// partition waits.
    ReplicaMendFailed {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The mending node.
        node: NodeId,
        /// Base offset of the damaged batch.
        offset: u64,
        /// The [`Rebuild::since`] of the mark it tried to mend for.
        since: u64,
    },
    /// A leader changes its partition's in-sync set.
    AlterIsr {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The proposing leader.
        leader: NodeId,
        /// The leader epoch it leads at.
        leader_epoch: i32,
        /// The partition epoch its view was computed from.
        partition_epoch: u64,
        /// The new set; must hold the leader.
        isr: Vec<NodeId>,
    },
    /// Adds a plugin, or a new version of one. The state keeps its
    /// description; the node applying the entry keeps `wasm` by digest.
    AddPlugin {
        /// Registry name.
        name: String,
        /// Hex SHA-256 of `wasm`, computed by the proposer.
        digest: String,
        /// `filter` or `transform`, as the proposer's engine found it.
        kind: String,
        /// When it was added, by the proposer's clock.
        added_ms: i64,
        /// The component.
        #[serde(with = "registry::base64_bytes")]
        wasm: Vec<u8>,
    },
    /// Removes a plugin; refused while a chain or pipeline uses it.
    RemovePlugin {
        /// Registry name.
        name: String,
    },
    /// Sets (or, with no plugins, clears) a topic's ingest chain.
    SetIngest {
        /// Topic name.
        topic: String,
        /// The plugins the chain runs.
        plugins: Vec<String>,
        /// The broker's encoding of the chain.
        chain: Vec<u8>,
    },
    /// Creates a pipeline.
    CreatePipeline {
        /// Pipeline name.
        name: String,
        /// Source topic.
        from: String,
        /// Destination topic.
        to: String,
        /// The plugins it runs.
        plugins: Vec<String>,
        /// The broker's encoding of the definition.
        definition: Vec<u8>,
    },
    /// Deletes a pipeline.
    DeletePipeline {
        /// Pipeline name.
        name: String,
    },
    /// A pipeline's runner records source positions whose outputs are on
    /// every in-sync replica of the destination; positions only move
    /// forward.
    CheckpointPipeline {
        /// Pipeline name.
        name: String,
        /// `(source partition, next source offset)`.
        positions: Vec<(u32, u64)>,
        /// Its plugin state with the positions it goes with, replacing the
        /// one held unless behind it on some partition.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<PipelineStateCheckpoint>,
        /// The destination's leader epoch the runner read all this under:
        /// refused unless still the current one, so a deposed runner's
        /// late checkpoint cannot name outputs its successor's copy lacks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader_epoch: Option<i32>,
    },
}

/// What an applied request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlOutcome {
    /// Applied; nothing to report.
    Done,
    /// An ISR change was applied; the partition is now at this epoch.
    IsrChanged {
        /// The new partition epoch.
        partition_epoch: u64,
    },
    /// Offsets were committed; the group's offsets are now at this
    /// version (a node has applied the commit once its state shows it).
    OffsetsCommitted {
        /// The group's new offsets version.
        version: u64,
    },
    /// A plugin was added at this version.
    PluginAdded {
        /// The plugin's version in the cluster's registry.
        version: u32,
    },
}

impl ControlRequest {
    /// `node`'s report on its mend of the damaged batch at `offset` under
    /// the mark set at `since`: [`ControlRequest::ReplicaMended`], or
    /// [`ControlRequest::ReplicaMendFailed`] when no replica had a whole
    /// copy.
    pub fn mend_report(
        topic: String,
        partition: u32,
        node: NodeId,
        offset: u64,
        since: u64,
        mended: bool,
    ) -> ControlRequest {
        if mended {
            ControlRequest::ReplicaMended {
                topic,
                partition,
                node,
                offset,
                since,
            }
        } else {
            ControlRequest::ReplicaMendFailed {
                topic,
                partition,
                node,
                offset,
                since,
            }
        }
    }
}

/// Why a request changed nothing. Refusals are part of the replicated
/// state machine's output, so every node refuses the same requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControlError {
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The topic exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No committed offsets for the group.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// A topic of that name was deleted and some nodes still hold a copy.
    #[error(
        "topic {topic:?} is being deleted; nodes {nodes:?} still hold a copy (a node that is down deletes it when it is back)"
    )]
    TopicBeingDeleted {
        /// Topic.
        topic: String,
        /// Nodes that have not deleted their copy yet.
        nodes: Vec<NodeId>,
    },
    /// A damage report computed from an older partition state.
    #[error("stale damage report: partition is at partition epoch {partition_epoch}")]
    StaleDamageReport {
        /// Current partition epoch.
        partition_epoch: u64,
    },
    /// A mend report that names no current mend mark.
    #[error(
        "stale mend report: no mend of offset {offset} since partition epoch {since} is pending"
    )]
    StaleMendReport {
        /// The offset reported mended.
        offset: u64,
        /// The mark it was mended for.
        since: u64,
    },
    /// The node holds no copy of the partition.
    #[error("node {node} is not a replica of {topic:?} partition {partition}")]
    NotReplica {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The node.
        node: NodeId,
    },
    /// Fewer registered nodes than the replication factor.
    #[error("replication factor {replication_factor} needs that many nodes; {nodes} are known")]
    NotEnoughNodes {
        /// Asked for.
        replication_factor: u32,
        /// Registered nodes.
        nodes: usize,
    },
    /// A setting is out of range.
    #[error("invalid topic settings: {0}")]
    InvalidTopic(String),
    /// The node is not registered.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// An ISR change computed from an older leader or partition epoch.
    #[error(
        "stale ISR change: partition is at leader epoch {leader_epoch}, partition epoch {partition_epoch}"
    )]
    StaleIsr {
        /// Current leader epoch.
        leader_epoch: i32,
        /// Current partition epoch.
        partition_epoch: u64,
    },
    /// No such plugin.
    #[error("unknown plugin {0:?}")]
    UnknownPlugin(String),
    /// The plugin is used by an ingest chain or a pipeline.
    #[error("plugin {name:?} is in use by {}", users.join(", "))]
    PluginInUse {
        /// The plugin.
        name: String,
        /// Where it is used.
        users: Vec<String>,
    },
    /// The component is over [`MAX_REPLICATED_PLUGIN_BYTES`].
    #[error("plugin of {size_bytes} bytes is over the cluster's limit of {max_bytes}")]
    PluginTooLarge {
        /// The component's size.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A pipeline of that name exists.
    #[error("pipeline {0:?} exists")]
    PipelineExists(String),
    /// No such pipeline.
    #[error("unknown pipeline {0:?}")]
    UnknownPipeline(String),
    /// The pipeline's output would feed its own input, directly or through
    /// other pipelines.
    #[error("pipeline {name:?} would feed its own input: {}", path.join(", "))]
    PipelineCycle {
        /// The pipeline refused.
        name: String,
        /// The loop, one `pipeline: from → to` per step, starting with the
        /// refused pipeline.
        path: Vec<String>,
    },
    /// The pipeline cannot run in a cluster as defined.
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(String),
    /// A pipeline reads or writes the topic.
    #[error("topic {topic:?} is used by {}; delete those first", users.join(", "))]
    TopicInUse {
        /// The topic.
        topic: String,
        /// Its users.
        users: Vec<String>,
    },
    /// An ISR change that drops the leader, names a non-replica, or adds a
    /// fenced node.
    #[error("invalid ISR {isr:?}: {reason}")]
    InvalidIsr {
        /// The set proposed.
        isr: Vec<NodeId>,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole control-plane state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Registered nodes.
    pub nodes: BTreeMap<NodeId, NodeMeta>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Deleted topics whose copies some nodes still hold, with those nodes.
    #[serde(default)]
    pub deleting: BTreeMap<String, BTreeSet<NodeId>>,
    /// Committed consumer-group offsets by group.
    #[serde(default)]
    pub offsets: BTreeMap<String, GroupOffsets>,
    /// The plugin registry by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginMeta>,
    /// Ingest chains by topic.
    #[serde(default)]
    pub ingest: BTreeMap<String, IngestMeta>,
    /// Pipelines by name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineMeta>,
    /// The serial of the last pipeline created.
    #[serde(default)]
    pub pipeline_serial: u64,
}

/// One consumer group's committed offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// Bumped by every commit.
    pub version: u64,
    /// Topic → partition → the next offset the group reads.
    pub topics: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl ClusterState {
    /// Applies one request, or refuses it without changing anything.
    pub fn apply(&mut self, request: &ControlRequest) -> Result<ControlOutcome, ControlError> {
        match request {
            ControlRequest::RegisterNode {
                node,
                address,
                incarnation,
            } => {
                let restarted = self
                    .nodes
                    .get(node)
                    .is_some_and(|meta| meta.incarnation != *incarnation);
                self.nodes.insert(
                    *node,
                    NodeMeta {
                        address: address.clone(),
                        incarnation: *incarnation,
                        fenced: false,
                    },
                );
                if restarted {
                    self.reelect_led_by(*node);
                    self.restart_rebuilds(*node);
                }
                self.elect_leaderless();
                Ok(ControlOutcome::Done)
            }
            ControlRequest::FenceNode { node } => {
                let meta = self
                    .nodes
                    .get_mut(node)
                    .ok_or(ControlError::UnknownNode(*node))?;
                if !meta.fenced {
                    meta.fenced = true;
                    self.remove_fenced(*node);
                }
                Ok(ControlOutcome::Done)
            }
            ControlRequest::UnfenceNode { node } => {
                let meta = self
                    .nodes
                    .get_mut(node)
                    .ok_or(ControlError::UnknownNode(*node))?;
                meta.fenced = false;
                self.elect_leaderless();
                Ok(ControlOutcome::Done)
            }
            ControlRequest::CreateTopic {
                name,
                partitions,
                replication_factor,
                min_insync,
                unclean_leader_election,
                spec,
            } => self.create_topic(
                name,
                *partitions,
                *replication_factor,
                *min_insync,
                *unclean_leader_election,
                spec,
            ),
            ControlRequest::DeleteTopic { name } => {
                let users = self.topic_users(name);
                if !users.is_empty() {
                    return Err(ControlError::TopicInUse {
                        topic: name.clone(),
                        users,
                    });
                }
                let meta = self
                    .topics
                    .remove(name)
                    .ok_or_else(|| ControlError::UnknownTopic(name.clone()))?;
                let holders: BTreeSet<NodeId> = meta
                    .partitions
                    .iter()
                    .flat_map(|p| p.replicas.iter().copied())
                    .collect();
                if !holders.is_empty() {
                    self.deleting.insert(name.clone(), holders);
                }
                // As Kafka does: a deleted topic's committed offsets go
                // with it, so a new topic of the name starts fresh.
                for group in self.offsets.values_mut() {
                    group.topics.remove(name);
                }
                self.offsets.retain(|_, group| !group.topics.is_empty());
                self.ingest.remove(name);
                Ok(ControlOutcome::Done)
            }
            ControlRequest::AlterTopicSpec { name, spec } => {
                let meta = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| ControlError::UnknownTopic(name.clone()))?;
                meta.spec = spec.clone();
                Ok(ControlOutcome::Done)
            }
            ControlRequest::AddPartitions {
                name,
                partitions,
                spec,
            } => self.add_partitions(name, *partitions, spec),
            ControlRequest::CommitOffsets { group, offsets } => {
                let entry = self.offsets.entry(group.clone()).or_default();
                entry.version += 1;
                for (topic, partition, offset) in offsets {
                    entry
                        .topics
                        .entry(topic.clone())
                        .or_default()
                        .insert(*partition, *offset);
                }
                Ok(ControlOutcome::OffsetsCommitted {
                    version: entry.version,
                })
            }
            ControlRequest::DeleteGroupOffsets { group } => self
                .offsets
                .remove(group)
                .map(|_| ControlOutcome::Done)
                .ok_or_else(|| ControlError::UnknownGroup(group.clone())),
            ControlRequest::TopicCopyDeleted { name, node } => {
                if let Some(holders) = self.deleting.get_mut(name) {
                    holders.remove(node);
                    if holders.is_empty() {
                        self.deleting.remove(name);
                    }
                }
                Ok(ControlOutcome::Done)
            }
            ControlRequest::ReplicaDamaged {
                topic,
                partition,
                node,
                offset,
                partition_epoch,
            } => self.replica_damaged(topic, *partition, *node, *offset, *partition_epoch),
            ControlRequest::ReplicaMended {
                topic,
                partition,
                node,
                offset,
                since,
            } => self.replica_mend(topic, *partition, *node, *offset, *since, true),
            ControlRequest::ReplicaMendFailed {
                topic,
                partition,
                node,
                offset,
                since,
            } => self.replica_mend(topic, *partition, *node, *offset, *since, false),
            ControlRequest::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_isr(
                topic,
                *partition,
                *leader,
                *leader_epoch,
                *partition_epoch,
                isr,
            ),
            ControlRequest::AddPlugin {
                name,
                digest,
                kind,
                added_ms,
                wasm,
            } => self.add_plugin(name, digest, kind, *added_ms, wasm),
            ControlRequest::RemovePlugin { name } => self.remove_plugin(name),
            ControlRequest::SetIngest {
                topic,
                plugins,
                chain,
            } => self.set_ingest(topic, plugins, chain),
            ControlRequest::CreatePipeline {
                name,
                from,
                to,
                plugins,
                definition,
            } => self.create_pipeline(name, from, to, plugins, definition),
            ControlRequest::DeletePipeline { name } => self
                .pipelines
                .remove(name)
                .map(|_| ControlOutcome::Done)
                .ok_or_else(|| ControlError::UnknownPipeline(name.clone())),
            ControlRequest::CheckpointPipeline {
                name,
                positions,
                state,
                leader_epoch,
            } => self.checkpoint_pipeline(name, positions, state.as_ref(), *leader_epoch),
        }
    }

    /// The node coordinating consumer group `group`: membership, joins,
    /// heartbeats and commits go to it alone, so every member of a group
    /// meets the same coordinator whichever node it reached first. Picked by
    /// a stable hash of the name over the unfenced nodes, so groups spread
    /// and every node computes the same answer from the same state; when
    /// that node is fenced the group moves (its members rejoin there).
    pub fn coordinator(&self, group: &str) -> Option<NodeId> {
        let live: Vec<NodeId> = self.live_nodes().into_iter().collect();
        // FNV-1a: stable across releases and platforms, unlike std's hasher.
        let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        live.get((hash % live.len().max(1) as u64) as usize)
            .copied()
    }

    /// The partition's state, if the topic and partition exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionMeta> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    fn is_live(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|meta| !meta.fenced)
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        min_insync: u32,
        unclean_leader_election: bool,
        spec: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        if self.topics.contains_key(name) {
            return Err(ControlError::TopicExists(name.to_owned()));
        }
        if let Some(holders) = self.deleting.get(name) {
            return Err(ControlError::TopicBeingDeleted {
                topic: name.to_owned(),
                nodes: holders.iter().copied().collect(),
            });
        }
        if partitions == 0 {
            return Err(ControlError::InvalidTopic("no partitions".into()));
        }
        if replication_factor == 0 || min_insync == 0 || min_insync > replication_factor {
            return Err(ControlError::InvalidTopic(format!(
                "min.insync.replicas {min_insync} must be 1..=replication factor {replication_factor}"
            )));
        }
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        if (replication_factor as usize) > nodes.len() {
            return Err(ControlError::NotEnoughNodes {
                replication_factor,
                nodes: nodes.len(),
            });
        }
        // Round-robin placement from a start that moves with the topic, so
        // leaders (the first replica) spread over the nodes across topics as
        // well as across partitions.
        let start = self.topics.len();
        let partitions = (0..partitions as usize)
            .map(|p| self.place(&nodes, start + p, replication_factor))
            .collect();
        self.topics.insert(
            name.to_owned(),
            TopicMeta {
                replication_factor,
                min_insync,
                unclean_leader_election,
                spec: spec.to_vec(),
                partitions,
            },
        );
        Ok(ControlOutcome::Done)
    }

    /// A new partition whose replicas are `replication_factor` nodes in a
    /// row from `nodes[slot]`, all in sync (it is empty), led by the first
    /// live one.
    fn place(&self, nodes: &[NodeId], slot: usize, replication_factor: u32) -> PartitionMeta {
        let replicas: Vec<NodeId> = (0..replication_factor as usize)
            .map(|r| nodes[(slot + r) % nodes.len()])
            .collect();
        let leader = replicas.iter().copied().find(|n| self.is_live(*n));
        PartitionMeta {
            isr: replicas.clone(),
            replicas,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            rebuilding: BTreeMap::new(),
        }
    }

    fn add_partitions(
        &mut self,
        name: &str,
        partitions: u32,
        spec: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        let meta = self
            .topics
            .get(name)
            .ok_or_else(|| ControlError::UnknownTopic(name.to_owned()))?;
        let had = meta.partitions.len();
        if (partitions as usize) <= had {
            return Err(ControlError::InvalidTopic(format!(
                "topic {name:?} has {had} partitions; partitions can be added, not removed"
            )));
        }
        // The new partitions go on where the topic's placement left off:
        // partition p's first replica is p nodes after partition 0's (the
        // round robin of `create_topic`, exactly so while the registered
        // nodes are those the topic was created among).
        let start = meta.partitions[0]
            .replicas
            .first()
            .and_then(|first| nodes.iter().position(|n| n == first))
            .unwrap_or(0);
        let replication_factor = meta.replication_factor;
        let added: Vec<PartitionMeta> = (had..partitions as usize)
            .map(|p| self.place(&nodes, start + p, replication_factor))
            .collect();
        self.pipelines_take_partitions(name, &added)?;
        let meta = self
            .topics
            .get_mut(name)
            .ok_or_else(|| ControlError::UnknownTopic(name.to_owned()))?;
        meta.partitions.extend(added);
        meta.spec = spec.to_vec();
        Ok(ControlOutcome::Done)
    }

    fn partition_mut(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<(&mut PartitionMeta, bool), ControlError> {
        let meta = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| ControlError::UnknownTopic(topic.to_owned()))?;
        let unclean = meta.unclean_leader_election;
        let partition = meta.partitions.get_mut(partition as usize).ok_or_else(|| {
            ControlError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            }
        })?;
        Ok((partition, unclean))
    }

    fn replica_damaged(
        &mut self,
        topic: &str,
        partition: u32,
        node: NodeId,
        offset: u64,
        partition_epoch: u64,
    ) -> Result<ControlOutcome, ControlError> {
        let live = self.live_nodes();
        let (meta, unclean) = self.partition_mut(topic, partition)?;
        if !meta.replicas.contains(&node) {
            return Err(ControlError::NotReplica {
                topic: topic.to_owned(),
                partition,
                node,
            });
        }
        if partition_epoch != meta.partition_epoch {
            return Err(ControlError::StaleDamageReport {
                partition_epoch: meta.partition_epoch,
            });
        }
        let from = match meta.rebuilding.get(&node) {
            // Already cut back at or below this batch: a repeated report.
            // (A later batch found while an earlier one is being mended is
            // reported again when next read, once the node leads again.)
            Some(mark) if mark.from <= offset => return Ok(ControlOutcome::Done),
            Some(mark) => mark.from.min(offset),
            None => offset,
        };
        // The last in-sync replica may alone hold records past the damage:
        // it keeps them and mends the batch rather than cut its log.
        let mend = meta.isr == [node];
        mark_rebuilding(meta, &live, unclean, node, from, mend);
        Ok(ControlOutcome::Done)
    }

    /// A mending node's report: see [`ControlRequest::ReplicaMended`] and
    /// [`ControlRequest::ReplicaMendFailed`].
    fn replica_mend(
        &mut self,
        topic: &str,
        partition: u32,
        node: NodeId,
        offset: u64,
        since: u64,
        mended: bool,
    ) -> Result<ControlOutcome, ControlError> {
        let live = self.live_nodes();
        let (meta, unclean) = self.partition_mut(topic, partition)?;
        pending_mend(meta, node, offset, since)?;
        if mended {
            meta.rebuilding.remove(&node);
            if meta.leader.is_none() {
                elect(meta, &live, unclean, None);
            }
            return Ok(ControlOutcome::Done);
        }
        let other = meta
            .replicas
            .iter()
            .any(|n| *n != node && live.contains(n) && !meta.rebuilding.contains_key(n));
        if unclean && other {
            // A cut mark: the election no longer waits for it.
            mark_rebuilding(meta, &live, unclean, node, offset, false);
        }
        Ok(ControlOutcome::Done)
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        partition: u32,
        leader: NodeId,
        leader_epoch: i32,
        partition_epoch: u64,
        isr: &[NodeId],
    ) -> Result<ControlOutcome, ControlError> {
        let live = self.live_nodes();
        let (meta, _) = self.partition_mut(topic, partition)?;
        if meta.leader != Some(leader)
            || meta.leader_epoch != leader_epoch
            || meta.partition_epoch != partition_epoch
        {
            return Err(ControlError::StaleIsr {
                leader_epoch: meta.leader_epoch,
                partition_epoch: meta.partition_epoch,
            });
        }
        let invalid = |reason: &str| ControlError::InvalidIsr {
            isr: isr.to_vec(),
            reason: reason.to_owned(),
        };
        if !isr.contains(&leader) {
            return Err(invalid("it must hold the leader"));
        }
        if isr.iter().any(|n| !meta.replicas.contains(n)) {
            return Err(invalid("it names a node that is not a replica"));
        }
        let added: Vec<NodeId> = isr
            .iter()
            .copied()
            .filter(|n| !meta.isr.contains(n))
            .collect();
        if added.iter().any(|n| !live.contains(n)) {
            return Err(invalid("it adds a fenced node"));
        }
        let mut ordered: Vec<NodeId> = meta
            .replicas
            .iter()
            .copied()
            .filter(|n| isr.contains(n))
            .collect();
        ordered.dedup();
        // The leader adds a rebuilding replica only once it has fetched
        // past its cut (see `Rebuild::since`): it is whole again.
        for node in &added {
            meta.rebuilding.remove(node);
        }
        meta.isr = ordered;
        meta.partition_epoch += 1;
        Ok(ControlOutcome::IsrChanged {
            partition_epoch: meta.partition_epoch,
        })
    }

    /// Takes a fenced node out of every ISR it is not the last member of,
    /// and re-elects the partitions it led.
    fn remove_fenced(&mut self, node: NodeId) {
        let live = self.live_nodes();
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_leader_election;
            for meta in &mut topic.partitions {
                let shrinks = meta.isr.len() > 1 && meta.isr.contains(&node);
                if shrinks {
                    meta.isr.retain(|n| *n != node);
                }
                if meta.leader == Some(node) {
                    elect(meta, &live, unclean, Some(node));
                    continue;
                }
                if shrinks {
                    meta.partition_epoch += 1;
                }
                if meta.leader.is_none() {
                    // An unclean election may find a replica now.
                    elect(meta, &live, unclean, None);
                }
            }
        }
    }

    /// A restarted node's partitions elect again at a new epoch, preferring
    /// another in-sync replica: the node may have lost writes it had not
    /// fsync'd.
    fn reelect_led_by(&mut self, node: NodeId) {
        let live = self.live_nodes();
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_leader_election;
            for meta in &mut topic.partitions {
                if meta.leader == Some(node) {
                    elect(meta, &live, unclean, Some(node));
                }
            }
        }
    }

    /// A restarted node forgets whether it already cut its damaged copies
    /// back, so it cuts them again; its marks move to a new partition
    /// epoch, so no fetch from before the restart can prove it whole.
    fn restart_rebuilds(&mut self, node: NodeId) {
        for topic in self.topics.values_mut() {
            for meta in &mut topic.partitions {
                if meta.rebuilding.contains_key(&node) {
                    meta.partition_epoch += 1;
                    let since = meta.partition_epoch;
                    if let Some(mark) = meta.rebuilding.get_mut(&node) {
                        mark.since = since;
                    }
                }
            }
        }
    }

    /// Partitions without a leader elect one if they now can.
    fn elect_leaderless(&mut self) {
        let live = self.live_nodes();
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_leader_election;
            for meta in &mut topic.partitions {
                if meta.leader.is_none() {
                    elect(meta, &live, unclean, None);
                }
            }
        }
    }

    fn live_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, m)| !m.fenced)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Marks `node`'s copy as rebuilt from `from`, by mending that batch in
/// place (`mend`, staying in the ISR) or by cutting its log back (out of
/// the ISR). Marked before the election it may cause, so the election
/// cannot pick it; the mark gets the new partition epoch that results.
fn mark_rebuilding(
    meta: &mut PartitionMeta,
    live: &BTreeSet<NodeId>,
    unclean: bool,
    node: NodeId,
    from: u64,
    mend: bool,
) {
    meta.rebuilding.insert(
        node,
        Rebuild {
            from,
            since: 0,
            mend,
        },
    );
    if !mend {
        meta.isr.retain(|n| *n != node);
    }
    let before = meta.partition_epoch;
    // A leaderless partition may now elect, unclean too, passing over a
    // replica whose mend failed.
    if meta.leader == Some(node) || meta.leader.is_none() {
        elect(meta, live, unclean, None);
    }
    if meta.partition_epoch == before {
        meta.partition_epoch += 1;
    }
    if let Some(mark) = meta.rebuilding.get_mut(&node) {
        mark.since = meta.partition_epoch;
    }
}

/// Whether `node` has the mend mark a report names: of the batch at
/// `offset`, set at partition epoch `since`.
fn pending_mend(
    meta: &PartitionMeta,
    node: NodeId,
    offset: u64,
    since: u64,
) -> Result<(), ControlError> {
    meta.rebuilding
        .get(&node)
        .is_some_and(|m| m.mend && m.from == offset && m.since == since)
        .then_some(())
        .ok_or(ControlError::StaleMendReport { offset, since })
}

/// Elects a leader for `meta` at the next epoch: the first live ISR member
/// in replica order other than `avoid`, else `avoid` itself if it is live
/// and in the ISR, else (only if `unclean`) any live replica, which becomes
/// the whole ISR. A replica being rebuilt is never chosen. With none, the
/// partition is left without a leader (the epoch still moves, so the old
/// leader's epoch is over).
fn elect(meta: &mut PartitionMeta, live: &BTreeSet<NodeId>, unclean: bool, avoid: Option<NodeId>) {
    let whole = |n: &NodeId| live.contains(n) && !meta.rebuilding.contains_key(n);
    let in_isr = |n: &NodeId| meta.isr.contains(n) && whole(n);
    // A live last ISR member mending its copy is whole again in a moment,
    // unless it reports that it cannot be: no election passes over it.
    let mending = meta
        .isr
        .iter()
        .any(|n| live.contains(n) && meta.rebuilding.get(n).is_some_and(|m| m.mend));
    let unclean = unclean && !mending;
    let chosen = meta
        .replicas
        .iter()
        .copied()
        .find(|n| in_isr(n) && Some(*n) != avoid)
        .or_else(|| avoid.filter(in_isr))
        .or_else(|| {
            unclean
                .then(|| meta.replicas.iter().copied().find(whole))
                .flatten()
        });
    if let Some(leader) = chosen
        && !meta.isr.contains(&leader)
    {
        meta.isr = vec![leader];
    }
    if chosen.is_none() && meta.leader.is_none() {
        // Nothing changes for a partition that already had no leader.
        return;
    }
    meta.leader = chosen;
    meta.leader_epoch += 1;
    meta.partition_epoch += 1;
    if chosen.is_some() {
        // Only an unclean election passes over a mending last ISR member,
        // once it is fenced (availability over what it alone holds, as the
        // topic chose); it is out of the ISR now and rebuilds from the new
        // leader.
        let since = meta.partition_epoch;
        for mark in meta.rebuilding.values_mut().filter(|m| m.mend) {
            *mark = Rebuild {
                from: mark.from,
                since,
                mend: false,
            };
        }
    }
}

/// Which nodes the controller should fence or unfence: run on the node
/// whose control log leader proposes changes. Heartbeats older than the
/// session timeout fence a node; a heartbeat from a fenced node unfences it.
#[derive(Debug)]
pub struct Liveness {
    session_timeout: Duration,
    last_heard: BTreeMap<NodeId, Instant>,
}

impl Liveness {
    /// Starts with every node just heard from: a controller that has just
    /// taken over gives every node a full session before fencing it.
    pub fn new(now: Instant, session_timeout: Duration, state: &ClusterState) -> Self {
        Liveness {
            session_timeout,
            last_heard: state.nodes.keys().map(|n| (*n, now)).collect(),
        }
    }

    /// `node` sent a heartbeat at `now` (or, for a controller taking over,
    /// was last heard at `now` by this node before it led).
    pub fn handle_heartbeat(&mut self, now: Instant, node: NodeId) {
        self.last_heard.insert(node, now);
    }

    /// The fence and unfence requests `state` needs as of `now`.
    pub fn proposals(&mut self, now: Instant, state: &ClusterState) -> Vec<ControlRequest> {
        let mut out = Vec::new();
        for (node, meta) in &state.nodes {
            let heard = *self.last_heard.entry(*node).or_insert(now);
            let alive = now.saturating_duration_since(heard) < self.session_timeout;
            if alive && meta.fenced {
                out.push(ControlRequest::UnfenceNode { node: *node });
            } else if !alive && !meta.fenced {
                out.push(ControlRequest::FenceNode { node: *node });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for node in 1..=nodes {
            state
                .apply(&ControlRequest::RegisterNode {
                    node,
                    address: format!("127.0.0.1:{}", 7000 + node),
                    incarnation: 1,
                })
                .unwrap();
        }
        state
    }

    fn create(state: &mut ClusterState, name: &str, partitions: u32, rf: u32, min: u32) {
        state
            .apply(&ControlRequest::CreateTopic {
                name: name.into(),
                partitions,
                replication_factor: rf,
                min_insync: min,
                unclean_leader_election: false,
                spec: Vec::new(),
            })
            .unwrap();
    }

    /// The leader of partition 0 of `topic` shrinks its ISR to itself,
    /// then is fenced; returns it.
    fn shrink_isr_to_leader_and_fence_it(state: &mut ClusterState, topic: &str) -> NodeId {
        let p = state.partition(topic, 0).unwrap().clone();
        let leader = p.leader.unwrap();
        state
            .apply(&ControlRequest::AlterIsr {
                topic: topic.into(),
                partition: 0,
                leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![leader],
            })
            .unwrap();
        state
            .apply(&ControlRequest::FenceNode { node: leader })
            .unwrap();
        leader
    }

    #[test]
    fn offsets_are_committed_per_group_with_a_version_and_deleted_whole() {
        let mut state = cluster(3);
        let commit = |group: &str, offsets: &[(&str, u32, u64)]| ControlRequest::CommitOffsets {
            group: group.into(),
            offsets: offsets
                .iter()
                .map(|(t, p, o)| ((*t).into(), *p, *o))
                .collect(),
        };
        assert_eq!(
            state.apply(&commit("g", &[("t", 0, 5), ("t", 1, 7)])),
            Ok(ControlOutcome::OffsetsCommitted { version: 1 })
        );
        assert_eq!(
            state.apply(&commit("g", &[("t", 0, 3)])),
            Ok(ControlOutcome::OffsetsCommitted { version: 2 })
        );
        let g = &state.offsets["g"].topics["t"];
        assert_eq!(
            (g[&0], g[&1]),
            (3, 7),
            "a commit may move an offset back (a reset)"
        );
        state
            .apply(&ControlRequest::DeleteGroupOffsets { group: "g".into() })
            .unwrap();
        assert_eq!(
            state.apply(&ControlRequest::DeleteGroupOffsets { group: "g".into() }),
            Err(ControlError::UnknownGroup("g".into()))
        );
    }

    #[test]
    fn a_deleted_topic_keeps_its_name_until_every_copy_is_gone() {
        let mut state = cluster(3);
        create(&mut state, "t", 2, 2, 1);
        let holders: BTreeSet<NodeId> = state.topics["t"]
            .partitions
            .iter()
            .flat_map(|p| p.replicas.iter().copied())
            .collect();
        assert_eq!(
            holders.len(),
            3,
            "two partitions of two copies span all three nodes"
        );
        state
            .apply(&ControlRequest::DeleteTopic { name: "t".into() })
            .unwrap();
        assert!(!state.topics.contains_key("t"));
        assert_eq!(
            state.apply(&ControlRequest::DeleteTopic { name: "t".into() }),
            Err(ControlError::UnknownTopic("t".into()))
        );
        for node in [1, 2] {
            state
                .apply(&ControlRequest::TopicCopyDeleted {
                    name: "t".into(),
                    node,
                })
                .unwrap();
        }
        let again = ControlRequest::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            min_insync: 1,
            unclean_leader_election: false,
            spec: Vec::new(),
        };
        assert_eq!(
            state.apply(&again),
            Err(ControlError::TopicBeingDeleted {
                topic: "t".into(),
                nodes: vec![3],
            })
        );
        state
            .apply(&ControlRequest::TopicCopyDeleted {
                name: "t".into(),
                node: 3,
            })
            .unwrap();
        assert!(state.deleting.is_empty());
        state.apply(&again).unwrap();
    }

    #[test]
    fn create_topic_spreads_replicas_and_leaders() {
        let mut state = cluster(3);
        create(&mut state, "t", 3, 3, 2);
        let leaders: BTreeSet<_> = state.topics["t"]
            .partitions
            .iter()
            .map(|p| p.leader.unwrap())
            .collect();
        assert_eq!(leaders.len(), 3, "one partition led by each node");
        for p in &state.topics["t"].partitions {
            assert_eq!(p.replicas.len(), 3);
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, Some(p.replicas[0]));
        }
    }

    #[test]
    fn added_partitions_continue_the_placement_and_never_shrink() {
        let mut state = cluster(3);
        create(&mut state, "other", 1, 1, 1);
        create(&mut state, "t", 2, 2, 1);
        let add = |partitions| ControlRequest::AddPartitions {
            name: "t".into(),
            partitions,
            spec: vec![partitions as u8],
        };
        let before = state.topics["t"].partitions.clone();
        state.apply(&add(5)).unwrap();
        let t = &state.topics["t"];
        assert_eq!(t.partitions[..2], before[..], "old partitions untouched");
        assert_eq!(t.spec, vec![5]);
        let nodes: Vec<NodeId> = state.nodes.keys().copied().collect();
        let first = |p: usize| {
            let id = t.partitions[p].replicas[0];
            nodes.iter().position(|n| *n == id).unwrap()
        };
        for p in 2..5 {
            let part = &t.partitions[p];
            assert_eq!(first(p), (first(0) + p) % nodes.len(), "partition {p}");
            assert_eq!(part.replicas.len(), 2);
            assert_ne!(part.replicas[0], part.replicas[1]);
            assert_eq!(part.isr, part.replicas);
            assert_eq!(part.leader, Some(part.replicas[0]));
            assert_eq!(part.leader_epoch, 0);
        }
        for partitions in [5, 3] {
            assert!(matches!(
                state.apply(&add(partitions)),
                Err(ControlError::InvalidTopic(_))
            ));
        }
        assert_eq!(state.topics["t"].partitions.len(), 5);
        assert_eq!(
            state.apply(&ControlRequest::AddPartitions {
                name: "nope".into(),
                partitions: 2,
                spec: Vec::new(),
            }),
            Err(ControlError::UnknownTopic("nope".into()))
        );
    }

    #[test]
    fn create_topic_refuses_more_replicas_than_nodes_and_bad_min() {
        let mut state = cluster(2);
        let request = |rf, min| ControlRequest::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: rf,
            min_insync: min,
            unclean_leader_election: false,
            spec: Vec::new(),
        };
        assert_eq!(
            state.apply(&request(3, 1)),
            Err(ControlError::NotEnoughNodes {
                replication_factor: 3,
                nodes: 2
            })
        );
        assert!(matches!(
            state.apply(&request(2, 3)),
            Err(ControlError::InvalidTopic(_))
        ));
        assert!(state.topics.is_empty());
    }

    #[test]
    fn fencing_the_leader_elects_an_isr_member_at_the_next_epoch() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 2);
        let before = state.partition("t", 0).unwrap().clone();
        let old = before.leader.unwrap();
        state
            .apply(&ControlRequest::FenceNode { node: old })
            .unwrap();
        let after = state.partition("t", 0).unwrap();
        assert_ne!(after.leader, Some(old));
        assert!(after.isr.contains(&after.leader.unwrap()));
        assert!(!after.isr.contains(&old));
        assert_eq!(after.leader_epoch, before.leader_epoch + 1);
        assert!(after.partition_epoch > before.partition_epoch);
    }

    #[test]
    fn last_isr_member_fenced_leaves_no_leader_until_it_returns() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 1);
        let leader = shrink_isr_to_leader_and_fence_it(&mut state, "t");
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.leader, None, "no out-of-sync replica is elected");
        assert_eq!(p.isr, vec![leader], "the last member stays in the ISR");
        state
            .apply(&ControlRequest::UnfenceNode { node: leader })
            .unwrap();
        let back = state.partition("t", 0).unwrap();
        assert_eq!(back.leader, Some(leader));
        assert_eq!(back.leader_epoch, p.leader_epoch + 1);
    }

    #[test]
    fn unclean_election_takes_any_live_replica_only_when_allowed() {
        let mut state = cluster(3);
        state
            .apply(&ControlRequest::CreateTopic {
                name: "u".into(),
                partitions: 1,
                replication_factor: 3,
                min_insync: 1,
                unclean_leader_election: true,
                spec: Vec::new(),
            })
            .unwrap();
        let leader = shrink_isr_to_leader_and_fence_it(&mut state, "u");
        let p = state.partition("u", 0).unwrap();
        let new = p.leader.expect("an unclean election happened");
        assert_ne!(new, leader);
        assert_eq!(p.isr, vec![new]);
    }

    #[test]
    fn a_restarted_leader_is_replaced_at_a_new_epoch() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 2);
        let p = state.partition("t", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        state
            .apply(&ControlRequest::RegisterNode {
                node: leader,
                address: "x".into(),
                incarnation: 2,
            })
            .unwrap();
        let after = state.partition("t", 0).unwrap();
        assert_ne!(after.leader, Some(leader));
        assert_eq!(after.leader_epoch, p.leader_epoch + 1);
        assert!(
            after.isr.contains(&leader),
            "a restart alone leaves the ISR"
        );
    }

    fn damaged(state: &mut ClusterState, topic: &str, node: NodeId, offset: u64) {
        let partition_epoch = state.partition(topic, 0).unwrap().partition_epoch;
        state
            .apply(&ControlRequest::ReplicaDamaged {
                topic: topic.into(),
                partition: 0,
                node,
                offset,
                partition_epoch,
            })
            .unwrap();
    }

    #[test]
    fn a_damaged_leader_is_replaced_and_never_elected_until_it_rejoins() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 2);
        let before = state.partition("t", 0).unwrap().clone();
        let old = before.leader.unwrap();
        damaged(&mut state, "t", old, 40);
        let p = state.partition("t", 0).unwrap().clone();
        let new = p.leader.unwrap();
        assert_ne!(new, old);
        assert!(!p.isr.contains(&old));
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        let mark = p.rebuilding[&old];
        assert_eq!((mark.from, mark.since), (40, p.partition_epoch));

        // A repeat of the report, or a later batch, changes nothing; an
        // earlier batch moves the cut back and the mark with it.
        damaged(&mut state, "t", old, 90);
        assert_eq!(state.partition("t", 0), Some(&p));
        damaged(&mut state, "t", old, 10);
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.rebuilding[&old].from, 10);
        assert_eq!(p.rebuilding[&old].since, p.partition_epoch);

        // Fencing every whole replica leaves the partition without a leader
        // rather than electing the damaged one, even when unclean.
        state.topics.get_mut("t").unwrap().unclean_leader_election = true;
        for node in p.isr.clone() {
            state.apply(&ControlRequest::FenceNode { node }).unwrap();
        }
        assert_eq!(state.partition("t", 0).unwrap().leader, None);
        for node in p.isr.clone() {
            state.apply(&ControlRequest::UnfenceNode { node }).unwrap();
        }
        let p = state.partition("t", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        assert_ne!(leader, old);

        // A restart moves the mark: a fetch from before it proves nothing.
        state
            .apply(&ControlRequest::RegisterNode {
                node: old,
                address: "x".into(),
                incarnation: 2,
            })
            .unwrap();
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.rebuilding[&old].since, p.partition_epoch);

        // Rejoining the ISR clears the mark.
        let mut isr = p.isr.clone();
        isr.push(old);
        state
            .apply(&ControlRequest::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            })
            .unwrap();
        let p = state.partition("t", 0).unwrap().clone();
        assert!(p.rebuilding.is_empty());
        assert!(p.isr.contains(&old));

        // A report sent before the rebuild, delivered after it, is refused:
        // the copy it names is gone.
        assert!(matches!(
            state.apply(&ControlRequest::ReplicaDamaged {
                topic: "t".into(),
                partition: 0,
                node: old,
                offset: 10,
                partition_epoch: p.partition_epoch - 1,
            }),
            Err(ControlError::StaleDamageReport { .. })
        ));
        assert_eq!(state.partition("t", 0), Some(&p));
    }

    /// Shrinks partition 0's ISR to its leader and returns the leader.
    fn shrink_to_leader(state: &mut ClusterState, topic: &str) -> NodeId {
        let p = state.partition(topic, 0).unwrap().clone();
        let leader = p.leader.unwrap();
        state
            .apply(&ControlRequest::AlterIsr {
                topic: topic.into(),
                partition: 0,
                leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![leader],
            })
            .unwrap();
        leader
    }

    fn mended(
        state: &mut ClusterState,
        node: NodeId,
        offset: u64,
        since: u64,
    ) -> Result<ControlOutcome, ControlError> {
        state.apply(&ControlRequest::ReplicaMended {
            topic: "t".into(),
            partition: 0,
            node,
            offset,
            since,
        })
    }

    #[test]
    fn a_damaged_last_isr_member_stays_in_sync_mends_and_leads_again() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 1);
        let leader = shrink_to_leader(&mut state, "t");
        let before = state.partition("t", 0).unwrap().clone();
        damaged(&mut state, "t", leader, 4);
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.leader, None, "a damaged copy never leads");
        assert_eq!(p.isr, vec![leader], "it alone may hold what was acked");
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        let mark = p.rebuilding[&leader];
        assert!(mark.mend);
        assert_eq!((mark.from, mark.since), (4, p.partition_epoch));

        // Reports that name another batch or an older mark are refused.
        assert!(matches!(
            mended(&mut state, leader, 5, mark.since),
            Err(ControlError::StaleMendReport { offset: 5, .. })
        ));
        assert!(mended(&mut state, leader, 4, mark.since - 1).is_err());
        let other = p.replicas.iter().copied().find(|n| *n != leader).unwrap();
        assert!(mended(&mut state, other, 4, mark.since).is_err());
        assert_eq!(state.partition("t", 0), Some(&p));

        mended(&mut state, leader, 4, mark.since).unwrap();
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.leader, Some(leader));
        assert_eq!(p.leader_epoch, before.leader_epoch + 2);
        assert!(p.rebuilding.is_empty());
        assert!(mended(&mut state, leader, 4, mark.since).is_err());
        assert!(matches!(
            state.apply(&ControlRequest::ReplicaDamaged {
                topic: "t".into(),
                partition: 0,
                node: 9,
                offset: 0,
                partition_epoch: p.partition_epoch,
            }),
            Err(ControlError::NotReplica { node: 9, .. })
        ));
    }

    #[test]
    fn an_unclean_election_waits_for_a_mend_until_it_fails() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 1);
        state.topics.get_mut("t").unwrap().unclean_leader_election = true;
        let damaged_node = shrink_to_leader(&mut state, "t");
        damaged(&mut state, "t", damaged_node, 4);
        // Unclean, but the live mending member holds what others may not:
        // nobody is elected over it while its mend may succeed.
        let p = state.partition("t", 0).unwrap().clone();
        assert_eq!(p.leader, None);
        let since = p.rebuilding[&damaged_node].since;
        let failed = |state: &mut ClusterState, topic: &str, since| {
            state.apply(&ControlRequest::ReplicaMendFailed {
                topic: topic.into(),
                partition: 0,
                node: damaged_node,
                offset: 4,
                since,
            })
        };
        assert!(failed(&mut state, "t", since - 1).is_err(), "stale");
        failed(&mut state, "t", since).unwrap();
        let p = state.partition("t", 0).unwrap();
        let leader = p.leader.expect("an unclean leader once the mend failed");
        assert_ne!(leader, damaged_node);
        assert_eq!(p.isr, vec![leader]);
        let mark = p.rebuilding[&damaged_node];
        assert!(!mark.mend, "rebuilt from the new leader");
        assert_eq!((mark.from, mark.since), (4, p.partition_epoch));

        // A clean topic keeps waiting.
        create(&mut state, "c", 1, 3, 1);
        let node = shrink_to_leader(&mut state, "c");
        damaged(&mut state, "c", node, 4);
        let before = state.partition("c", 0).unwrap().clone();
        state
            .apply(&ControlRequest::ReplicaMendFailed {
                topic: "c".into(),
                partition: 0,
                node,
                offset: 4,
                since: before.rebuilding[&node].since,
            })
            .unwrap();
        assert_eq!(state.partition("c", 0), Some(&before));
    }

    #[test]
    fn a_damaged_follower_leaves_the_isr_and_the_leader_stays() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 2);
        let before = state.partition("t", 0).unwrap().clone();
        let follower = before.replicas[1];
        damaged(&mut state, "t", follower, 5);
        let p = state.partition("t", 0).unwrap();
        assert_eq!(p.leader, before.leader);
        assert_eq!(p.leader_epoch, before.leader_epoch);
        assert_eq!(p.partition_epoch, before.partition_epoch + 1);
        assert!(!p.isr.contains(&follower));
    }

    #[test]
    fn groups_spread_over_live_coordinators_and_move_off_fenced_ones() {
        let mut state = cluster(3);
        let groups: Vec<String> = (0..60).map(|n| format!("group-{n}")).collect();
        let before: Vec<NodeId> = groups
            .iter()
            .map(|g| state.coordinator(g).unwrap())
            .collect();
        for node in 1..=3 {
            assert!(before.contains(&node), "node {node} coordinates some group");
        }
        assert_eq!(state.coordinator("group-7"), state.coordinator("group-7"));
        state.apply(&ControlRequest::FenceNode { node: 2 }).unwrap();
        for group in &groups {
            let now = state.coordinator(group).unwrap();
            assert!([1, 3].contains(&now), "a fenced node coordinates nothing");
        }
        assert_eq!(ClusterState::default().coordinator("g"), None);
    }

    #[test]
    fn stale_or_invalid_isr_changes_are_refused() {
        let mut state = cluster(3);
        create(&mut state, "t", 1, 3, 2);
        let p = state.partition("t", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        let alter = |epoch: i32, pe: u64, isr: Vec<NodeId>| ControlRequest::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: epoch,
            partition_epoch: pe,
            isr,
        };
        assert!(matches!(
            state.apply(&alter(p.leader_epoch, p.partition_epoch + 1, vec![leader])),
            Err(ControlError::StaleIsr { .. })
        ));
        assert!(matches!(
            state.apply(&alter(p.leader_epoch - 1, p.partition_epoch, vec![leader])),
            Err(ControlError::StaleIsr { .. })
        ));
        let other = p.replicas[1];
        assert!(matches!(
            state.apply(&alter(p.leader_epoch, p.partition_epoch, vec![other])),
            Err(ControlError::InvalidIsr { .. })
        ));
        assert!(matches!(
            state.apply(&alter(p.leader_epoch, p.partition_epoch, vec![leader, 9])),
            Err(ControlError::InvalidIsr { .. })
        ));
        assert_eq!(state.partition("t", 0), Some(&p), "nothing changed");
        state
            .apply(&ControlRequest::FenceNode { node: other })
            .unwrap();
        let p = state.partition("t", 0).unwrap().clone();
        assert!(matches!(
            state.apply(&alter(
                p.leader_epoch,
                p.partition_epoch,
                vec![leader, other]
            )),
            Err(ControlError::InvalidIsr { .. })
        ));
    }

    #[test]
    fn liveness_fences_silent_nodes_and_unfences_returning_ones() {
        let mut state = cluster(2);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(6);
        let mut liveness = Liveness::new(t0, timeout, &state);
        assert!(liveness.proposals(t0 + timeout / 2, &state).is_empty());
        liveness.handle_heartbeat(t0 + timeout / 2, 1);
        let proposals = liveness.proposals(t0 + timeout, &state);
        assert_eq!(proposals, vec![ControlRequest::FenceNode { node: 2 }]);
        state.apply(&proposals[0]).unwrap();
        liveness.handle_heartbeat(t0 + timeout * 2, 2);
        assert_eq!(
            liveness.proposals(t0 + timeout * 2, &state),
            vec![
                ControlRequest::FenceNode { node: 1 },
                ControlRequest::UnfenceNode { node: 2 }
            ]
        );
    }
}
