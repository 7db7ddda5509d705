//! The IO side of consumer groups: drives the sans-IO
//! [`GroupCoordinator`] from requests and a timer, holds heartbeats open
//! until their member's assignment changes, and sends offset commits
//! through the group-commit writer.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgebus_core::group::{GroupCoordinator, GroupError};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{
    AssignmentStrategy, GroupLag, MemberInfo, PartitionOffset, Position, Response, TopicPartition,
};
use edgebus_store::{LogStore, OffsetCommit};
use tokio::sync::Notify;

use crate::broker::Broker;

/// How often the coordinator checks session timeouts: the delay between a
/// member's timeout and the rebalance it causes.
pub const TICK: Duration = Duration::from_millis(10);
/// Longest a heartbeat is held waiting for a change.
pub const MAX_HEARTBEAT_WAIT: Duration = Duration::from_secs(10);

/// Held heartbeats to wake, by (group, member).
type Wakers = HashMap<(String, String), Arc<Notify>>;

/// Consumer-group state of a broker.
#[derive(Clone, Default)]
pub struct Groups {
    coordinator: Arc<Mutex<GroupCoordinator>>,
    wakers: Arc<Mutex<Wakers>>,
}

/// The wire response for a coordinator error.
pub fn group_error(e: GroupError) -> Response {
    let code = match &e {
        GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
        GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
        GroupError::NotAssigned { .. } => ErrorCode::NotAssigned,
        GroupError::NotEmpty(_) => ErrorCode::GroupNotEmpty,
        _ => ErrorCode::InvalidRequest,
    };
    Response::error(code, e.to_string())
}

fn validate_group(group: &str) -> Result<(), Response> {
    edgebus_store::topic::check_name(group).map_err(|reason| {
        Response::error(
            ErrorCode::InvalidRequest,
            format!("invalid group name: {reason}"),
        )
    })
}

impl Groups {
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

    /// Expires members past their session timeout, every [`TICK`].
    pub async fn run_timer(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.lock().tick(Instant::now());
            self.wake();
            self.forget_expired();
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

    /// `JoinGroup`.
    pub fn join(
        &self,
        group: &str,
        member_id: &str,
        topics: &[String],
        session_timeout_ms: u32,
        requested: AssignmentStrategy,
    ) -> Response {
        if let Err(e) = validate_group(group) {
            return e;
        }
        let session = Duration::from_millis(session_timeout_ms.into());
        let joined = self.lock().join(
            Instant::now(),
            group,
            (!member_id.is_empty()).then_some(member_id),
            topics,
            session,
            requested,
        );
        self.wake();
        match joined {
            Ok((id, a)) => Response::GroupAssignment {
                member_id: id,
                epoch: a.epoch,
                generation: a.generation,
                heartbeat_interval_ms: heartbeat_interval(session),
                partitions: a.partitions,
            },
            Err(e) => group_error(e),
        }
    }

    /// `Heartbeat`: answers at once when the member must act (its
    /// assignment differs from what it owns), else when that happens or
    /// `wait_ms` passes.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        owned: &[TopicPartition],
        wait_ms: u32,
    ) -> Response {
        let mut owned = owned.to_vec();
        owned.sort();
        owned.dedup();
        let wait = Duration::from_millis(wait_ms.into()).min(MAX_HEARTBEAT_WAIT);
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
                    return group_error(e);
                }
            };
            let settled = assignment.partitions == owned;
            if !settled || tokio::time::Instant::now() >= deadline {
                return Response::GroupAssignment {
                    member_id: member_id.to_owned(),
                    epoch: assignment.epoch,
                    generation: assignment.generation,
                    heartbeat_interval_ms: wait_ms,
                    partitions: assignment.partitions,
                };
            }
            let _ = tokio::time::timeout_at(deadline, waker.notified()).await;
        }
    }

    /// `LeaveGroup`.
    pub fn leave(&self, group: &str, member_id: &str) -> Response {
        let left = self.lock().leave(group, member_id);
        self.forget(group, member_id);
        self.wake();
        match left {
            Ok(()) => Response::Done,
            Err(e) => group_error(e),
        }
    }

    /// `CommitOffsets`: fenced by member and epoch (or, with no member id,
    /// only while the group is empty), then stored through the writer.
    pub async fn commit(
        &self,
        broker: &Broker,
        group: &str,
        member_id: &str,
        epoch: u32,
        offsets: Vec<PartitionOffset>,
    ) -> Response {
        if let Err(e) = validate_group(group) {
            return e;
        }
        let tps: Vec<TopicPartition> = offsets
            .iter()
            .map(|o| TopicPartition::new(o.topic.clone(), o.partition))
            .collect();
        let fenced = if member_id.is_empty() {
            self.lock().ensure_empty(group)
        } else {
            self.lock().check_commit(group, member_id, epoch, &tps)
        };
        if let Err(e) = fenced {
            return group_error(e);
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
        match broker.writer().commit_offsets(commits).await {
            Ok(()) => Response::Done,
            Err(e) => e,
        }
    }

    /// `ListGroups`: groups with members or committed offsets.
    pub fn list(&self, store: &dyn LogStore) -> Response {
        let mut names: BTreeSet<String> = self.lock().active_groups().into_iter().collect();
        match store.groups() {
            Ok(stored) => names.extend(stored),
            Err(e) => return Response::error(ErrorCode::StorageError, e.to_string()),
        }
        Response::Groups(names.into_iter().collect())
    }

    /// `DescribeGroup`: members, what they own, and per partition of the
    /// group's topics the committed offset and log end.
    pub fn describe(&self, store: &dyn LogStore, group: &str) -> Response {
        let description = self.lock().describe(group);
        let committed = match store.committed_offsets(group) {
            Ok(c) => c,
            Err(e) => return Response::error(ErrorCode::StorageError, e.to_string()),
        };
        if description.is_none() && committed.is_empty() {
            return Response::error(ErrorCode::UnknownGroup, format!("unknown group {group:?}"));
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
            let Ok(Some(spec)) = store.topic(&topic) else {
                continue;
            };
            for partition in 0..spec.partitions {
                let log_end = store.offsets(&topic, partition).map_or(0, |o| o.log_end);
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
        Response::GroupDescription {
            generation,
            strategy,
            members,
            lag,
        }
    }

    /// `ResetOffsets`: points every partition of `topic` at `to`, only
    /// while the group has no members.
    pub async fn reset(&self, broker: &Broker, group: &str, topic: &str, to: Position) -> Response {
        if let Err(e) = validate_group(group) {
            return e;
        }
        if let Err(e) = self.lock().ensure_empty(group) {
            return group_error(e);
        }
        let Some(spec) = broker.topic_spec(topic) else {
            return Response::error(ErrorCode::UnknownTopic, format!("unknown topic {topic:?}"));
        };
        let mut offsets = Vec::with_capacity(spec.partitions as usize);
        for partition in 0..spec.partitions {
            let offset = match broker.resolve(topic, partition, to).await {
                Ok(o) => o,
                Err(e) => return e,
            };
            offsets.push(PartitionOffset {
                topic: topic.to_owned(),
                partition,
                offset,
            });
        }
        match self.commit(broker, group, "", 0, offsets.clone()).await {
            Response::Done => Response::CommittedOffsets(offsets),
            other => other,
        }
    }

    /// `DeleteGroup`: removes its offsets, only while it has no members.
    pub fn delete(&self, store: &dyn LogStore, group: &str) -> Response {
        if let Err(e) = self.lock().ensure_empty(group) {
            return group_error(e);
        }
        match store.delete_group(group) {
            Ok(true) => Response::Done,
            Ok(false) => {
                Response::error(ErrorCode::UnknownGroup, format!("unknown group {group:?}"))
            }
            Err(e) => Response::error(ErrorCode::StorageError, e.to_string()),
        }
    }
}

/// Heartbeat often enough that two can be lost within a session.
fn heartbeat_interval(session: Duration) -> u32 {
    (session / 3).as_millis().min(u128::from(u32::MAX)) as u32
}
