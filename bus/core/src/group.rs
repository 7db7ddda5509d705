//! The consumer-group coordinator, as a state machine with no IO.
//!
//! Time arrives as an argument (`now`), and the caller learns which members
//! must be told about a new assignment from [`GroupCoordinator::poll_changed`].
//! The broker drives it from heartbeat requests and a timer; tests drive it
//! with a virtual clock.
//!
//! # Protocol
//!
//! The broker computes assignments (as in Kafka's KIP-848), and hands a
//! partition over only once its previous owner has let go of it:
//!
//! 1. A member joins with the topics it wants and gets a member id.
//! 2. It heartbeats within its session timeout, reporting the partitions it
//!    currently owns. Each answer is the set it may consume now:
//!    what it owns and is still meant to have, plus any partition meant for
//!    it that no other member still owns.
//! 3. A partition missing from an answer is revoked: the member commits what
//!    it processed and stops reading it, and its next heartbeat no longer
//!    reports it. Only then does the partition go to its new owner, which
//!    resumes from that commit. So no partition is ever read by two members
//!    at once, and nothing committed before a handoff is delivered again.
//! 4. A member that leaves, or misses its session timeout, owns nothing any
//!    more; its partitions go to the others on their next heartbeat.
//!
//! Every membership change bumps the group's generation and recomputes the
//! target assignment. Each member has an epoch that bumps whenever its
//! answer changes; offset commits must carry the current epoch and name
//! partitions the member owns, so a zombie cannot overwrite progress.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgebus_proto::frame::{AssignmentStrategy, TopicPartition};

/// Why a group request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The member is not in the group: it never joined, left, or was
    /// expired after missing its session timeout.
    #[error("member {member:?} is not in group {group:?}")]
    UnknownMember {
        /// Group name.
        group: String,
        /// Member id.
        member: String,
    },
    /// The request carries an epoch that is not the member's current one.
    #[error("stale generation {got} for member {member:?}, current is {current}")]
    StaleGeneration {
        /// Member id.
        member: String,
        /// Epoch in the request.
        got: u32,
        /// Current epoch.
        current: u32,
    },
    /// A commit names a partition the member does not own.
    #[error("member {member:?} does not own {topic}/{partition}")]
    NotAssigned {
        /// Member id.
        member: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The group has members; the operation needs it empty.
    #[error("group {0:?} has active members")]
    NotEmpty(String),
    /// A parameter is out of range.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// What a member may consume now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The member's epoch; offset commits must carry it.
    pub epoch: u32,
    /// The group's generation.
    pub generation: u32,
    /// Partitions the member may consume now, sorted.
    pub partitions: Vec<TopicPartition>,
}

/// Session timeout bounds, as in Kafka.
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest session timeout accepted.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// Members a group may have.
pub const MAX_MEMBERS: usize = 1024;

#[derive(Debug)]
struct Member {
    topics: BTreeSet<String>,
    session_timeout: Duration,
    last_seen: Instant,
    /// Partitions the member holds: granted to it, and not yet reported
    /// released.
    owned: BTreeSet<TopicPartition>,
    /// What the last answer granted.
    granted: BTreeSet<TopicPartition>,
    epoch: u32,
}

#[derive(Debug, Default)]
struct Group {
    generation: u32,
    strategy: AssignmentStrategy,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
}

/// A member as [`GroupCoordinator::describe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it owns now.
    pub owned: Vec<TopicPartition>,
    /// Its current epoch.
    pub epoch: u32,
}

/// A group as [`GroupCoordinator::describe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Generation.
    pub generation: u32,
    /// Assignment strategy.
    pub strategy: AssignmentStrategy,
    /// Members, by id.
    pub members: Vec<MemberDescription>,
}

/// All consumer groups of a broker.
#[derive(Debug, Default)]
pub struct GroupCoordinator {
    topics: BTreeMap<String, u32>,
    groups: BTreeMap<String, Group>,
    next_member: u64,
    changed: BTreeSet<(String, String)>,
}

impl GroupCoordinator {
    /// A coordinator that knows no topics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a topic's partition count (new topic, or more partitions).
    /// Groups subscribed to it rebalance.
    pub fn set_topic(&mut self, topic: &str, partitions: u32) {
        if self.topics.insert(topic.to_owned(), partitions) == Some(partitions) {
            return;
        }
        self.rebalance_subscribers(topic);
    }

    /// Forgets a deleted topic. Groups subscribed to it rebalance.
    pub fn remove_topic(&mut self, topic: &str) {
        if self.topics.remove(topic).is_some() {
            for group in self.groups.values_mut() {
                for member in group.members.values_mut() {
                    member.owned.retain(|tp| tp.topic != topic);
                }
            }
            self.rebalance_subscribers(topic);
        }
    }

    fn rebalance_subscribers(&mut self, topic: &str) {
        let names: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.members.values().any(|m| m.topics.contains(topic)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.rebalance(&name);
        }
    }

    /// Adds a member (or re-joins `member_id` if it is still in the group)
    /// and returns its id and first assignment.
    pub fn join(
        &mut self,
        now: Instant,
        group: &str,
        member_id: Option<&str>,
        topics: &[String],
        session_timeout: Duration,
        strategy: AssignmentStrategy,
    ) -> Result<(String, Assignment), GroupError> {
        if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&session_timeout) {
            return Err(GroupError::Invalid(format!(
                "session timeout {session_timeout:?} is outside {MIN_SESSION_TIMEOUT:?}..={MAX_SESSION_TIMEOUT:?}"
            )));
        }
        if topics.is_empty() {
            return Err(GroupError::Invalid(
                "subscribe to at least one topic".into(),
            ));
        }
        let entry = self.groups.entry(group.to_owned()).or_default();
        if entry.members.is_empty() {
            entry.strategy = strategy;
        }
        let topics: BTreeSet<String> = topics.iter().cloned().collect();
        let id = match member_id.filter(|id| entry.members.contains_key(*id)) {
            Some(id) => {
                let m = entry.members.get_mut(id).expect("checked above");
                m.last_seen = now;
                m.session_timeout = session_timeout;
                if m.topics != topics {
                    m.topics = topics;
                    self.rebalance(group);
                }
                id.to_owned()
            }
            None => {
                if entry.members.len() >= MAX_MEMBERS {
                    return Err(GroupError::Invalid(format!(
                        "group {group:?} has {MAX_MEMBERS} members"
                    )));
                }
                self.next_member += 1;
                let id = format!("{group}-{}", self.next_member);
                entry.members.insert(
                    id.clone(),
                    Member {
                        topics,
                        session_timeout,
                        last_seen: now,
                        owned: BTreeSet::new(),
                        granted: BTreeSet::new(),
                        epoch: 0,
                    },
                );
                self.rebalance(group);
                id
            }
        };
        let assignment = self.answer(group, &id);
        Ok((id, assignment))
    }

    /// Records a heartbeat: the member is alive and holds `owned`. Returns
    /// what it may consume now.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        group: &str,
        member_id: &str,
        owned: &[TopicPartition],
    ) -> Result<Assignment, GroupError> {
        self.tick(now);
        let member = self.member_mut(group, member_id)?;
        member.last_seen = now;
        // A member can only hold what it was given; anything else it claims
        // is ignored.
        let reported: BTreeSet<TopicPartition> = owned.iter().cloned().collect();
        let before = member.owned.len();
        member.owned = member.owned.intersection(&reported).cloned().collect();
        if member.owned.len() < before {
            // It let go of something: whoever it was meant for may take it.
            let g = &self.groups[group];
            for id in g.members.keys().filter(|id| id.as_str() != member_id) {
                self.changed.insert((group.to_owned(), id.clone()));
            }
        }
        Ok(self.answer(group, member_id))
    }

    /// The member's answer as of now, without counting as a heartbeat: for
    /// re-checking a held heartbeat, which is not a new sign of life.
    pub fn current(&mut self, group: &str, member_id: &str) -> Result<Assignment, GroupError> {
        self.member_mut(group, member_id)?;
        Ok(self.answer(group, member_id))
    }

    /// Removes a member that is closing; its partitions go to the others.
    pub fn leave(&mut self, group: &str, member_id: &str) -> Result<(), GroupError> {
        self.member_mut(group, member_id)?;
        if let Some(g) = self.groups.get_mut(group) {
            g.members.remove(member_id);
        }
        self.rebalance(group);
        Ok(())
    }

    /// Expires members whose session timed out.
    pub fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (name, group) in &mut self.groups {
            let before = group.members.len();
            group
                .members
                .retain(|_, m| now.saturating_duration_since(m.last_seen) <= m.session_timeout);
            if group.members.len() != before {
                expired.push(name.clone());
            }
        }
        for name in expired {
            self.rebalance(&name);
        }
        self.groups.retain(|_, g| !g.members.is_empty());
    }

    /// When the first member's session runs out if nobody hears from it
    /// again: [`GroupCoordinator::tick`] at any later instant expires it.
    /// `None` without members. Heartbeats only move this later; a join may
    /// move it earlier.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.groups
            .values()
            .flat_map(|g| g.members.values())
            .map(|m| m.last_seen + m.session_timeout)
            .min()
    }

    /// Checks that `member_id` at `epoch` may commit offsets for `partitions`.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: u32,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        let member = self
            .groups
            .get(group)
            .and_then(|g| g.members.get(member_id))
            .ok_or_else(|| unknown(group, member_id))?;
        if epoch != member.epoch {
            return Err(GroupError::StaleGeneration {
                member: member_id.to_owned(),
                got: epoch,
                current: member.epoch,
            });
        }
        if let Some(tp) = partitions.iter().find(|tp| !member.owned.contains(*tp)) {
            return Err(GroupError::NotAssigned {
                member: member_id.to_owned(),
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        }
        Ok(())
    }

    /// Fails unless the group has no members (for offset resets).
    pub fn ensure_empty(&self, group: &str) -> Result<(), GroupError> {
        match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => Err(GroupError::NotEmpty(group.to_owned())),
            _ => Ok(()),
        }
    }

    /// Whether `member_id` is a live member of `group`.
    pub fn is_member(&self, group: &str, member_id: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.members.contains_key(member_id))
    }

    /// Names of groups that have members.
    pub fn active_groups(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Members and assignment of a group, if it has members.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group)?;
        Some(GroupDescription {
            generation: g.generation,
            strategy: g.strategy,
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    id: id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    owned: m.owned.iter().cloned().collect(),
                    epoch: m.epoch,
                })
                .collect(),
        })
    }

    /// Members whose answer may have changed since the last call: the
    /// broker wakes their waiting heartbeats.
    pub fn poll_changed(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    fn member_mut(&mut self, group: &str, member_id: &str) -> Result<&mut Member, GroupError> {
        self.groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(member_id))
            .ok_or_else(|| unknown(group, member_id))
    }

    /// The member's answer: what it owns and is meant to have, plus what is
    /// meant for it and owned by nobody else. Newly granted partitions
    /// count as owned from now on.
    fn answer(&mut self, group: &str, member_id: &str) -> Assignment {
        let g = self
            .groups
            .get_mut(group)
            .expect("caller checked the group");
        let target = g.target.get(member_id).cloned().unwrap_or_default();
        let taken: BTreeSet<&TopicPartition> = g
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| m.owned.iter())
            .collect();
        let free: Vec<TopicPartition> = target
            .iter()
            .filter(|tp| !taken.contains(tp))
            .cloned()
            .collect();
        let generation = g.generation;
        let member = g
            .members
            .get_mut(member_id)
            .expect("caller checked the member");
        let granted: BTreeSet<TopicPartition> = member
            .owned
            .intersection(&target)
            .cloned()
            .chain(free)
            .collect();
        if granted != member.granted {
            member.epoch += 1;
            member.granted = granted.clone();
        }
        member.owned.extend(granted.iter().cloned());
        Assignment {
            epoch: member.epoch,
            generation,
            partitions: granted.into_iter().collect(),
        }
    }

    /// Recomputes the target assignment after a membership change and
    /// marks every member to be told.
    fn rebalance(&mut self, group: &str) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.generation += 1;
        let subscriptions: BTreeMap<&str, &BTreeSet<String>> = g
            .members
            .iter()
            .map(|(id, m)| (id.as_str(), &m.topics))
            .collect();
        g.target = assign(g.strategy, &self.topics, &subscriptions, &g.target);
        for id in g.members.keys() {
            self.changed.insert((group.to_owned(), id.clone()));
        }
    }
}

fn unknown(group: &str, member: &str) -> GroupError {
    GroupError::UnknownMember {
        group: group.to_owned(),
        member: member.to_owned(),
    }
}

/// Computes a target assignment. `previous` is the last target, which the
/// sticky strategy keeps as much of as balance allows.
pub fn assign(
    strategy: AssignmentStrategy,
    topics: &BTreeMap<String, u32>,
    subscriptions: &BTreeMap<&str, &BTreeSet<String>>,
    previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> = subscriptions
        .keys()
        .map(|id| (id.to_string(), BTreeSet::new()))
        .collect();
    let subscribed: BTreeSet<&String> = subscriptions.values().flat_map(|t| t.iter()).collect();
    let mut round_robin_turn = 0usize;
    for topic in subscribed {
        let Some(&count) = topics.get(topic) else {
            continue;
        };
        let members: Vec<&str> = subscriptions
            .iter()
            .filter(|(_, t)| t.contains(topic))
            .map(|(id, _)| *id)
            .collect();
        let partitions: Vec<TopicPartition> = (0..count)
            .map(|p| TopicPartition::new(topic.as_str(), p))
            .collect();
        match strategy {
            AssignmentStrategy::Range => {
                let (per, extra) = (
                    partitions.len() / members.len(),
                    partitions.len() % members.len(),
                );
                let mut next = 0;
                for (i, id) in members.iter().enumerate() {
                    let n = per + usize::from(i < extra);
                    out.get_mut(*id)
                        .expect("every member has an entry")
                        .extend(partitions[next..next + n].iter().cloned());
                    next += n;
                }
            }
            AssignmentStrategy::RoundRobin => {
                for tp in partitions {
                    let id = members[round_robin_turn % members.len()];
                    round_robin_turn += 1;
                    out.get_mut(id)
                        .expect("every member has an entry")
                        .insert(tp);
                }
            }
            AssignmentStrategy::Sticky => sticky_topic(&members, partitions, previous, &mut out),
        }
    }
    out
}

/// Sticky assignment of one topic: each member keeps what it had, up to its
/// share; the rest goes to members below their share.
fn sticky_topic(
    members: &[&str],
    partitions: Vec<TopicPartition>,
    previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
    out: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    let valid: BTreeSet<&TopicPartition> = partitions.iter().collect();
    let mut kept: BTreeMap<&str, Vec<TopicPartition>> = members
        .iter()
        .map(|id| {
            let had = previous
                .get(*id)
                .map(|s| s.iter().filter(|tp| valid.contains(tp)).cloned().collect())
                .unwrap_or_default();
            (*id, had)
        })
        .collect();
    // Members that already hold the most get the extra share first, so
    // fewer partitions move.
    let mut order: Vec<&str> = members.to_vec();
    order.sort_by_key(|id| std::cmp::Reverse(kept[id].len()));
    let (per, extra) = (
        partitions.len() / members.len(),
        partitions.len() % members.len(),
    );
    let mut loose: BTreeSet<TopicPartition> = partitions.iter().cloned().collect();
    let mut quota: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, id) in order.iter().enumerate() {
        let share = per + usize::from(i < extra);
        let held = kept.get_mut(id).expect("every member has an entry");
        held.truncate(share);
        for tp in held.iter() {
            loose.remove(tp);
        }
        quota.insert(*id, share);
    }
    for tp in loose {
        let id = order
            .iter()
            .find(|id| kept[**id].len() < quota[**id])
            .expect("shares add up to the partition count");
        kept.get_mut(id)
            .expect("every member has an entry")
            .push(tp);
    }
    for (id, tps) in kept {
        out.get_mut(id)
            .expect("every member has an entry")
            .extend(tps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);

    struct Harness {
        coordinator: GroupCoordinator,
        now: Instant,
    }

    impl Harness {
        fn new(partitions: u32) -> Self {
            let mut coordinator = GroupCoordinator::new();
            coordinator.set_topic("t", partitions);
            Harness {
                coordinator,
                now: Instant::now(),
            }
        }

        fn join(&mut self) -> String {
            self.coordinator
                .join(
                    self.now,
                    "g",
                    None,
                    &["t".into()],
                    SESSION,
                    AssignmentStrategy::Sticky,
                )
                .unwrap()
                .0
        }

        /// Heartbeats every member (reporting what it was last granted)
        /// until no answer changes and the coordinator has nobody left to
        /// wake: the group has settled.
        fn settle(&mut self, ids: &[String]) -> BTreeMap<String, Vec<TopicPartition>> {
            let mut held: BTreeMap<String, Vec<TopicPartition>> =
                ids.iter().map(|id| (id.clone(), Vec::new())).collect();
            for _ in 0..10 {
                let mut changed = !self.coordinator.poll_changed().is_empty();
                for id in ids {
                    let a = self
                        .coordinator
                        .heartbeat(self.now, "g", id, &held[id])
                        .unwrap();
                    if a.partitions != held[id] {
                        held.insert(id.clone(), a.partitions);
                        changed = true;
                    }
                }
                if !changed && self.coordinator.poll_changed().is_empty() {
                    return held;
                }
            }
            panic!("group did not settle: {held:?}");
        }
    }

    fn no_partition_twice(held: &BTreeMap<String, Vec<TopicPartition>>) {
        let all: Vec<_> = held.values().flatten().collect();
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(
            all.len(),
            unique.len(),
            "a partition is held twice: {held:?}"
        );
    }

    #[test]
    fn three_members_on_six_partitions_get_two_each() {
        let mut h = Harness::new(6);
        let ids: Vec<String> = (0..3).map(|_| h.join()).collect();
        let held = h.settle(&ids);
        no_partition_twice(&held);
        assert!(held.values().all(|p| p.len() == 2), "{held:?}");
    }

    #[test]
    fn partition_is_not_granted_until_previous_owner_releases_it() {
        let mut h = Harness::new(2);
        let a = h.join();
        let first = h.coordinator.heartbeat(h.now, "g", &a, &[]).unwrap();
        assert_eq!(first.partitions.len(), 2);
        let b = h.join();
        // A has not reported releasing anything yet: B gets nothing.
        let b1 = h.coordinator.heartbeat(h.now, "g", &b, &[]).unwrap();
        assert!(b1.partitions.is_empty(), "{b1:?}");
        // A is told to keep one partition and give the other up.
        let a2 = h
            .coordinator
            .heartbeat(h.now, "g", &a, &first.partitions)
            .unwrap();
        assert_eq!(a2.partitions.len(), 1);
        let b2 = h.coordinator.heartbeat(h.now, "g", &b, &[]).unwrap();
        assert!(
            b2.partitions.is_empty(),
            "A still holds it until it reports"
        );
        h.coordinator
            .heartbeat(h.now, "g", &a, &a2.partitions)
            .unwrap();
        let b3 = h.coordinator.heartbeat(h.now, "g", &b, &[]).unwrap();
        assert_eq!(b3.partitions.len(), 1);
        assert_ne!(b3.partitions, a2.partitions);
    }

    #[test]
    fn expired_member_partitions_move_to_the_others() {
        let mut h = Harness::new(6);
        let ids: Vec<String> = (0..3).map(|_| h.join()).collect();
        let before = h.settle(&ids);
        // ids[2] stops heartbeating; the others keep going.
        h.now += SESSION / 2;
        for id in &ids[..2] {
            h.coordinator
                .heartbeat(h.now, "g", id, &before[id])
                .unwrap();
        }
        h.now += SESSION / 2 + Duration::from_millis(1);
        let after = h.settle(&ids[..2]);
        no_partition_twice(&after);
        assert_eq!(after.values().map(Vec::len).sum::<usize>(), 6);
        // Sticky: survivors keep what they had.
        for id in &ids[..2] {
            assert!(before[id].iter().all(|tp| after[id].contains(tp)));
        }
        assert!(matches!(
            h.coordinator.heartbeat(h.now, "g", &ids[2], &[]),
            Err(GroupError::UnknownMember { .. })
        ));
    }

    #[test]
    fn next_expiry_is_the_earliest_session_end_and_ticks_past_it_expire() {
        let mut h = Harness::new(2);
        assert_eq!(h.coordinator.next_expiry(), None);
        let a = h.join();
        h.now += SESSION / 2;
        let b = h.join();
        assert_eq!(h.coordinator.next_expiry(), Some(h.now + SESSION / 2));
        h.coordinator.heartbeat(h.now, "g", &a, &[]).unwrap();
        assert_eq!(h.coordinator.next_expiry(), Some(h.now + SESSION));
        let expiry = h.coordinator.next_expiry().unwrap();
        h.coordinator.tick(expiry);
        assert!(h.coordinator.is_member("g", &a) && h.coordinator.is_member("g", &b));
        h.coordinator.tick(expiry + Duration::from_millis(1));
        assert!(!h.coordinator.is_member("g", &a) && !h.coordinator.is_member("g", &b));
        assert_eq!(h.coordinator.next_expiry(), None);
    }

    #[test]
    fn commit_with_stale_epoch_or_unowned_partition_is_rejected() {
        let mut h = Harness::new(2);
        let a = h.join();
        let a1 = h.coordinator.heartbeat(h.now, "g", &a, &[]).unwrap();
        h.coordinator
            .check_commit("g", &a, a1.epoch, &a1.partitions)
            .unwrap();
        let b = h.join();
        let a2 = h
            .coordinator
            .heartbeat(h.now, "g", &a, &a1.partitions)
            .unwrap();
        assert!(a2.epoch > a1.epoch);
        assert!(matches!(
            h.coordinator
                .check_commit("g", &a, a1.epoch, &a1.partitions),
            Err(GroupError::StaleGeneration { .. })
        ));
        let b1 = h.coordinator.heartbeat(h.now, "g", &b, &[]).unwrap();
        assert!(matches!(
            h.coordinator
                .check_commit("g", &b, b1.epoch, &[TopicPartition::new("t", 0)]),
            Err(GroupError::NotAssigned { .. })
        ));
        h.coordinator.leave("g", &a).unwrap();
        assert!(matches!(
            h.coordinator
                .check_commit("g", &a, a2.epoch, &a2.partitions),
            Err(GroupError::UnknownMember { .. })
        ));
    }

    #[test]
    fn leave_rebalances_and_empty_group_allows_reset() {
        let mut h = Harness::new(4);
        let a = h.join();
        let b = h.join();
        h.settle(&[a.clone(), b.clone()]);
        assert!(matches!(
            h.coordinator.ensure_empty("g"),
            Err(GroupError::NotEmpty(_))
        ));
        h.coordinator.leave("g", &a).unwrap();
        let held = h.settle(std::slice::from_ref(&b));
        assert_eq!(held[&b].len(), 4);
        h.coordinator.leave("g", &b).unwrap();
        h.coordinator.tick(h.now);
        h.coordinator.ensure_empty("g").unwrap();
        assert!(h.coordinator.active_groups().is_empty());
    }

    #[test]
    fn new_partitions_are_assigned_after_topic_grows() {
        let mut h = Harness::new(2);
        let a = h.join();
        h.settle(std::slice::from_ref(&a));
        h.coordinator.set_topic("t", 5);
        let held = h.settle(std::slice::from_ref(&a));
        assert_eq!(held[&a].len(), 5);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join,
        Leave(usize),
        Heartbeat(usize),
        Advance(u64),
        Grow(u32),
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            2 => Just(Op::Join),
            1 => (0usize..8).prop_map(Op::Leave),
            6 => (0usize..8).prop_map(Op::Heartbeat),
            2 => (0u64..6_000).prop_map(Op::Advance),
            1 => (1u32..12).prop_map(Op::Grow),
        ]
    }

    proptest::proptest! {
        /// Whatever members do, no partition is ever held by two of them,
        /// and once they all heartbeat, every partition has an owner.
        #[test]
        fn random_membership_never_double_assigns_and_settles(
            ops in proptest::collection::vec(arb_op(), 1..80),
            strategy in proptest::prop_oneof![
                proptest::strategy::Just(AssignmentStrategy::Sticky),
                proptest::strategy::Just(AssignmentStrategy::Range),
                proptest::strategy::Just(AssignmentStrategy::RoundRobin),
            ],
        ) {
            let mut c = GroupCoordinator::new();
            c.set_topic("t", 6);
            let mut now = Instant::now();
            let mut held: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
            let mut partitions = 6;
            for op in ops {
                match op {
                    Op::Join => {
                        let (id, a) = c
                            .join(now, "g", None, &["t".into()], SESSION, strategy)
                            .unwrap();
                        held.insert(id, a.partitions);
                    }
                    Op::Leave(i) => {
                        if let Some(id) = held.keys().nth(i).cloned() {
                            c.leave("g", &id).unwrap();
                            held.remove(&id);
                        }
                    }
                    Op::Heartbeat(i) => {
                        if let Some(id) = held.keys().nth(i).cloned() {
                            match c.heartbeat(now, "g", &id, &held[&id]) {
                                Ok(a) => { held.insert(id, a.partitions); }
                                Err(GroupError::UnknownMember { .. }) => { held.remove(&id); }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Grow(n) => {
                        partitions = partitions.max(n);
                        c.set_topic("t", partitions);
                    }
                }
                // Members that expired no longer hold anything.
                c.tick(now);
                let live: BTreeSet<String> = c
                    .describe("g")
                    .map(|d| d.members.into_iter().map(|m| m.id).collect())
                    .unwrap_or_default();
                held.retain(|id, _| live.contains(id));
                no_partition_twice(&held);
            }
            let ids: Vec<String> = held.keys().cloned().collect();
            if !ids.is_empty() {
                let mut h = Harness { coordinator: c, now };
                let settled = h.settle(&ids);
                no_partition_twice(&settled);
                proptest::prop_assert_eq!(
                    settled.values().map(Vec::len).sum::<usize>(),
                    partitions as usize
                );
            }
        }
    }

    #[test]
    fn range_and_round_robin_spread_partitions() {
        let topics: BTreeMap<String, u32> = [("x".to_string(), 5u32)].into();
        let subs_set: BTreeSet<String> = ["x".to_string()].into();
        let subs: BTreeMap<&str, &BTreeSet<String>> = [("m1", &subs_set), ("m2", &subs_set)].into();
        let range = assign(AssignmentStrategy::Range, &topics, &subs, &BTreeMap::new());
        let parts = |id: &str, m: &BTreeMap<String, BTreeSet<TopicPartition>>| {
            m[id].iter().map(|tp| tp.partition).collect::<Vec<_>>()
        };
        assert_eq!(parts("m1", &range), vec![0, 1, 2]);
        assert_eq!(parts("m2", &range), vec![3, 4]);
        let rr = assign(
            AssignmentStrategy::RoundRobin,
            &topics,
            &subs,
            &BTreeMap::new(),
        );
        assert_eq!(parts("m1", &rr), vec![0, 2, 4]);
        assert_eq!(parts("m2", &rr), vec![1, 3]);
    }

    #[test]
    fn sticky_moves_only_what_balance_requires() {
        let topics: BTreeMap<String, u32> = [("x".to_string(), 6u32)].into();
        let s: BTreeSet<String> = ["x".to_string()].into();
        let two: BTreeMap<&str, &BTreeSet<String>> = [("a", &s), ("b", &s)].into();
        let first = assign(AssignmentStrategy::Sticky, &topics, &two, &BTreeMap::new());
        let three: BTreeMap<&str, &BTreeSet<String>> = [("a", &s), ("b", &s), ("c", &s)].into();
        let second = assign(AssignmentStrategy::Sticky, &topics, &three, &first);
        let moved: usize = ["a", "b"]
            .iter()
            .map(|id| first[*id].difference(&second[*id]).count())
            .sum();
        assert_eq!(moved, 2, "only c's share moves: {first:?} -> {second:?}");
        assert_eq!(second["c"].len(), 2);
    }
}
