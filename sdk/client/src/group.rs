//! Consumer groups: several consumers share a topic's partitions, and the
//! group's progress is committed to the broker.
//!
//! ```text
//!   app ◀── next() ◀── records ◀── one Subscription per owned partition
//!                                         ▲ start at committed offset
//!   member task ── join / heartbeat ──▶ broker coordinator
//!               ── commit (auto or manual, and before giving a partition up)
//! ```
//!
//! Delivery is at-least-once: a record counts as processed once the
//! application asks for the next one (or calls [`GroupConsumer::commit`]),
//! and only processed positions are committed. When the broker moves a
//! partition away, the member stops reading it, commits what was processed,
//! and only then reports it released; the new owner resumes from that
//! commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgebus_proto::ErrorCode;
use edgebus_proto::batch::StoredRecord;
use edgebus_proto::frame::{
    AssignmentStrategy, PartitionOffset, Position, Request, Response, TopicPartition,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Client, unexpected};
use crate::consumer::{SubscribeConfig, Subscription};
use crate::error::ClientError;

/// Where a partition with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest retained record: nothing is skipped.
    #[default]
    Earliest,
    /// Only records appended from now on.
    Latest,
}

/// Group consumer settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Group name.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// The broker expires the member after this long without a heartbeat.
    pub session_timeout: Duration,
    /// How partitions are spread over members.
    pub strategy: AssignmentStrategy,
    /// Commit processed positions this often; `None` commits only on
    /// [`GroupConsumer::commit`], before giving a partition up, and on close.
    pub auto_commit: Option<Duration>,
    /// Where partitions without a committed offset start.
    pub reset: OffsetReset,
    /// Settings of each partition's subscription.
    pub subscribe: SubscribeConfig,
}

impl GroupConfig {
    /// Defaults: 10 s session, sticky assignment, auto-commit every second,
    /// start from the earliest offset.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        GroupConfig {
            group: group.into(),
            topics,
            session_timeout: Duration::from_secs(10),
            strategy: AssignmentStrategy::Sticky,
            auto_commit: Some(Duration::from_secs(1)),
            reset: OffsetReset::Earliest,
            subscribe: SubscribeConfig::default(),
        }
    }
}

/// A record with the partition it came from.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The record.
    pub record: StoredRecord,
}

/// State shared by the application side and the member task.
#[derive(Debug, Default)]
struct Shared {
    /// Partitions owned now, each with an incarnation number: records of an
    /// older incarnation (read before a revocation) are dropped, not
    /// delivered.
    owned: BTreeMap<TopicPartition, u64>,
    /// Next offset to read, per partition, counting processed records only.
    processed: BTreeMap<TopicPartition, u64>,
    /// Log end last pushed per partition (`None` before the first push).
    log_end: BTreeMap<TopicPartition, watch::Receiver<Option<u64>>>,
    /// The last record handed to the application, processed once it asks
    /// for the next one.
    in_hand: Option<(TopicPartition, u64)>,
}

impl Shared {
    fn mark_in_hand_processed(&mut self) {
        if let Some((tp, offset)) = self.in_hand.take()
            && self.owned.contains_key(&tp)
        {
            self.processed.insert(tp, offset + 1);
        }
    }
}

type Delivery = (TopicPartition, u64, StoredRecord);

enum Control {
    Commit(oneshot::Sender<Result<(), ClientError>>),
    Close(oneshot::Sender<Result<(), ClientError>>),
}

/// A member of a consumer group.
#[derive(Debug)]
pub struct GroupConsumer {
    records: mpsc::Receiver<Result<Delivery, ClientError>>,
    control: mpsc::Sender<Control>,
    shared: Arc<Mutex<Shared>>,
    assignment: watch::Receiver<Vec<TopicPartition>>,
    member: watch::Receiver<String>,
    task: JoinHandle<()>,
}

/// How many times a first join refused with `NotCoordinator` looks for
/// the coordinator again.
const JOIN_COORDINATOR_ATTEMPTS: u32 = 5;

impl GroupConsumer {
    /// Joins the group and starts consuming what the broker assigns.
    pub async fn join(client: Client, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        let (records_tx, records) = mpsc::channel(1024);
        let (control, control_rx) = mpsc::channel(16);
        let (assignment_tx, assignment) = watch::channel(Vec::new());
        let (member_tx, member) = watch::channel(String::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        // In a cluster one node coordinates the group; every member talks
        // to it, whichever node it reached first.
        let client = client.coordinator(&config.group).await;
        let mut task = MemberTask {
            client,
            config,
            shared: shared.clone(),
            records: records_tx,
            assignment: assignment_tx,
            member: member_tx,
            member_id: String::new(),
            epoch: 0,
            readers: BTreeMap::new(),
            incarnation: 0,
            committed: BTreeMap::new(),
        };
        // The lookup may have timed out or the group moved since: a node
        // that does not coordinate it says so, and the join goes to the
        // coordinator found again, as Kafka clients retry it.
        let mut attempts = 0;
        let interval = loop {
            match task.join().await {
                Err(e)
                    if e.code() == Some(ErrorCode::NotCoordinator)
                        && attempts < JOIN_COORDINATOR_ATTEMPTS =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100) * attempts).await;
                    task.client = task.client.coordinator(&task.config.group).await;
                }
                joined => break joined?,
            }
        };
        let task = tokio::spawn(task.run(control_rx, interval));
        Ok(GroupConsumer {
            records,
            control,
            shared,
            assignment,
            member,
            task,
        })
    }

    /// The next record from any owned partition. Asking for it marks the
    /// previous record processed. `None` once the consumer is closed.
    pub async fn next(&mut self) -> Option<Result<GroupRecord, ClientError>> {
        lock(&self.shared).mark_in_hand_processed();
        loop {
            let (tp, incarnation, record) = match self.records.recv().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let mut shared = lock(&self.shared);
            if shared.owned.get(&tp) != Some(&incarnation) {
                continue;
            }
            shared.in_hand = Some((tp.clone(), record.offset));
            return Some(Ok(GroupRecord {
                topic: tp.topic,
                partition: tp.partition,
                record,
            }));
        }
    }

    /// Marks every record returned so far processed and commits, waiting
    /// for the broker's durable ack.
    pub async fn commit(&self) -> Result<(), ClientError> {
        lock(&self.shared).mark_in_hand_processed();
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Commit(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Partitions owned now; changes whenever the assignment does.
    pub fn assignment(&self) -> watch::Receiver<Vec<TopicPartition>> {
        self.assignment.clone()
    }

    /// This member's id (changes if it had to rejoin).
    pub fn member_id(&self) -> String {
        self.member.borrow().clone()
    }

    /// True once every owned partition has been processed up to the log
    /// end last seen, and at least one partition is owned.
    pub fn caught_up(&self) -> bool {
        let s = lock(&self.shared);
        !s.owned.is_empty()
            && s.owned.keys().all(|tp| {
                let end = s.log_end.get(tp).and_then(|w| *w.borrow());
                let at = s.processed.get(tp).copied().unwrap_or(0);
                end.is_some_and(|e| at >= e)
            })
    }

    /// Stops at once without committing or leaving, as if the process had
    /// died: the broker moves this member's partitions after its session
    /// timeout. For failure drills and tests.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Commits processed records and leaves the group, so its partitions
    /// move to the other members at once.
    pub async fn close(self) -> Result<(), ClientError> {
        lock(&self.shared).mark_in_hand_processed();
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Close(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        let result = rx.await.map_err(|_| ClientError::Closed)?;
        let _ = self.task.await;
        result
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

struct MemberTask {
    client: Client,
    config: GroupConfig,
    shared: Arc<Mutex<Shared>>,
    records: mpsc::Sender<Result<Delivery, ClientError>>,
    assignment: watch::Sender<Vec<TopicPartition>>,
    member: watch::Sender<String>,
    member_id: String,
    epoch: u32,
    readers: BTreeMap<TopicPartition, JoinHandle<()>>,
    incarnation: u64,
    /// Last committed position per partition, to skip no-op commits.
    committed: BTreeMap<TopicPartition, u64>,
}

impl MemberTask {
    /// Joins (or rejoins) and applies the first assignment; returns the
    /// heartbeat interval.
    async fn join(&mut self) -> Result<Duration, ClientError> {
        let request = Request::JoinGroup {
            group: self.config.group.clone(),
            member_id: String::new(),
            topics: self.config.topics.clone(),
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            strategy: self.config.strategy,
        };
        match self.client.request(&request).await? {
            Response::GroupAssignment {
                member_id,
                epoch,
                heartbeat_interval_ms,
                partitions,
                ..
            } => {
                self.member_id = member_id.clone();
                self.member.send_replace(member_id);
                self.epoch = epoch;
                self.apply(partitions).await?;
                Ok(Duration::from_millis(heartbeat_interval_ms.max(10).into()))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn run(mut self, mut control: mpsc::Receiver<Control>, interval: Duration) {
        let mut heartbeat = Box::pin(self.heartbeat_request(interval));
        let mut auto = self.config.auto_commit.map(|d| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                answer = &mut heartbeat => {
                    let outcome = match answer {
                        Ok(Response::GroupAssignment { epoch, partitions, .. }) => {
                            self.epoch = epoch;
                            self.apply(partitions).await
                        }
                        Ok(other) => Err(unexpected(&other)),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = outcome
                        && let Err(fatal) = self.recover(e).await
                    {
                        let _ = self.records.send(Err(fatal)).await;
                        return;
                    }
                    heartbeat = Box::pin(self.heartbeat_request(interval));
                }
                _ = tick(&mut auto) => {
                    if let Err(e) = self.commit().await {
                        tracing::debug!(error = %e, "auto-commit failed");
                    }
                }
                msg = control.recv() => match msg {
                    Some(Control::Commit(reply)) => {
                        let _ = reply.send(self.commit().await);
                    }
                    Some(Control::Close(reply)) => {
                        let result = self.commit().await;
                        self.stop_all();
                        let leave = Request::LeaveGroup {
                            group: self.config.group.clone(),
                            member_id: self.member_id.clone(),
                        };
                        let left = self.client.request(&leave).await.map(|_| ());
                        let _ = reply.send(result.and(left));
                        return;
                    }
                    None => {
                        let _ = self.commit().await;
                        self.stop_all();
                        return;
                    }
                },
            }
        }
    }

    /// After a failed heartbeat: a lost connection is retried by the next
    /// heartbeat; an expired membership means every partition is already
    /// someone else's, so drop them all and join again.
    async fn recover(&mut self, e: ClientError) -> Result<(), ClientError> {
        match e.code() {
            Some(ErrorCode::UnknownMember) => {
                tracing::info!(member = %self.member_id, "membership expired, rejoining");
                self.stop_all();
                self.rejoin().await
            }
            Some(ErrorCode::NotCoordinator) => {
                // The group moved (its coordinator was fenced): join anew
                // where it is now.
                tracing::info!(member = %self.member_id, "group moved to another node, rejoining");
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.stop_all();
                self.client = self.client.coordinator(&self.config.group).await;
                self.rejoin().await
            }
            _ if e.is_retriable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if e.code().is_none() {
                    // The coordinator could not be reached: once it is
                    // fenced, another node coordinates, and the next
                    // heartbeat there says the membership is unknown.
                    self.client = self.client.coordinator(&self.config.group).await;
                }
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Joins again after losing the membership. A join refused for a
    /// reason that passes (the group moving between nodes, a node down) is
    /// left to the next heartbeat, which meets the same refusal or an
    /// unknown membership and lands here again.
    async fn rejoin(&mut self) -> Result<(), ClientError> {
        match self.join().await {
            Ok(_) => Ok(()),
            Err(e) if e.is_retriable() => {
                tracing::debug!(error = %e, "rejoin refused for now");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn heartbeat_request(
        &self,
        interval: Duration,
    ) -> impl std::future::Future<Output = Result<Response, ClientError>> + use<> {
        let owned: Vec<TopicPartition> = lock(&self.shared).owned.keys().cloned().collect();
        let request = Request::Heartbeat {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            owned,
            wait_ms: interval.as_millis() as u32,
        };
        let client = self.client.clone();
        async move { client.request(&request).await }
    }

    /// Makes the owned set equal to `partitions`: revoked partitions stop
    /// and are committed first; new ones start at their committed offset.
    async fn apply(&mut self, partitions: Vec<TopicPartition>) -> Result<(), ClientError> {
        let wanted: BTreeSet<TopicPartition> = partitions.into_iter().collect();
        let revoked: Vec<TopicPartition> = self
            .readers
            .keys()
            .filter(|tp| !wanted.contains(*tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            for tp in &revoked {
                if let Some(reader) = self.readers.remove(tp) {
                    reader.abort();
                }
            }
            // Commit while still the owner; the broker hands the partitions
            // on only after the next heartbeat reports them released.
            let result = self.commit().await;
            let mut shared = lock(&self.shared);
            for tp in &revoked {
                shared.owned.remove(tp);
                shared.processed.remove(tp);
                shared.log_end.remove(tp);
                self.committed.remove(tp);
            }
            drop(shared);
            if let Err(e) = result {
                tracing::warn!(error = %e, "commit before revocation failed; records may be redelivered");
            }
        }
        let added: Vec<TopicPartition> = wanted
            .iter()
            .filter(|tp| !self.readers.contains_key(*tp))
            .cloned()
            .collect();
        if !added.is_empty() {
            let committed = self.fetch_committed().await?;
            for tp in added {
                let from = match committed.get(&tp) {
                    Some(offset) => Position::Offset(*offset),
                    None => match self.config.reset {
                        OffsetReset::Earliest => Position::Earliest,
                        OffsetReset::Latest => Position::Latest,
                    },
                };
                let at = committed.get(&tp).copied();
                self.start_reader(tp, from, at).await?;
            }
        }
        let owned: Vec<TopicPartition> = self.readers.keys().cloned().collect();
        self.assignment.send_if_modified(|current| {
            let changed = *current != owned;
            *current = owned;
            changed
        });
        Ok(())
    }

    async fn fetch_committed(&self) -> Result<BTreeMap<TopicPartition, u64>, ClientError> {
        let request = Request::FetchOffsets {
            group: self.config.group.clone(),
        };
        match self.client.request(&request).await? {
            Response::CommittedOffsets(offsets) => Ok(offsets
                .into_iter()
                .map(|o| {
                    (
                        TopicPartition {
                            topic: o.topic,
                            partition: o.partition,
                        },
                        o.offset,
                    )
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    async fn start_reader(
        &mut self,
        tp: TopicPartition,
        from: Position,
        committed: Option<u64>,
    ) -> Result<(), ClientError> {
        self.incarnation += 1;
        let incarnation = self.incarnation;
        // Own the partition only once its subscription is up: a partition
        // recorded as owned but without a reader would be reported in every
        // heartbeat and never handed on.
        let mut sub = Subscription::start(
            self.client.clone(),
            &tp.topic,
            tp.partition,
            from,
            self.config.subscribe.clone(),
        )
        .await?;
        {
            let mut shared = lock(&self.shared);
            shared.owned.insert(tp.clone(), incarnation);
            if let Some(c) = committed {
                shared.processed.insert(tp.clone(), c);
                self.committed.insert(tp.clone(), c);
            }
            shared.log_end.insert(tp.clone(), sub.log_end_watch());
        }
        let (records, key) = (self.records.clone(), tp.clone());
        let reader = tokio::spawn(async move {
            loop {
                let item = sub.next().await;
                let delivery = match item {
                    Some(Ok(record)) => Ok((key.clone(), incarnation, record)),
                    Some(Err(e)) => Err(e),
                    None => return,
                };
                let stop = delivery.is_err();
                if records.send(delivery).await.is_err() || stop {
                    return;
                }
            }
        });
        self.readers.insert(tp, reader);
        Ok(())
    }

    /// Commits processed positions that moved since the last commit.
    async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets: Vec<PartitionOffset> = {
            let shared = lock(&self.shared);
            shared
                .processed
                .iter()
                .filter(|(tp, at)| {
                    shared.owned.contains_key(*tp) && self.committed.get(*tp) != Some(at)
                })
                .map(|(tp, at)| PartitionOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *at,
                })
                .collect()
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let request = Request::CommitOffsets {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            epoch: self.epoch,
            offsets: offsets.clone(),
        };
        match self.client.request(&request).await? {
            Response::Done => {
                for o in offsets {
                    self.committed.insert(
                        TopicPartition {
                            topic: o.topic,
                            partition: o.partition,
                        },
                        o.offset,
                    );
                }
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn stop_all(&mut self) {
        for (_, reader) in std::mem::take(&mut self.readers) {
            reader.abort();
        }
        let mut shared = lock(&self.shared);
        shared.owned.clear();
        shared.processed.clear();
        shared.log_end.clear();
        self.committed.clear();
        drop(shared);
        self.assignment.send_replace(Vec::new());
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
