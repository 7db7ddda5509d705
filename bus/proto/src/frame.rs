//! Request and response frames.
//!
//! # Layout
//!
//! Every frame on a QUIC stream is length-prefixed. Integers are big-endian.
//!
//! ```text
//! offset size field
//!      0    4 length          u32, bytes after this field; capped by the peer's max frame size
//!      4    1 version         u8, currently 1
//!      5    2 kind            u16, request kind; responses set bit 15
//!      7    4 correlation_id  u32, echoed in the response
//!     11    . payload
//! ```
//!
//! Payload fields, per kind, are written in the order of the struct fields
//! below. A `str` is `u16 length + UTF-8`, `bytes` is `u32 length + bytes`,
//! a `Position` is a `u8` tag (0 earliest, 1 latest, 2 offset, 3 timestamp)
//! followed by a `u64`/`i64` for the last two, an optional field is a `u8`
//! (0 absent, 1 present) followed by the value when present, and a `bool`
//! is a `u8` 0 or 1. An error response
//! (kind `0xFFFF`) holds `u16 code + str message`; see [`ErrorCode`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::compression::Compression;
use crate::error::{DecodeError, ErrorCode};
use crate::framing;

/// Frame format version.
pub const VERSION: u8 = 1;
/// The ALPN protocol id every edgebus endpoint speaks: the frame format
/// of [`VERSION`] 1.
pub const ALPN: &[u8] = b"edgebus/1";
/// Bytes before the payload, length prefix included.
pub const HEADER_LEN: usize = 11;

/// Declares [`FrameKind`] and its decoder from one list, so every wire
/// number is written once.
macro_rules! frame_kinds {
    ($($(#[doc = $doc:literal])* $name:ident = $number:literal,)*) => {
        /// Every frame kind with its number on the wire: the one table that
        /// encoders and decoders share. A response's kind is the kind of the
        /// request it first answered with bit 15 set; an error is `0xFFFF`.
        /// Numbers are part of the protocol and never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum FrameKind {
            $($(#[doc = $doc])* $name = $number,)*
        }

        impl FrameKind {
            /// The kind with this wire number, if there is one.
            pub fn from_u16(kind: u16) -> Option<FrameKind> {
                match kind {
                    $($number => Some(FrameKind::$name),)*
                    _ => None,
                }
            }
        }
    };
}

frame_kinds! {
    /// [`Request::CreateTopic`].
    CreateTopic = 0x0001,
    /// [`Request::DeleteTopic`].
    DeleteTopic = 0x0002,
    /// [`Request::ListTopics`].
    ListTopics = 0x0003,
    /// [`Request::DescribeTopic`].
    DescribeTopic = 0x0004,
    /// [`Request::InitProducer`].
    InitProducer = 0x0005,
    /// [`Request::Produce`].
    Produce = 0x0006,
    /// [`Request::Fetch`].
    Fetch = 0x0007,
    /// [`Request::Subscribe`].
    Subscribe = 0x0008,
    /// [`Request::ListOffsets`].
    ListOffsets = 0x0009,
    /// [`Request::JoinGroup`].
    JoinGroup = 0x000a,
    /// [`Request::Heartbeat`].
    Heartbeat = 0x000b,
    /// [`Request::LeaveGroup`].
    LeaveGroup = 0x000c,
    /// [`Request::CommitOffsets`].
    CommitOffsets = 0x000d,
    /// [`Request::FetchOffsets`].
    FetchOffsets = 0x000e,
    /// [`Request::ListGroups`].
    ListGroups = 0x000f,
    /// [`Request::DescribeGroup`].
    DescribeGroup = 0x0010,
    /// [`Request::ResetOffsets`].
    ResetOffsets = 0x0011,
    /// [`Request::DeleteGroup`].
    DeleteGroup = 0x0012,
    /// [`Request::PluginAdd`].
    PluginAdd = 0x0013,
    /// [`Request::PluginList`].
    PluginList = 0x0014,
    /// [`Request::PluginDescribe`].
    PluginDescribe = 0x0015,
    /// [`Request::PluginRemove`].
    PluginRemove = 0x0016,
    /// [`Request::SetIngest`].
    SetIngest = 0x0017,
    /// [`Request::TopicPlugins`].
    TopicPlugins = 0x0018,
    /// [`Request::PipelineCreate`].
    PipelineCreate = 0x0019,
    /// [`Request::PipelineList`].
    PipelineList = 0x001a,
    /// [`Request::PipelineDescribe`].
    PipelineDescribe = 0x001b,
    /// [`Request::PipelineDelete`].
    PipelineDelete = 0x001c,
    /// [`Request::AlterTopic`].
    AlterTopic = 0x001d,
    /// [`Request::ResetPartitionOffsets`].
    ResetPartitionOffsets = 0x001e,
    /// [`Response::TopicCreated`].
    TopicCreated = 0x8001,
    /// [`Response::TopicDeleted`].
    TopicDeleted = 0x8002,
    /// [`Response::Topics`].
    Topics = 0x8003,
    /// [`Response::TopicDescription`].
    TopicDescription = 0x8004,
    /// [`Response::ProducerInit`].
    ProducerInit = 0x8005,
    /// [`Response::Produced`].
    Produced = 0x8006,
    /// [`Response::Fetched`].
    Fetched = 0x8007,
    /// [`Response::Offset`].
    Offset = 0x8009,
    /// [`Response::GroupAssignment`].
    GroupAssignment = 0x800a,
    /// [`Response::Done`].
    Done = 0x800c,
    /// [`Response::CommittedOffsets`].
    CommittedOffsets = 0x800e,
    /// [`Response::Groups`].
    Groups = 0x800f,
    /// [`Response::GroupDescription`].
    GroupDescription = 0x8010,
    /// [`Response::Plugins`].
    Plugins = 0x8014,
    /// [`Response::TopicPlugins`] (named apart from the request kind).
    TopicPluginsReply = 0x8018,
    /// [`Response::Pipelines`].
    Pipelines = 0x801a,
    /// [`Response::PartitionResets`].
    PartitionResets = 0x801e,
    /// [`Response::Error`].
    Error = 0xffff,
    /// [`Request::NodeInfo`]; node and cluster requests are numbered from
    /// 0x0040.
    NodeInfo = 0x0040,
    /// [`Response::NodeInfo`] (named apart from the request kind).
    NodeInfoReply = 0x8040,
    /// [`Request::ClusterStatus`].
    ClusterStatus = 0x0041,
    /// [`Response::ClusterStatus`] (named apart from the request kind).
    ClusterStatusReply = 0x8041,
    /// [`Request::CreateReplicatedTopic`].
    CreateReplicatedTopic = 0x0042,
    /// [`Request::PartitionStates`].
    PartitionStates = 0x0043,
    /// [`Response::PartitionStates`] (named apart from the request kind).
    PartitionStatesReply = 0x8043,
    /// [`Request::FindCoordinator`].
    FindCoordinator = 0x0044,
    /// [`Response::Coordinator`].
    Coordinator = 0x8044,
    /// [`Request::MirrorOpen`]; mirror requests are numbered from 0x0050.
    MirrorOpen = 0x0050,
    /// [`Response::MirrorPositions`].
    MirrorPositions = 0x8050,
    /// [`Request::MirrorAppend`] (answered with [`Response::Offset`]).
    MirrorAppend = 0x0051,
    /// [`Request::MirrorCreate`].
    MirrorCreate = 0x0052,
    /// [`Response::Mirrors`].
    Mirrors = 0x8052,
    /// [`Request::MirrorList`].
    MirrorList = 0x0053,
    /// [`Request::MirrorDescribe`].
    MirrorDescribe = 0x0054,
    /// [`Request::MirrorPause`].
    MirrorPause = 0x0055,
    /// [`Request::MirrorResume`].
    MirrorResume = 0x0056,
    /// [`Request::MirrorDelete`].
    MirrorDelete = 0x0057,
    /// [`Request::MirrorSkip`] (answered with [`Response::Offset`]).
    MirrorSkip = 0x0058,
    /// [`Request::MirrorCommit`] (answered with [`Response::Offset`]).
    MirrorCommit = 0x0059,
}

/// How durable a write must be before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// No acknowledgement is sent.
    None = 0,
    /// Acknowledged once the write transaction commits, without fsync.
    Leader = 1,
    /// Acknowledged once the write transaction is fsync'd.
    #[default]
    Durable = 2,
    /// Acknowledged once fsync'd on every in-sync replica (the high
    /// watermark covers it). On a single node, the same as `Durable`.
    All = 3,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest retained record.
    Earliest,
    /// The end of the log: only records appended from now on.
    Latest,
    /// An absolute offset.
    Offset(u64),
    /// The first record with a timestamp at or after this one (ms).
    Timestamp(i64),
}

/// A topic's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Delete batches older than this; -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest batches while a partition is larger; -1 means no limit.
    pub retention_bytes: i64,
    /// Largest record (key + value + headers) accepted; 0 asks for the
    /// broker's default (its `limits.max_message_bytes`), and the broker
    /// stores the resolved value, so a described topic never shows 0.
    pub max_message_bytes: u32,
    /// Codec the broker stores batches of this topic with: a batch that
    /// arrives uncompressed is compressed with it before it is stored (a
    /// `u8` codec number on the wire, as in the batch attributes). `None`
    /// stores every batch as the producer sent it.
    pub compression: Compression,
}

impl TopicSpec {
    /// A topic that keeps its records forever, takes records up to the
    /// broker's default size, and stores batches as producers send them;
    /// the `with_*` setters change that.
    pub fn new(name: impl Into<String>, partitions: u32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 0,
            compression: Compression::None,
        }
    }

    /// Deletes batches older than `retention` (saturating at `i64::MAX`
    /// ms).
    pub fn with_retention(mut self, retention: std::time::Duration) -> TopicSpec {
        self.retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Deletes the oldest batches while a partition holds more than
    /// `retention_bytes` (saturating at `i64::MAX`).
    pub fn with_retention_bytes(mut self, retention_bytes: u64) -> TopicSpec {
        self.retention_bytes = i64::try_from(retention_bytes).unwrap_or(i64::MAX);
        self
    }

    /// Accepts records up to `max_message_bytes` (0: the broker's default).
    pub fn with_max_message_bytes(mut self, max_message_bytes: u32) -> TopicSpec {
        self.max_message_bytes = max_message_bytes;
        self
    }

    /// Stores batches compressed with `compression`.
    pub fn with_compression(mut self, compression: Compression) -> TopicSpec {
        self.compression = compression;
        self
    }
}

/// Per-partition offsets of a topic.
/// Per-partition offsets and size of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Oldest retained offset.
    pub log_start: u64,
    /// Offset the next record will get.
    pub log_end: u64,
    /// Bytes of the stored batches, as stored (compressed if they are).
    pub size_bytes: u64,
}

impl PartitionInfo {
    /// Records retained: offsets are dense and retention removes whole
    /// batches from the start, so every offset in `log_start..log_end`
    /// holds one record.
    pub fn records(&self) -> u64 {
        self.log_end.saturating_sub(self.log_start)
    }
}

/// Settings an `AlterTopic` changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicChanges {
    /// New partition count: partitions can be added, never removed.
    pub partitions: Option<u32>,
    /// New `retention_ms` (-1 keeps batches forever).
    pub retention_ms: Option<i64>,
    /// New `retention_bytes` (-1 means no limit).
    pub retention_bytes: Option<i64>,
    /// New `max_message_bytes`.
    pub max_message_bytes: Option<u32>,
}

impl TopicChanges {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == TopicChanges::default()
    }
}

/// Where `ResetPartitionOffsets` points a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// A position resolved in each partition (earliest, latest, an offset,
    /// a time).
    Position(Position),
    /// The committed offset moved by this many records (back when
    /// negative), kept within the log.
    Shift(i64),
}

/// One partition's offset reset, done or planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The committed offset before the reset, if there was one.
    pub previous: Option<u64>,
    /// The offset after it.
    pub offset: u64,
}

/// What became of the records of one produced batch, record by record.
///
/// An ingest chain may drop, dead-letter or fan out records, so "record
/// `i` is at `base_offset + i`" holds only when the batch was stored as it
/// was sent. Every other answer names each record's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAcks {
    /// Stored as sent: record `i` is at `base_offset + i`.
    AsSent,
    /// A retry of a batch stored earlier whose records an ingest chain
    /// changed; the broker no longer knows where each one went.
    Unknown,
    /// One fate per record of the batch, in order.
    Each {
        /// The topic dead-lettered records went to (empty when none did).
        dead_letter_topic: String,
        /// The fates.
        fates: Vec<RecordFate>,
    },
}

/// What became of one produced record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFate {
    /// Stored at `offset..offset + count` (more than one for a fan-out).
    Stored {
        /// Offset of its first output record.
        offset: u64,
        /// Output records it became, at least 1.
        count: u32,
    },
    /// An ingest plugin filtered it out.
    Filtered,
    /// An ingest plugin failed on it and it was stored in the dead-letter
    /// topic at this offset of partition 0.
    DeadLettered {
        /// Its offset in the dead-letter topic.
        offset: u64,
    },
    /// An ingest plugin failed on it and the topic's policy skips such
    /// records.
    Dropped {
        /// Why the plugin failed.
        reason: String,
    },
}

/// A partition of a topic, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
}

impl TopicPartition {
    /// A topic partition.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// An offset of a topic partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
}

/// How a group spreads partitions over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssignmentStrategy {
    /// Contiguous ranges per topic.
    Range = 0,
    /// Partitions dealt in turn.
    RoundRobin = 1,
    /// Balanced, moving as few partitions as possible.
    #[default]
    Sticky = 2,
}

/// A group member as `DescribeGroup` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it owns.
    pub owned: Vec<TopicPartition>,
}

/// A group's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's log end.
    pub log_end: u64,
}

/// A plugin attached somewhere, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// Registry name.
    pub name: String,
    /// `key=value` parameters passed to the plugin's `init`.
    pub params: Vec<(String, String)>,
}

/// What an attach point does with a record a plugin failed on (trap,
/// deadline, memory cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Count the failure and move on.
    Skip = 0,
    /// Write the input record to `<topic>.dlq` with headers naming the
    /// error, plugin, version and source offset.
    #[default]
    DeadLetter = 1,
    /// Stop the attach point, retrying with backoff from 1 s to 30 s.
    Halt = 2,
}

/// Record counters of one attach point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachCounters {
    /// Records that entered the chain.
    pub records_in: u64,
    /// Records that came out.
    pub records_out: u64,
    /// Inputs that produced no output.
    pub filtered: u64,
    /// Inputs a plugin failed on.
    pub failed: u64,
    /// Failed inputs written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Inputs failed because a plugin went over a budget (state, output
    /// per batch) or its output broke the destination's limits; counted
    /// in `failed` too.
    pub budget_breaches: u64,
    /// Lines the chain's plugins wrote to the broker's log.
    pub log_lines: u64,
    /// Lines dropped because the chain's log budget was spent.
    pub log_lines_dropped: u64,
    /// Batches the chain was called on.
    pub calls: u64,
    /// Plugin instances replaced after a trap, a deadline or the memory
    /// cap.
    pub instance_replacements: u64,
    /// Median wall time of one call on one batch, in microseconds.
    pub call_p50_us: u64,
    /// 99th percentile of that time, in microseconds.
    pub call_p99_us: u64,
    /// Bytes of keys and values the chain's plugins keep in state now.
    pub state_bytes: u64,
    /// CPU time of the plugin calls that failed, in microseconds: what the
    /// failing-time budget was charged.
    pub failing_cpu_us: u64,
}

/// A registered plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDescription {
    /// Registry name.
    pub name: String,
    /// Version, bumped on every replacement.
    pub version: u32,
    /// Hex SHA-256 of the component.
    pub hash: String,
    /// `filter` or `transform`.
    pub kind: String,
    /// Component size.
    pub size_bytes: u64,
    /// When this version was added (ms since the Unix epoch).
    pub added_ms: i64,
    /// Where it is attached (`topic:T`, `pipeline:P`).
    pub users: Vec<String>,
}

/// A pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineDescription {
    /// Name.
    pub name: String,
    /// Source topic.
    pub from: String,
    /// Destination topic.
    pub to: String,
    /// Plugin chain.
    pub chain: Vec<PluginRef>,
    /// Failure policy.
    pub on_failure: FailurePolicy,
    /// `running`, or why not.
    pub status: String,
    /// Next source offset per partition.
    pub positions: Vec<(u32, u64)>,
    /// Record counters since the broker started.
    pub counters: AttachCounters,
}

/// One broker node as it describes itself.
///
/// Layout: `str version, str commit, u64 uptime_ms, u32 count` of
/// listeners (`str protocol, str addr`), `str data_dir, u64 data_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The broker's release.
    pub version: String,
    /// The git commit it was built from; empty when unknown.
    pub commit: String,
    /// Time since the broker started.
    pub uptime_ms: u64,
    /// Every listener.
    pub listeners: Vec<Listener>,
    /// The data directory.
    pub data_dir: String,
    /// Bytes of the files under the data directory.
    pub data_bytes: u64,
}

/// The cluster as one node sees it: the control log and every node.
///
/// Layout: `u64 node, opt u64 controller, u64 term, u64 applied_index,
/// u32 count` of nodes (`u64 id, str address, u8 up`). A single node
/// answers with no nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The answering node.
    pub node: u64,
    /// The node leading the control log, if known.
    pub controller: Option<u64>,
    /// The control log's term.
    pub term: u64,
    /// Index of the last control log entry applied on the answering node.
    pub applied_index: u64,
    /// Every node of the cluster; empty on a single node.
    pub nodes: Vec<ClusterNode>,
}

/// One partition's replication as one node sees it.
///
/// Layout: `u32 partition, opt u64 leader, u32 count` of replicas (`u64`),
/// `u32 count` of in-sync replicas (`u64`), `i32 leader_epoch, u64
/// high_watermark, u64 log_end, u8 leading, u32 count` of replica log ends
/// (`u64 node, u64 log_end`). After the list, optional (absent from older
/// nodes, and when every partition has the defaults): per partition in
/// list order, `u8 unclean_leader_election, u32 count` of copies being
/// rebuilt (`u64 node, u64 from, u8 mending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplication {
    /// Partition number.
    pub partition: u32,
    /// The node leading it, if any.
    pub leader: Option<u64>,
    /// Nodes holding a copy.
    pub replicas: Vec<u64>,
    /// The in-sync replicas.
    pub isr: Vec<u64>,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The high watermark the answering node knows.
    pub high_watermark: u64,
    /// The answering node's log end.
    pub log_end: u64,
    /// Whether the answering node leads the partition.
    pub leading: bool,
    /// On the leader, each follower's durable log end as last reported.
    pub replica_log_ends: Vec<(u64, u64)>,
    /// Copies whose data failed its CRC, until they are whole again.
    pub rebuilding: Vec<RebuildingCopy>,
    /// The topic's `unclean.leader.election`.
    pub unclean_leader_election: bool,
}

/// A copy of a partition being rebuilt after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildingCopy {
    /// The node holding it.
    pub node: u64,
    /// The damaged batch's base offset.
    pub from: u64,
    /// `true`: the last in-sync replica, replacing the damaged batch with
    /// another replica's copy; `false`: cut back to `from` and copied again
    /// from the leader.
    pub mending: bool,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// `host:port` of its listener.
    pub address: String,
    /// Registered and heard from within its session.
    pub up: bool,
}

/// A bound listener of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `quic` (later also `kafka`, `mqtt`).
    pub protocol: String,
    /// The bound socket address.
    pub addr: String,
}

/// A mirror's definition, as `mirror create` sends it to the edge broker
/// that runs it. TLS material travels as PEM text and is stored with the
/// definition, so the mirror needs no files on the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// Mirror name, unique on the edge.
    pub name: String,
    /// Source topic on the edge.
    pub topic: String,
    /// The hub, `HOST:PORT`.
    pub to: String,
    /// Destination topic on the hub.
    pub to_topic: String,
    /// The CA that signed the hub's certificate (PEM).
    pub ca_pem: Bytes,
    /// Client certificate chain for a hub that requires mTLS (PEM); empty
    /// for none.
    pub cert_pem: Bytes,
    /// Its private key (PEM); empty for none.
    pub key_pem: Bytes,
    /// Bandwidth cap on the link in bytes per second; 0 for none.
    pub max_bytes_per_s: u64,
    /// Codec of the link payload.
    pub compression: Compression,
    /// Plugins the edge runs on the records before sending them; empty
    /// for an offset-preserving copy.
    pub chain: Vec<PluginRef>,
    /// What the chain does with records a plugin fails on.
    pub on_failure: FailurePolicy,
}

/// One source partition of a mirror, as `mirror describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorPartition {
    /// Partition index.
    pub partition: u32,
    /// The next offset the hub holds: every record below it is delivered.
    /// `u64::MAX` on the wire while unknown (never connected).
    pub delivered: Option<u64>,
    /// The edge partition's log end.
    pub log_end: u64,
    /// Records not yet delivered.
    pub lag_records: u64,
    /// Bytes of the stored batches not yet delivered.
    pub lag_bytes: u64,
}

/// A mirror's definition and state, as `mirror list` and `mirror describe`
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorDescription {
    /// Mirror name.
    pub name: String,
    /// Source topic on the edge.
    pub topic: String,
    /// The hub.
    pub to: String,
    /// Destination topic on the hub.
    pub to_topic: String,
    /// Codec of the link payload.
    pub compression: Compression,
    /// Bandwidth cap, bytes per second; 0 for none.
    pub max_bytes_per_s: u64,
    /// Whether the mirror presents a client certificate.
    pub mtls: bool,
    /// The plugins on the link (empty: offset-preserving).
    pub chain: Vec<PluginRef>,
    /// `connecting`, `connected`, `backing-off`, `paused` or `halted`.
    pub state: String,
    /// The last error, or why it is halted; empty for none.
    pub detail: String,
    /// When a backing-off mirror dials next, ms since the Unix epoch.
    pub next_attempt_ms: Option<i64>,
    /// Per source partition.
    pub partitions: Vec<MirrorPartition>,
    /// Link payload bytes sent (compressed), since the edge started.
    pub bytes_sent: u64,
    /// Stored batch bytes those payloads carried, uncompressed.
    pub batch_bytes_sent: u64,
    /// Records the hub acknowledged, since the edge started.
    pub records_sent: u64,
    /// Undelivered records the edge deleted because its backlog passed
    /// `mirror.max_backlog_bytes`, since the mirror was created: the hub's
    /// copy skips exactly these offsets.
    pub dropped_records: u64,
    /// Bytes of the batches that held them.
    pub dropped_bytes: u64,
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create a topic.
    CreateTopic(TopicSpec),
    /// Delete a topic and all its records.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// List all topics.
    ListTopics,
    /// Configuration and offsets of one topic.
    DescribeTopic {
        /// Topic name.
        name: String,
    },
    /// Allocate a producer id for idempotent produce.
    InitProducer,
    /// Append one batch.
    Produce {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Acknowledgement level.
        acks: Acks,
        /// One encoded batch (see [`crate::batch`]).
        batch: Bytes,
    },
    /// Read batches once.
    Fetch {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Where to start.
        from: Position,
        /// Upper bound on returned bytes; at least one batch is returned.
        max_bytes: u32,
    },
    /// Read batches continuously: the broker pushes `Fetched` frames on
    /// this stream as records arrive, until the client closes it.
    Subscribe {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Where to start.
        from: Position,
        /// Upper bound on bytes per pushed frame.
        max_bytes: u32,
        /// Plugins the broker runs on the records before sending them; only
        /// their results cross the wire, with the source offsets. Empty for
        /// none.
        chain: Vec<PluginRef>,
        /// What the chain does with records a plugin fails on.
        on_failure: FailurePolicy,
        /// A name for the chain's plugin state: with one, the state is
        /// kept in the broker's store per topic, partition and name, and a
        /// later subscription of the name (after a restart too) goes on
        /// from it. Empty: the state lives and dies with the subscription.
        /// Encoded last and optional, so a client that predates it still
        /// subscribes.
        state: String,
    },
    /// Resolve a position to an offset.
    ListOffsets {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// The position to resolve.
        position: Position,
    },
    /// Join a consumer group (or rejoin with a known member id).
    JoinGroup {
        /// Group name.
        group: String,
        /// Empty for a new member.
        member_id: String,
        /// Topics to consume.
        topics: Vec<String>,
        /// Expire the member after this long without a heartbeat.
        session_timeout_ms: u32,
        /// Strategy, used when the group forms.
        strategy: AssignmentStrategy,
    },
    /// Keep membership alive, report owned partitions, learn the current
    /// assignment. The broker answers at once if the assignment changed,
    /// else within `wait_ms`.
    Heartbeat {
        /// Group name.
        group: String,
        /// Member id.
        member_id: String,
        /// Partitions the member currently owns.
        owned: Vec<TopicPartition>,
        /// How long the broker may hold the answer waiting for a change.
        wait_ms: u32,
    },
    /// Leave a group.
    LeaveGroup {
        /// Group name.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// Commit offsets for a group. With an empty `member_id` the group must
    /// have no members (a standalone consumer or a tool).
    CommitOffsets {
        /// Group name.
        group: String,
        /// Member id, or empty.
        member_id: String,
        /// The member's current epoch.
        epoch: u32,
        /// Offsets: the next offset to read, per partition.
        offsets: Vec<PartitionOffset>,
    },
    /// A group's committed offsets.
    FetchOffsets {
        /// Group name.
        group: String,
    },
    /// Groups with members or committed offsets.
    ListGroups,
    /// Members, assignment and lag of a group.
    DescribeGroup {
        /// Group name.
        group: String,
    },
    /// Set a group's offsets for every partition of a topic; only while the
    /// group has no members.
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// Where to point each partition.
        to: Position,
    },
    /// Delete a group's committed offsets; only while it has no members.
    DeleteGroup {
        /// Group name.
        group: String,
    },
    /// Register a plugin, or replace it (bumping its version).
    PluginAdd {
        /// Registry name.
        name: String,
        /// The component bytes.
        wasm: Bytes,
    },
    /// List plugins.
    PluginList,
    /// One plugin, with where it is used.
    PluginDescribe {
        /// Registry name.
        name: String,
    },
    /// Remove a plugin that nothing uses.
    PluginRemove {
        /// Registry name.
        name: String,
    },
    /// Set (or, with an empty chain, clear) a topic's ingest chain.
    SetIngest {
        /// Topic name.
        topic: String,
        /// Plugins applied in order before append.
        chain: Vec<PluginRef>,
        /// What happens to records a plugin fails on.
        on_failure: FailurePolicy,
    },
    /// A topic's ingest chain and plugin counters.
    TopicPlugins {
        /// Topic name.
        topic: String,
    },
    /// Create a continuous, exactly-once pipeline from one topic to another.
    PipelineCreate {
        /// Pipeline name.
        name: String,
        /// Source topic.
        from: String,
        /// Destination topic.
        to: String,
        /// Plugins applied in order.
        chain: Vec<PluginRef>,
        /// What happens to records a plugin fails on.
        on_failure: FailurePolicy,
    },
    /// List pipelines.
    PipelineList,
    /// One pipeline.
    PipelineDescribe {
        /// Pipeline name.
        name: String,
    },
    /// Stop and delete a pipeline (its output stays).
    PipelineDelete {
        /// Pipeline name.
        name: String,
    },
    /// The answering node's version, uptime, listeners and data dir.
    NodeInfo,
    /// The control log and every node of the cluster, as this node sees
    /// them.
    ClusterStatus,
    /// Create a topic with a replication factor and `min.insync.replicas`
    /// (0 for the cluster's defaults); a single node takes 0 or 1.
    CreateReplicatedTopic {
        /// The topic.
        spec: TopicSpec,
        /// Copies of each partition.
        replication_factor: u32,
        /// `min.insync.replicas`.
        min_insync_replicas: u32,
        /// `unclean.leader.election`: with no in-sync replica left, a
        /// partition may elect an out-of-sync one (and lose what only the
        /// in-sync ones had) rather than wait.
        unclean_leader_election: bool,
    },
    /// Each partition's replication as the answering node sees it.
    PartitionStates {
        /// Topic name.
        topic: String,
    },
    /// Which node coordinates a consumer group: in a cluster, group
    /// membership requests go to that node only.
    FindCoordinator {
        /// Consumer group.
        group: String,
    },
    /// Change a topic's settings; answered with the new spec in `Topics`.
    AlterTopic {
        /// Topic name.
        name: String,
        /// What to change.
        changes: TopicChanges,
    },
    /// Point a group's offsets for a topic (one partition, or all)
    /// somewhere else; only while the group has no members. With
    /// `dry_run` the broker answers what it would do and changes nothing.
    ResetPartitionOffsets {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// Only this partition, or every partition.
        partition: Option<u32>,
        /// Where to point each partition.
        to: ResetTarget,
        /// Plan only.
        dry_run: bool,
    },
    /// An edge mirror's first request on a connection: the hub creates
    /// `topic` with `partitions` partitions if it does not exist, binds it
    /// to `mirror`, and answers each partition's log end.
    MirrorOpen {
        /// The mirror's identity on the edge (name and a random id).
        mirror: String,
        /// Destination topic.
        topic: String,
        /// The source topic's partition count.
        partitions: u32,
        /// A plugin runs on the link: the hub answers each partition's
        /// source checkpoint instead of its log end.
        filtered: bool,
    },
    /// Stored batches of the edge, appended unchanged at `base_offset`,
    /// which must be the hub partition's log end.
    MirrorAppend {
        /// The mirror's identity.
        mirror: String,
        /// Destination topic.
        topic: String,
        /// Partition, the same as the source's.
        partition: u32,
        /// Offset of the first record: the hub's log end.
        base_offset: u64,
        /// Codec of `payload`.
        compression: Compression,
        /// Whole batches back to back, compressed with `compression`.
        payload: Bytes,
    },
    /// Define a mirror on the edge and start it.
    MirrorCreate(MirrorSpec),
    /// Every mirror of the edge.
    MirrorList,
    /// One mirror.
    MirrorDescribe {
        /// Mirror name.
        name: String,
    },
    /// Stop a mirror's link until it is resumed (survives restarts).
    MirrorPause {
        /// Mirror name.
        name: String,
    },
    /// Start a paused mirror's link again.
    MirrorResume {
        /// Mirror name.
        name: String,
    },
    /// Stop and delete a mirror (the hub's copy stays).
    MirrorDelete {
        /// Mirror name.
        name: String,
    },
    /// The edge deleted records `from..to` before delivering them (its
    /// backlog passed its cap): the hub moves the partition's log end from
    /// `from`, which must be its log end, to `to`, so later records keep
    /// the edge's offsets.
    MirrorSkip {
        /// The mirror's identity.
        mirror: String,
        /// Destination topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The hub's log end.
        from: u64,
        /// The edge's log start.
        to: u64,
    },
    /// A filtered link's output for source records `source_from..source_to`
    /// of one partition: the hub appends the records at its log end and
    /// moves the mirror's source checkpoint, which must be `source_from`,
    /// to `source_to` in the same transaction. Each record carries its
    /// source partition and offset in headers.
    MirrorCommit {
        /// The mirror's identity.
        mirror: String,
        /// Destination topic.
        topic: String,
        /// Partition, the same as the source's.
        partition: u32,
        /// The checkpoint the hub must hold.
        source_from: u64,
        /// The checkpoint after these records.
        source_to: u64,
        /// Codec of `payload`.
        compression: Compression,
        /// Whole batches back to back (possibly none), compressed.
        payload: Bytes,
    },
}

/// A response from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The request failed.
    Error {
        /// Wire error code; see [`ErrorCode::from_u16`].
        code: u16,
        /// Human-readable detail.
        message: String,
    },
    /// Reply to `CreateTopic`.
    TopicCreated,
    /// Reply to `DeleteTopic`.
    TopicDeleted,
    /// Reply to `ListTopics`, and to `AlterTopic` (the altered spec).
    Topics(Vec<TopicSpec>),
    /// Reply to `DescribeTopic`.
    TopicDescription {
        /// Configuration.
        spec: TopicSpec,
        /// Offsets per partition.
        partitions: Vec<PartitionInfo>,
    },
    /// Reply to `InitProducer`.
    ProducerInit {
        /// The new producer id.
        producer_id: i64,
        /// Its epoch.
        producer_epoch: i16,
    },
    /// Reply to `Produce`.
    Produced {
        /// Offset of the first record stored; when nothing was, the log
        /// end when the batch was decided.
        base_offset: u64,
        /// True when the batch was a retry of one already stored.
        duplicate: bool,
        /// Where each record went.
        records: RecordAcks,
    },
    /// Reply to `Fetch`, and each push of a `Subscribe`.
    Fetched {
        /// Oldest retained offset.
        log_start: u64,
        /// Offset the next record will get.
        log_end: u64,
        /// Where the broker reads next on this subscription: after the
        /// source records these batches came from, including any a plugin
        /// filtered out.
        next_offset: u64,
        /// Zero or more whole batches, back to back.
        batches: Bytes,
    },
    /// Reply to `ListOffsets`.
    Offset {
        /// The resolved offset.
        offset: u64,
    },
    /// Reply to `JoinGroup` and `Heartbeat`.
    GroupAssignment {
        /// Member id.
        member_id: String,
        /// The member's epoch; commits carry it.
        epoch: u32,
        /// The group's generation.
        generation: u32,
        /// Heartbeat at least this often.
        heartbeat_interval_ms: u32,
        /// Partitions the member may consume now.
        partitions: Vec<TopicPartition>,
    },
    /// Reply to `LeaveGroup`, `CommitOffsets` and `DeleteGroup`.
    Done,
    /// Reply to `FetchOffsets` and `ResetOffsets`.
    CommittedOffsets(Vec<PartitionOffset>),
    /// Reply to `ListGroups`.
    Groups(Vec<String>),
    /// Reply to `PluginAdd`, `PluginList` and `PluginDescribe`.
    Plugins(Vec<PluginDescription>),
    /// Reply to `TopicPlugins`.
    TopicPlugins {
        /// The ingest chain (empty for none).
        ingest: Vec<PluginRef>,
        /// Its failure policy.
        on_failure: FailurePolicy,
        /// Ingest counters since the broker started.
        ingest_counters: AttachCounters,
        /// Read-path counters of all subscriptions with a chain, since the
        /// broker started.
        read_counters: AttachCounters,
    },
    /// Reply to `PipelineList` and `PipelineDescribe`.
    Pipelines(Vec<PipelineDescription>),
    /// Reply to `DescribeGroup`.
    GroupDescription {
        /// Generation (0 when the group has no members).
        generation: u32,
        /// Assignment strategy.
        strategy: AssignmentStrategy,
        /// Members.
        members: Vec<MemberInfo>,
        /// Committed offset and log end per partition of the group's topics.
        lag: Vec<GroupLag>,
    },
    /// Reply to `NodeInfo`.
    NodeInfo(NodeInfo),
    /// Reply to `ClusterStatus`.
    ClusterStatus(ClusterStatus),
    /// Reply to `PartitionStates`.
    PartitionStates(Vec<PartitionReplication>),
    /// Reply to `FindCoordinator`: the node's id and client address (id 0
    /// and an empty address on a single node: the node answering).
    Coordinator {
        /// Node id.
        node: u64,
        /// Its `host:port`.
        address: String,
    },
    /// Reply to `ResetPartitionOffsets`: each partition's reset, done or
    /// (dry run) planned.
    PartitionResets(Vec<PartitionReset>),
    /// Reply to `MirrorOpen`: each partition's log end on the hub.
    MirrorPositions(Vec<u64>),
    /// Reply to `MirrorCreate`, `MirrorList`, `MirrorDescribe`,
    /// `MirrorPause` and `MirrorResume`.
    Mirrors(Vec<MirrorDescription>),
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code: code as u16,
            message: message.into(),
        }
    }
}

/// Encodes a `Fetched` response whose batches are `batches_len` bytes that
/// the caller sends right after this head, as separate chunks. Lets the
/// broker send stored batches without copying them into the frame.
pub fn encode_fetched_head(
    correlation_id: u32,
    log_start: u64,
    log_end: u64,
    next_offset: u64,
    batches_len: usize,
    buf: &mut BytesMut,
) {
    let start = begin(buf, FrameKind::Fetched, correlation_id);
    buf.put_u64(log_start);
    buf.put_u64(log_end);
    buf.put_u64(next_offset);
    buf.put_u32(batches_len as u32);
    framing::finish_frame(buf, start, batches_len);
}

/// The fixed part of a frame after the length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame version.
    pub version: u8,
    /// Request or response kind.
    pub kind: u16,
    /// Echoed in the response.
    pub correlation_id: u32,
}

impl FrameHeader {
    /// Parses the header at the start of a frame body (after the length).
    pub fn parse(body: &[u8]) -> Result<FrameHeader, DecodeError> {
        if body.len() < HEADER_LEN - 4 {
            return Err(DecodeError::UnexpectedEof {
                offset: 4,
                need: HEADER_LEN - 4,
                have: body.len(),
            });
        }
        Ok(FrameHeader {
            version: body[0],
            kind: u16::from_be_bytes([body[1], body[2]]),
            correlation_id: u32::from_be_bytes([body[3], body[4], body[5], body[6]]),
        })
    }
}

/// Why a frame body could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame version is not supported.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The kind is not a known request or response.
    #[error("unknown frame kind {0:#06x}")]
    UnknownKind(u16),
    /// The payload is malformed.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
}

impl FrameError {
    /// The error code a broker answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownKind(_) => ErrorCode::UnknownRequest,
            FrameError::Decode(_) => ErrorCode::MalformedFrame,
        }
    }
}

fn begin(buf: &mut BytesMut, kind: FrameKind, correlation_id: u32) -> usize {
    let start = framing::begin_frame(buf);
    buf.put_u8(VERSION);
    buf.put_u16(kind as u16);
    buf.put_u32(correlation_id);
    start
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

fn put_position(buf: &mut BytesMut, p: Position) {
    match p {
        Position::Earliest => buf.put_u8(0),
        Position::Latest => buf.put_u8(1),
        Position::Offset(o) => {
            buf.put_u8(2);
            buf.put_u64(o);
        }
        Position::Timestamp(t) => {
            buf.put_u8(3);
            buf.put_i64(t);
        }
    }
}

fn put_tps(buf: &mut BytesMut, tps: &[TopicPartition]) {
    buf.put_u32(tps.len() as u32);
    for tp in tps {
        put_str(buf, &tp.topic);
        buf.put_u32(tp.partition);
    }
}

fn put_offsets(buf: &mut BytesMut, offsets: &[PartitionOffset]) {
    buf.put_u32(offsets.len() as u32);
    for o in offsets {
        put_str(buf, &o.topic);
        buf.put_u32(o.partition);
        buf.put_u64(o.offset);
    }
}

fn put_strs(buf: &mut BytesMut, strs: &[String]) {
    buf.put_u32(strs.len() as u32);
    for s in strs {
        put_str(buf, s);
    }
}

fn put_chain(buf: &mut BytesMut, chain: &[PluginRef]) {
    buf.put_u32(chain.len() as u32);
    for p in chain {
        put_str(buf, &p.name);
        buf.put_u32(p.params.len() as u32);
        for (k, v) in &p.params {
            put_str(buf, k);
            put_str(buf, v);
        }
    }
}

fn put_counters(buf: &mut BytesMut, c: &AttachCounters) {
    for v in [
        c.records_in,
        c.records_out,
        c.filtered,
        c.failed,
        c.dead_lettered,
        c.budget_breaches,
        c.log_lines,
        c.log_lines_dropped,
        c.calls,
        c.instance_replacements,
        c.call_p50_us,
        c.call_p99_us,
        c.state_bytes,
        c.failing_cpu_us,
    ] {
        buf.put_u64(v);
    }
}

/// `u8 tag`: 0 as sent, 1 unknown, 2 each (`str dead_letter_topic`,
/// `u32 count`, then per record `u8 tag` + fields: 0 stored `u64 offset
/// u32 count`, 1 filtered, 2 dead-lettered `u64 offset`, 3 dropped `str`).
fn put_record_acks(buf: &mut BytesMut, acks: &RecordAcks) {
    match acks {
        RecordAcks::AsSent => buf.put_u8(0),
        RecordAcks::Unknown => buf.put_u8(1),
        RecordAcks::Each {
            dead_letter_topic,
            fates,
        } => {
            buf.put_u8(2);
            put_str(buf, dead_letter_topic);
            buf.put_u32(fates.len() as u32);
            for fate in fates {
                match fate {
                    RecordFate::Stored { offset, count } => {
                        buf.put_u8(0);
                        buf.put_u64(*offset);
                        buf.put_u32(*count);
                    }
                    RecordFate::Filtered => buf.put_u8(1),
                    RecordFate::DeadLettered { offset } => {
                        buf.put_u8(2);
                        buf.put_u64(*offset);
                    }
                    RecordFate::Dropped { reason } => {
                        buf.put_u8(3);
                        put_str(buf, reason);
                    }
                }
            }
        }
    }
}

fn put_opt<T>(buf: &mut BytesMut, value: Option<T>, put: impl FnOnce(&mut BytesMut, T)) {
    match value {
        None => buf.put_u8(0),
        Some(v) => {
            buf.put_u8(1);
            put(buf, v);
        }
    }
}

fn put_spec(buf: &mut BytesMut, s: &TopicSpec) {
    put_str(buf, &s.name);
    buf.put_u32(s.partitions);
    buf.put_i64(s.retention_ms);
    buf.put_i64(s.retention_bytes);
    buf.put_u32(s.max_message_bytes);
    buf.put_u8(s.compression.codec());
}

fn put_mirror_spec(buf: &mut BytesMut, s: &MirrorSpec) {
    put_str(buf, &s.name);
    put_str(buf, &s.topic);
    put_str(buf, &s.to);
    put_str(buf, &s.to_topic);
    put_bytes(buf, &s.ca_pem);
    put_bytes(buf, &s.cert_pem);
    put_bytes(buf, &s.key_pem);
    buf.put_u64(s.max_bytes_per_s);
    buf.put_u8(s.compression.codec());
    put_chain(buf, &s.chain);
    buf.put_u8(s.on_failure as u8);
}

/// The fewest bytes one encoded [`MirrorDescription`] takes: six empty
/// strings, the codec, the cap, the mTLS flag, an absent option, an empty
/// partition list and the five counters.
const MIRROR_DESCRIPTION_MIN_BYTES: usize = 6 * 2 + 1 + 8 + 1 + 4 + 1 + 4 + 5 * 8;

fn put_mirror_description(buf: &mut BytesMut, m: &MirrorDescription) {
    put_str(buf, &m.name);
    put_str(buf, &m.topic);
    put_str(buf, &m.to);
    put_str(buf, &m.to_topic);
    buf.put_u8(m.compression.codec());
    buf.put_u64(m.max_bytes_per_s);
    buf.put_u8(u8::from(m.mtls));
    put_chain(buf, &m.chain);
    put_str(buf, &m.state);
    put_str(buf, &m.detail);
    put_opt(buf, m.next_attempt_ms, BytesMut::put_i64);
    buf.put_u32(m.partitions.len() as u32);
    for p in &m.partitions {
        buf.put_u32(p.partition);
        buf.put_u64(p.delivered.unwrap_or(u64::MAX));
        buf.put_u64(p.log_end);
        buf.put_u64(p.lag_records);
        buf.put_u64(p.lag_bytes);
    }
    for v in [
        m.bytes_sent,
        m.batch_bytes_sent,
        m.records_sent,
        m.dropped_records,
        m.dropped_bytes,
    ] {
        buf.put_u64(v);
    }
}

impl Request {
    fn kind(&self) -> FrameKind {
        match self {
            Request::CreateTopic(_) => FrameKind::CreateTopic,
            Request::DeleteTopic { .. } => FrameKind::DeleteTopic,
            Request::ListTopics => FrameKind::ListTopics,
            Request::DescribeTopic { .. } => FrameKind::DescribeTopic,
            Request::InitProducer => FrameKind::InitProducer,
            Request::Produce { .. } => FrameKind::Produce,
            Request::Fetch { .. } => FrameKind::Fetch,
            Request::Subscribe { .. } => FrameKind::Subscribe,
            Request::ListOffsets { .. } => FrameKind::ListOffsets,
            Request::JoinGroup { .. } => FrameKind::JoinGroup,
            Request::Heartbeat { .. } => FrameKind::Heartbeat,
            Request::LeaveGroup { .. } => FrameKind::LeaveGroup,
            Request::CommitOffsets { .. } => FrameKind::CommitOffsets,
            Request::FetchOffsets { .. } => FrameKind::FetchOffsets,
            Request::ListGroups => FrameKind::ListGroups,
            Request::DescribeGroup { .. } => FrameKind::DescribeGroup,
            Request::ResetOffsets { .. } => FrameKind::ResetOffsets,
            Request::DeleteGroup { .. } => FrameKind::DeleteGroup,
            Request::PluginAdd { .. } => FrameKind::PluginAdd,
            Request::PluginList => FrameKind::PluginList,
            Request::PluginDescribe { .. } => FrameKind::PluginDescribe,
            Request::PluginRemove { .. } => FrameKind::PluginRemove,
            Request::SetIngest { .. } => FrameKind::SetIngest,
            Request::TopicPlugins { .. } => FrameKind::TopicPlugins,
            Request::PipelineCreate { .. } => FrameKind::PipelineCreate,
            Request::PipelineList => FrameKind::PipelineList,
            Request::PipelineDescribe { .. } => FrameKind::PipelineDescribe,
            Request::PipelineDelete { .. } => FrameKind::PipelineDelete,
            Request::NodeInfo => FrameKind::NodeInfo,
            Request::ClusterStatus => FrameKind::ClusterStatus,
            Request::CreateReplicatedTopic { .. } => FrameKind::CreateReplicatedTopic,
            Request::PartitionStates { .. } => FrameKind::PartitionStates,
            Request::FindCoordinator { .. } => FrameKind::FindCoordinator,
            Request::AlterTopic { .. } => FrameKind::AlterTopic,
            Request::ResetPartitionOffsets { .. } => FrameKind::ResetPartitionOffsets,
            Request::MirrorOpen { .. } => FrameKind::MirrorOpen,
            Request::MirrorAppend { .. } => FrameKind::MirrorAppend,
            Request::MirrorCreate(_) => FrameKind::MirrorCreate,
            Request::MirrorList => FrameKind::MirrorList,
            Request::MirrorDescribe { .. } => FrameKind::MirrorDescribe,
            Request::MirrorPause { .. } => FrameKind::MirrorPause,
            Request::MirrorResume { .. } => FrameKind::MirrorResume,
            Request::MirrorDelete { .. } => FrameKind::MirrorDelete,
            Request::MirrorSkip { .. } => FrameKind::MirrorSkip,
            Request::MirrorCommit { .. } => FrameKind::MirrorCommit,
        }
    }

    /// Appends this request as one frame.
    pub fn encode(&self, correlation_id: u32, buf: &mut BytesMut) {
        let start = begin(buf, self.kind(), correlation_id);
        match self {
            Request::CreateTopic(spec) => put_spec(buf, spec),
            Request::CreateReplicatedTopic {
                spec,
                replication_factor,
                min_insync_replicas,
                unclean_leader_election,
            } => {
                put_spec(buf, spec);
                buf.put_u32(*replication_factor);
                buf.put_u32(*min_insync_replicas);
                buf.put_u8(u8::from(*unclean_leader_election));
            }
            Request::PartitionStates { topic } => put_str(buf, topic),
            Request::FindCoordinator { group } => put_str(buf, group),
            Request::DeleteTopic { name } | Request::DescribeTopic { name } => put_str(buf, name),
            Request::ListTopics | Request::InitProducer => {}
            Request::Produce {
                topic,
                partition,
                acks,
                batch,
            } => {
                put_str(buf, topic);
                buf.put_u32(*partition);
                buf.put_u8(*acks as u8);
                put_bytes(buf, batch);
            }
            Request::Fetch {
                topic,
                partition,
                from,
                max_bytes,
            } => {
                put_str(buf, topic);
                buf.put_u32(*partition);
                put_position(buf, *from);
                buf.put_u32(*max_bytes);
            }
            Request::Subscribe {
                topic,
                partition,
                from,
                max_bytes,
                chain,
                on_failure,
                state,
            } => {
                put_str(buf, topic);
                buf.put_u32(*partition);
                put_position(buf, *from);
                buf.put_u32(*max_bytes);
                put_chain(buf, chain);
                buf.put_u8(*on_failure as u8);
                if !state.is_empty() {
                    put_str(buf, state);
                }
            }
            Request::ListOffsets {
                topic,
                partition,
                position,
            } => {
                put_str(buf, topic);
                buf.put_u32(*partition);
                put_position(buf, *position);
            }
            Request::JoinGroup {
                group,
                member_id,
                topics,
                session_timeout_ms,
                strategy,
            } => {
                put_str(buf, group);
                put_str(buf, member_id);
                put_strs(buf, topics);
                buf.put_u32(*session_timeout_ms);
                buf.put_u8(*strategy as u8);
            }
            Request::Heartbeat {
                group,
                member_id,
                owned,
                wait_ms,
            } => {
                put_str(buf, group);
                put_str(buf, member_id);
                put_tps(buf, owned);
                buf.put_u32(*wait_ms);
            }
            Request::LeaveGroup { group, member_id } => {
                put_str(buf, group);
                put_str(buf, member_id);
            }
            Request::CommitOffsets {
                group,
                member_id,
                epoch,
                offsets,
            } => {
                put_str(buf, group);
                put_str(buf, member_id);
                buf.put_u32(*epoch);
                put_offsets(buf, offsets);
            }
            Request::FetchOffsets { group }
            | Request::DescribeGroup { group }
            | Request::DeleteGroup { group } => put_str(buf, group),
            Request::ListGroups => {}
            Request::ResetOffsets { group, topic, to } => {
                put_str(buf, group);
                put_str(buf, topic);
                put_position(buf, *to);
            }
            Request::PluginAdd { name, wasm } => {
                put_str(buf, name);
                put_bytes(buf, wasm);
            }
            Request::PluginList
            | Request::PipelineList
            | Request::NodeInfo
            | Request::ClusterStatus => {}
            Request::PluginDescribe { name }
            | Request::PluginRemove { name }
            | Request::PipelineDescribe { name }
            | Request::PipelineDelete { name }
            | Request::TopicPlugins { topic: name } => put_str(buf, name),
            Request::SetIngest {
                topic,
                chain,
                on_failure,
            } => {
                put_str(buf, topic);
                put_chain(buf, chain);
                buf.put_u8(*on_failure as u8);
            }
            Request::PipelineCreate {
                name,
                from,
                to,
                chain,
                on_failure,
            } => {
                put_str(buf, name);
                put_str(buf, from);
                put_str(buf, to);
                put_chain(buf, chain);
                buf.put_u8(*on_failure as u8);
            }
            Request::AlterTopic { name, changes } => {
                put_str(buf, name);
                put_opt(buf, changes.partitions, BytesMut::put_u32);
                put_opt(buf, changes.retention_ms, BytesMut::put_i64);
                put_opt(buf, changes.retention_bytes, BytesMut::put_i64);
                put_opt(buf, changes.max_message_bytes, BytesMut::put_u32);
            }
            Request::ResetPartitionOffsets {
                group,
                topic,
                partition,
                to,
                dry_run,
            } => {
                put_str(buf, group);
                put_str(buf, topic);
                put_opt(buf, *partition, BytesMut::put_u32);
                match to {
                    ResetTarget::Position(p) => {
                        buf.put_u8(0);
                        put_position(buf, *p);
                    }
                    ResetTarget::Shift(by) => {
                        buf.put_u8(1);
                        buf.put_i64(*by);
                    }
                }
                buf.put_u8(u8::from(*dry_run));
            }
            Request::MirrorOpen {
                mirror,
                topic,
                partitions,
                filtered,
            } => {
                put_str(buf, mirror);
                put_str(buf, topic);
                buf.put_u32(*partitions);
                buf.put_u8(u8::from(*filtered));
            }
            Request::MirrorCommit {
                mirror,
                topic,
                partition,
                source_from,
                source_to,
                compression,
                payload,
            } => {
                put_str(buf, mirror);
                put_str(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*source_from);
                buf.put_u64(*source_to);
                buf.put_u8(compression.codec());
                put_bytes(buf, payload);
            }
            Request::MirrorAppend {
                mirror,
                topic,
                partition,
                base_offset,
                compression,
                payload,
            } => {
                put_str(buf, mirror);
                put_str(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*base_offset);
                buf.put_u8(compression.codec());
                put_bytes(buf, payload);
            }
            Request::MirrorCreate(spec) => put_mirror_spec(buf, spec),
            Request::MirrorList => {}
            Request::MirrorDescribe { name }
            | Request::MirrorPause { name }
            | Request::MirrorResume { name }
            | Request::MirrorDelete { name } => put_str(buf, name),
            Request::MirrorSkip {
                mirror,
                topic,
                partition,
                from,
                to,
            } => {
                put_str(buf, mirror);
                put_str(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*from);
                buf.put_u64(*to);
            }
        }
        framing::finish_frame(buf, start, 0);
    }

    /// Decodes a frame body (everything after the length prefix).
    pub fn decode(body: Bytes) -> Result<(FrameHeader, Request), FrameError> {
        let header = FrameHeader::parse(&body)?;
        if header.version != VERSION {
            return Err(FrameError::UnsupportedVersion(header.version));
        }
        let mut r = Reader::new(body, HEADER_LEN - 4);
        let Some(kind) = FrameKind::from_u16(header.kind) else {
            return Err(FrameError::UnknownKind(header.kind));
        };
        let req = match kind {
            FrameKind::CreateTopic => Request::CreateTopic(r.spec()?),
            FrameKind::DeleteTopic => Request::DeleteTopic { name: r.str()? },
            FrameKind::ListTopics => Request::ListTopics,
            FrameKind::DescribeTopic => Request::DescribeTopic { name: r.str()? },
            FrameKind::InitProducer => Request::InitProducer,
            FrameKind::Produce => Request::Produce {
                topic: r.str()?,
                partition: r.u32()?,
                acks: match r.u8()? {
                    0 => Acks::None,
                    1 => Acks::Leader,
                    2 => Acks::Durable,
                    3 => Acks::All,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            field: "acks",
                            tag: u64::from(tag),
                        }
                        .into());
                    }
                },
                batch: r.bytes()?,
            },
            FrameKind::Fetch => Request::Fetch {
                topic: r.str()?,
                partition: r.u32()?,
                from: r.position()?,
                max_bytes: r.u32()?,
            },
            FrameKind::Subscribe => Request::Subscribe {
                topic: r.str()?,
                partition: r.u32()?,
                from: r.position()?,
                max_bytes: r.u32()?,
                chain: r.chain()?,
                on_failure: r.policy()?,
                state: if r.at_end() { String::new() } else { r.str()? },
            },
            FrameKind::ListOffsets => Request::ListOffsets {
                topic: r.str()?,
                partition: r.u32()?,
                position: r.position()?,
            },
            FrameKind::JoinGroup => Request::JoinGroup {
                group: r.str()?,
                member_id: r.str()?,
                topics: r.strs()?,
                session_timeout_ms: r.u32()?,
                strategy: r.strategy()?,
            },
            FrameKind::Heartbeat => Request::Heartbeat {
                group: r.str()?,
                member_id: r.str()?,
                owned: r.tps()?,
                wait_ms: r.u32()?,
            },
            FrameKind::LeaveGroup => Request::LeaveGroup {
                group: r.str()?,
                member_id: r.str()?,
            },
            FrameKind::CommitOffsets => Request::CommitOffsets {
                group: r.str()?,
                member_id: r.str()?,
                epoch: r.u32()?,
                offsets: r.offsets()?,
            },
            FrameKind::FetchOffsets => Request::FetchOffsets { group: r.str()? },
            FrameKind::ListGroups => Request::ListGroups,
            FrameKind::DescribeGroup => Request::DescribeGroup { group: r.str()? },
            FrameKind::ResetOffsets => Request::ResetOffsets {
                group: r.str()?,
                topic: r.str()?,
                to: r.position()?,
            },
            FrameKind::DeleteGroup => Request::DeleteGroup { group: r.str()? },
            FrameKind::PluginAdd => Request::PluginAdd {
                name: r.str()?,
                wasm: r.bytes()?,
            },
            FrameKind::PluginList => Request::PluginList,
            FrameKind::PluginDescribe => Request::PluginDescribe { name: r.str()? },
            FrameKind::PluginRemove => Request::PluginRemove { name: r.str()? },
            FrameKind::SetIngest => Request::SetIngest {
                topic: r.str()?,
                chain: r.chain()?,
                on_failure: r.policy()?,
            },
            FrameKind::TopicPlugins => Request::TopicPlugins { topic: r.str()? },
            FrameKind::PipelineCreate => Request::PipelineCreate {
                name: r.str()?,
                from: r.str()?,
                to: r.str()?,
                chain: r.chain()?,
                on_failure: r.policy()?,
            },
            FrameKind::PipelineList => Request::PipelineList,
            FrameKind::PipelineDescribe => Request::PipelineDescribe { name: r.str()? },
            FrameKind::PipelineDelete => Request::PipelineDelete { name: r.str()? },
            FrameKind::NodeInfo => Request::NodeInfo,
            FrameKind::ClusterStatus => Request::ClusterStatus,
            FrameKind::CreateReplicatedTopic => Request::CreateReplicatedTopic {
                spec: r.spec()?,
                replication_factor: r.u32()?,
                min_insync_replicas: r.u32()?,
                unclean_leader_election: r.bool()?,
            },
            FrameKind::PartitionStates => Request::PartitionStates { topic: r.str()? },
            FrameKind::FindCoordinator => Request::FindCoordinator { group: r.str()? },
            FrameKind::AlterTopic => Request::AlterTopic {
                name: r.str()?,
                changes: TopicChanges {
                    partitions: r.opt(Reader::u32)?,
                    retention_ms: r.opt(Reader::i64)?,
                    retention_bytes: r.opt(Reader::i64)?,
                    max_message_bytes: r.opt(Reader::u32)?,
                },
            },
            FrameKind::ResetPartitionOffsets => Request::ResetPartitionOffsets {
                group: r.str()?,
                topic: r.str()?,
                partition: r.opt(Reader::u32)?,
                to: r.reset_target()?,
                dry_run: r.bool()?,
            },
            FrameKind::MirrorOpen => Request::MirrorOpen {
                mirror: r.str()?,
                topic: r.str()?,
                partitions: r.u32()?,
                filtered: r.bool()?,
            },
            FrameKind::MirrorCommit => Request::MirrorCommit {
                mirror: r.str()?,
                topic: r.str()?,
                partition: r.u32()?,
                source_from: r.u64()?,
                source_to: r.u64()?,
                compression: r.compression()?,
                payload: r.bytes()?,
            },
            FrameKind::MirrorAppend => Request::MirrorAppend {
                mirror: r.str()?,
                topic: r.str()?,
                partition: r.u32()?,
                base_offset: r.u64()?,
                compression: r.compression()?,
                payload: r.bytes()?,
            },
            FrameKind::MirrorCreate => Request::MirrorCreate(r.mirror_spec()?),
            FrameKind::MirrorList => Request::MirrorList,
            FrameKind::MirrorDescribe => Request::MirrorDescribe { name: r.str()? },
            FrameKind::MirrorPause => Request::MirrorPause { name: r.str()? },
            FrameKind::MirrorResume => Request::MirrorResume { name: r.str()? },
            FrameKind::MirrorDelete => Request::MirrorDelete { name: r.str()? },
            FrameKind::MirrorSkip => Request::MirrorSkip {
                mirror: r.str()?,
                topic: r.str()?,
                partition: r.u32()?,
                from: r.u64()?,
                to: r.u64()?,
            },
            _ => return Err(FrameError::UnknownKind(header.kind)),
        };
        r.finish()?;
        Ok((header, req))
    }
}

impl Response {
    fn kind(&self) -> FrameKind {
        match self {
            Response::Error { .. } => FrameKind::Error,
            Response::TopicCreated => FrameKind::TopicCreated,
            Response::TopicDeleted => FrameKind::TopicDeleted,
            Response::Topics(_) => FrameKind::Topics,
            Response::TopicDescription { .. } => FrameKind::TopicDescription,
            Response::ProducerInit { .. } => FrameKind::ProducerInit,
            Response::Produced { .. } => FrameKind::Produced,
            Response::Fetched { .. } => FrameKind::Fetched,
            Response::Offset { .. } => FrameKind::Offset,
            Response::GroupAssignment { .. } => FrameKind::GroupAssignment,
            Response::Done => FrameKind::Done,
            Response::CommittedOffsets(_) => FrameKind::CommittedOffsets,
            Response::Groups(_) => FrameKind::Groups,
            Response::GroupDescription { .. } => FrameKind::GroupDescription,
            Response::Plugins(_) => FrameKind::Plugins,
            Response::TopicPlugins { .. } => FrameKind::TopicPluginsReply,
            Response::Pipelines(_) => FrameKind::Pipelines,
            Response::NodeInfo(_) => FrameKind::NodeInfoReply,
            Response::ClusterStatus(_) => FrameKind::ClusterStatusReply,
            Response::PartitionStates(_) => FrameKind::PartitionStatesReply,
            Response::Coordinator { .. } => FrameKind::Coordinator,
            Response::PartitionResets(_) => FrameKind::PartitionResets,
            Response::MirrorPositions(_) => FrameKind::MirrorPositions,
            Response::Mirrors(_) => FrameKind::Mirrors,
        }
    }

    /// Appends this response as one frame.
    pub fn encode(&self, correlation_id: u32, buf: &mut BytesMut) {
        let start = begin(buf, self.kind(), correlation_id);
        match self {
            Response::Error { code, message } => {
                buf.put_u16(*code);
                put_str(buf, message);
            }
            Response::TopicCreated | Response::TopicDeleted => {}
            Response::Topics(specs) => {
                buf.put_u32(specs.len() as u32);
                for s in specs {
                    put_spec(buf, s);
                }
            }
            Response::TopicDescription { spec, partitions } => {
                put_spec(buf, spec);
                buf.put_u32(partitions.len() as u32);
                for p in partitions {
                    buf.put_u32(p.partition);
                    buf.put_u64(p.log_start);
                    buf.put_u64(p.log_end);
                    buf.put_u64(p.size_bytes);
                }
            }
            Response::ProducerInit {
                producer_id,
                producer_epoch,
            } => {
                buf.put_i64(*producer_id);
                buf.put_i16(*producer_epoch);
            }
            Response::Produced {
                base_offset,
                duplicate,
                records,
            } => {
                buf.put_u64(*base_offset);
                buf.put_u8(u8::from(*duplicate));
                put_record_acks(buf, records);
            }
            Response::Fetched {
                log_start,
                log_end,
                next_offset,
                batches,
            } => {
                buf.put_u64(*log_start);
                buf.put_u64(*log_end);
                buf.put_u64(*next_offset);
                put_bytes(buf, batches);
            }
            Response::Offset { offset } => buf.put_u64(*offset),
            Response::GroupAssignment {
                member_id,
                epoch,
                generation,
                heartbeat_interval_ms,
                partitions,
            } => {
                put_str(buf, member_id);
                buf.put_u32(*epoch);
                buf.put_u32(*generation);
                buf.put_u32(*heartbeat_interval_ms);
                put_tps(buf, partitions);
            }
            Response::Done => {}
            Response::CommittedOffsets(offsets) => put_offsets(buf, offsets),
            Response::Groups(groups) => put_strs(buf, groups),
            Response::GroupDescription {
                generation,
                strategy,
                members,
                lag,
            } => {
                buf.put_u32(*generation);
                buf.put_u8(*strategy as u8);
                buf.put_u32(members.len() as u32);
                for m in members {
                    put_str(buf, &m.member_id);
                    put_strs(buf, &m.topics);
                    put_tps(buf, &m.owned);
                }
                buf.put_u32(lag.len() as u32);
                for l in lag {
                    put_str(buf, &l.topic);
                    buf.put_u32(l.partition);
                    buf.put_u64(l.committed.unwrap_or(u64::MAX));
                    buf.put_u64(l.log_end);
                }
            }
            Response::Plugins(plugins) => {
                buf.put_u32(plugins.len() as u32);
                for p in plugins {
                    put_str(buf, &p.name);
                    buf.put_u32(p.version);
                    put_str(buf, &p.hash);
                    put_str(buf, &p.kind);
                    buf.put_u64(p.size_bytes);
                    buf.put_i64(p.added_ms);
                    put_strs(buf, &p.users);
                }
            }
            Response::TopicPlugins {
                ingest,
                on_failure,
                ingest_counters,
                read_counters,
            } => {
                put_chain(buf, ingest);
                buf.put_u8(*on_failure as u8);
                put_counters(buf, ingest_counters);
                put_counters(buf, read_counters);
            }
            Response::Pipelines(pipelines) => {
                buf.put_u32(pipelines.len() as u32);
                for p in pipelines {
                    put_str(buf, &p.name);
                    put_str(buf, &p.from);
                    put_str(buf, &p.to);
                    put_chain(buf, &p.chain);
                    buf.put_u8(p.on_failure as u8);
                    put_str(buf, &p.status);
                    buf.put_u32(p.positions.len() as u32);
                    for (partition, offset) in &p.positions {
                        buf.put_u32(*partition);
                        buf.put_u64(*offset);
                    }
                    put_counters(buf, &p.counters);
                }
            }
            Response::NodeInfo(n) => {
                put_str(buf, &n.version);
                put_str(buf, &n.commit);
                buf.put_u64(n.uptime_ms);
                buf.put_u32(n.listeners.len() as u32);
                for l in &n.listeners {
                    put_str(buf, &l.protocol);
                    put_str(buf, &l.addr);
                }
                put_str(buf, &n.data_dir);
                buf.put_u64(n.data_bytes);
            }
            Response::Coordinator { node, address } => {
                buf.put_u64(*node);
                put_str(buf, address);
            }
            Response::PartitionStates(states) => {
                buf.put_u32(states.len() as u32);
                for p in states {
                    buf.put_u32(p.partition);
                    put_opt(buf, p.leader, BytesMut::put_u64);
                    buf.put_u32(p.replicas.len() as u32);
                    for r in &p.replicas {
                        buf.put_u64(*r);
                    }
                    buf.put_u32(p.isr.len() as u32);
                    for r in &p.isr {
                        buf.put_u64(*r);
                    }
                    buf.put_i32(p.leader_epoch);
                    buf.put_u64(p.high_watermark);
                    buf.put_u64(p.log_end);
                    buf.put_u8(u8::from(p.leading));
                    buf.put_u32(p.replica_log_ends.len() as u32);
                    for (node, end) in &p.replica_log_ends {
                        buf.put_u64(*node);
                        buf.put_u64(*end);
                    }
                }
                // Only when it says something, so older readers, which take
                // no trailing bytes, still read the usual answer.
                let extra = states
                    .iter()
                    .any(|p| p.unclean_leader_election || !p.rebuilding.is_empty());
                for p in states.iter().filter(|_| extra) {
                    buf.put_u8(u8::from(p.unclean_leader_election));
                    buf.put_u32(p.rebuilding.len() as u32);
                    for copy in &p.rebuilding {
                        buf.put_u64(copy.node);
                        buf.put_u64(copy.from);
                        buf.put_u8(u8::from(copy.mending));
                    }
                }
            }
            Response::ClusterStatus(c) => {
                buf.put_u64(c.node);
                put_opt(buf, c.controller, BytesMut::put_u64);
                buf.put_u64(c.term);
                buf.put_u64(c.applied_index);
                buf.put_u32(c.nodes.len() as u32);
                for n in &c.nodes {
                    buf.put_u64(n.id);
                    put_str(buf, &n.address);
                    buf.put_u8(u8::from(n.up));
                }
            }
            Response::PartitionResets(resets) => {
                buf.put_u32(resets.len() as u32);
                for o in resets {
                    put_str(buf, &o.topic);
                    buf.put_u32(o.partition);
                    put_opt(buf, o.previous, BytesMut::put_u64);
                    buf.put_u64(o.offset);
                }
            }
            Response::MirrorPositions(ends) => {
                buf.put_u32(ends.len() as u32);
                for end in ends {
                    buf.put_u64(*end);
                }
            }
            Response::Mirrors(mirrors) => {
                buf.put_u32(mirrors.len() as u32);
                for m in mirrors {
                    put_mirror_description(buf, m);
                }
            }
        }
        framing::finish_frame(buf, start, 0);
    }

    /// Decodes a frame body (everything after the length prefix).
    pub fn decode(body: Bytes) -> Result<(FrameHeader, Response), FrameError> {
        let header = FrameHeader::parse(&body)?;
        if header.version != VERSION {
            return Err(FrameError::UnsupportedVersion(header.version));
        }
        let mut r = Reader::new(body, HEADER_LEN - 4);
        let Some(kind) = FrameKind::from_u16(header.kind) else {
            return Err(FrameError::UnknownKind(header.kind));
        };
        let resp = match kind {
            FrameKind::Error => Response::Error {
                code: r.u16()?,
                message: r.str()?,
            },
            FrameKind::TopicCreated => Response::TopicCreated,
            FrameKind::TopicDeleted => Response::TopicDeleted,
            FrameKind::Topics => {
                let n = r.count(HEADER_LEN)?;
                let mut specs = Vec::with_capacity(n);
                for _ in 0..n {
                    specs.push(r.spec()?);
                }
                Response::Topics(specs)
            }
            FrameKind::TopicDescription => {
                let spec = r.spec()?;
                let n = r.count(28)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(PartitionInfo {
                        partition: r.u32()?,
                        log_start: r.u64()?,
                        log_end: r.u64()?,
                        size_bytes: r.u64()?,
                    });
                }
                Response::TopicDescription { spec, partitions }
            }
            FrameKind::ProducerInit => Response::ProducerInit {
                producer_id: r.u64()? as i64,
                producer_epoch: r.u16()? as i16,
            },
            FrameKind::Produced => Response::Produced {
                base_offset: r.u64()?,
                duplicate: r.u8()? != 0,
                records: r.record_acks()?,
            },
            FrameKind::Fetched => Response::Fetched {
                log_start: r.u64()?,
                log_end: r.u64()?,
                next_offset: r.u64()?,
                batches: r.bytes()?,
            },
            FrameKind::Offset => Response::Offset { offset: r.u64()? },
            FrameKind::GroupAssignment => Response::GroupAssignment {
                member_id: r.str()?,
                epoch: r.u32()?,
                generation: r.u32()?,
                heartbeat_interval_ms: r.u32()?,
                partitions: r.tps()?,
            },
            FrameKind::Done => Response::Done,
            FrameKind::CommittedOffsets => Response::CommittedOffsets(r.offsets()?),
            FrameKind::Groups => Response::Groups(r.strs()?),
            FrameKind::GroupDescription => {
                let generation = r.u32()?;
                let strategy = r.strategy()?;
                let n = r.count(14)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberInfo {
                        member_id: r.str()?,
                        topics: r.strs()?,
                        owned: r.tps()?,
                    });
                }
                let n = r.count(22)?;
                let mut lag = Vec::with_capacity(n);
                for _ in 0..n {
                    lag.push(GroupLag {
                        topic: r.str()?,
                        partition: r.u32()?,
                        committed: Some(r.u64()?).filter(|c| *c != u64::MAX),
                        log_end: r.u64()?,
                    });
                }
                Response::GroupDescription {
                    generation,
                    strategy,
                    members,
                    lag,
                }
            }
            FrameKind::Plugins => {
                let n = r.count(30)?;
                let mut plugins = Vec::with_capacity(n);
                for _ in 0..n {
                    plugins.push(PluginDescription {
                        name: r.str()?,
                        version: r.u32()?,
                        hash: r.str()?,
                        kind: r.str()?,
                        size_bytes: r.u64()?,
                        added_ms: r.u64()? as i64,
                        users: r.strs()?,
                    });
                }
                Response::Plugins(plugins)
            }
            FrameKind::TopicPluginsReply => Response::TopicPlugins {
                ingest: r.chain()?,
                on_failure: r.policy()?,
                ingest_counters: r.counters()?,
                read_counters: r.counters()?,
            },
            FrameKind::Pipelines => {
                let n = r.count(56)?;
                let mut pipelines = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.str()?;
                    let from = r.str()?;
                    let to = r.str()?;
                    let chain = r.chain()?;
                    let on_failure = r.policy()?;
                    let status = r.str()?;
                    let m = r.count(12)?;
                    let mut positions = Vec::with_capacity(m);
                    for _ in 0..m {
                        positions.push((r.u32()?, r.u64()?));
                    }
                    pipelines.push(PipelineDescription {
                        name,
                        from,
                        to,
                        chain,
                        on_failure,
                        status,
                        positions,
                        counters: r.counters()?,
                    });
                }
                Response::Pipelines(pipelines)
            }
            FrameKind::NodeInfoReply => {
                let version = r.str()?;
                let commit = r.str()?;
                let uptime_ms = r.u64()?;
                let n = r.count(4)?;
                let mut listeners = Vec::with_capacity(n);
                for _ in 0..n {
                    listeners.push(Listener {
                        protocol: r.str()?,
                        addr: r.str()?,
                    });
                }
                Response::NodeInfo(NodeInfo {
                    version,
                    commit,
                    uptime_ms,
                    listeners,
                    data_dir: r.str()?,
                    data_bytes: r.u64()?,
                })
            }
            FrameKind::Coordinator => Response::Coordinator {
                node: r.u64()?,
                address: r.str()?,
            },
            FrameKind::PartitionStatesReply => {
                let n = r.count(38)?;
                let mut states = Vec::with_capacity(n);
                for _ in 0..n {
                    let partition = r.u32()?;
                    let leader = r.opt(Reader::u64)?;
                    let replicas = (0..r.count(8)?)
                        .map(|_| r.u64())
                        .collect::<Result<_, _>>()?;
                    let isr = (0..r.count(8)?)
                        .map(|_| r.u64())
                        .collect::<Result<_, _>>()?;
                    let leader_epoch = r.i32()?;
                    let high_watermark = r.u64()?;
                    let log_end = r.u64()?;
                    let leading = r.bool()?;
                    let replica_log_ends = (0..r.count(16)?)
                        .map(|_| Ok((r.u64()?, r.u64()?)))
                        .collect::<Result<_, DecodeError>>()?;
                    states.push(PartitionReplication {
                        partition,
                        leader,
                        replicas,
                        isr,
                        leader_epoch,
                        high_watermark,
                        log_end,
                        leading,
                        replica_log_ends,
                        rebuilding: Vec::new(),
                        unclean_leader_election: false,
                    });
                }
                if !r.at_end() {
                    for p in &mut states {
                        p.unclean_leader_election = r.bool()?;
                        p.rebuilding = (0..r.count(17)?)
                            .map(|_| {
                                Ok(RebuildingCopy {
                                    node: r.u64()?,
                                    from: r.u64()?,
                                    mending: r.bool()?,
                                })
                            })
                            .collect::<Result<_, DecodeError>>()?;
                    }
                }
                Response::PartitionStates(states)
            }
            FrameKind::ClusterStatusReply => {
                let node = r.u64()?;
                let controller = r.opt(Reader::u64)?;
                let term = r.u64()?;
                let applied_index = r.u64()?;
                // A node is at least its id, an empty address and `up`.
                let n = r.count(11)?;
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(ClusterNode {
                        id: r.u64()?,
                        address: r.str()?,
                        up: r.bool()?,
                    });
                }
                Response::ClusterStatus(ClusterStatus {
                    node,
                    controller,
                    term,
                    applied_index,
                    nodes,
                })
            }
            FrameKind::PartitionResets => {
                let n = r.count(15)?;
                let mut resets = Vec::with_capacity(n);
                for _ in 0..n {
                    resets.push(PartitionReset {
                        topic: r.str()?,
                        partition: r.u32()?,
                        previous: r.opt(Reader::u64)?,
                        offset: r.u64()?,
                    });
                }
                Response::PartitionResets(resets)
            }
            FrameKind::MirrorPositions => {
                let n = r.count(8)?;
                Response::MirrorPositions((0..n).map(|_| r.u64()).collect::<Result<_, _>>()?)
            }
            FrameKind::Mirrors => {
                let n = r.count(MIRROR_DESCRIPTION_MIN_BYTES)?;
                Response::Mirrors(
                    (0..n)
                        .map(|_| r.mirror_description())
                        .collect::<Result<_, _>>()?,
                )
            }
            _ => return Err(FrameError::UnknownKind(header.kind)),
        };
        r.finish()?;
        Ok((header, resp))
    }
}

/// A cursor over a frame body that reports exactly where input ran out.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn new(buf: Bytes, pos: usize) -> Self {
        Reader { buf, pos }
    }

    /// Whether the body is read whole: an optional field at the end of a
    /// frame is absent.
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(DecodeError::UnexpectedEof {
                offset: self.pos + 4,
                need: n,
                have,
            });
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        let v = (&self.buf[self.pos..]).get_u16();
        self.pos += 2;
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        let v = (&self.buf[self.pos..]).get_u32();
        self.pos += 4;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        let v = (&self.buf[self.pos..]).get_u64();
        self.pos += 8;
        Ok(v)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.u32().map(|v| v as i32)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag {
                field: "bool",
                tag: u64::from(tag),
            }),
        }
    }

    /// An optional field: a presence byte, then the value if present.
    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            tag => Err(DecodeError::UnknownTag {
                field: "option",
                tag: u64::from(tag),
            }),
        }
    }

    /// A element count, rejected early if the rest of the frame cannot hold
    /// `count * min_item_bytes`, so a hostile count never drives allocation.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(min_item_bytes))?;
        Ok(n)
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        let at = self.pos;
        let s = std::str::from_utf8(&self.buf[at..at + len])
            .map_err(|_| DecodeError::InvalidUtf8 { offset: at + 4 })?
            .to_owned();
        self.pos += len;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    fn position(&mut self) -> Result<Position, DecodeError> {
        Ok(match self.u8()? {
            0 => Position::Earliest,
            1 => Position::Latest,
            2 => Position::Offset(self.u64()?),
            3 => Position::Timestamp(self.u64()? as i64),
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "position",
                    tag: u64::from(tag),
                });
            }
        })
    }

    fn reset_target(&mut self) -> Result<ResetTarget, DecodeError> {
        Ok(match self.u8()? {
            0 => ResetTarget::Position(self.position()?),
            1 => ResetTarget::Shift(self.i64()?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "reset target",
                    tag: u64::from(tag),
                });
            }
        })
    }

    fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.count(2)?;
        (0..n).map(|_| self.str()).collect()
    }

    fn tps(&mut self) -> Result<Vec<TopicPartition>, DecodeError> {
        let n = self.count(6)?;
        (0..n)
            .map(|_| {
                Ok(TopicPartition {
                    topic: self.str()?,
                    partition: self.u32()?,
                })
            })
            .collect()
    }

    fn offsets(&mut self) -> Result<Vec<PartitionOffset>, DecodeError> {
        let n = self.count(14)?;
        (0..n)
            .map(|_| {
                Ok(PartitionOffset {
                    topic: self.str()?,
                    partition: self.u32()?,
                    offset: self.u64()?,
                })
            })
            .collect()
    }

    fn chain(&mut self) -> Result<Vec<PluginRef>, DecodeError> {
        let n = self.count(6)?;
        (0..n)
            .map(|_| {
                let name = self.str()?;
                let m = self.count(4)?;
                let params = (0..m)
                    .map(|_| Ok((self.str()?, self.str()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Ok(PluginRef { name, params })
            })
            .collect()
    }

    fn policy(&mut self) -> Result<FailurePolicy, DecodeError> {
        Ok(match self.u8()? {
            0 => FailurePolicy::Skip,
            1 => FailurePolicy::DeadLetter,
            2 => FailurePolicy::Halt,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "failure policy",
                    tag: u64::from(tag),
                });
            }
        })
    }

    fn counters(&mut self) -> Result<AttachCounters, DecodeError> {
        Ok(AttachCounters {
            records_in: self.u64()?,
            records_out: self.u64()?,
            filtered: self.u64()?,
            failed: self.u64()?,
            dead_lettered: self.u64()?,
            budget_breaches: self.u64()?,
            log_lines: self.u64()?,
            log_lines_dropped: self.u64()?,
            calls: self.u64()?,
            instance_replacements: self.u64()?,
            call_p50_us: self.u64()?,
            call_p99_us: self.u64()?,
            state_bytes: self.u64()?,
            failing_cpu_us: self.u64()?,
        })
    }

    fn strategy(&mut self) -> Result<AssignmentStrategy, DecodeError> {
        Ok(match self.u8()? {
            0 => AssignmentStrategy::Range,
            1 => AssignmentStrategy::RoundRobin,
            2 => AssignmentStrategy::Sticky,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "strategy",
                    tag: u64::from(tag),
                });
            }
        })
    }

    fn record_acks(&mut self) -> Result<RecordAcks, DecodeError> {
        Ok(match self.u8()? {
            0 => RecordAcks::AsSent,
            1 => RecordAcks::Unknown,
            2 => {
                let dead_letter_topic = self.str()?;
                let n = self.count(1)?;
                let mut fates = Vec::with_capacity(n);
                for _ in 0..n {
                    fates.push(match self.u8()? {
                        0 => RecordFate::Stored {
                            offset: self.u64()?,
                            count: self.u32()?,
                        },
                        1 => RecordFate::Filtered,
                        2 => RecordFate::DeadLettered {
                            offset: self.u64()?,
                        },
                        3 => RecordFate::Dropped {
                            reason: self.str()?,
                        },
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                field: "record fate",
                                tag: u64::from(tag),
                            });
                        }
                    });
                }
                RecordAcks::Each {
                    dead_letter_topic,
                    fates,
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "record acks",
                    tag: u64::from(tag),
                });
            }
        })
    }

    fn spec(&mut self) -> Result<TopicSpec, DecodeError> {
        Ok(TopicSpec {
            name: self.str()?,
            partitions: self.u32()?,
            retention_ms: self.u64()? as i64,
            retention_bytes: self.u64()? as i64,
            max_message_bytes: self.u32()?,
            compression: {
                let codec = self.u8()?;
                Compression::from_codec(codec).ok_or(DecodeError::UnknownTag {
                    field: "compression",
                    tag: u64::from(codec),
                })?
            },
        })
    }

    fn compression(&mut self) -> Result<Compression, DecodeError> {
        let codec = self.u8()?;
        Compression::from_codec(codec).ok_or(DecodeError::UnknownTag {
            field: "compression",
            tag: u64::from(codec),
        })
    }

    fn mirror_spec(&mut self) -> Result<MirrorSpec, DecodeError> {
        Ok(MirrorSpec {
            name: self.str()?,
            topic: self.str()?,
            to: self.str()?,
            to_topic: self.str()?,
            ca_pem: self.bytes()?,
            cert_pem: self.bytes()?,
            key_pem: self.bytes()?,
            max_bytes_per_s: self.u64()?,
            compression: self.compression()?,
            chain: self.chain()?,
            on_failure: self.policy()?,
        })
    }

    fn mirror_description(&mut self) -> Result<MirrorDescription, DecodeError> {
        let name = self.str()?;
        let topic = self.str()?;
        let to = self.str()?;
        let to_topic = self.str()?;
        let compression = self.compression()?;
        let max_bytes_per_s = self.u64()?;
        let mtls = self.bool()?;
        let chain = self.chain()?;
        let state = self.str()?;
        let detail = self.str()?;
        let next_attempt_ms = self.opt(Reader::i64)?;
        let n = self.count(36)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            partitions.push(MirrorPartition {
                partition: self.u32()?,
                delivered: Some(self.u64()?).filter(|d| *d != u64::MAX),
                log_end: self.u64()?,
                lag_records: self.u64()?,
                lag_bytes: self.u64()?,
            });
        }
        let description = MirrorDescription {
            name,
            topic,
            to,
            to_topic,
            compression,
            max_bytes_per_s,
            mtls,
            chain,
            state,
            detail,
            next_attempt_ms,
            partitions,
            bytes_sent: self.u64()?,
            batch_bytes_sent: self.u64()?,
            records_sent: self.u64()?,
            dropped_records: self.u64()?,
            dropped_bytes: self.u64()?,
        };
        Ok(description)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(DecodeError::TrailingBytes {
                offset: self.pos + 4,
                extra: self.buf.len() - self.pos,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_spec_new_keeps_forever_at_the_broker_default_size() {
        let spec = TopicSpec::new("t", 3);
        assert_eq!((spec.name.as_str(), spec.partitions), ("t", 3));
        assert_eq!((spec.retention_ms, spec.retention_bytes), (-1, -1));
        assert_eq!(spec.max_message_bytes, 0);
        assert_eq!(spec.compression, Compression::None);
    }

    #[test]
    fn topic_spec_setters_set_their_field_and_saturate() {
        let spec = TopicSpec::new("t", 1)
            .with_retention(std::time::Duration::from_secs(60))
            .with_retention_bytes(u64::MAX)
            .with_max_message_bytes(4096)
            .with_compression(Compression::Zstd);
        assert_eq!(spec.retention_ms, 60_000);
        assert_eq!(spec.retention_bytes, i64::MAX);
        assert_eq!(spec.max_message_bytes, 4096);
        assert_eq!(spec.compression, Compression::Zstd);
        let forever = TopicSpec::new("t", 1).with_retention(std::time::Duration::MAX);
        assert_eq!(forever.retention_ms, i64::MAX);
    }

    fn arb_position() -> impl Strategy<Value = Position> {
        prop_oneof![
            Just(Position::Earliest),
            Just(Position::Latest),
            any::<u64>().prop_map(Position::Offset),
            any::<i64>().prop_map(Position::Timestamp),
        ]
    }

    fn arb_spec() -> impl Strategy<Value = TopicSpec> {
        (
            "[a-z.]{0,20}",
            any::<u32>(),
            any::<i64>(),
            any::<i64>(),
            any::<u32>(),
            proptest::sample::select(Compression::ALL.to_vec()),
        )
            .prop_map(
                |(
                    name,
                    partitions,
                    retention_ms,
                    retention_bytes,
                    max_message_bytes,
                    compression,
                )| {
                    TopicSpec {
                        name,
                        partitions,
                        retention_ms,
                        retention_bytes,
                        max_message_bytes,
                        compression,
                    }
                },
            )
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let acks = prop_oneof![
            Just(Acks::None),
            Just(Acks::Leader),
            Just(Acks::Durable),
            Just(Acks::All)
        ];
        prop_oneof![
            arb_spec().prop_map(Request::CreateTopic),
            "\\PC{0,10}".prop_map(|name| Request::DeleteTopic { name }),
            Just(Request::ListTopics),
            "\\PC{0,10}".prop_map(|name| Request::DescribeTopic { name }),
            Just(Request::InitProducer),
            ("[a-z]{1,8}", any::<u32>(), acks, arb_bytes()).prop_map(
                |(topic, partition, acks, batch)| Request::Produce {
                    topic,
                    partition,
                    acks,
                    batch
                }
            ),
            ("[a-z]{1,8}", any::<u32>(), arb_position(), any::<u32>()).prop_map(
                |(topic, partition, from, max_bytes)| Request::Fetch {
                    topic,
                    partition,
                    from,
                    max_bytes
                }
            ),
            (
                "[a-z]{1,8}",
                any::<u32>(),
                arb_position(),
                any::<u32>(),
                arb_chain(),
                arb_policy(),
                "[a-z]{0,8}"
            )
                .prop_map(
                    |(topic, partition, from, max_bytes, chain, on_failure, state)| {
                        Request::Subscribe {
                            topic,
                            partition,
                            from,
                            max_bytes,
                            chain,
                            on_failure,
                            state,
                        }
                    }
                ),
            ("[a-z]{1,8}", arb_bytes()).prop_map(|(name, wasm)| Request::PluginAdd { name, wasm }),
            Just(Request::PluginList),
            "[a-z]{1,8}".prop_map(|name| Request::PluginDescribe { name }),
            "[a-z]{1,8}".prop_map(|name| Request::PluginRemove { name }),
            ("[a-z]{1,8}", arb_chain(), arb_policy()).prop_map(|(topic, chain, on_failure)| {
                Request::SetIngest {
                    topic,
                    chain,
                    on_failure,
                }
            }),
            "[a-z]{1,8}".prop_map(|topic| Request::TopicPlugins { topic }),
            (
                "[a-z]{1,8}",
                "[a-z]{1,8}",
                "[a-z]{1,8}",
                arb_chain(),
                arb_policy()
            )
                .prop_map(|(name, from, to, chain, on_failure)| {
                    Request::PipelineCreate {
                        name,
                        from,
                        to,
                        chain,
                        on_failure,
                    }
                }),
            Just(Request::PipelineList),
            "[a-z]{1,8}".prop_map(|name| Request::PipelineDescribe { name }),
            "[a-z]{1,8}".prop_map(|name| Request::PipelineDelete { name }),
            (
                "[a-z]{1,8}",
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(name, partitions, retention_ms, retention_bytes, max)| {
                    Request::AlterTopic {
                        name,
                        changes: TopicChanges {
                            partitions,
                            retention_ms,
                            retention_bytes,
                            max_message_bytes: max,
                        },
                    }
                }),
            (
                "[a-z]{1,8}",
                "[a-z]{1,8}",
                proptest::option::of(any::<u32>()),
                prop_oneof![
                    arb_position().prop_map(ResetTarget::Position),
                    any::<i64>().prop_map(ResetTarget::Shift)
                ],
                any::<bool>()
            )
                .prop_map(|(group, topic, partition, to, dry_run)| {
                    Request::ResetPartitionOffsets {
                        group,
                        topic,
                        partition,
                        to,
                        dry_run,
                    }
                }),
            ("[a-z]{1,8}", any::<u32>(), arb_position()).prop_map(
                |(topic, partition, position)| Request::ListOffsets {
                    topic,
                    partition,
                    position
                }
            ),
            (
                "[a-z]{1,8}",
                "[a-z0-9-]{0,8}",
                proptest::collection::vec("[a-z]{1,8}", 0..4),
                any::<u32>(),
                arb_strategy()
            )
                .prop_map(
                    |(group, member_id, topics, session_timeout_ms, strategy)| {
                        Request::JoinGroup {
                            group,
                            member_id,
                            topics,
                            session_timeout_ms,
                            strategy,
                        }
                    }
                ),
            ("[a-z]{1,8}", "[a-z0-9-]{0,8}", arb_tps(), any::<u32>()).prop_map(
                |(group, member_id, owned, wait_ms)| Request::Heartbeat {
                    group,
                    member_id,
                    owned,
                    wait_ms
                }
            ),
            ("[a-z]{1,8}", "[a-z0-9-]{0,8}")
                .prop_map(|(group, member_id)| Request::LeaveGroup { group, member_id }),
            ("[a-z]{1,8}", "[a-z0-9-]{0,8}", any::<u32>(), arb_offsets()).prop_map(
                |(group, member_id, epoch, offsets)| Request::CommitOffsets {
                    group,
                    member_id,
                    epoch,
                    offsets
                }
            ),
            "[a-z]{1,8}".prop_map(|group| Request::FetchOffsets { group }),
            Just(Request::ListGroups),
            "[a-z]{1,8}".prop_map(|group| Request::DescribeGroup { group }),
            ("[a-z]{1,8}", "[a-z]{1,8}", arb_position())
                .prop_map(|(group, topic, to)| Request::ResetOffsets { group, topic, to }),
            "[a-z]{1,8}".prop_map(|group| Request::DeleteGroup { group }),
            Just(Request::NodeInfo),
            Just(Request::ClusterStatus),
            (arb_spec(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
                |(spec, replication_factor, min_insync_replicas, unclean_leader_election)| {
                    Request::CreateReplicatedTopic {
                        spec,
                        replication_factor,
                        min_insync_replicas,
                        unclean_leader_election,
                    }
                }
            ),
            "[a-z]{1,8}".prop_map(|topic| Request::PartitionStates { topic }),
            "[a-z]{1,8}".prop_map(|group| Request::FindCoordinator { group }),
            ("[a-z@0-9]{1,12}", "[a-z]{1,8}", any::<u32>(), any::<bool>()).prop_map(
                |(mirror, topic, partitions, filtered)| Request::MirrorOpen {
                    mirror,
                    topic,
                    partitions,
                    filtered,
                }
            ),
            (
                ("[a-z@0-9]{1,12}", "[a-z]{1,8}", any::<u32>()),
                (any::<u64>(), any::<u64>()),
                arb_codec(),
                arb_bytes()
            )
                .prop_map(
                    |(
                        (mirror, topic, partition),
                        (source_from, source_to),
                        compression,
                        payload,
                    )| {
                        Request::MirrorCommit {
                            mirror,
                            topic,
                            partition,
                            source_from,
                            source_to,
                            compression,
                            payload,
                        }
                    }
                ),
            (
                "[a-z@0-9]{1,12}",
                "[a-z]{1,8}",
                any::<u32>(),
                any::<u64>(),
                arb_codec(),
                arb_bytes()
            )
                .prop_map(
                    |(mirror, topic, partition, base_offset, compression, payload)| {
                        Request::MirrorAppend {
                            mirror,
                            topic,
                            partition,
                            base_offset,
                            compression,
                            payload,
                        }
                    }
                ),
            arb_mirror_spec().prop_map(Request::MirrorCreate),
            Just(Request::MirrorList),
            "[a-z]{1,8}".prop_map(|name| Request::MirrorDescribe { name }),
            "[a-z]{1,8}".prop_map(|name| Request::MirrorPause { name }),
            "[a-z]{1,8}".prop_map(|name| Request::MirrorResume { name }),
            "[a-z]{1,8}".prop_map(|name| Request::MirrorDelete { name }),
            (
                "[a-z@0-9]{1,12}",
                "[a-z]{1,8}",
                any::<u32>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(mirror, topic, partition, from, to)| {
                    Request::MirrorSkip {
                        mirror,
                        topic,
                        partition,
                        from,
                        to,
                    }
                }),
        ]
    }

    fn arb_codec() -> impl Strategy<Value = Compression> {
        proptest::sample::select(Compression::ALL.to_vec())
    }

    fn arb_mirror_spec() -> impl Strategy<Value = MirrorSpec> {
        (
            ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z:0-9]{1,12}", "[a-z]{1,8}"),
            (arb_bytes(), arb_bytes(), arb_bytes()),
            (any::<u64>(), arb_codec()),
            (arb_chain(), arb_policy()),
        )
            .prop_map(
                |(
                    (name, topic, to, to_topic),
                    (ca_pem, cert_pem, key_pem),
                    (max, compression),
                    (chain, on_failure),
                )| {
                    MirrorSpec {
                        name,
                        topic,
                        to,
                        to_topic,
                        ca_pem,
                        cert_pem,
                        key_pem,
                        max_bytes_per_s: max,
                        compression,
                        chain,
                        on_failure,
                    }
                },
            )
    }

    fn arb_mirror_description() -> impl Strategy<Value = MirrorDescription> {
        let partition = (
            any::<u32>(),
            proptest::option::of(0..u64::MAX),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(partition, delivered, log_end, lag_records, lag_bytes)| MirrorPartition {
                    partition,
                    delivered,
                    log_end,
                    lag_records,
                    lag_bytes,
                },
            );
        (
            ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z:0-9]{1,12}", "[a-z]{1,8}"),
            (arb_codec(), any::<u64>(), any::<bool>(), arb_chain()),
            (
                "[a-z-]{1,12}",
                "[a-z ]{0,12}",
                proptest::option::of(any::<i64>()),
            ),
            proptest::collection::vec(partition, 0..3),
            proptest::array::uniform5(any::<u64>()),
        )
            .prop_map(
                |(
                    (name, topic, to, to_topic),
                    (compression, max_bytes_per_s, mtls, chain),
                    (state, detail, next_attempt_ms),
                    partitions,
                    [
                        bytes_sent,
                        batch_bytes_sent,
                        records_sent,
                        dropped_records,
                        dropped_bytes,
                    ],
                )| MirrorDescription {
                    name,
                    topic,
                    to,
                    to_topic,
                    compression,
                    max_bytes_per_s,
                    mtls,
                    chain,
                    state,
                    detail,
                    next_attempt_ms,
                    partitions,
                    bytes_sent,
                    batch_bytes_sent,
                    records_sent,
                    dropped_records,
                    dropped_bytes,
                },
            )
    }

    fn arb_chain() -> impl Strategy<Value = Vec<PluginRef>> {
        proptest::collection::vec(
            (
                "[a-z-]{1,8}",
                proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9=,]{0,6}"), 0..3),
            )
                .prop_map(|(name, params)| PluginRef { name, params }),
            0..3,
        )
    }

    fn arb_policy() -> impl Strategy<Value = FailurePolicy> {
        prop_oneof![
            Just(FailurePolicy::Skip),
            Just(FailurePolicy::DeadLetter),
            Just(FailurePolicy::Halt),
        ]
    }

    fn arb_counters() -> impl Strategy<Value = AttachCounters> {
        any::<[u64; 14]>().prop_map(|c| AttachCounters {
            records_in: c[0],
            records_out: c[1],
            filtered: c[2],
            failed: c[3],
            dead_lettered: c[4],
            budget_breaches: c[5],
            log_lines: c[6],
            log_lines_dropped: c[7],
            calls: c[8],
            instance_replacements: c[9],
            call_p50_us: c[10],
            call_p99_us: c[11],
            state_bytes: c[12],
            failing_cpu_us: c[13],
        })
    }

    fn arb_strategy() -> impl Strategy<Value = AssignmentStrategy> {
        prop_oneof![
            Just(AssignmentStrategy::Range),
            Just(AssignmentStrategy::RoundRobin),
            Just(AssignmentStrategy::Sticky),
        ]
    }

    fn arb_tps() -> impl Strategy<Value = Vec<TopicPartition>> {
        proptest::collection::vec(
            ("[a-z]{1,8}", any::<u32>())
                .prop_map(|(topic, partition)| TopicPartition { topic, partition }),
            0..4,
        )
    }

    fn arb_offsets() -> impl Strategy<Value = Vec<PartitionOffset>> {
        proptest::collection::vec(
            ("[a-z]{1,8}", any::<u32>(), any::<u64>()).prop_map(|(topic, partition, offset)| {
                PartitionOffset {
                    topic,
                    partition,
                    offset,
                }
            }),
            0..4,
        )
    }

    fn arb_record_acks() -> impl Strategy<Value = RecordAcks> {
        let fate = prop_oneof![
            (any::<u64>(), any::<u32>())
                .prop_map(|(offset, count)| RecordFate::Stored { offset, count }),
            Just(RecordFate::Filtered),
            any::<u64>().prop_map(|offset| RecordFate::DeadLettered { offset }),
            "\\PC{0,20}".prop_map(|reason| RecordFate::Dropped { reason }),
        ];
        prop_oneof![
            Just(RecordAcks::AsSent),
            Just(RecordAcks::Unknown),
            ("[a-z.]{0,12}", proptest::collection::vec(fate, 0..6)).prop_map(
                |(dead_letter_topic, fates)| RecordAcks::Each {
                    dead_letter_topic,
                    fates,
                }
            ),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u16>(), "\\PC{0,30}")
                .prop_map(|(code, message)| Response::Error { code, message }),
            Just(Response::TopicCreated),
            Just(Response::TopicDeleted),
            proptest::collection::vec(arb_spec(), 0..4).prop_map(Response::Topics),
            (
                arb_spec(),
                proptest::collection::vec(
                    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
                    0..4
                )
            )
                .prop_map(|(spec, ps)| Response::TopicDescription {
                    spec,
                    partitions: ps
                        .into_iter()
                        .map(
                            |(partition, log_start, log_end, size_bytes)| PartitionInfo {
                                partition,
                                log_start,
                                log_end,
                                size_bytes,
                            }
                        )
                        .collect()
                }),
            (any::<i64>(), any::<i16>()).prop_map(|(producer_id, producer_epoch)| {
                Response::ProducerInit {
                    producer_id,
                    producer_epoch,
                }
            }),
            (any::<u64>(), any::<bool>(), arb_record_acks()).prop_map(
                |(base_offset, duplicate, records)| Response::Produced {
                    base_offset,
                    duplicate,
                    records,
                }
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), arb_bytes()).prop_map(
                |(log_start, log_end, next_offset, batches)| Response::Fetched {
                    log_start,
                    log_end,
                    next_offset,
                    batches,
                }
            ),
            any::<u64>().prop_map(|offset| Response::Offset { offset }),
            (
                "[a-z0-9-]{0,8}",
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                arb_tps()
            )
                .prop_map(
                    |(member_id, epoch, generation, heartbeat_interval_ms, partitions)| {
                        Response::GroupAssignment {
                            member_id,
                            epoch,
                            generation,
                            heartbeat_interval_ms,
                            partitions,
                        }
                    }
                ),
            Just(Response::Done),
            proptest::collection::vec(
                (
                    "[a-z]{1,8}",
                    any::<u32>(),
                    "[0-9a-f]{0,8}",
                    "[a-z]{1,8}",
                    any::<u64>(),
                    any::<i64>(),
                    proptest::collection::vec("[a-z:]{1,8}", 0..3)
                )
                    .prop_map(
                        |(name, version, hash, kind, size_bytes, added_ms, users)| {
                            PluginDescription {
                                name,
                                version,
                                hash,
                                kind,
                                size_bytes,
                                added_ms,
                                users,
                            }
                        }
                    ),
                0..3
            )
            .prop_map(Response::Plugins),
            (arb_chain(), arb_policy(), arb_counters(), arb_counters()).prop_map(
                |(ingest, on_failure, ingest_counters, read_counters)| Response::TopicPlugins {
                    ingest,
                    on_failure,
                    ingest_counters,
                    read_counters
                }
            ),
            proptest::collection::vec(
                (
                    ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z]{1,8}"),
                    arb_chain(),
                    arb_policy(),
                    "[a-z ]{0,12}",
                    proptest::collection::vec((any::<u32>(), any::<u64>()), 0..3),
                    arb_counters()
                )
                    .prop_map(
                        |((name, from, to), chain, on_failure, status, positions, counters)| {
                            PipelineDescription {
                                name,
                                from,
                                to,
                                chain,
                                on_failure,
                                status,
                                positions,
                                counters,
                            }
                        }
                    ),
                0..3
            )
            .prop_map(Response::Pipelines),
            arb_offsets().prop_map(Response::CommittedOffsets),
            proptest::collection::vec(
                (
                    "[a-z]{1,8}",
                    any::<u32>(),
                    proptest::option::of(any::<u64>()),
                    any::<u64>()
                )
                    .prop_map(|(topic, partition, previous, offset)| {
                        PartitionReset {
                            topic,
                            partition,
                            previous,
                            offset,
                        }
                    }),
                0..3
            )
            .prop_map(Response::PartitionResets),
            proptest::collection::vec("[a-z]{1,8}", 0..4).prop_map(Response::Groups),
            (
                any::<u32>(),
                arb_strategy(),
                proptest::collection::vec(
                    (
                        "[a-z0-9-]{0,8}",
                        proptest::collection::vec("[a-z]{1,8}", 0..3),
                        arb_tps()
                    )
                        .prop_map(|(member_id, topics, owned)| MemberInfo {
                            member_id,
                            topics,
                            owned
                        }),
                    0..3
                ),
                proptest::collection::vec(
                    (
                        "[a-z]{1,8}",
                        any::<u32>(),
                        proptest::option::of(0u64..u64::MAX),
                        any::<u64>()
                    )
                        .prop_map(|(topic, partition, committed, log_end)| {
                            GroupLag {
                                topic,
                                partition,
                                committed,
                                log_end,
                            }
                        }),
                    0..3
                )
            )
                .prop_map(|(generation, strategy, members, lag)| {
                    Response::GroupDescription {
                        generation,
                        strategy,
                        members,
                        lag,
                    }
                }),
            (
                ("[0-9.]{1,8}", "[0-9a-f]{0,12}", any::<u64>()),
                proptest::collection::vec(("[a-z]{1,5}", "[0-9.:]{1,21}"), 0..3),
                ("\\PC{0,20}", any::<u64>())
            )
                .prop_map(
                    |((version, commit, uptime_ms), listeners, (data_dir, data_bytes))| {
                        Response::NodeInfo(NodeInfo {
                            version,
                            commit,
                            uptime_ms,
                            listeners: listeners
                                .into_iter()
                                .map(|(protocol, addr)| Listener { protocol, addr })
                                .collect(),
                            data_dir,
                            data_bytes,
                        })
                    }
                ),
            (
                (
                    any::<u64>(),
                    any::<Option<u64>>(),
                    any::<u64>(),
                    any::<u64>()
                ),
                proptest::collection::vec((any::<u64>(), "[0-9.:]{1,21}", any::<bool>()), 0..4)
            )
                .prop_map(|((node, controller, term, applied_index), nodes)| {
                    Response::ClusterStatus(ClusterStatus {
                        node,
                        controller,
                        term,
                        applied_index,
                        nodes: nodes
                            .into_iter()
                            .map(|(id, address, up)| ClusterNode { id, address, up })
                            .collect(),
                    })
                }),
            (any::<u64>(), "[a-z0-9.:]{0,12}")
                .prop_map(|(node, address)| Response::Coordinator { node, address }),
            proptest::collection::vec(
                (
                    (any::<u32>(), any::<Option<u64>>(), any::<i32>()),
                    (
                        proptest::collection::vec(any::<u64>(), 0..4),
                        proptest::collection::vec(any::<u64>(), 0..4)
                    ),
                    (any::<u64>(), any::<u64>(), any::<bool>()),
                    proptest::collection::vec((any::<u64>(), any::<u64>()), 0..3),
                    (
                        proptest::collection::vec(
                            (any::<u64>(), any::<u64>(), any::<bool>()),
                            0..3
                        ),
                        any::<bool>()
                    )
                ),
                0..3
            )
            .prop_map(|states| {
                Response::PartitionStates(
                    states
                        .into_iter()
                        .map(
                            |(
                                (partition, leader, leader_epoch),
                                (replicas, isr),
                                (high_watermark, log_end, leading),
                                replica_log_ends,
                                (rebuilding, unclean_leader_election),
                            )| PartitionReplication {
                                partition,
                                leader,
                                replicas,
                                isr,
                                leader_epoch,
                                high_watermark,
                                log_end,
                                leading,
                                replica_log_ends,
                                rebuilding: rebuilding
                                    .into_iter()
                                    .map(|(node, from, mending)| RebuildingCopy {
                                        node,
                                        from,
                                        mending,
                                    })
                                    .collect(),
                                unclean_leader_election,
                            },
                        )
                        .collect(),
                )
            }),
            proptest::collection::vec(any::<u64>(), 0..4).prop_map(Response::MirrorPositions),
            proptest::collection::vec(arb_mirror_description(), 0..3).prop_map(Response::Mirrors),
        ]
    }

    fn body(mut frame: BytesMut) -> Bytes {
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len + 4, frame.len());
        frame.split_off(4).freeze()
    }

    proptest! {
        #[test]
        fn request_roundtrip(req in arb_request(), corr in any::<u32>()) {
            let mut buf = BytesMut::new();
            req.encode(corr, &mut buf);
            let (h, back) = Request::decode(body(buf)).unwrap();
            prop_assert_eq!(h.correlation_id, corr);
            prop_assert_eq!(back, req);
        }

        #[test]
        fn response_roundtrip(resp in arb_response(), corr in any::<u32>()) {
            let mut buf = BytesMut::new();
            resp.encode(corr, &mut buf);
            let (h, back) = Response::decode(body(buf)).unwrap();
            prop_assert_eq!(h.correlation_id, corr);
            prop_assert_eq!(back, resp);
        }

        #[test]
        fn frame_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(Bytes::from(data.clone()));
            let _ = Response::decode(Bytes::from(data));
        }

        #[test]
        fn truncated_requests_are_errors_not_panics(req in arb_request(), cut in any::<prop::sample::Index>()) {
            let mut buf = BytesMut::new();
            req.encode(7, &mut buf);
            let full = body(buf);
            let cut = cut.index(full.len());
            let truncated = full.slice(..cut);
            let decoded = Request::decode(truncated);
            // A prefix can only decode if it is the whole frame minus nothing
            // for kinds with no payload, or if it ends where an optional
            // trailing field begins (it is then the request without it);
            // anything else must be an error.
            if let Ok((_, r)) = decoded {
                let without_optional = match &req {
                    Request::Subscribe { .. } => {
                        let mut shorter = req.clone();
                        if let Request::Subscribe { state, .. } = &mut shorter {
                            state.clear();
                        }
                        Some(shorter)
                    }
                    _ => None,
                };
                prop_assert!(
                    matches!(
                        r,
                        Request::ListTopics
                            | Request::InitProducer
                            | Request::ListGroups
                            | Request::PluginList
                            | Request::PipelineList
                    ) || without_optional.as_ref() == Some(&r),
                    "{:?} decoded from a prefix", r
                );
            }
        }
    }

    #[test]
    fn fetched_head_plus_batches_equals_encoded_response() {
        let batches = Bytes::from_static(b"0123456789");
        let mut whole = BytesMut::new();
        Response::Fetched {
            log_start: 3,
            log_end: 9,
            next_offset: 7,
            batches: batches.clone(),
        }
        .encode(42, &mut whole);
        let mut parts = BytesMut::new();
        encode_fetched_head(42, 3, 9, 7, batches.len(), &mut parts);
        parts.extend_from_slice(&batches);
        assert_eq!(parts, whole);
    }

    /// The numbering rule of the kind table: a response's kind is the kind
    /// of the request it first answered, with bit 15 set.
    #[test]
    fn response_kinds_are_request_kinds_with_bit_15() {
        let pairs = [
            (FrameKind::CreateTopic, FrameKind::TopicCreated),
            (FrameKind::ListTopics, FrameKind::Topics),
            (FrameKind::Fetch, FrameKind::Fetched),
            (FrameKind::JoinGroup, FrameKind::GroupAssignment),
            (FrameKind::TopicPlugins, FrameKind::TopicPluginsReply),
            (FrameKind::PipelineList, FrameKind::Pipelines),
            (FrameKind::ResetPartitionOffsets, FrameKind::PartitionResets),
        ];
        for (request, response) in pairs {
            assert_eq!(request as u16 | 0x8000, response as u16);
            assert_eq!(FrameKind::from_u16(response as u16), Some(response));
        }
        assert_eq!(FrameKind::from_u16(0x8008), None);
    }

    /// A subscribe without a state name is the frame clients sent before
    /// the field existed (it ends at the failure policy); one with a name
    /// carries it last. Both decode.
    #[test]
    fn subscribe_state_name_is_an_optional_last_field() {
        let subscribe = |state: &str| Request::Subscribe {
            topic: "t".into(),
            partition: 0,
            from: Position::Earliest,
            max_bytes: 1,
            chain: Vec::new(),
            on_failure: FailurePolicy::Skip,
            state: state.into(),
        };
        let encode = |r: &Request| {
            let mut buf = BytesMut::new();
            r.encode(1, &mut buf);
            body(buf)
        };
        let (old, named) = (encode(&subscribe("")), encode(&subscribe("g")));
        assert_eq!(named[..old.len()], old[..], "the name only appends");
        assert!(named.len() > old.len());
        for (frame, state) in [(old, ""), (named, "g")] {
            let (_, decoded) = Request::decode(frame).unwrap();
            assert_eq!(decoded, subscribe(state));
        }
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut buf = BytesMut::new();
        Request::ListTopics.encode(1, &mut buf);
        let mut b = body(buf).to_vec();
        b[0] = 9;
        assert_eq!(
            Request::decode(Bytes::from(b)),
            Err(FrameError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn hostile_count_is_rejected_before_allocating() {
        let mut buf = BytesMut::new();
        Response::Topics(vec![]).encode(1, &mut buf);
        let mut b = body(buf).to_vec();
        let n = b.len();
        b[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Response::decode(Bytes::from(b)),
            Err(FrameError::Decode(DecodeError::UnexpectedEof { .. }))
        ));
    }
}
