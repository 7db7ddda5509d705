//! Consumer groups: `JoinGroup`, `Heartbeat`, `LeaveGroup`,
//! `CommitOffsets`, `FetchOffsets`, `ListGroups`, `DescribeGroup`,
//! `ResetOffsets`, `DeleteGroup`.

use std::time::Duration;

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{
    AssignmentStrategy, PartitionOffset, Position, Response, TopicPartition,
};

use crate::error::Coded;
use crate::groups::{self, Groups, GroupsError};
use crate::reader::{FetchError, Reader};
use crate::topics::{Topics, UnknownTopic};

/// Why `ResetOffsets` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// The group refused (name, members, commit).
    #[error(transparent)]
    Groups(#[from] GroupsError),
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// A position could not be resolved.
    #[error(transparent)]
    Read(#[from] FetchError),
}

impl Coded for ResetError {
    fn code(&self) -> ErrorCode {
        match self {
            ResetError::Groups(e) => e.code(),
            ResetError::UnknownTopic(e) => e.code(),
            ResetError::Read(e) => e.code(),
        }
    }
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
    groups::check_name(group)?;
    groups.ensure_empty(group)?;
    let spec = topics.spec(topic)?;
    let mut offsets = Vec::with_capacity(spec.partitions as usize);
    for partition in 0..spec.partitions {
        offsets.push(PartitionOffset {
            topic: topic.to_owned(),
            partition,
            offset: reader.resolve(topic, partition, to).await?,
        });
    }
    groups.commit(group, "", 0, offsets.clone()).await?;
    Ok(Response::CommittedOffsets(offsets))
}

/// `DeleteGroup`: removes its offsets, only while it has no members.
pub async fn delete(groups: &Groups, group: String) -> Result<Response, GroupsError> {
    groups.delete(group).await?;
    Ok(Response::Done)
}
