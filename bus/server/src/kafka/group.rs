//! Consumer groups of Kafka clients: `FindCoordinator`, `JoinGroup`,
//! `SyncGroup`, `Heartbeat`, `LeaveGroup`, `OffsetCommit`, `OffsetFetch`,
//! `ListGroups`, `DescribeGroups`.
//!
//! Membership follows Kafka's classic protocol ([`Coordinator`]); offsets
//! are the broker's stored group offsets, committed through the same
//! writer as `edgebus consume --group`'s, so a group can stop under one
//! kind of client and resume under the other where it left off. A group
//! has members of one kind at a time: a Kafka client cannot join a group
//! that has `edgebus` members (`INCONSISTENT_GROUP_PROTOCOL`), and Kafka
//! clients commit only while the group has no `edgebus` members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_proto::frame::PartitionOffset;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{Notify, oneshot};

use super::api::{Call, NODE_ID, str_bytes};
use super::coordinator::{
    Answer, Coordinator, Join, JoinOutcome, Joined, MAX_REBALANCE_TIMEOUT, SyncOutcome, Synced,
};
use super::error;
use super::listener::Door;
use crate::groups;

/// Least time between two checks of sessions and rebalance deadlines: the
/// longest delay between a deadline and what it causes.
pub const TICK: Duration = Duration::from_millis(50);
/// `FindCoordinator` key type of a transaction coordinator.
const KEY_TYPE_TRANSACTION: i8 = 1;

type Waiters<T> = HashMap<(String, String), oneshot::Sender<T>>;

struct Inner {
    coordinator: Coordinator,
    joins: Waiters<Joined>,
    syncs: Waiters<Synced>,
}

impl Inner {
    /// Hands answers the coordinator decided to the requests held for them.
    fn deliver(&mut self) {
        for answer in self.coordinator.poll() {
            match answer {
                Answer::Join(group, member, joined) => {
                    if let Some(tx) = self.joins.remove(&(group, member)) {
                        let _ = tx.send(joined);
                    }
                }
                Answer::Sync(group, member, synced) => {
                    if let Some(tx) = self.syncs.remove(&(group, member)) {
                        let _ = tx.send(synced);
                    }
                }
            }
        }
    }
}

/// The coordinator locked for a request. Unlocking wakes the timer, since
/// what the request did may have brought a deadline closer than the one
/// it sleeps until (a new group's, or a session no longer held by a join).
struct Locked<'a> {
    inner: std::sync::MutexGuard<'a, Inner>,
    changed: &'a Notify,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.changed.notify_one();
    }
}

/// The Kafka door's consumer groups. Cheap to clone.
#[derive(Clone)]
pub struct ClassicGroups {
    inner: Arc<Mutex<Inner>>,
    /// Wakes the timer: see [`Locked`].
    changed: Arc<Notify>,
}

impl ClassicGroups {
    /// Groups whose first assignment waits `initial_delay` for members.
    pub fn new(initial_delay: Duration) -> ClassicGroups {
        ClassicGroups {
            inner: Arc::new(Mutex::new(Inner {
                coordinator: Coordinator::new(initial_delay),
                joins: HashMap::new(),
                syncs: HashMap::new(),
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The coordinator, for a request: see [`Locked`].
    fn lock(&self) -> Locked<'_> {
        Locked {
            inner: self.inner.lock().unwrap_or_else(|p| p.into_inner()),
            changed: &self.changed,
        }
    }

    /// Whether Kafka clients are members of `group`.
    pub fn has_members(&self, group: &str) -> bool {
        self.lock().coordinator.has_members(group)
    }

    /// Runs `f` on the coordinator and delivers what it decided.
    fn with<T>(&self, f: impl FnOnce(&mut Coordinator) -> T) -> T {
        let mut inner = self.lock();
        let out = f(&mut inner.coordinator);
        inner.deliver();
        out
    }

    /// Expires sessions and ends rebalances as their deadlines come, at
    /// most once per [`TICK`], and sleeps while no group has one; never
    /// returns.
    pub async fn run_timer(self) {
        loop {
            let next = {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                inner.coordinator.tick(Instant::now());
                inner.deliver();
                inner.coordinator.next_deadline()
            };
            tokio::time::sleep(TICK).await;
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into());
            tokio::select! {
                () = sleep, if next.is_some() => {}
                () = self.changed.notified() => {}
            }
        }
    }

    async fn join(&self, group: &str, join: Join) -> Joined {
        let refused = |e: ResponseError, member_id: &str| Joined {
            error: e.code(),
            generation: -1,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
        };
        let asked = join.member_id.clone();
        let rx = {
            let mut inner = self.lock();
            let outcome = inner.coordinator.join(Instant::now(), group, join);
            let rx = match outcome {
                JoinOutcome::Refused(e) => return refused(e, &asked),
                JoinOutcome::Held(member) => {
                    let (tx, rx) = oneshot::channel();
                    inner.joins.insert((group.to_owned(), member.clone()), tx);
                    (member, rx)
                }
            };
            inner.deliver();
            rx
        };
        let (member, rx) = rx;
        match tokio::time::timeout(MAX_REBALANCE_TIMEOUT + TICK * 2, rx).await {
            Ok(Ok(joined)) => joined,
            _ => refused(ResponseError::RebalanceInProgress, &member),
        }
    }

    async fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Synced {
        let rx = {
            let mut inner = self.lock();
            let outcome =
                inner
                    .coordinator
                    .sync(Instant::now(), group, member, generation, assignments);
            let rx = match outcome {
                SyncOutcome::Now(synced) => {
                    inner.deliver();
                    return synced;
                }
                SyncOutcome::Held => {
                    let (tx, rx) = oneshot::channel();
                    inner
                        .syncs
                        .insert((group.to_owned(), member.to_owned()), tx);
                    rx
                }
            };
            inner.deliver();
            rx
        };
        match tokio::time::timeout(MAX_REBALANCE_TIMEOUT + TICK * 2, rx).await {
            Ok(Ok(synced)) => synced,
            _ => Synced {
                error: ResponseError::RebalanceInProgress.code(),
                protocol_type: String::new(),
                protocol: String::new(),
                assignment: Bytes::new(),
            },
        }
    }
}

/// Which broker coordinates `group`: this one on a single node; on a
/// cluster node the group's coordinator (see `Cluster::coordinator`), by
/// the Kafka address it advertises.
fn coordinator_of(
    door: &Door,
    call: &Call,
    group: &str,
) -> Result<(i32, String, i32), ResponseError> {
    let Some(cluster) = &door.broker.cluster else {
        let (host, port) = call.advertised.clone();
        return Ok((NODE_ID, host, port));
    };
    let unavailable = ResponseError::CoordinatorNotAvailable;
    let (node, _) = cluster.coordinator(group).ok_or(unavailable)?;
    let address = cluster.kafka_brokers().remove(&node).ok_or(unavailable)?;
    let (host, port) = address.rsplit_once(':').ok_or(unavailable)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let id = i32::try_from(node).map_err(|_| unavailable)?;
    Ok((id, host, port.parse().map_err(|_| unavailable)?))
}

/// `JoinGroup` sent to a cluster node that does not coordinate the group.
fn not_coordinator(door: &Door, group: &str) -> bool {
    door.broker.cluster.as_ref().is_some_and(|cluster| {
        cluster
            .coordinator(group)
            .is_none_or(|(node, _)| node != cluster.node())
    })
}

/// `FindCoordinator`: the broker coordinating each group.
pub fn find_coordinator(
    door: &Door,
    call: &Call,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let find = |key: &str| {
        if request.key_type == KEY_TYPE_TRANSACTION {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        coordinator_of(door, call, key)
    };
    let mut response = FindCoordinatorResponse::default();
    if call.version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let entry = CoordinatorEntry::default().with_key(key.clone());
                match find(key.as_str()) {
                    Err(e) => entry.with_error_code(e.code()).with_node_id(BrokerId(-1)),
                    Ok((node, host, port)) => entry
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(host))
                        .with_port(port),
                }
            })
            .collect();
    } else {
        match find(request.key.as_str()) {
            Err(e) => {
                response.error_code = e.code();
                response.node_id = BrokerId(-1);
            }
            Ok((node, host, port)) => {
                response.node_id = BrokerId(node);
                response.host = str_bytes(host);
                response.port = port;
            }
        }
    }
    response
}

/// `JoinGroup`: held until the rebalance completes.
pub async fn join(door: &Door, call: &Call, request: JoinGroupRequest) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let mut response = JoinGroupResponse::default()
        .with_generation_id(-1)
        .with_member_id(request.member_id.clone());
    if groups::check_name(&group).is_err() {
        response.error_code = ResponseError::InvalidGroupId.code();
        return response;
    }
    if not_coordinator(door, &group) {
        response.error_code = ResponseError::NotCoordinator.code();
        return response;
    }
    if door.broker.groups.has_members(&group) {
        // The group's members are edgebus consumers.
        response.error_code = ResponseError::InconsistentGroupProtocol.code();
        return response;
    }
    let session = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    let rebalance = if call.version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let join = Join {
        member_id: request.member_id.to_string(),
        client_id: call.client_id.clone(),
        client_host: format!("/{}", call.peer.ip()),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
    };
    let joined = door.groups.join(&group, join).await;
    response.error_code = joined.error;
    response.generation_id = joined.generation;
    response.member_id = str_bytes(joined.member_id);
    if joined.error == 0 {
        response.protocol_type = Some(str_bytes(joined.protocol_type));
        response.protocol_name = Some(str_bytes(joined.protocol));
        response.leader = str_bytes(joined.leader);
        response.members = joined
            .members
            .into_iter()
            .map(|(id, metadata)| {
                JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(id))
                    .with_metadata(metadata)
            })
            .collect();
    }
    response
}

/// `SyncGroup`: the leader's assignment, once it has sent it.
pub async fn sync(door: &Door, request: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let synced = door
        .groups
        .sync(
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.generation_id,
            assignments,
        )
        .await;
    let mut response = SyncGroupResponse::default()
        .with_error_code(synced.error)
        .with_assignment(synced.assignment);
    if synced.error == 0 {
        response.protocol_type = Some(str_bytes(synced.protocol_type));
        response.protocol_name = Some(str_bytes(synced.protocol));
    }
    response
}

/// `Heartbeat`.
pub fn heartbeat(door: &Door, request: HeartbeatRequest) -> HeartbeatResponse {
    let beat = door.groups.with(|c| {
        c.heartbeat(
            Instant::now(),
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.generation_id,
        )
    });
    HeartbeatResponse::default().with_error_code(beat.err().map_or(0, |e| e.code()))
}

/// `LeaveGroup`: one member (up to v2) or several.
pub fn leave(door: &Door, request: LeaveGroupRequest) -> LeaveGroupResponse {
    let group = request.group_id.0.as_str();
    let mut response = LeaveGroupResponse::default();
    if request.members.is_empty() {
        let left = door
            .groups
            .with(|c| c.leave(Instant::now(), group, request.member_id.as_str()));
        response.error_code = left.err().map_or(0, |e| e.code());
        return response;
    }
    for member in request.members {
        let left = door
            .groups
            .with(|c| c.leave(Instant::now(), group, member.member_id.as_str()));
        response.members.push(
            MemberResponse::default()
                .with_member_id(member.member_id)
                .with_group_instance_id(member.group_instance_id)
                .with_error_code(left.err().map_or(0, |e| e.code())),
        );
    }
    response
}

/// `OffsetCommit`: fenced by the member's generation, stored with the
/// group offsets `edgebus consume --group` reads.
pub async fn offset_commit(door: &Door, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let b = &door.broker;
    let fenced = door.groups.with(|c| {
        c.check_commit(
            &group,
            request.member_id.as_str(),
            request.generation_id_or_member_epoch,
        )
    });
    let mut offsets = Vec::new();
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions = b.topics.spec(&name).map_or(0, |s| s.partitions);
        let mut codes = Vec::new();
        for p in topic.partitions {
            let code = match (fenced, u32::try_from(p.partition_index)) {
                (Err(e), _) => e.code(),
                (Ok(()), Ok(i)) if i < partitions => match u64::try_from(p.committed_offset) {
                    Ok(offset) => {
                        offsets.push(PartitionOffset {
                            topic: name.clone(),
                            partition: i,
                            offset,
                        });
                        0
                    }
                    Err(_) => ResponseError::InvalidCommitOffsetSize.code(),
                },
                (Ok(()), _) => ResponseError::UnknownTopicOrPartition.code(),
            };
            codes.push((p.partition_index, code));
        }
        results.push((topic.name, codes));
    }
    let stored = if offsets.is_empty() {
        0
    } else {
        match b.groups.commit(&group, "", 0, offsets).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::info!(group = %group, error = %e, "kafka offset commit refused");
                error::code(&e)
            }
        }
    };
    let mut response = OffsetCommitResponse::default();
    for (name, codes) in results {
        let mut topic = OffsetCommitResponseTopic::default().with_name(name);
        for (partition, code) in codes {
            topic.partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(if code == 0 { stored } else { code }),
            );
        }
        response.topics.push(topic);
    }
    response
}

/// A group's committed offsets, for the topics asked (all when `None`):
/// `(topic, [(partition, offset or -1)])`.
async fn committed(
    door: &Door,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, i64)>)>, i16> {
    let stored = door
        .broker
        .groups
        .committed(group.to_owned())
        .await
        .map_err(|e| error::code(&e))?;
    let find = |topic: &str, partition: i32| {
        stored
            .iter()
            .find(|c| c.topic == topic && i64::from(c.partition) == i64::from(partition))
            .map_or(-1, |c| c.offset as i64)
    };
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let offsets = partitions.iter().map(|&p| (p, find(&topic, p))).collect();
                (topic, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: Vec<(String, Vec<(i32, i64)>)> = Vec::new();
            for c in &stored {
                let entry = (c.partition as i32, c.offset as i64);
                match by_topic.iter_mut().find(|(t, _)| *t == c.topic) {
                    Some((_, offsets)) => offsets.push(entry),
                    None => by_topic.push((c.topic.clone(), vec![entry])),
                }
            }
            by_topic
        }
    })
}

/// `OffsetFetch`: one group (up to v7) or several (v8).
pub async fn offset_fetch(
    door: &Door,
    call: &Call,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if call.version < 8 {
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        match committed(door, request.group_id.0.as_str(), topics).await {
            Ok(found) => {
                response.topics = found
                    .into_iter()
                    .map(|(topic, offsets)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(str_bytes(topic)))
                            .with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|(p, offset)| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(-1)
                                            .with_metadata(Some(StrBytes::new()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            Err(code) => response.error_code = code,
        }
        return response;
    }
    for group in request.groups {
        let topics = group.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let mut answer = OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
        match committed(door, group.group_id.0.as_str(), topics).await {
            Ok(found) => {
                answer.topics = found
                    .into_iter()
                    .map(|(topic, offsets)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(topic)))
                            .with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|(p, offset)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(-1)
                                            .with_metadata(Some(StrBytes::new()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            Err(code) => answer.error_code = code,
        }
        response.groups.push(answer);
    }
    response
}

/// A group as `ListGroups` and `DescribeGroups` show it: Kafka groups with
/// their state; edgebus groups with members as `Stable` of protocol type
/// `edgebus`, and groups with only committed offsets as `Empty`.
async fn native_state(door: &Door, group: &str) -> Option<(&'static str, Vec<String>)> {
    let d = door.broker.groups.describe(group.to_owned()).await.ok()?;
    let members: Vec<String> = d.members.into_iter().map(|m| m.member_id).collect();
    let state = if members.is_empty() {
        "Empty"
    } else {
        "Stable"
    };
    Some((state, members))
}

/// `ListGroups`.
pub async fn list_groups(door: &Door, request: ListGroupsRequest) -> ListGroupsResponse {
    let kafka = door.groups.with(|c| c.list());
    let mut listed: Vec<(String, String, String)> = kafka
        .into_iter()
        .map(|(name, protocol_type, state)| (name, protocol_type, state.name().to_owned()))
        .collect();
    let mut response = ListGroupsResponse::default();
    match door.broker.groups.list().await {
        Ok(names) => {
            for name in names {
                if listed.iter().any(|(n, _, _)| *n == name) {
                    continue;
                }
                if let Some((state, members)) = native_state(door, &name).await {
                    let protocol_type = if members.is_empty() { "" } else { "edgebus" };
                    listed.push((name, protocol_type.to_owned(), state.to_owned()));
                }
            }
        }
        Err(e) => response.error_code = error::code(&e),
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    response.groups = listed
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_ascii_lowercase()))
        .map(|(name, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(name)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(str_bytes(state))
                .with_group_type(StrBytes::from_static_str("classic"))
        })
        .collect();
    response
}

/// `DescribeGroups`: unknown groups are `Dead`, as Kafka shows them.
pub async fn describe_groups(
    door: &Door,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group in request.groups {
        let name = group.0.to_string();
        let mut described = DescribedGroup::default().with_group_id(group);
        if let Some(view) = door.groups.with(|c| c.describe(&name)) {
            described.group_state = StrBytes::from_static_str(view.state.name());
            described.protocol_type = str_bytes(view.protocol_type);
            described.protocol_data = str_bytes(view.protocol);
            described.members = view
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
        } else if let Some((state, members)) = native_state(door, &name).await {
            described.group_state = StrBytes::from_static_str(state);
            if !members.is_empty() {
                described.protocol_type = StrBytes::from_static_str("edgebus");
            }
            described.members = members
                .into_iter()
                .map(|id| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(id))
                        .with_client_id(StrBytes::from_static_str("edgebus"))
                })
                .collect();
        } else {
            described.group_state = StrBytes::from_static_str("Dead");
        }
        response.groups.push(described);
    }
    response
}
