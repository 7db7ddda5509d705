//! Consumer groups: `JoinGroup`, `Heartbeat`, `LeaveGroup`,
//! `CommitOffsets`, `FetchOffsets`, `ListGroups`, `DescribeGroup`,
//! `ResetOffsets`, `ResetPartitionOffsets`, `DeleteGroup`, and in a
//! cluster which node coordinates a group: `FindCoordinator`.

use std::time::Duration;

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{
    AssignmentStrategy, PartitionOffset, PartitionReset, Position, Request, ResetTarget, Response,
    TopicPartition,
};

use crate::broker::Broker;
use crate::error::Coded;
use crate::groups::{self, Groups, GroupsError};
use crate::reader::{FetchError, Reader};
use crate::topics::{Topics, UnknownTopic};

/// The group a request is about, for the requests only a group's
/// coordinator answers: membership, commits and resets (whatever reads
/// committed offsets alone may go to any node).
pub fn coordinated_group(request: &Request) -> Option<&str> {
    match request {
        Request::JoinGroup { group, .. }
        | Request::Heartbeat { group, .. }
        | Request::LeaveGroup { group, .. }
        | Request::CommitOffsets { group, .. }
        | Request::DescribeGroup { group }
        | Request::ResetOffsets { group, .. }
        | Request::ResetPartitionOffsets { group, .. }
        | Request::DeleteGroup { group } => Some(group),
        _ => None,
    }
}

/// `NotCoordinator` naming the node to ask, when this cluster node does
/// not coordinate `group`; `None` on the coordinator and on a single node.
pub fn elsewhere(b: &Broker, group: &str) -> Option<Response> {
    let cluster = b.cluster.as_ref()?;
    let message = match cluster.coordinator(group) {
        Some((node, _)) if node == cluster.node() => return None,
        Some((node, address)) => {
            format!("group {group:?} is coordinated by node {node} at {address}")
        }
        None => format!("no live node can coordinate group {group:?} now"),
    };
    Some(Response::error(ErrorCode::NotCoordinator, message))
}

/// `FindCoordinator`: this node on a single node (id 0, no address).
pub fn find_coordinator(b: &Broker, group: &str) -> Response {
    let Some(cluster) = &b.cluster else {
        return Response::Coordinator {
            node: 0,
            address: String::new(),
        };
    };
    match cluster.coordinator(group) {
        Some((node, address)) => Response::Coordinator { node, address },
        None => Response::error(
            ErrorCode::NotCoordinator,
            format!("no live node can coordinate group {group:?} now"),
        ),
    }
}

/// Why `ResetOffsets` or `ResetPartitionOffsets` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// The group refused (name, members, commit).
    #[error(transparent)]
    Groups(#[from] GroupsError),
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// The topic has no such partition.
    #[error("topic {topic:?} has {partitions} partitions, so no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// A shift needs a committed offset to move from.
    #[error(
        "group {group:?} has no committed offset for {topic}/{partition} to shift; \
         reset it to earliest, latest, an offset or a time instead"
    )]
    NothingToShift {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
    },
    /// A position could not be resolved.
    #[error(transparent)]
    Read(#[from] FetchError),
}

impl Coded for ResetError {
    fn code(&self) -> ErrorCode {
        match self {
            ResetError::Groups(e) => e.code(),
            ResetError::UnknownTopic(e) => e.code(),
            ResetError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ResetError::NothingToShift { .. } => ErrorCode::InvalidRequest,
            ResetError::Read(e) => e.code(),
        }
    }
}

/// What a reset applies to, and how.
pub struct ResetPlan<'a> {
    /// Group name.
    pub group: &'a str,
    /// Topic name.
    pub topic: &'a str,
    /// One partition, or every partition of the topic.
    pub partition: Option<u32>,
    /// Where each partition goes.
    pub to: ResetTarget,
    /// Answer the plan without committing it.
    pub dry_run: bool,
}

/// `JoinGroup`.
pub fn join(
    groups: &Groups,
    group: &str,
    member_id: &str,
    topics: &[String],
    session_timeout_ms: u32,
    strategy: AssignmentStrategy,
) -> Result<Response, GroupsError> {
    let session = Duration::from_millis(session_timeout_ms.into());
    let (member_id, a) = groups.join(group, member_id, topics, session, strategy)?;
    Ok(Response::GroupAssignment {
        member_id,
        epoch: a.epoch,
        generation: a.generation,
        heartbeat_interval_ms: groups::heartbeat_interval(session),
        partitions: a.partitions,
    })
}

/// `Heartbeat`: held up to `wait_ms` while nothing changes for the member.
pub async fn heartbeat(
    groups: &Groups,
    group: &str,
    member_id: &str,
    owned: Vec<TopicPartition>,
    wait_ms: u32,
) -> Result<Response, GroupsError> {
    let wait = Duration::from_millis(wait_ms.into());
    let a = groups.heartbeat(group, member_id, owned, wait).await?;
    Ok(Response::GroupAssignment {
        member_id: member_id.to_owned(),
        epoch: a.epoch,
        generation: a.generation,
        heartbeat_interval_ms: wait_ms,
        partitions: a.partitions,
    })
}

/// `LeaveGroup`.
pub fn leave(groups: &Groups, group: &str, member_id: &str) -> Result<Response, GroupsError> {
    groups.leave(group, member_id)?;
    Ok(Response::Done)
}

/// `CommitOffsets`.
pub async fn commit(
    groups: &Groups,
    group: &str,
    member_id: &str,
    epoch: u32,
    offsets: Vec<PartitionOffset>,
) -> Result<Response, GroupsError> {
    groups.commit(group, member_id, epoch, offsets).await?;
    Ok(Response::Done)
}

/// `FetchOffsets`.
pub async fn fetch_offsets(groups: &Groups, group: String) -> Result<Response, GroupsError> {
    Ok(Response::CommittedOffsets(groups.committed(group).await?))
}

/// `ListGroups`: groups with members or committed offsets.
pub async fn list(groups: &Groups) -> Result<Response, GroupsError> {
    Ok(Response::Groups(groups.list().await?))
}

/// `DescribeGroup`.
pub async fn describe(groups: &Groups, group: String) -> Result<Response, GroupsError> {
    let d = groups.describe(group).await?;
    Ok(Response::GroupDescription {
        generation: d.generation,
        strategy: d.strategy,
        members: d.members,
        lag: d.lag,
    })
}

/// `ResetOffsets`: points every partition of `topic` at `to`, only while
/// the group has no members.
pub async fn reset(
    groups: &Groups,
    topics: &Topics,
    reader: &Reader,
    group: &str,
    topic: &str,
    to: Position,
) -> Result<Response, ResetError> {
    let plan = ResetPlan {
        group,
        topic,
        partition: None,
        to: ResetTarget::Position(to),
        dry_run: false,
    };
    let resets = reset_partitions(groups, topics, reader, plan).await?;
    Ok(Response::CommittedOffsets(
        resets.into_iter().map(committed).collect(),
    ))
}

/// `ResetPartitionOffsets`: the reset of each partition, committed unless
/// the plan is a dry run. Refused, dry run or not, while the group has
/// members: their positions would override it.
pub async fn reset_offsets(
    groups: &Groups,
    topics: &Topics,
    reader: &Reader,
    plan: ResetPlan<'_>,
) -> Result<Response, ResetError> {
    Ok(Response::PartitionResets(
        reset_partitions(groups, topics, reader, plan).await?,
    ))
}

fn committed(reset: PartitionReset) -> PartitionOffset {
    PartitionOffset {
        topic: reset.topic,
        partition: reset.partition,
        offset: reset.offset,
    }
}

async fn reset_partitions(
    groups: &Groups,
    topics: &Topics,
    reader: &Reader,
    plan: ResetPlan<'_>,
) -> Result<Vec<PartitionReset>, ResetError> {
    let ResetPlan {
        group,
        topic,
        partition,
        to,
        dry_run,
    } = plan;
    groups::check_name(group)?;
    groups.ensure_empty(group)?;
    let spec = topics.spec(topic)?;
    let partitions = match partition {
        Some(partition) if partition >= spec.partitions => {
            return Err(ResetError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: spec.partitions,
            });
        }
        Some(partition) => partition..partition + 1,
        None => 0..spec.partitions,
    };
    let committed_now = groups.committed(group.to_owned()).await?;
    let mut resets = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let previous = committed_now
            .iter()
            .find(|c| c.topic == topic && c.partition == partition)
            .map(|c| c.offset);
        let offset = match to {
            ResetTarget::Position(position) => reader.resolve(topic, partition, position).await?,
            ResetTarget::Shift(by) => {
                let from = previous.ok_or_else(|| ResetError::NothingToShift {
                    group: group.to_owned(),
                    topic: topic.to_owned(),
                    partition,
                })?;
                let start = reader.resolve(topic, partition, Position::Earliest).await?;
                let end = reader.resolve(topic, partition, Position::Latest).await?;
                shift(from, by).clamp(start, end)
            }
        };
        resets.push(PartitionReset {
            topic: topic.to_owned(),
            partition,
            previous,
            offset,
        });
    }
    if !dry_run {
        let offsets = resets.iter().cloned().map(committed).collect();
        groups.commit(group, "", 0, offsets).await?;
    }
    Ok(resets)
}

/// `from` moved by `by` records, saturating at the ends of `u64`.
fn shift(from: u64, by: i64) -> u64 {
    if by >= 0 {
        from.saturating_add(by.unsigned_abs())
    } else {
        from.saturating_sub(by.unsigned_abs())
    }
}

/// `DeleteGroup`: removes its offsets, only while it has no members.
pub async fn delete(groups: &Groups, group: String) -> Result<Response, GroupsError> {
    groups.delete(group).await?;
    Ok(Response::Done)
}
