//! A seeded, deterministic simulator of a three-node cluster: the real
//! [`Replica`] (with its [`PartitionEngine`]) on every node, the real
//! control-plane state machine ([`ClusterState`] and [`Liveness`]), and
//! idempotent `acks=all` producers, all driven in one thread with simulated
//! time, network and disk.
//!
//! Faults: messages dropped, delayed (so reordered) and duplicated; links
//! cut (an isolated leader, halves, a bridge node, a node cut from the
//! controller); nodes crashed and restarted, losing every write they had not
//! fsync'd; the controller unavailable (a control-log election); forward
//! clock jumps on a node (a monotonic clock never goes back).
//!
//! The control log itself is openraft's job in the broker; here it is one
//! linearizable state machine reachable through the same faulty network,
//! which is what openraft gives a majority side.
//!
//! Checked after every event:
//! - at most one replica leads a partition at each leader epoch;
//! - two replicas never hold different batches at one offset and epoch;
//! - a leader's high watermark never moves back, and every batch below any
//!   high watermark ever published is the same batch on every replica that
//!   holds it, is never truncated, and is never lost in a crash;
//! - every acknowledgement names the batch at the offset it gives.
//!
//! Checked at the end, once faults stop and the cluster heals: every
//! acknowledged batch is in every replica's log exactly once, in each
//! producer's order, and no batch is stored twice.
//!
//! `SIM_SEEDS=N` runs N random seeds (200 by default); `SIM_SEED=S` runs
//! only seed S. A failing seed prints the command that replays it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use edgebus_core::controller::{ClusterState, ControlError, ControlRequest, Liveness, NodeId};
use edgebus_core::partition::{AckLevel, AppendError, AppendOutcome, AppendRequest, Command};
use edgebus_core::producer::{ProducerState, SequenceSpan};
use edgebus_core::replica::{
    EpochStart, FetchDecision, FetchError, FetchRequest, FetchResponse, LocalLog, Replica,
    ReplicaCommand, ReplicaConfig, ReplicatedBatch,
};
use edgebus_proto::batch::ProducerStamp;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NODES: [NodeId; 3] = [1, 2, 3];
const CONTROLLER: u64 = 0;
const CLIENT_BASE: u64 = 100;
const TOPIC: &str = "t";

const SESSION_TIMEOUT: Duration = Duration::from_millis(400);
const HEARTBEAT_MS: u64 = 50;
const TICK_MS: u64 = 10;
const PRODUCE_TIMEOUT_MS: u64 = 300;
/// Bound on simulated time after the faults stop.
const HEAL_LIMIT_MS: u64 = 60_000;

fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        replica_lag_max: Duration::from_millis(250),
        fetch_interval: Duration::from_millis(TICK_MS),
        fetch_timeout: Duration::from_millis(150),
        isr_retry: Duration::from_millis(100),
    }
}

/// A producer's batch: who sent it and its sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BatchId {
    producer: i64,
    seq: i32,
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    base_offset: u64,
    count: u32,
    epoch: i32,
    batch: BatchId,
    producer: Option<(i64, ProducerState)>,
    /// Its bytes rotted on disk: it fails its CRC when read.
    damaged: bool,
}

#[derive(Debug, Default)]
struct PartitionDisk {
    entries: Vec<Entry>,
    /// Entries below this index survive a crash.
    durable: usize,
    /// The leader write the last entry came from, not yet reported durable.
    unsynced_write: Option<edgebus_core::partition::WriteId>,
}

impl PartitionDisk {
    fn end(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |e| e.base_offset + u64::from(e.count))
    }

    fn local_log(&self) -> LocalLog {
        let mut epochs: Vec<EpochStart> = Vec::new();
        let mut producers: BTreeMap<i64, ProducerState> = BTreeMap::new();
        for e in &self.entries {
            if epochs.last().is_none_or(|s| s.epoch < e.epoch) {
                epochs.push(EpochStart {
                    epoch: e.epoch,
                    start_offset: e.base_offset,
                });
            }
            if let Some((id, state)) = &e.producer {
                producers.insert(*id, state.clone());
            }
        }
        LocalLog {
            log_end: self.end(),
            epochs,
            producers: producers.into_iter().collect(),
        }
    }
}

#[derive(Debug)]
enum DiskOp {
    Write {
        partition: u32,
        write: edgebus_core::partition::WriteId,
        entry: Entry,
    },
    Sync,
    Replicate {
        partition: u32,
        batches: Vec<ReplicatedBatch>,
    },
    Truncate {
        partition: u32,
        offset: u64,
    },
    /// Replaces the damaged entry at the copy's offset and epoch, durably.
    Mend {
        partition: u32,
        copy: Entry,
    },
}

struct Node {
    id: NodeId,
    up: bool,
    incarnation: u64,
    skew_ms: u64,
    disks: BTreeMap<u32, PartitionDisk>,
    replicas: BTreeMap<u32, Replica>,
    disk_queue: VecDeque<DiskOp>,
    disk_busy: bool,
    meta_version: u64,
    next_request: u64,
    /// Engine request id → (client, attempt, batch).
    requests: BTreeMap<u64, (u64, u64, BatchId)>,
    /// Batch identity of each pending leader write, by request id.
    appends: BTreeMap<u64, BatchId>,
}

struct Controller {
    up: bool,
    state: ClusterState,
    liveness: Liveness,
    version: u64,
    topic_created: bool,
}

struct Producer {
    endpoint: u64,
    producer_id: i64,
    partition: u32,
    next_seq: i32,
    batches_left: u32,
    in_flight: Option<InFlight>,
    leader: Option<NodeId>,
    acked: Vec<(BatchId, u64)>,
    retry_at: u64,
    last_start: u64,
    /// Attempt ids, unique across the producer's batches, so a late or
    /// duplicated answer to an old attempt is never taken for a new one.
    attempts: u64,
}

struct InFlight {
    batch: BatchId,
    attempt: u64,
    /// When the current attempt was sent; `None` when it is to be sent.
    sent_ms: Option<u64>,
}

#[derive(Debug, Clone)]
enum Msg {
    Heartbeat {
        incarnation: u64,
    },
    Metadata {
        state: Box<ClusterState>,
        version: u64,
    },
    MetadataRequest,
    Propose {
        partition: u32,
        request: ControlRequest,
    },
    ProposeResult {
        to_incarnation: u64,
        partition: u32,
        ok: bool,
        stale: bool,
        /// The partition epoch an ISR proposal was computed from; `None`
        /// for other proposals.
        from: Option<u64>,
    },
    Fetch {
        partition: u32,
        fetch_id: u64,
        from_incarnation: u64,
        request: FetchRequest,
    },
    FetchResponse {
        partition: u32,
        fetch_id: u64,
        to_incarnation: u64,
        response: FetchResponse,
    },
    Produce {
        attempt: u64,
        partition: u32,
        batch: BatchId,
    },
    ProduceResponse {
        attempt: u64,
        result: Result<AppendOutcome, AppendError>,
    },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: u64,
        to: u64,
        msg: Msg,
    },
    NodeTick(NodeId),
    Heartbeat(NodeId),
    DiskDone {
        node: NodeId,
        incarnation: u64,
    },
    ControllerTick,
    ProducerTick(usize),
    Restart(NodeId),
    ControllerUp,
    Fault,
    /// Heals the cuts if no cut was made since the one it was scheduled by.
    Heal(u64),
}

/// Per-seed network and disk behaviour.
#[derive(Debug, Clone, Copy)]
struct Faults {
    drop: f64,
    duplicate: f64,
    max_delay_ms: u64,
    max_disk_ms: u64,
    /// Mean gap between injected faults; 0 disables them.
    fault_every_ms: u64,
}

#[derive(Default)]
struct Checker {
    leaders: BTreeMap<(u32, i32), NodeId>,
    batches: BTreeMap<(u32, u64, i32), BatchId>,
    /// Batches below some published high watermark, by (partition, base):
    /// the batch and the epoch of the copy (a retry stored at another epoch
    /// is another copy).
    committed: BTreeMap<(u32, u64), (BatchId, i32)>,
    high_watermarks: BTreeMap<(u32, NodeId, i32), u64>,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    start: Instant,
    now_ms: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: BTreeMap<NodeId, Node>,
    controller: Controller,
    producers: Vec<Producer>,
    cut: BTreeSet<(u64, u64)>,
    cuts_made: u64,
    paused: bool,
    /// Least time between the starts of a producer's batches.
    pace_ms: u64,
    faults: Faults,
    faulting: bool,
    partitions: u32,
    min_insync: u32,
    checker: Checker,
    trace: Vec<String>,
}

type Script = Vec<(u64, Action)>;

#[derive(Debug, Clone)]
enum Action {
    Crash(NodeId),
    Restart(NodeId),
    /// Cut every link between the two groups (the controller is 0).
    Cut(Vec<u64>, Vec<u64>),
    HealLinks,
    /// A committed batch of partition 0 that another node holds rots on the
    /// node's disk.
    Damage(NodeId),
    /// Stop producing new batches (in-flight ones are still retried).
    Pause,
    Resume,
}

impl Sim {
    fn new(
        seed: u64,
        partitions: u32,
        min_insync: u32,
        faults: Faults,
        batches: u32,
        pace_ms: u64,
    ) -> Sim {
        let start = Instant::now();
        let nodes = NODES
            .iter()
            .map(|&id| {
                (
                    id,
                    Node {
                        id,
                        up: true,
                        incarnation: 1,
                        skew_ms: 0,
                        disks: (0..partitions)
                            .map(|p| (p, PartitionDisk::default()))
                            .collect(),
                        replicas: (0..partitions)
                            .map(|p| (p, Replica::new(id, replica_config(), LocalLog::default())))
                            .collect(),
                        disk_queue: VecDeque::new(),
                        disk_busy: false,
                        meta_version: 0,
                        next_request: 0,
                        requests: BTreeMap::new(),
                        appends: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let state = ClusterState::default();
        let liveness = Liveness::new(start, SESSION_TIMEOUT, &state);
        let producers = (0..2)
            .map(|i| Producer {
                endpoint: CLIENT_BASE + i,
                producer_id: 1000 + i as i64,
                partition: i as u32 % partitions,
                next_seq: 0,
                batches_left: batches,
                in_flight: None,
                leader: None,
                acked: Vec::new(),
                retry_at: 0,
                last_start: 0,
                attempts: 0,
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            start,
            now_ms: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            controller: Controller {
                up: true,
                state,
                liveness,
                version: 0,
                topic_created: false,
            },
            producers,
            cut: BTreeSet::new(),
            cuts_made: 0,
            paused: false,
            pace_ms,
            faults,
            faulting: faults.fault_every_ms > 0,
            partitions,
            min_insync,
            checker: Checker::default(),
            trace: Vec::new(),
        };
        for id in NODES {
            sim.schedule(0, Event::NodeTick(id));
            sim.schedule(0, Event::Heartbeat(id));
        }
        sim.schedule(0, Event::ControllerTick);
        for i in 0..sim.producers.len() {
            sim.schedule(100, Event::ProducerTick(i));
        }
        if sim.faulting {
            let gap = sim.rng.random_range(1..=faults.fault_every_ms * 2);
            sim.schedule(gap, Event::Fault);
        }
        sim
    }

    fn instant(&self, node: Option<NodeId>) -> Instant {
        let skew = node
            .and_then(|n| self.nodes.get(&n))
            .map_or(0, |n| n.skew_ms);
        self.start + Duration::from_millis(self.now_ms + skew)
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events
            .insert((self.now_ms + after_ms, self.seq), event);
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == 4000 {
            self.trace.remove(0);
        }
        self.trace.push(format!("{:>6}ms {line}", self.now_ms));
    }

    fn is_up(&self, endpoint: u64) -> bool {
        match endpoint {
            CONTROLLER => self.controller.up,
            e if e >= CLIENT_BASE => true,
            node => self.nodes[&node].up,
        }
    }

    fn send(&mut self, from: u64, to: u64, msg: Msg) {
        if !self.is_up(from) || self.cut.contains(&(from.min(to), from.max(to))) {
            return;
        }
        let copies = if self.faulting && self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.faulting && self.rng.random_bool(self.faults.drop) {
                continue;
            }
            let delay = self.rng.random_range(0..=self.faults.max_delay_ms);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn run_until(&mut self, end_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while let Some(entry) = self.events.first_entry() {
            let (time, _) = *entry.key();
            if time > end_ms {
                return false;
            }
            let event = entry.remove();
            self.now_ms = time;
            self.handle(event);
            self.check_leaders();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => {
                if !self.is_up(to) || self.cut.contains(&(from.min(to), from.max(to))) {
                    return;
                }
                match to {
                    CONTROLLER => self.controller_receive(from, msg),
                    e if e >= CLIENT_BASE => self.producer_receive(e, msg),
                    node => self.node_receive(node, from, msg),
                }
            }
            Event::NodeTick(id) => {
                if self.nodes[&id].up {
                    let now = self.instant(Some(id));
                    for p in 0..self.partitions {
                        self.scrub(id, p);
                        self.drain(id, p);
                        // The shell ticks a replica only once it is due
                        // (`next_tick`), so a tick before then must do
                        // nothing.
                        let due = self.nodes[&id].replicas[&p].next_tick(now);
                        self.replica_mut(id, p).handle_tick(now);
                        if self.drain(id, p) > 0 && due.is_none_or(|due| due > now) {
                            self.fail(format!(
                                "node {id} p{p} acted on a tick before its next tick ({due:?}, now {now:?})"
                            ));
                        }
                    }
                }
                self.schedule(TICK_MS, Event::NodeTick(id));
            }
            Event::Heartbeat(id) => {
                if self.nodes[&id].up {
                    let incarnation = self.nodes[&id].incarnation;
                    self.send(id, CONTROLLER, Msg::Heartbeat { incarnation });
                }
                self.schedule(HEARTBEAT_MS, Event::Heartbeat(id));
            }
            Event::DiskDone { node, incarnation } => {
                if self.nodes[&node].up && self.nodes[&node].incarnation == incarnation {
                    self.disk_done(node);
                }
            }
            Event::ControllerTick => {
                if self.controller.up {
                    self.controller_tick();
                }
                self.schedule(20, Event::ControllerTick);
            }
            Event::ProducerTick(i) => {
                self.producer_tick(i);
                self.schedule(5, Event::ProducerTick(i));
            }
            Event::Restart(id) => self.restart(id),
            Event::ControllerUp => self.controller_up(),
            Event::Fault => {
                if self.faulting {
                    self.random_fault();
                    let gap = self.rng.random_range(1..=self.faults.fault_every_ms * 2);
                    self.schedule(gap, Event::Fault);
                }
            }
            Event::Heal(made) => {
                if made == self.cuts_made {
                    self.cut.clear();
                }
            }
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("node")
    }

    fn replica_mut(&mut self, id: NodeId, partition: u32) -> &mut Replica {
        self.node_mut(id)
            .replicas
            .get_mut(&partition)
            .expect("a replica of every partition on every node")
    }

    // ---- controller ----

    fn controller_receive(&mut self, from: u64, msg: Msg) {
        let now = self.instant(None);
        match msg {
            Msg::Heartbeat { incarnation } => {
                self.controller.liveness.handle_heartbeat(now, from);
                let known = self
                    .controller
                    .state
                    .nodes
                    .get(&from)
                    .map(|n| n.incarnation);
                if known != Some(incarnation) {
                    let _ = self.controller_apply(ControlRequest::RegisterNode {
                        node: from,
                        address: format!("node{from}"),
                        incarnation,
                    });
                }
                self.send_metadata(from);
            }
            Msg::MetadataRequest => self.send_metadata(from),
            Msg::Propose { partition, request } => {
                let to_incarnation = self.nodes[&from].incarnation;
                let proposal_from = match &request {
                    ControlRequest::AlterIsr {
                        partition_epoch, ..
                    } => Some(*partition_epoch),
                    _ => None,
                };
                let result = self.controller_apply(request);
                self.send(
                    CONTROLLER,
                    from,
                    Msg::ProposeResult {
                        to_incarnation,
                        partition,
                        ok: result.is_ok(),
                        stale: matches!(result, Err(ControlError::StaleIsr { .. })),
                        from: proposal_from,
                    },
                );
            }
            other => panic!("controller got {other:?}"),
        }
    }

    fn controller_apply(&mut self, request: ControlRequest) -> Result<(), ControlError> {
        let result = self.controller.state.apply(&request);
        self.log(format!("controller {request:?} -> {result:?}"));
        let marked_leader = self.controller.state.topics.values().any(|t| {
            t.partitions
                .iter()
                .any(|p| p.leader.is_some_and(|l| p.rebuilding.contains_key(&l)))
        });
        self.assert(
            !marked_leader,
            "a replica being rebuilt was elected leader".into(),
        );
        if result.is_ok() {
            self.controller.version += 1;
            for id in NODES {
                self.send_metadata(id);
            }
        }
        result.map(|_| ())
    }

    fn send_metadata(&mut self, to: u64) {
        let msg = Msg::Metadata {
            state: Box::new(self.controller.state.clone()),
            version: self.controller.version,
        };
        self.send(CONTROLLER, to, msg);
    }

    fn controller_tick(&mut self) {
        let now = self.instant(None);
        let proposals = self
            .controller
            .liveness
            .proposals(now, &self.controller.state);
        for request in proposals {
            let _ = self.controller_apply(request);
        }
        if !self.controller.topic_created && self.controller.state.nodes.len() == NODES.len() {
            self.controller.topic_created = true;
            let _ = self.controller_apply(ControlRequest::CreateTopic {
                name: TOPIC.into(),
                partitions: self.partitions,
                replication_factor: 3,
                min_insync: self.min_insync,
                unclean_leader_election: false,
                spec: Vec::new(),
            });
        }
    }

    fn controller_up(&mut self) {
        self.controller.up = true;
        let now = self.instant(None);
        self.controller.liveness = Liveness::new(now, SESSION_TIMEOUT, &self.controller.state);
        self.log("controller up".into());
    }

    // ---- nodes ----

    fn node_receive(&mut self, id: NodeId, from: u64, msg: Msg) {
        let now = self.instant(Some(id));
        match msg {
            Msg::Metadata { state, version } => {
                let node = self.node_mut(id);
                if version <= node.meta_version {
                    return;
                }
                node.meta_version = version;
                // Until the node sees its own registration, the metadata
                // predates the re-election its restart causes.
                if state.nodes.get(&id).map(|n| n.incarnation) != Some(node.incarnation) {
                    return;
                }
                let Some(topic) = state.topics.get(TOPIC) else {
                    return;
                };
                for (p, meta) in topic.partitions.iter().enumerate() {
                    let p = p as u32;
                    self.replica_mut(id, p)
                        .handle_metadata(now, meta, topic.min_insync);
                    self.drain(id, p);
                }
            }
            Msg::ProposeResult {
                to_incarnation,
                partition,
                ok,
                stale,
                from: proposal_from,
            } => {
                if let (false, Some(proposal_from)) = (ok, proposal_from)
                    && to_incarnation == self.nodes[&id].incarnation
                {
                    self.replica_mut(id, partition)
                        .handle_isr_rejected(now, proposal_from, stale);
                    self.drain(id, partition);
                }
            }
            Msg::Fetch {
                partition,
                fetch_id,
                from_incarnation,
                request,
            } => {
                let decision = self.replica_mut(id, partition).handle_fetch(now, &request);
                self.drain(id, partition);
                let response = match decision {
                    FetchDecision::Serve {
                        from,
                        to,
                        high_watermark,
                    } => {
                        let disk = &self.nodes[&id].disks[&partition];
                        let served: Vec<&Entry> = disk
                            .entries
                            .iter()
                            .filter(|e| e.base_offset >= from && e.base_offset < to)
                            .take(4)
                            .collect();
                        // As the store does: a read that meets a damaged
                        // batch fails, and the node reports its copy.
                        if served.iter().any(|e| e.damaged) {
                            self.scrub(id, partition);
                            FetchResponse::Refused(FetchError::NotLeader)
                        } else {
                            let batches = served
                                .iter()
                                .map(|e| ReplicatedBatch {
                                    base_offset: e.base_offset,
                                    record_count: e.count,
                                    leader_epoch: e.epoch,
                                    producer: e.producer.clone(),
                                })
                                .collect();
                            FetchResponse::Records {
                                batches,
                                high_watermark,
                            }
                        }
                    }
                    FetchDecision::Diverging {
                        epoch,
                        end_offset,
                        high_watermark,
                    } => FetchResponse::Diverging {
                        epoch,
                        end_offset,
                        high_watermark,
                    },
                    FetchDecision::Refused(e) => FetchResponse::Refused(e),
                };
                self.send(
                    id,
                    from,
                    Msg::FetchResponse {
                        partition,
                        fetch_id,
                        to_incarnation: from_incarnation,
                        response,
                    },
                );
            }
            Msg::FetchResponse {
                partition,
                fetch_id,
                to_incarnation,
                response,
            } => {
                if to_incarnation != self.nodes[&id].incarnation {
                    return;
                }
                self.replica_mut(id, partition)
                    .handle_fetch_response(now, fetch_id, response);
                self.drain(id, partition);
            }
            Msg::Produce {
                attempt,
                partition,
                batch,
            } => {
                let node = self.node_mut(id);
                node.next_request += 1;
                let request_id = node.next_request;
                node.requests.insert(request_id, (from, attempt, batch));
                node.appends.insert(request_id, batch);
                let request = AppendRequest {
                    id: request_id,
                    record_count: batch.count,
                    sequence: Some(SequenceSpan {
                        producer: ProducerStamp {
                            producer_id: batch.producer,
                            producer_epoch: 0,
                            base_sequence: batch.seq,
                        },
                        record_count: batch.count,
                    }),
                    acks: AckLevel::All,
                };
                node.replicas
                    .get_mut(&partition)
                    .unwrap()
                    .handle_append(now, request);
                self.drain(id, partition);
            }
            other => panic!("node {id} got {other:?}"),
        }
    }

    /// Carries out the replica's commands; returns how many there were.
    fn drain(&mut self, id: NodeId, partition: u32) -> usize {
        let mut handled = 0;
        while let Some(command) = self.replica_mut(id, partition).poll_command() {
            handled += 1;
            match command {
                ReplicaCommand::Engine(Command::Append {
                    id: request,
                    write,
                    base_offset,
                    record_count,
                    leader_epoch,
                    producer,
                    ..
                }) => {
                    let batch = self.node_mut(id).appends[&request];
                    assert_eq!(batch.count, record_count, "no plugin changes counts here");
                    self.log(format!(
                        "node {id} p{partition} appends {batch:?} at {base_offset} epoch {leader_epoch}"
                    ));
                    let entry = Entry {
                        base_offset,
                        count: record_count,
                        epoch: leader_epoch,
                        batch,
                        producer,
                        damaged: false,
                    };
                    self.enqueue_disk(
                        id,
                        DiskOp::Write {
                            partition,
                            write,
                            entry,
                        },
                    );
                    self.enqueue_disk(id, DiskOp::Sync);
                }
                ReplicaCommand::Engine(Command::Ack {
                    id: request,
                    result,
                }) => {
                    let node = self.node_mut(id);
                    node.appends.remove(&request);
                    if let Some((client, attempt, _)) = node.requests.remove(&request) {
                        self.send(id, client, Msg::ProduceResponse { attempt, result });
                    }
                }
                ReplicaCommand::Engine(Command::HighWatermark(hw)) => {
                    self.published(id, partition, hw);
                }
                ReplicaCommand::Fetch {
                    leader,
                    fetch_id,
                    request,
                } => {
                    let from_incarnation = self.nodes[&id].incarnation;
                    self.send(
                        id,
                        leader,
                        Msg::Fetch {
                            partition,
                            fetch_id,
                            from_incarnation,
                            request,
                        },
                    );
                }
                ReplicaCommand::AppendReplicated { batches } => {
                    self.enqueue_disk(id, DiskOp::Replicate { partition, batches });
                }
                // The simulated disk keeps each batch's producer state
                // with it, so a cut drops the states of the batches cut.
                ReplicaCommand::Truncate { offset, .. } => {
                    self.enqueue_disk(id, DiskOp::Truncate { partition, offset });
                }
                ReplicaCommand::ProposeIsr {
                    leader_epoch,
                    partition_epoch,
                    isr,
                } => {
                    let request = ControlRequest::AlterIsr {
                        topic: TOPIC.into(),
                        partition,
                        leader: id,
                        leader_epoch,
                        partition_epoch,
                        isr,
                    };
                    self.send(id, CONTROLLER, Msg::Propose { partition, request });
                }
                ReplicaCommand::Mend {
                    offset,
                    leader_epoch,
                    sources,
                } => self.mend(id, partition, offset, leader_epoch, &sources),
                ReplicaCommand::ReportMend {
                    offset,
                    since,
                    mended,
                } => {
                    let request = ControlRequest::mend_report(
                        TOPIC.into(),
                        partition,
                        id,
                        offset,
                        since,
                        mended,
                    );
                    self.send(id, CONTROLLER, Msg::Propose { partition, request });
                }
            }
        }
        handled
    }

    /// Asks the sources in turn for their batch at `offset` and `epoch`, as
    /// the broker's mend call does: a source answers when it is up, reached
    /// (the request and answer may be lost like any message) and holds
    /// that batch whole. The first answer is written; with none, the mend
    /// fails and the replica tries again later.
    fn mend(&mut self, id: NodeId, partition: u32, offset: u64, epoch: i32, sources: &[NodeId]) {
        let mut copy = None;
        let mut unreached = false;
        for source in sources {
            let reached = self.nodes[source].up
                && !self.cut.contains(&(id.min(*source), id.max(*source)))
                && !(self.faulting && self.rng.random_bool(self.faults.drop));
            unreached |= !reached;
            copy = reached
                .then(|| {
                    self.nodes[source].disks[&partition]
                        .entries
                        .iter()
                        .find(|e| e.base_offset == offset && e.epoch == epoch && !e.damaged)
                        .cloned()
                })
                .flatten();
            if copy.is_some() {
                self.log(format!(
                    "node {id} p{partition} mends its batch at {offset} from node {source}"
                ));
                break;
            }
        }
        match copy {
            Some(copy) => self.enqueue_disk(id, DiskOp::Mend { partition, copy }),
            None => {
                let now = self.instant(Some(id));
                self.replica_mut(id, partition)
                    .handle_mend_failed(now, !unreached);
                self.drain(id, partition);
            }
        }
    }

    fn enqueue_disk(&mut self, id: NodeId, op: DiskOp) {
        let node = self.node_mut(id);
        if matches!(op, DiskOp::Sync) && matches!(node.disk_queue.back(), Some(DiskOp::Sync)) {
            return;
        }
        node.disk_queue.push_back(op);
        if !node.disk_busy {
            node.disk_busy = true;
            let incarnation = node.incarnation;
            let delay = self.rng.random_range(0..=self.faults.max_disk_ms);
            self.schedule(
                delay,
                Event::DiskDone {
                    node: id,
                    incarnation,
                },
            );
        }
    }

    fn disk_done(&mut self, id: NodeId) {
        let now = self.instant(Some(id));
        let op = self
            .node_mut(id)
            .disk_queue
            .pop_front()
            .expect("a queued op");
        match op {
            DiskOp::Write {
                partition,
                write,
                entry,
            } => {
                self.stored(id, partition, &entry);
                let disk = self.node_mut(id).disks.get_mut(&partition).unwrap();
                disk.entries.push(entry);
                disk.unsynced_write = Some(write);
                self.report_written(id, partition, write, false, now);
            }
            DiskOp::Sync => self.sync(id, now),
            DiskOp::Replicate { partition, batches } => {
                for b in batches {
                    let batch = self.batch_identity(partition, b.base_offset, b.leader_epoch);
                    let entry = Entry {
                        base_offset: b.base_offset,
                        count: b.record_count,
                        epoch: b.leader_epoch,
                        batch,
                        producer: b.producer,
                        damaged: false,
                    };
                    self.stored(id, partition, &entry);
                    self.node_mut(id)
                        .disks
                        .get_mut(&partition)
                        .unwrap()
                        .entries
                        .push(entry);
                }
                self.sync(id, now);
                self.replica_mut(id, partition).handle_replicated(now);
                self.drain(id, partition);
            }
            DiskOp::Truncate { partition, offset } => {
                // A divergent batch at a committed offset goes; the
                // committed batch itself never does, unless this copy is
                // being rebuilt after damage (out of the ISR meanwhile).
                let entries = &self.nodes[&id].disks[&partition].entries;
                let rebuilding = self
                    .controller
                    .state
                    .partition(TOPIC, partition)
                    .is_some_and(|m| m.rebuilding.get(&id).is_some_and(|r| !r.mend));
                let committed: Vec<_> = entries
                    .iter()
                    .filter(|e| !rebuilding && e.base_offset >= offset)
                    .filter(|e| {
                        self.checker
                            .committed
                            .get(&(partition, e.base_offset))
                            .is_some_and(|c| *c == (e.batch, e.epoch))
                    })
                    .map(|e| e.base_offset)
                    .collect();
                self.assert(
                    committed.is_empty(),
                    format!("node {id} p{partition} truncates committed batches at {committed:?}"),
                );
                self.log(format!("node {id} p{partition} truncates at {offset}"));
                let disk = self.node_mut(id).disks.get_mut(&partition).unwrap();
                disk.entries.retain(|e| e.base_offset < offset);
                self.sync(id, now);
                self.replica_mut(id, partition).handle_local_truncated(now);
                self.drain(id, partition);
            }
            DiskOp::Mend { partition, copy } => {
                let disk = self.node_mut(id).disks.get_mut(&partition).unwrap();
                let local = disk
                    .entries
                    .iter_mut()
                    .find(|e| e.base_offset == copy.base_offset && e.epoch == copy.epoch);
                let differs = local.as_ref().is_some_and(|e| e.batch != copy.batch);
                if let Some(local) = local {
                    local.damaged = false;
                }
                self.assert(
                    !differs,
                    format!(
                        "node {id} p{partition} mends its batch at {} with a different batch",
                        copy.base_offset
                    ),
                );
                self.sync(id, now);
                self.replica_mut(id, partition).handle_mended(now);
                self.drain(id, partition);
            }
        }
        let node = self.node_mut(id);
        if node.disk_queue.is_empty() {
            node.disk_busy = false;
        } else {
            let incarnation = node.incarnation;
            let delay = self.rng.random_range(0..=self.faults.max_disk_ms);
            self.schedule(
                delay,
                Event::DiskDone {
                    node: id,
                    incarnation,
                },
            );
        }
    }

    /// An fsync: everything written on the node becomes durable.
    fn sync(&mut self, id: NodeId, now: Instant) {
        for p in 0..self.partitions {
            let disk = self.node_mut(id).disks.get_mut(&p).unwrap();
            disk.durable = disk.entries.len();
            if let Some(write) = disk.unsynced_write.take() {
                self.report_written(id, p, write, true, now);
            }
        }
    }

    fn report_written(
        &mut self,
        id: NodeId,
        partition: u32,
        write: edgebus_core::partition::WriteId,
        durable: bool,
        now: Instant,
    ) {
        let result = self
            .replica_mut(id, partition)
            .handle_written(now, write, durable);
        self.assert(
            result.is_ok(),
            format!("node {id} handle_written {write:?}: {result:?}"),
        );
        self.drain(id, partition);
    }

    /// The batch a leader stored at this offset and epoch.
    fn batch_identity(&mut self, partition: u32, base: u64, epoch: i32) -> BatchId {
        *self
            .checker
            .batches
            .get(&(partition, base, epoch))
            .expect("a replicated batch was stored by a leader first")
    }

    fn stored(&mut self, id: NodeId, partition: u32, entry: &Entry) {
        let end = self.nodes[&id].disks[&partition].end();
        self.assert(
            entry.base_offset == end,
            format!(
                "node {id} p{partition} stores at {} but its log ends at {end}",
                entry.base_offset
            ),
        );
        let key = (partition, entry.base_offset, entry.epoch);
        match self.checker.batches.get(&key) {
            Some(existing) if *existing != entry.batch => self.fail(format!(
                "two batches at offset {} epoch {} of p{partition}: {existing:?} and {:?} (node {id})",
                entry.base_offset, entry.epoch, entry.batch
            )),
            Some(_) => {}
            None => {
                self.checker.batches.insert(key, entry.batch);
            }
        }
    }

    /// Node `id` published `hw`, as leader or as a follower that learned
    /// it: everything below is committed.
    fn published(&mut self, id: NodeId, partition: u32, hw: u64) {
        // Monotonic per leadership term; a follower's (keyed by a negative
        // number) per process incarnation.
        let epoch = self.nodes[&id].replicas[&partition]
            .leading_epoch()
            .unwrap_or(-1 - self.nodes[&id].incarnation as i32);
        if let Some(previous) = self
            .checker
            .high_watermarks
            .insert((partition, id, epoch), hw)
        {
            self.assert(
                hw >= previous,
                format!("node {id} p{partition} high watermark moved back {previous} -> {hw}"),
            );
        }
        let entries: Vec<Entry> = self.nodes[&id].disks[&partition]
            .entries
            .iter()
            .filter(|e| e.base_offset < hw)
            .cloned()
            .collect();
        let covered = entries
            .last()
            .map_or(0, |e| e.base_offset + u64::from(e.count));
        self.assert(
            covered >= hw,
            format!("node {id} p{partition} publishes {hw} past its log end {covered}"),
        );
        for e in entries {
            match self.checker.committed.get(&(partition, e.base_offset)) {
                Some(copy) if *copy != (e.batch, e.epoch) => self.fail(format!(
                    "committed p{partition} offset {} changed from {copy:?} to {:?} (node {id} epoch {epoch})",
                    e.base_offset,
                    (e.batch, e.epoch)
                )),
                Some(_) => {}
                None => {
                    self.checker
                        .committed
                        .insert((partition, e.base_offset), (e.batch, e.epoch));
                }
            }
        }
    }

    fn check_leaders(&mut self) {
        let mut found = Vec::new();
        for (id, node) in &self.nodes {
            if !node.up {
                continue;
            }
            for (p, replica) in &node.replicas {
                if let Some(epoch) = replica.leading_epoch() {
                    found.push((*p, epoch, *id));
                }
            }
        }
        for (p, epoch, id) in found {
            match self.checker.leaders.get(&(p, epoch)) {
                Some(other) if *other != id => self.fail(format!(
                    "two leaders of p{p} at epoch {epoch}: nodes {other} and {id}"
                )),
                Some(_) => {}
                None => {
                    self.log(format!("node {id} leads p{p} at epoch {epoch}"));
                    self.checker.leaders.insert((p, epoch), id);
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        if !self.nodes[&id].up {
            return;
        }
        self.log(format!("crash node {id}"));
        let node = self.node_mut(id);
        node.up = false;
        node.disk_queue.clear();
        node.disk_busy = false;
        node.requests.clear();
        node.appends.clear();
        // Unsynced writes are lost. A committed batch may be among them on a
        // follower that had not fsync'd it yet (it counted only its durable
        // end); the final check proves the cluster still has it.
        for disk in node.disks.values_mut() {
            disk.entries.truncate(disk.durable);
            disk.unsynced_write = None;
        }
    }

    fn restart(&mut self, id: NodeId) {
        if self.nodes[&id].up {
            return;
        }
        self.log(format!("restart node {id}"));
        let node = self.node_mut(id);
        node.up = true;
        node.incarnation += 1;
        node.meta_version = 0;
        let logs: Vec<(u32, LocalLog)> = node
            .disks
            .iter()
            .map(|(p, d)| (*p, d.local_log()))
            .collect();
        for (p, log) in logs {
            node.replicas
                .insert(p, Replica::new(id, replica_config(), log));
        }
    }

    // ---- producers ----

    fn producer_tick(&mut self, i: usize) {
        let now = self.now_ms;
        let paused = self.paused;
        let producer = &mut self.producers[i];
        if let Some(InFlight {
            sent_ms: sent @ Some(_),
            ..
        }) = &mut producer.in_flight
            && now >= sent.unwrap() + PRODUCE_TIMEOUT_MS
        {
            *sent = None;
            producer.leader = None;
        }
        if now < producer.retry_at
            || producer
                .in_flight
                .as_ref()
                .is_some_and(|f| f.sent_ms.is_some())
        {
            return;
        }
        if producer.in_flight.is_none() {
            if producer.batches_left == 0 || paused || now < producer.last_start + self.pace_ms {
                return;
            }
            producer.batches_left -= 1;
            producer.last_start = now;
            let batch = BatchId {
                producer: producer.producer_id,
                seq: producer.next_seq,
                count: self.rng.random_range(1..=3),
            };
            self.producers[i].in_flight = Some(InFlight {
                batch,
                attempt: 0,
                sent_ms: None,
            });
        }
        let producer = &mut self.producers[i];
        let endpoint = producer.endpoint;
        match producer.leader {
            Some(leader) => {
                producer.attempts += 1;
                let flight = producer.in_flight.as_mut().expect("a batch to send");
                flight.attempt = producer.attempts;
                flight.sent_ms = Some(now);
                let msg = Msg::Produce {
                    attempt: flight.attempt,
                    partition: producer.partition,
                    batch: flight.batch,
                };
                self.send(endpoint, leader, msg);
            }
            None => {
                producer.retry_at = now + 20;
                self.send(endpoint, CONTROLLER, Msg::MetadataRequest);
            }
        }
    }

    fn producer_receive(&mut self, endpoint: u64, msg: Msg) {
        let i = (endpoint - CLIENT_BASE) as usize;
        let now = self.now_ms;
        match msg {
            Msg::Metadata { state, .. } => {
                let p = self.producers[i].partition;
                self.producers[i].leader = state.partition(TOPIC, p).and_then(|m| m.leader);
                self.producers[i].retry_at = now;
            }
            Msg::ProduceResponse { attempt, result } => {
                let producer = &mut self.producers[i];
                let Some(flight) = &producer.in_flight else {
                    return;
                };
                if flight.attempt != attempt {
                    return;
                }
                let batch = flight.batch;
                let partition = producer.partition;
                match result {
                    Ok(outcome) => {
                        let base = outcome.base_offset();
                        producer.acked.push((batch, base));
                        producer.next_seq += batch.count as i32;
                        producer.in_flight = None;
                        let committed = self.checker.committed.get(&(partition, base)).copied();
                        self.assert(
                            committed.is_some_and(|(b, _)| b == batch),
                            format!(
                                "{batch:?} acked ({outcome:?}) at p{partition} offset {base}, \
                                 where the committed log holds {committed:?}"
                            ),
                        );
                        self.log(format!("ack {batch:?} at {base}"));
                    }
                    Err(AppendError::Refused(refused)) => {
                        self.fail(format!("{batch:?} refused: {refused}"));
                    }
                    Err(_) => {
                        producer.in_flight.as_mut().expect("matched above").sent_ms = None;
                        producer.leader = None;
                        producer.retry_at = now + 10;
                    }
                }
            }
            other => panic!("producer got {other:?}"),
        }
    }

    // ---- faults ----

    fn random_fault(&mut self) {
        let down: Vec<NodeId> = NODES
            .iter()
            .copied()
            .filter(|n| !self.nodes[n].up)
            .collect();
        match self.rng.random_range(0..8) {
            0 | 1 if down.len() < 2 => {
                let victim = NODES[self.rng.random_range(0..NODES.len())];
                self.crash(victim);
                let after = self.rng.random_range(20..=1500);
                self.schedule(after, Event::Restart(victim));
            }
            2 => {
                let node = NODES[self.rng.random_range(0..NODES.len())];
                let others: Vec<u64> = [CONTROLLER]
                    .into_iter()
                    .chain(NODES)
                    .filter(|n| *n != node)
                    .collect();
                self.cut_groups(&[node], &others);
            }
            3 => {
                let node = NODES[self.rng.random_range(0..NODES.len())];
                let with_controller = self.rng.random_bool(0.5);
                let mut a = vec![node];
                let mut b: Vec<u64> = NODES.iter().copied().filter(|n| *n != node).collect();
                if with_controller {
                    a.push(CONTROLLER);
                } else {
                    b.push(CONTROLLER);
                }
                self.cut_groups(&a, &b);
            }
            4 => {
                // A bridge: two nodes cannot reach each other, the third
                // reaches both.
                let a = NODES[self.rng.random_range(0..NODES.len())];
                let b = NODES.iter().copied().find(|n| *n != a).unwrap();
                self.cut_groups(&[a], &[b]);
            }
            5 if self.controller.up => {
                self.controller.up = false;
                self.log("controller down".into());
                let after = self.rng.random_range(50..=800);
                self.schedule(after, Event::ControllerUp);
            }
            6 => {
                let node = NODES[self.rng.random_range(0..NODES.len())];
                let jump = self.rng.random_range(50..=2000);
                self.node_mut(node).skew_ms += jump;
                self.log(format!("node {node} clock jumps {jump}ms"));
            }
            7 => {
                let node = NODES[self.rng.random_range(0..NODES.len())];
                let partition = self.rng.random_range(0..self.partitions);
                if self.may_damage(node, partition) {
                    self.damage(node, partition);
                }
            }
            _ => {}
        }
    }

    /// Damage is a fault the cluster is built to survive only while another
    /// whole copy of the batch exists (see [`Sim::damage`]): one damaged
    /// copy at a time, on a node that is up and reaches the controller.
    fn may_damage(&self, node: NodeId, partition: u32) -> bool {
        let whole = self
            .controller
            .state
            .partition(TOPIC, partition)
            .is_some_and(|m| m.rebuilding.is_empty());
        let undamaged = self.nodes.values().all(|n| {
            n.disks
                .values()
                .all(|d| d.entries.iter().all(|e| !e.damaged))
        });
        whole && undamaged && self.cut.is_empty() && self.controller.up && self.nodes[&node].up
    }

    /// Rots a committed durable batch of `node`'s copy that another node
    /// also holds durably: the last in-sync replica mends from it, any
    /// other copy is rebuilt from the leader.
    fn damage(&mut self, node: NodeId, partition: u32) {
        let disk = &self.nodes[&node].disks[&partition];
        let durable = &disk.entries[..disk.durable];
        let held_elsewhere = |e: &Entry| {
            self.nodes.values().filter(|n| n.id != node).any(|n| {
                let other = &n.disks[&partition];
                other.entries[..other.durable]
                    .iter()
                    .any(|o| o.base_offset == e.base_offset && o.epoch == e.epoch)
            })
        };
        let candidates: Vec<usize> = (0..durable.len())
            .filter(|i| {
                self.checker
                    .committed
                    .contains_key(&(partition, durable[*i].base_offset))
                    && held_elsewhere(&durable[*i])
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let at = candidates[self.rng.random_range(0..candidates.len())];
        let disk = self.node_mut(node).disks.get_mut(&partition).unwrap();
        disk.entries[at].damaged = true;
        let base = disk.entries[at].base_offset;
        self.log(format!(
            "node {node} p{partition}: batch at {base} damaged on disk"
        ));
    }

    /// The node reads its copy back (as the broker's reads and scrub do)
    /// and reports the first damaged batch to the controller.
    fn scrub(&mut self, id: NodeId, partition: u32) {
        let damaged = self.nodes[&id].disks[&partition]
            .entries
            .iter()
            .find(|e| e.damaged)
            .map(|e| e.base_offset);
        let partition_epoch = self.nodes[&id].replicas[&partition].partition_epoch();
        if let (Some(offset), Some(partition_epoch)) = (damaged, partition_epoch) {
            let request = ControlRequest::ReplicaDamaged {
                topic: TOPIC.into(),
                partition,
                node: id,
                offset,
                partition_epoch,
            };
            self.send(id, CONTROLLER, Msg::Propose { partition, request });
        }
    }

    fn cut_groups(&mut self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                self.cut.insert(((*x).min(*y), (*x).max(*y)));
            }
        }
        self.cuts_made += 1;
        self.log(format!("cut {a:?} | {b:?}"));
        let after = self.rng.random_range(100..=2000);
        self.schedule(after, Event::Heal(self.cuts_made));
    }

    fn apply(&mut self, action: Action) {
        self.log(format!("script {action:?}"));
        match action {
            Action::Crash(n) => self.crash(n),
            Action::Restart(n) => self.restart(n),
            Action::Cut(a, b) => {
                for x in &a {
                    for y in &b {
                        self.cut.insert(((*x).min(*y), (*x).max(*y)));
                    }
                }
            }
            Action::HealLinks => self.cut.clear(),
            Action::Damage(n) => self.damage(n, 0),
            Action::Pause => self.paused = true,
            Action::Resume => self.paused = false,
        }
    }

    /// Stops every fault, restarts every node and brings the controller
    /// back.
    fn heal(&mut self) {
        self.log("heal".into());
        self.faulting = false;
        self.cut.clear();
        for id in NODES {
            self.restart(id);
        }
        if !self.controller.up {
            self.controller_up();
        }
        self.apply(Action::Resume);
    }

    fn converged(&self) -> bool {
        if self
            .producers
            .iter()
            .any(|p| p.batches_left > 0 || p.in_flight.is_some())
        {
            return false;
        }
        (0..self.partitions).all(|p| {
            let Some(meta) = self.controller.state.partition(TOPIC, p) else {
                return false;
            };
            let Some(leader) = meta.leader.map(|l| &self.nodes[&l]) else {
                return false;
            };
            let others_follow = self
                .nodes
                .values()
                .all(|n| n.id == leader.id || n.replicas[&p].leading_epoch().is_none());
            if leader.replicas[&p].leading_epoch() != Some(meta.leader_epoch)
                || meta.isr.len() != NODES.len()
                || !others_follow
            {
                return false;
            }
            let reference = &leader.disks[&p].entries;
            let end = leader.disks[&p].end();
            leader.replicas[&p].high_watermark() == end
                && self
                    .nodes
                    .values()
                    .all(|n| &n.disks[&p].entries == reference)
        })
    }

    /// The end-of-run check on the healed, converged cluster.
    fn check_final(&mut self) {
        for p in 0..self.partitions {
            let node = &self.nodes[&NODES[0]];
            let entries = node.disks[&p].entries.clone();
            let mut seen = BTreeSet::new();
            for e in &entries {
                if !seen.insert(e.batch) {
                    self.fail(format!("{:?} stored twice in p{p}", e.batch));
                }
                let committed = self.checker.committed.get(&(p, e.base_offset)).copied();
                if committed.is_some_and(|c| c != (e.batch, e.epoch)) {
                    self.fail(format!("committed offset {} lost in p{p}", e.base_offset));
                }
            }
            let positions: BTreeMap<BatchId, u64> =
                entries.iter().map(|e| (e.batch, e.base_offset)).collect();
            for producer in self.producers.iter().filter(|pr| pr.partition == p) {
                let mut last = None;
                for (batch, base) in &producer.acked {
                    match positions.get(batch) {
                        Some(at) if at == base => {}
                        other => {
                            let line = format!(
                                "acked {batch:?} at {base} is at {other:?} in the final log"
                            );
                            self.fail(line);
                        }
                    }
                    if last.is_some_and(|l| l >= *base) {
                        self.fail(format!("acked {batch:?} out of producer order"));
                    }
                    last = Some(*base);
                }
            }
        }
    }

    fn assert(&mut self, ok: bool, message: String) {
        if !ok {
            self.fail(message);
        }
    }

    fn fail(&mut self, message: String) -> ! {
        let tail = self.trace.len().saturating_sub(60);
        panic!(
            "seed {}: {message}\nlast events:\n{}\nreplay: SIM_SEED={} cargo test -p edgebus-core --test simulator random_seeds",
            self.seed,
            self.trace[tail..].join("\n"),
            self.seed
        );
    }
}

/// One random run: faults for a few simulated seconds, then heal and check.
fn run_seed(seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let faults = Faults {
        drop: rng.random_range(0.0..0.15),
        duplicate: rng.random_range(0.0..0.05),
        max_delay_ms: rng.random_range(1..=30),
        max_disk_ms: rng.random_range(0..=5),
        fault_every_ms: rng.random_range(100..=600),
    };
    let partitions = rng.random_range(1..=2);
    let min_insync = rng.random_range(1..=2);
    let fault_ms = rng.random_range(2_000..=6_000);
    let pace_ms = rng.random_range(0..=40);
    let mut sim = Sim::new(seed, partitions, min_insync, faults, 80, pace_ms);
    sim.run_until(fault_ms, |_| false);
    sim.heal();
    let end = sim.now_ms + HEAL_LIMIT_MS;
    if !sim.run_until(end, Sim::converged) {
        let state = describe(&sim);
        sim.fail(format!(
            "did not converge within {HEAL_LIMIT_MS}ms of healing:\n{state}"
        ));
    }
    sim.check_final();
    sim.producers.iter().map(|p| p.acked.len()).sum()
}

fn describe(sim: &Sim) -> String {
    let mut out = String::new();
    for node in sim.nodes.values() {
        for (p, r) in &node.replicas {
            out += &format!(
                "node {} p{p}: up {} role {:?} epoch {:?} log_end {} hw {} disk_end {}\n",
                node.id,
                node.up,
                r.role(),
                r.leading_epoch(),
                r.log_end(),
                r.high_watermark(),
                node.disks[p].end()
            );
        }
    }
    out += &format!("controller: {:?}\n", sim.controller.state.topics.get(TOPIC));
    for p in &sim.producers {
        out += &format!(
            "producer {}: left {} in flight {:?} acked {}\n",
            p.producer_id,
            p.batches_left,
            p.in_flight.as_ref().map(|f| f.batch),
            p.acked.len()
        );
    }
    out
}

fn quiet_network() -> Faults {
    Faults {
        drop: 0.0,
        duplicate: 0.0,
        max_delay_ms: 2,
        max_disk_ms: 1,
        fault_every_ms: 0,
    }
}

/// Runs a scripted scenario, then heals and checks; returns the sim for
/// scenario-specific checks.
fn run_script(min_insync: u32, script: Script, check: impl Fn(&Sim, u64)) -> Sim {
    let mut sim = Sim::new(7, 1, min_insync, quiet_network(), 200, 40);
    for (at, action) in script {
        sim.run_until(at, |_| false);
        sim.now_ms = sim.now_ms.max(at);
        sim.apply(action);
        check(&sim, at);
    }
    sim.heal();
    let end = sim.now_ms + HEAL_LIMIT_MS;
    if !sim.run_until(end, Sim::converged) {
        let state = describe(&sim);
        sim.fail(format!("did not converge:\n{state}"));
    }
    sim.check_final();
    sim
}

fn leader_of(sim: &Sim) -> NodeId {
    sim.controller
        .state
        .partition(TOPIC, 0)
        .and_then(|p| p.leader)
        .expect("a leader")
}

#[test]
fn random_seeds() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SIM_SEEDS")
                .map(|n| n.parse().expect("SIM_SEEDS is a number"))
                .unwrap_or(200);
            (0..count).collect()
        }
    };
    let mut acked = 0;
    for seed in &seeds {
        match catch_unwind(AssertUnwindSafe(|| run_seed(*seed))) {
            Ok(n) => acked += n,
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    assert!(
        acked > seeds.len() * 20,
        "faults left too little progress to check: {acked} batches acked over {} seeds",
        seeds.len()
    );
}

/// Jepsen's Kafka 2013 case: the ISR shrinks to the leader (followers cut
/// off), then the leader is isolated too. With min.insync.replicas 2 no
/// `acks=all` write is acknowledged by the leader alone; no out-of-sync
/// follower is elected; everything acknowledged before survives.
#[test]
fn kafka_2013_isr_shrinks_to_an_isolated_leader() {
    let mut leader = 0;
    let sim = run_script(
        2,
        vec![
            (1_500, Action::Pause),
            (1_600, Action::Resume),
            (2_000, Action::Cut(vec![1], vec![2, 3])),
            (2_000, Action::Cut(vec![2], vec![3])),
            (3_500, Action::Cut(vec![1], vec![CONTROLLER])),
            (6_000, Action::HealLinks),
        ],
        |sim, at| {
            if at == 3_500 {
                let p = sim.controller.state.partition(TOPIC, 0).unwrap();
                assert_eq!(p.isr.len(), 1, "the ISR shrank to the leader: {p:?}");
            }
            if at == 6_000 {
                // Cut from everyone, the old leader was fenced and nobody
                // else was in sync: no leader at all rather than an unclean
                // one.
                let p = sim.controller.state.partition(TOPIC, 0).unwrap();
                assert_eq!(p.leader, None, "{p:?}");
            }
        },
    );
    leader = leader.max(leader_of(&sim));
    assert!(leader > 0);
}

/// KIP-101: a double failover where a follower that truncated to its high
/// watermark would diverge. Leader 1 writes batches follower 2 gets and 3
/// does not; 1 dies; 2 leads; 2 dies before 3 catches up; 1 returns. Epoch
/// truncation keeps every replica's log a prefix of the leader's.
#[test]
fn kip_101_double_failover() {
    run_script(
        1,
        vec![
            (1_000, Action::Cut(vec![3], vec![1, 2])),
            (1_400, Action::Crash(1)),
            (2_000, Action::HealLinks),
            (2_010, Action::Crash(2)),
            (2_600, Action::Restart(1)),
            (3_000, Action::Restart(2)),
            (3_500, Action::Crash(1)),
            (3_800, Action::Restart(1)),
        ],
        |_, _| {},
    );
}

/// KIP-966's last replica standing: the ISR shrinks to the leader, which
/// acknowledges alone (min.insync.replicas 1) and then crashes, losing what
/// it had not fsync'd. The out-of-sync replicas must not be elected; the
/// last ISR member leads again at a new epoch when it restarts, and the
/// others truncate to it.
#[test]
fn kip_966_last_replica_standing_after_an_unclean_restart() {
    let sim = run_script(
        1,
        vec![
            (1_000, Action::Cut(vec![2, 3], vec![1])),
            (2_500, Action::Crash(1)),
            (3_500, Action::HealLinks),
            (5_000, Action::Restart(1)),
        ],
        |sim, at| {
            if at == 3_500 {
                let p = sim.controller.state.partition(TOPIC, 0).unwrap();
                assert_eq!(p.isr, vec![1], "{p:?}");
            }
            if at == 5_000 {
                let p = sim.controller.state.partition(TOPIC, 0).unwrap();
                assert_eq!(p.leader, None, "no unclean election: {p:?}");
            }
        },
    );
    let p = sim.controller.state.partition(TOPIC, 0).unwrap();
    assert_eq!(p.leader, Some(1));
}

/// A committed batch rots on the leader's disk and the leader restarts
/// while it is being rebuilt: it is voted out at once, never elected while
/// its copy is incomplete, cuts its log back and fetches it again, and
/// rejoins; nothing acknowledged is lost.
#[test]
fn a_damaged_leader_is_replaced_and_rebuilt_from_a_follower() {
    let damaged = std::cell::Cell::new(0);
    let sim = run_script(
        2,
        vec![
            (1_500, Action::Damage(1)),
            (1_520, Action::Crash(1)),
            (1_600, Action::Restart(1)),
            (2_500, Action::Damage(2)),
        ],
        |sim, at| {
            let p = sim.controller.state.partition(TOPIC, 0).unwrap();
            if at == 1_500 {
                damaged.set(leader_of(sim));
            }
            if at == 2_500 {
                assert!(
                    p.rebuilding.is_empty() && p.isr.len() == 3,
                    "rebuilt and back in sync within a second: {p:?}"
                );
            }
        },
    );
    assert_eq!(damaged.get(), 1, "node 1 led when its copy rotted");
    let p = sim.controller.state.partition(TOPIC, 0).unwrap();
    assert!(p.rebuilding.is_empty());
    let reports = sim
        .trace
        .iter()
        .filter(|l| l.contains("ReplicaDamaged") && l.contains("Ok(Done)"))
        .count();
    assert!(reports >= 2, "both damaged copies were reported");
    for node in [1, 2] {
        let cut = format!("node {node} p0 truncates at");
        assert!(
            sim.trace.iter().any(|l| l.contains(&cut)),
            "node {node} cut its copy back"
        );
    }
}

/// The ISR shrinks to the leader (cut off from both followers), which goes
/// on acknowledging alone (min.insync.replicas 1); then a batch the
/// followers also hold rots on the leader's disk. The leader, the last
/// in-sync replica, may alone hold the newest acknowledged batches, so it
/// neither leads nor cuts its log: it mends the batch from a follower (its
/// first tries fail while the links are cut), leads again, and nothing
/// acknowledged is lost.
#[test]
fn a_damaged_last_isr_member_mends_from_an_out_of_sync_replica() {
    let sim = run_script(
        1,
        vec![
            (1_500, Action::Cut(vec![1], vec![2, 3])),
            (2_500, Action::Damage(1)),
            (3_000, Action::HealLinks),
        ],
        |sim, at| {
            let p = sim.controller.state.partition(TOPIC, 0).unwrap();
            if at == 2_500 {
                assert_eq!(
                    (p.leader, p.isr.as_slice()),
                    (Some(1), &[1][..]),
                    "the leader acknowledged alone before the damage"
                );
            }
        },
    );
    let has = |needle: &str| sim.trace.iter().any(|l| l.contains(needle));
    assert!(has("node 1 p0: batch at"), "the leader's copy rotted");
    assert!(has("node 1 p0 mends its batch at"), "and was mended");
    assert!(
        sim.trace
            .iter()
            .any(|l| l.contains("ReplicaMended") && l.contains("Ok(Done)")),
        "the controller took the mend"
    );
    assert!(!has("node 1 p0 truncates at"), "the leader cut nothing");
    assert_eq!(leader_of(&sim), 1, "the mended copy leads again");
}
