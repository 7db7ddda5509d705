//! Kafka's classic consumer-group protocol, as a state machine with no IO:
//! time arrives as an argument, and answers to requests it holds
//! (JoinGroup until the rebalance completes, a follower's SyncGroup until
//! the leader's assignment arrives) come out of [`Coordinator::poll`].
//!
//! ```text
//!  Empty ──join──▶ PreparingRebalance ──all joined / deadline──▶ CompletingRebalance
//!    ▲                  ▲      │                                    │ leader's SyncGroup
//!    └── last leaves ───┴──────┴─ join, leave, expiry ◀── Stable ◀──┘
//! ```
//!
//! The client-side leader computes the assignment; the coordinator only
//! gathers members, picks a protocol every member supports, and hands
//! the leader's assignment out. Offsets are not kept here: commits go to
//! the broker's stored group offsets, shared with `edgebus consume
//! --group`. Static membership (`group.instance.id`) is treated as
//! dynamic membership.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;

/// Session timeouts accepted (Kafka's `group.min.session.timeout.ms` and
/// `group.max.session.timeout.ms` bounds, widened below for tests and
/// small devices).
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest session timeout accepted.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest a rebalance waits for members to rejoin, whatever they ask.
pub const MAX_REBALANCE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Members one group may have (Kafka's `group.max.size` has no default
/// bound; this one keeps a group's state bounded).
pub const MAX_MEMBERS: usize = 1024;

/// Where a group is in a rebalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to (re)join until the deadline; `initial`
    /// when it waits the full delay of a new group for more members.
    PreparingRebalance {
        /// When the rebalance completes with whoever has joined.
        deadline: Instant,
        /// Whether this is a new group's initial delay.
        initial: bool,
    },
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl State {
    /// The name Kafka's tools show.
    pub fn name(&self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance { .. } => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// Protocols in the member's order of preference, with its metadata.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Its JoinGroup is held for the current rebalance.
    joining: bool,
    /// Its SyncGroup is held for the leader's assignment.
    syncing: bool,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// Kafka error code (0: none).
    pub error: i16,
    /// The new generation.
    pub generation: i32,
    /// The group's protocol type (`consumer`).
    pub protocol_type: String,
    /// The protocol every member supports (an assignor name).
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// The member this answer is for.
    pub member_id: String,
    /// For the leader only: every member's id and metadata.
    pub members: Vec<(String, Bytes)>,
}

/// A SyncGroup answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Synced {
    /// Kafka error code (0: none).
    pub error: i16,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The group's protocol.
    pub protocol: String,
    /// The member's assignment, as the leader encoded it.
    pub assignment: Bytes,
}

impl Synced {
    fn error(code: ResponseError) -> Synced {
        Synced {
            error: code.code(),
            protocol_type: String::new(),
            protocol: String::new(),
            assignment: Bytes::new(),
        }
    }
}

/// An answer to a held request, from [`Coordinator::poll`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A held JoinGroup of `(group, member)`.
    Join(String, String, Joined),
    /// A held SyncGroup of `(group, member)`.
    Sync(String, String, Synced),
}

/// What a JoinGroup gets at once.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    /// Held under this member id; the answer comes from `poll`.
    Held(String),
    /// Refused.
    Refused(ResponseError),
}

/// What a SyncGroup gets at once.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// Held; the answer comes from `poll`.
    Held,
    /// Answered now.
    Now(Synced),
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct Join {
    /// The member id, empty for a new member.
    pub member_id: String,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Time members get to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// Protocol type (`consumer` for consumers).
    pub protocol_type: String,
    /// Supported protocols and their metadata, preferred first.
    pub protocols: Vec<(String, Bytes)>,
}

/// A member as [`Coordinator::describe`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Its metadata for the group's protocol.
    pub metadata: Bytes,
    /// Its assignment.
    pub assignment: Bytes,
}

/// A group as [`Coordinator::describe`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// Its state.
    pub state: State,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol, once chosen.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberView>,
}

/// Every classic consumer group of the Kafka door.
#[derive(Debug)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_member: u64,
    initial_delay: Duration,
    answers: Vec<Answer>,
}

impl Coordinator {
    /// A coordinator whose new groups wait `initial_delay` for more
    /// members before their first assignment.
    pub fn new(initial_delay: Duration) -> Coordinator {
        Coordinator {
            groups: BTreeMap::new(),
            next_member: 0,
            initial_delay,
            answers: Vec::new(),
        }
    }

    /// Answers to held requests decided since the last call.
    pub fn poll(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }

    /// Whether `group` has members.
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// A member (re)joins; its answer is held until the rebalance
    /// completes.
    pub fn join(&mut self, now: Instant, group: &str, join: Join) -> JoinOutcome {
        if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&join.session_timeout) {
            return JoinOutcome::Refused(ResponseError::InvalidSessionTimeout);
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() {
            return JoinOutcome::Refused(ResponseError::InconsistentGroupProtocol);
        }
        let initial_delay = self.initial_delay;
        let g = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group {
                state: State::Empty,
                generation: 0,
                protocol_type: join.protocol_type.clone(),
                protocol: None,
                leader: None,
                members: BTreeMap::new(),
            });
        if g.members.is_empty() {
            g.protocol_type = join.protocol_type.clone();
        } else if g.protocol_type != join.protocol_type
            || !g.members.values().all(|m| {
                m.protocols
                    .iter()
                    .any(|(p, _)| join.protocols.iter().any(|(q, _)| p == q))
            })
        {
            return JoinOutcome::Refused(ResponseError::InconsistentGroupProtocol);
        }
        let member_id = if join.member_id.is_empty() {
            if g.members.len() >= MAX_MEMBERS {
                return JoinOutcome::Refused(ResponseError::GroupMaxSizeReached);
            }
            self.next_member += 1;
            let id = format!("{}-{}", join.client_id, self.next_member);
            g.members.insert(
                id.clone(),
                Member {
                    client_id: join.client_id.clone(),
                    client_host: join.client_host.clone(),
                    session_timeout: join.session_timeout,
                    rebalance_timeout: join.rebalance_timeout,
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_seen: now,
                    joining: false,
                    syncing: false,
                },
            );
            id
        } else if g.members.contains_key(&join.member_id) {
            join.member_id.clone()
        } else {
            return JoinOutcome::Refused(ResponseError::UnknownMemberId);
        };
        let m = g.members.get_mut(&member_id).expect("inserted or checked");
        m.protocols = join.protocols;
        m.session_timeout = join.session_timeout;
        m.rebalance_timeout = join.rebalance_timeout.min(MAX_REBALANCE_TIMEOUT);
        m.last_seen = now;
        m.joining = true;
        let state = g.state;
        match state {
            State::PreparingRebalance { .. } => {}
            State::Empty => {
                g.state = State::PreparingRebalance {
                    deadline: now + initial_delay,
                    initial: true,
                };
            }
            State::CompletingRebalance | State::Stable => self.prepare(now, group),
        }
        self.try_complete(now, group);
        JoinOutcome::Held(member_id)
    }

    /// Starts a rebalance: held syncs are told to rejoin.
    fn prepare(&mut self, now: Instant, group: &str) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let rebalance = g
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        g.state = State::PreparingRebalance {
            deadline: now + rebalance,
            initial: false,
        };
        for (id, m) in &mut g.members {
            if std::mem::take(&mut m.syncing) {
                self.answers.push(Answer::Sync(
                    group.to_owned(),
                    id.clone(),
                    Synced::error(ResponseError::RebalanceInProgress),
                ));
            }
        }
    }

    /// Completes a rebalance when every member has rejoined (or, for a
    /// new group, when its initial delay is over), or its deadline passed.
    fn try_complete(&mut self, now: Instant, group: &str) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let State::PreparingRebalance { deadline, initial } = g.state else {
            return;
        };
        let all_joined = g.members.values().all(|m| m.joining);
        if now < deadline && (initial || !all_joined) {
            return;
        }
        // Who did not rejoin in time is out.
        g.members.retain(|_, m| m.joining);
        g.generation += 1;
        if g.members.is_empty() {
            g.state = State::Empty;
            g.leader = None;
            g.protocol = None;
            return;
        }
        let leader = g
            .leader
            .clone()
            .filter(|l| g.members.contains_key(l))
            .unwrap_or_else(|| g.members.keys().next().expect("not empty").clone());
        let protocol = g.members[&leader]
            .protocols
            .iter()
            .map(|(p, _)| p.clone())
            .find(|p| {
                g.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == p))
            })
            .unwrap_or_default();
        let members: Vec<(String, Bytes)> = g
            .members
            .iter()
            .map(|(id, m)| (id.clone(), metadata_for(m, &protocol)))
            .collect();
        g.state = State::CompletingRebalance;
        g.leader = Some(leader.clone());
        g.protocol = Some(protocol.clone());
        for (id, m) in &mut g.members {
            m.joining = false;
            m.last_seen = now;
            m.assignment = Bytes::new();
            self.answers.push(Answer::Join(
                group.to_owned(),
                id.clone(),
                Joined {
                    error: 0,
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        members.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }

    /// A member asks for its assignment; the leader brings everyone's.
    pub fn sync(
        &mut self,
        now: Instant,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let Some(g) = self.groups.get_mut(group) else {
            return SyncOutcome::Now(Synced::error(ResponseError::UnknownMemberId));
        };
        if !g.members.contains_key(member_id) {
            return SyncOutcome::Now(Synced::error(ResponseError::UnknownMemberId));
        }
        if generation != g.generation {
            return SyncOutcome::Now(Synced::error(ResponseError::IllegalGeneration));
        }
        let protocol_type = g.protocol_type.clone();
        let protocol = g.protocol.clone().unwrap_or_default();
        let synced = |assignment: Bytes| Synced {
            error: 0,
            protocol_type: protocol_type.clone(),
            protocol: protocol.clone(),
            assignment,
        };
        g.members.get_mut(member_id).expect("checked").last_seen = now;
        match g.state {
            State::Empty | State::PreparingRebalance { .. } => {
                SyncOutcome::Now(Synced::error(ResponseError::RebalanceInProgress))
            }
            State::Stable => SyncOutcome::Now(synced(g.members[member_id].assignment.clone())),
            State::CompletingRebalance if g.leader.as_deref() != Some(member_id) => {
                g.members.get_mut(member_id).expect("checked").syncing = true;
                SyncOutcome::Held
            }
            State::CompletingRebalance => {
                let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                for (id, m) in &mut g.members {
                    m.assignment = given.remove(id).unwrap_or_default();
                    if std::mem::take(&mut m.syncing) {
                        self.answers.push(Answer::Sync(
                            group.to_owned(),
                            id.clone(),
                            synced(m.assignment.clone()),
                        ));
                    }
                }
                g.state = State::Stable;
                SyncOutcome::Now(synced(g.members[member_id].assignment.clone()))
            }
        }
    }

    /// A heartbeat; `REBALANCE_IN_PROGRESS` tells the member to rejoin.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ResponseError::UnknownMemberId)?;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        m.last_seen = now;
        match g.state {
            State::PreparingRebalance { .. } => Err(ResponseError::RebalanceInProgress),
            _ if generation != g.generation => Err(ResponseError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// A member leaves; the others rebalance.
    pub fn leave(
        &mut self,
        now: Instant,
        group: &str,
        member_id: &str,
    ) -> Result<(), ResponseError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or(ResponseError::UnknownMemberId)?;
        let m = g
            .members
            .remove(member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        self.removed(now, group, member_id, m);
        Ok(())
    }

    /// After a member is gone: its held requests are answered, and the
    /// group rebalances (or empties).
    fn removed(&mut self, now: Instant, group: &str, member_id: &str, m: Member) {
        if m.joining {
            self.answers.push(Answer::Join(
                group.to_owned(),
                member_id.to_owned(),
                Joined {
                    error: ResponseError::UnknownMemberId.code(),
                    generation: -1,
                    protocol_type: String::new(),
                    protocol: String::new(),
                    leader: String::new(),
                    member_id: member_id.to_owned(),
                    members: Vec::new(),
                },
            ));
        }
        if m.syncing {
            self.answers.push(Answer::Sync(
                group.to_owned(),
                member_id.to_owned(),
                Synced::error(ResponseError::UnknownMemberId),
            ));
        }
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if g.members.is_empty() {
            g.generation += 1;
            g.state = State::Empty;
            g.leader = None;
            g.protocol = None;
            return;
        }
        if !matches!(g.state, State::PreparingRebalance { .. }) {
            self.prepare(now, group);
        }
        self.try_complete(now, group);
    }

    /// Expires members past their session timeout (a held JoinGroup or
    /// SyncGroup keeps its member alive) and completes rebalances past
    /// their deadline.
    pub fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let expired: Vec<String> = self.groups[&name]
                .members
                .iter()
                .filter(|(_, m)| {
                    !m.joining
                        && !m.syncing
                        && now.saturating_duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %name, member = %id, "kafka group member expired");
                if let Some(m) = self
                    .groups
                    .get_mut(&name)
                    .and_then(|g| g.members.remove(&id))
                {
                    self.removed(now, &name, &id, m);
                }
            }
            self.try_complete(now, &name);
        }
        self.groups.retain(|_, g| g.state != State::Empty);
    }

    /// The first instant at which [`Coordinator::tick`] has something to
    /// do unless a request comes first (a session that runs out, a
    /// rebalance deadline); `None` with no groups.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sessions = self.groups.values().flat_map(|g| {
            g.members
                .values()
                .filter(|m| !m.joining && !m.syncing)
                // A session ends once strictly more than its timeout has
                // passed.
                .filter_map(|m| {
                    m.last_seen
                        .checked_add(m.session_timeout + Duration::from_nanos(1))
                })
        });
        let rebalances = self.groups.values().filter_map(|g| match g.state {
            State::PreparingRebalance { deadline, .. } => Some(deadline),
            _ => None,
        });
        sessions.chain(rebalances).min()
    }

    /// Whether an offset commit from `member_id` at `generation` may be
    /// stored: a member of the current generation, or (no member id,
    /// generation -1) anyone while the group has no members.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let g = match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => g,
            _ if member_id.is_empty() && generation < 0 => return Ok(()),
            _ => return Err(ResponseError::UnknownMemberId),
        };
        if !g.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if g.state == State::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// A group's state and members.
    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let g = self.groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state,
            protocol_type: g.protocol_type.clone(),
            protocol: protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: metadata_for(m, &protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group with members: name, protocol type, state.
    pub fn list(&self) -> Vec<(String, String, State)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.protocol_type.clone(), g.state))
            .collect()
    }
}

fn metadata_for(m: &Member, protocol: &str) -> Bytes {
    m.protocols
        .iter()
        .find(|(p, _)| p == protocol)
        .map(|(_, meta)| meta.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);
    const DELAY: Duration = Duration::from_millis(300);

    fn join(member: &str, client: &str) -> Join {
        Join {
            member_id: member.to_owned(),
            client_id: client.to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout: SESSION,
            rebalance_timeout: Duration::from_secs(5),
            protocol_type: "consumer".to_owned(),
            protocols: vec![("range".to_owned(), Bytes::from_static(b"meta"))],
        }
    }

    fn held(outcome: JoinOutcome) -> String {
        match outcome {
            JoinOutcome::Held(id) => id,
            other => panic!("expected a held join, got {other:?}"),
        }
    }

    fn joined(answers: &[Answer], member: &str) -> Joined {
        answers
            .iter()
            .find_map(|a| match a {
                Answer::Join(_, m, j) if m == member => Some(j.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no join answer for {member} in {answers:?}"))
    }

    /// Two members joined within a new group's initial delay share one
    /// generation; the leader alone gets the member list; the leader's
    /// SyncGroup releases the follower's held one with its assignment.
    #[test]
    fn coordinator_new_group_waits_initial_delay_then_leader_assigns() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(DELAY);
        let a = held(c.join(t0, "g", join("", "a")));
        let b = held(c.join(t0 + Duration::from_millis(100), "g", join("", "b")));
        assert!(c.poll().is_empty(), "still in the initial delay");
        c.tick(t0 + DELAY + Duration::from_millis(1));
        let answers = c.poll();
        let (ja, jb) = (joined(&answers, &a), joined(&answers, &b));
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty());
        assert_eq!(ja.protocol, "range");

        let now = t0 + Duration::from_secs(1);
        assert_eq!(c.sync(now, "g", &b, 1, vec![]), SyncOutcome::Held);
        let assignment = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let SyncOutcome::Now(leader) = c.sync(now, "g", &a, 1, assignment) else {
            panic!("the leader's sync is answered at once");
        };
        assert_eq!(leader.assignment, Bytes::from_static(b"A"));
        assert_eq!(
            c.poll(),
            vec![Answer::Sync(
                "g".into(),
                b.clone(),
                Synced {
                    error: 0,
                    protocol_type: "consumer".into(),
                    protocol: "range".into(),
                    assignment: Bytes::from_static(b"B"),
                }
            )]
        );
        assert_eq!(c.heartbeat(now, "g", &b, 1), Ok(()));
        assert_eq!(c.check_commit("g", &b, 1), Ok(()));
        assert_eq!(
            c.check_commit("g", &b, 0),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.check_commit("g", "", -1),
            Err(ResponseError::UnknownMemberId),
            "a simple commit only while the group has no members"
        );
    }

    /// The door's timer sleeps until `next_deadline`, so it must name the
    /// rebalance deadline while members join and the first session that
    /// can run out afterwards, and nothing once the groups are gone (the
    /// timer used to wake every 50 ms whatever the groups held).
    #[test]
    fn coordinator_next_deadline_is_the_first_thing_a_tick_would_do() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(DELAY);
        assert_eq!(c.next_deadline(), None, "no groups, nothing to wait for");
        let a = held(c.join(t0, "g", join("", "a")));
        assert_eq!(
            c.next_deadline(),
            Some(t0 + DELAY),
            "a joining member's session is held"
        );
        c.tick(t0 + DELAY - Duration::from_nanos(1));
        assert!(
            c.poll().is_empty(),
            "a tick before the deadline changes nothing"
        );
        c.tick(t0 + DELAY);
        assert_eq!(joined(&c.poll(), &a).generation, 1);
        let now = t0 + Duration::from_secs(1);
        let SyncOutcome::Now(_) = c.sync(now, "g", &a, 1, vec![]) else {
            panic!("the leader's sync is answered at once");
        };
        assert_eq!(c.heartbeat(now, "g", &a, 1), Ok(()));
        let expiry = now + SESSION + Duration::from_nanos(1);
        assert_eq!(c.next_deadline(), Some(expiry));
        c.tick(expiry - Duration::from_nanos(1));
        assert!(
            c.has_members("g"),
            "a tick before the deadline changes nothing"
        );
        c.tick(expiry);
        assert!(!c.has_members("g"), "the session ran out at the deadline");
        assert_eq!(c.next_deadline(), None);
    }

    /// A member leaving sends the others back to JoinGroup through their
    /// heartbeats; the rebalance completes as soon as all have rejoined.
    #[test]
    fn coordinator_leave_rebalances_the_rest_without_waiting_the_deadline() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(Duration::ZERO);
        let a = held(c.join(t0, "g", join("", "a")));
        assert_eq!(joined(&c.poll(), &a).generation, 1);
        let b = held(c.join(t0, "g", join("", "b")));
        assert_eq!(
            c.heartbeat(t0, "g", &a, 1),
            Err(ResponseError::RebalanceInProgress)
        );
        held(c.join(t0, "g", join(&a, "a")));
        let answers = c.poll();
        assert_eq!(joined(&answers, &a).generation, 2);
        assert_eq!(joined(&answers, &b).generation, 2);
        let SyncOutcome::Now(_) = c.sync(t0, "g", &a, 2, vec![]) else {
            panic!("leader sync");
        };
        assert_eq!(c.leave(t0, "g", &b), Ok(()));
        assert_eq!(
            c.heartbeat(t0, "g", &a, 2),
            Err(ResponseError::RebalanceInProgress)
        );
        held(c.join(t0, "g", join(&a, "a")));
        let answers = c.poll();
        let ja = joined(&answers, &a);
        assert_eq!((ja.generation, ja.members.len()), (3, 1));
    }

    /// A member that stops heartbeating is expired after its session
    /// timeout; one that never rejoins a rebalance is dropped at its
    /// deadline and the others go on without it.
    #[test]
    fn coordinator_expires_silent_members_and_late_rejoiners() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(DELAY);
        let a = held(c.join(t0, "g", join("", "a")));
        let b = held(c.join(t0, "g", join("", "b")));
        let t1 = t0 + DELAY + Duration::from_millis(1);
        c.tick(t1);
        let answers = c.poll();
        let generation = joined(&answers, &b).generation;
        assert_eq!(joined(&answers, &a).leader, a);
        let SyncOutcome::Now(_) = c.sync(t1, "g", &a, generation, vec![]) else {
            panic!("leader sync");
        };
        let _ = c.sync(t1, "g", &b, generation, vec![]);
        // `b` keeps heartbeating, the leader `a` goes silent.
        let expiry = t1 + SESSION;
        assert_eq!(
            c.heartbeat(expiry - Duration::from_secs(1), "g", &b, generation),
            Ok(())
        );
        c.tick(expiry + Duration::from_millis(1));
        assert_eq!(
            c.heartbeat(expiry, "g", &a, generation),
            Err(ResponseError::UnknownMemberId)
        );
        held(c.join(expiry, "g", join(&b, "b")));
        let answers = c.poll();
        let jb = joined(&answers, &b);
        assert_eq!(
            (jb.leader.as_str(), jb.generation),
            (b.as_str(), generation + 1)
        );

        // A third member joins; `b` never rejoins that rebalance.
        let now = expiry + Duration::from_secs(1);
        let SyncOutcome::Now(_) = c.sync(now, "g", &b, generation + 1, vec![]) else {
            panic!("leader sync");
        };
        let d = held(c.join(now, "g", join("", "d")));
        assert!(c.poll().is_empty(), "waiting for {b} to rejoin");
        c.tick(now + Duration::from_secs(5) + Duration::from_millis(1));
        let answers = c.poll();
        let jd = joined(&answers, &d);
        assert_eq!((jd.leader.as_str(), jd.members.len()), (d.as_str(), 1));
    }

    /// A join whose protocols share nothing with the group's members is
    /// refused; an unknown member id is told so.
    #[test]
    fn coordinator_refuses_inconsistent_protocols_and_unknown_members() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(Duration::ZERO);
        held(c.join(t0, "g", join("", "a")));
        let mut other = join("", "b");
        other.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
        assert_eq!(
            c.join(t0, "g", other),
            JoinOutcome::Refused(ResponseError::InconsistentGroupProtocol)
        );
        assert_eq!(
            c.join(t0, "g", join("ghost", "c")),
            JoinOutcome::Refused(ResponseError::UnknownMemberId)
        );
        let mut short = join("", "d");
        short.session_timeout = Duration::from_millis(1);
        assert_eq!(
            c.join(t0, "g", short),
            JoinOutcome::Refused(ResponseError::InvalidSessionTimeout)
        );
    }
}
