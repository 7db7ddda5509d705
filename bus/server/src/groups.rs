//! The IO side of consumer groups: drives the sans-IO
//! [`GroupCoordinator`] from requests and a timer, holds heartbeats open
//! until their member's assignment changes, sends offset commits through
//! the group-commit writer, and reads what the store keeps of groups.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgebus_core::group::{Assignment, GroupCoordinator, GroupError};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{
    AssignmentStrategy, GroupLag, MemberInfo, PartitionOffset, TopicPartition,
};
use edgebus_store::{CommitError, CommittedOffset, LogStore, OffsetCommit, StoreError};
use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::error::Coded;
use crate::writer::Writer;

/// The shortest pause between two expiry checks of the coordinator.
pub const TICK: Duration = Duration::from_millis(10);
/// Longest a heartbeat is held waiting for a change.
pub const MAX_HEARTBEAT_WAIT: Duration = Duration::from_secs(10);

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupsError {
    /// The group name breaks the naming rule.
    #[error("invalid group name: {0}")]
    InvalidName(String),
    /// The coordinator refused (unknown member, stale epoch, not assigned,
    /// not empty).
    #[error(transparent)]
    Coordinator(#[from] GroupError),
    /// The group has no members and no committed offsets.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// The group's members are clients of another door (Kafka clients).
    #[error("group {0:?} has members connected through the Kafka door")]
    OtherDoor(String),
    /// The store refused an offset commit.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Reading or deleting stored group data failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store call's task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The cluster's control log did not take the change (no quorum);
    /// nothing was committed. Retriable.
    #[error("the control log did not take the change: {0}")]
    ControlLog(String),
}

/// Where a cluster node keeps committed offsets instead of its own store:
/// in the cluster's control log, so they survive the loss of any node and
/// a group's clients find them on whichever node they reach next.
pub trait ReplicatedOffsets: Send + Sync {
    /// Commits offsets (checked against the cluster's topics); returns once
    /// this node's own reads show them.
    fn commit(&self, commits: Vec<OffsetCommit>) -> BoxFuture<'static, Result<(), GroupsError>>;
    /// A group's committed offsets as this node has applied them.
    fn committed(&self, group: &str) -> Vec<CommittedOffset>;
    /// Groups with committed offsets.
    fn groups(&self) -> Vec<String>;
    /// Removes a group's offsets; `false` when it had none.
    fn delete(&self, group: &str) -> BoxFuture<'static, Result<bool, GroupsError>>;
}

impl Coded for GroupsError {
    fn code(&self) -> ErrorCode {
        match self {
            GroupsError::InvalidName(_) => ErrorCode::InvalidRequest,
            GroupsError::Coordinator(e) => match e {
                GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
                GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
                GroupError::NotAssigned { .. } => ErrorCode::NotAssigned,
                GroupError::NotEmpty(_) => ErrorCode::GroupNotEmpty,
                _ => ErrorCode::InvalidRequest,
            },
            GroupsError::UnknownGroup(_) => ErrorCode::UnknownGroup,
            GroupsError::OtherDoor(_) => ErrorCode::GroupNotEmpty,
            GroupsError::Commit(e) => match e {
                CommitError::UnknownTopic(_) => ErrorCode::UnknownTopic,
                CommitError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
                CommitError::InvalidGroup(_) => ErrorCode::InvalidRequest,
                _ => ErrorCode::StorageError,
            },
            GroupsError::Store(e) => e.code(),
            GroupsError::Task(_) => ErrorCode::StorageError,
            GroupsError::ControlLog(_) => ErrorCode::StorageError,
        }
    }
}

/// What `DescribeGroup` reports.
pub struct Description {
    /// Generation (0 when the group has no members).
    pub generation: u32,
    /// Assignment strategy.
    pub strategy: AssignmentStrategy,
    /// Members and what they own.
    pub members: Vec<MemberInfo>,
    /// Committed offset and log end per partition of the group's topics.
    pub lag: Vec<GroupLag>,
}

/// Held heartbeats to wake, by (group, member).
type Wakers = HashMap<(String, String), Arc<Notify>>;

/// Whether another door's clients are members of a group.
type OtherDoorMembers = Arc<std::sync::OnceLock<Box<dyn Fn(&str) -> bool + Send + Sync>>>;

/// Consumer-group state of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    coordinator: Arc<Mutex<GroupCoordinator>>,
    wakers: Arc<Mutex<Wakers>>,
    /// Wakes the expiry timer: a join may bring an earlier expiry.
    joined: Arc<Notify>,
    store: Arc<dyn LogStore>,
    writer: Writer,
    other_door: OtherDoorMembers,
    replicated: Arc<std::sync::OnceLock<Arc<dyn ReplicatedOffsets>>>,
}

/// Checks a group name against the naming rule of topics.
pub fn check_name(group: &str) -> Result<(), GroupsError> {
    edgebus_store::topic::check_name(group).map_err(GroupsError::InvalidName)
}

impl Groups {
    /// Groups whose offsets are read from `store` and committed through
    /// `writer`.
    pub fn new(store: Arc<dyn LogStore>, writer: Writer) -> Groups {
        Groups {
            coordinator: Arc::default(),
            wakers: Arc::default(),
            joined: Arc::default(),
            store,
            writer,
            other_door: Arc::default(),
            replicated: Arc::default(),
        }
    }

    /// Keeps committed offsets in `offsets` from now on (a cluster node).
    /// Set once, at start.
    pub fn set_replicated(&self, offsets: Arc<dyn ReplicatedOffsets>) {
        let _ = self.replicated.set(offsets);
    }

    /// Tells the groups about another door's members (the Kafka door's):
    /// while a group has some, edgebus clients may not join it and its
    /// offsets may not be reset or deleted. Set once, at start.
    pub fn set_other_door(&self, has_members: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.other_door.set(Box::new(has_members));
    }

    fn check_other_door(&self, group: &str) -> Result<(), GroupsError> {
        match self.other_door.get() {
            Some(has_members) if has_members(group) => {
                Err(GroupsError::OtherDoor(group.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Whether edgebus clients are members of `group`.
    pub fn has_members(&self, group: &str) -> bool {
        self.lock().ensure_empty(group).is_err()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupCoordinator> {
        self.coordinator.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the coordinator about a topic's partitions.
    pub fn set_topic(&self, topic: &str, partitions: u32) {
        self.lock().set_topic(topic, partitions);
        self.wake();
    }

    /// Tells the coordinator a topic is gone.
    pub fn remove_topic(&self, topic: &str) {
        self.lock().remove_topic(topic);
        self.wake();
    }

    /// Expires members once their session runs out (checking at most once
    /// a [`TICK`]). It sleeps until the first session could run out, and
    /// with no member until one joins: an idle broker is not woken a
    /// hundred times a second for nothing.
    pub async fn run_timer(self) {
        let mut earliest = Instant::now();
        loop {
            let next = self.lock().next_expiry();
            let due = async {
                match next {
                    Some(expiry) => tokio::time::sleep_until(expiry.max(earliest).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = due => {}
                () = self.joined.notified() => continue,
            }
            let now = Instant::now();
            self.lock().tick(now);
            self.wake();
            self.forget_expired();
            earliest = now + TICK;
        }
    }

    /// Drops the wakers of members that were expired rather than leaving,
    /// so crashed consumers do not leave entries behind.
    fn forget_expired(&self) {
        let coordinator = self.lock();
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(group, member), _| coordinator.is_member(group, member));
    }

    /// Wakes the held heartbeats of members whose answer may have changed.
    fn wake(&self) {
        let changed = self.lock().poll_changed();
        if changed.is_empty() {
            return;
        }
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for key in changed {
            if let Some(n) = wakers.get(&key) {
                n.notify_one();
            }
        }
    }

    fn waker(&self, group: &str, member: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((group.to_owned(), member.to_owned()))
            .or_default()
            .clone()
    }

    fn forget(&self, group: &str, member: &str) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(group.to_owned(), member.to_owned()));
    }

    /// Joins a member (a new one when `member_id` is empty); returns its id
    /// and first assignment.
    pub fn join(
        &self,
        group: &str,
        member_id: &str,
        topics: &[String],
        session: Duration,
        strategy: AssignmentStrategy,
    ) -> Result<(String, Assignment), GroupsError> {
        check_name(group)?;
        self.check_other_door(group)?;
        let joined = self.lock().join(
            Instant::now(),
            group,
            (!member_id.is_empty()).then_some(member_id),
            topics,
            session,
            strategy,
        );
        self.joined.notify_one();
        self.wake();
        Ok(joined?)
    }

    /// Answers at once when the member must act (its assignment differs
    /// from what it owns), else when that happens or `wait` passes.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        mut owned: Vec<TopicPartition>,
        wait: Duration,
    ) -> Result<Assignment, GroupsError> {
        owned.sort();
        owned.dedup();
        let wait = wait.min(MAX_HEARTBEAT_WAIT);
        let waker = self.waker(group, member_id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut first = true;
        loop {
            // Only the request itself is a sign of life: re-checks while it
            // is held must not keep a member alive that has since died.
            let beat = if first {
                self.lock()
                    .heartbeat(Instant::now(), group, member_id, &owned)
            } else {
                self.lock().current(group, member_id)
            };
            first = false;
            self.wake();
            let assignment = match beat {
                Ok(a) => a,
                Err(e) => {
                    self.forget(group, member_id);
                    return Err(e.into());
                }
            };
            let settled = assignment.partitions == owned;
            if !settled || tokio::time::Instant::now() >= deadline {
                return Ok(assignment);
            }
            let _ = tokio::time::timeout_at(deadline, waker.notified()).await;
        }
    }

    /// Removes a member.
    pub fn leave(&self, group: &str, member_id: &str) -> Result<(), GroupsError> {
        let left = self.lock().leave(group, member_id);
        self.forget(group, member_id);
        self.wake();
        Ok(left?)
    }

    /// Commits offsets, fenced by member and epoch (or, with no member id,
    /// only while the group is empty), through the writer.
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: u32,
        offsets: Vec<PartitionOffset>,
    ) -> Result<(), GroupsError> {
        check_name(group)?;
        let tps: Vec<TopicPartition> = offsets
            .iter()
            .map(|o| TopicPartition::new(o.topic.clone(), o.partition))
            .collect();
        if member_id.is_empty() {
            self.lock().ensure_empty(group)?;
        } else {
            self.lock().check_commit(group, member_id, epoch, &tps)?;
        }
        let commits = offsets
            .into_iter()
            .map(|o| OffsetCommit {
                group: group.to_owned(),
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
            })
            .collect();
        match self.replicated.get() {
            Some(replicated) => replicated.commit(commits).await,
            None => Ok(self.writer.commit_offsets(commits).await?),
        }
    }

    /// Refuses unless the group has no members, through any door.
    pub fn ensure_empty(&self, group: &str) -> Result<(), GroupsError> {
        self.check_other_door(group)?;
        Ok(self.lock().ensure_empty(group)?)
    }

    /// A group's committed offsets.
    pub async fn committed(&self, group: String) -> Result<Vec<PartitionOffset>, GroupsError> {
        let this = self.clone();
        let committed =
            tokio::task::spawn_blocking(move || this.committed_blocking(&group)).await??;
        Ok(committed
            .into_iter()
            .map(|c| PartitionOffset {
                topic: c.topic,
                partition: c.partition,
                offset: c.offset,
            })
            .collect())
    }

    /// A group's committed offsets, from the control log on a cluster node,
    /// else from the store (which blocks).
    pub fn committed_blocking(&self, group: &str) -> Result<Vec<CommittedOffset>, GroupsError> {
        match self.replicated.get() {
            Some(replicated) => Ok(replicated.committed(group)),
            None => Ok(self.store.committed_offsets(group)?),
        }
    }

    /// Groups with committed offsets (which blocks off a cluster).
    pub fn committed_groups_blocking(&self) -> Result<Vec<String>, GroupsError> {
        match self.replicated.get() {
            Some(replicated) => Ok(replicated.groups()),
            None => Ok(self.store.groups()?),
        }
    }

    /// Groups with members or committed offsets.
    pub async fn list(&self) -> Result<Vec<String>, GroupsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut names: BTreeSet<String> = this.lock().active_groups().into_iter().collect();
            names.extend(this.committed_groups_blocking()?);
            Ok(names.into_iter().collect())
        })
        .await?
    }

    /// Members, what they own, and per partition of the group's topics the
    /// committed offset and log end.
    pub async fn describe(&self, group: String) -> Result<Description, GroupsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.describe_blocking(&group)).await?
    }

    fn describe_blocking(&self, group: &str) -> Result<Description, GroupsError> {
        let description = self.lock().describe(group);
        let committed = self.committed_blocking(group)?;
        if description.is_none() && committed.is_empty() {
            return Err(GroupsError::UnknownGroup(group.to_owned()));
        }
        let mut topics: BTreeSet<String> = committed.iter().map(|c| c.topic.clone()).collect();
        let (generation, strategy, members) = match description {
            Some(d) => {
                for m in &d.members {
                    topics.extend(m.topics.iter().cloned());
                }
                let members = d
                    .members
                    .into_iter()
                    .map(|m| MemberInfo {
                        member_id: m.id,
                        topics: m.topics,
                        owned: m.owned,
                    })
                    .collect();
                (d.generation, d.strategy, members)
            }
            None => (0, AssignmentStrategy::default(), Vec::new()),
        };
        let mut lag = Vec::new();
        for topic in topics {
            let Ok(Some(spec)) = self.store.topic(&topic) else {
                continue;
            };
            for partition in 0..spec.partitions {
                let log_end = self.writer.high_watermark(&topic, partition).unwrap_or(0);
                let committed = committed
                    .iter()
                    .find(|c| c.topic == topic && c.partition == partition)
                    .map(|c| c.offset);
                lag.push(GroupLag {
                    topic: topic.clone(),
                    partition,
                    committed,
                    log_end,
                });
            }
        }
        Ok(Description {
            generation,
            strategy,
            members,
            lag,
        })
    }

    /// Removes a group's offsets, only while it has no members.
    pub async fn delete(&self, group: String) -> Result<(), GroupsError> {
        self.ensure_empty(&group)?;
        if let Some(replicated) = self.replicated.get() {
            return match replicated.delete(&group).await? {
                true => Ok(()),
                false => Err(GroupsError::UnknownGroup(group)),
            };
        }
        let store = self.store.clone();
        let deleted = tokio::task::spawn_blocking({
            let group = group.clone();
            move || store.delete_group(&group)
        })
        .await??;
        if deleted {
            Ok(())
        } else {
            Err(GroupsError::UnknownGroup(group))
        }
    }
}

/// Heartbeat often enough that two can be lost within a session.
pub fn heartbeat_interval(session: Duration) -> u32 {
    (session / 3).as_millis().min(u128::from(u32::MAX)) as u32
}
