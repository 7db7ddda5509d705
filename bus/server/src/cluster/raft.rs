//! The control log: openraft over the peer transport, with its log, vote
//! and state machine in `control.redb`.
//!
//! The control log has a redb file of its own, beside the partitions'
//! `edgebus.redb`: raft must fsync every vote and every appended entry, and
//! those commits must neither wait behind a large group commit of records
//! (a late vote or heartbeat starts elections) nor delay one. Control
//! traffic is small, so its file stays small.
//!
//! The state machine is [`ClusterState`]; every node applies every entry, so
//! every node holds the whole cluster state, published on a watch channel.
//! `apply` answers each entry with [`ClusterState::apply`]'s result, which
//! openraft hands to the `client_write` caller on the leader: a refusal is
//! a committed, deterministic answer, not a raft error.
//!
//! Plugin components are not part of the state (it is written whole at
//! every apply): the entry that adds one carries its bytes, and applying it
//! keeps them in the `plugin_blobs` table by digest, in the same
//! transaction as the state, dropping those no plugin uses any more.
//! Snapshots carry the components beside the state, so a node brought up
//! to date by a snapshot has every component its state names.

// openraft's storage traits return its `StorageError` by value; the
// helpers here return what those methods must.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use edgebus_core::controller::{ClusterState, ControlError, ControlOutcome, ControlRequest};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A node id: the same ids replicas use.
pub type NodeId = u64;

/// What raft stores of a member: its address as the `--peer` list gives
/// it, byte for byte the same on every node (raft never repairs a
/// membership that differs between nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `host:port` of the node's QUIC listener.
    pub addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// The answer of the state machine to one request.
pub type ControlResult = Result<ControlOutcome, ControlError>;

openraft::declare_raft_types!(
    /// The control log's types.
    pub TypeConfig:
        D = ControlRequest,
        R = ControlResult,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The control log's raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

type StoreResult<T> = Result<T, StorageError<NodeId>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Keys: `vote`, `committed`, `last_purged`, `state_machine`, `snapshot`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Plugin components by hex SHA-256 digest.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_blobs");

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

/// Runs a redb transaction on the blocking pool: nothing is held across an
/// await, and the runtime's threads never wait on an fsync.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

fn get_meta<T: for<'a> Deserialize<'a>>(db: &Database, key: &str) -> StoreResult<Option<T>> {
    let tx = db.begin_read().map_err(io_err)?;
    let table = match tx.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let value = table.get(key).map_err(io_err)?;
    value
        .map(|v| serde_json::from_slice(v.value()).map_err(io_err))
        .transpose()
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> StoreResult<()> {
    let mut tx = db.begin_write().map_err(io_err)?;
    tx.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut table = tx.open_table(META).map_err(io_err)?;
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        table.insert(key, bytes.as_slice()).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)
}

/// Writes the state machine and the components it needs in one
/// transaction: `added` are stored, and (when `replace` is set) every other
/// stored component is dropped first; after that, components no plugin of
/// the state uses are dropped.
fn persist(
    db: &Database,
    data: &MachineData,
    added: &BTreeMap<String, Vec<u8>>,
    replace: bool,
) -> StoreResult<()> {
    let mut tx = db.begin_write().map_err(io_err)?;
    tx.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut meta = tx.open_table(META).map_err(io_err)?;
        let bytes = serde_json::to_vec(data).map_err(io_err)?;
        meta.insert("state_machine", bytes.as_slice())
            .map_err(io_err)?;
        let mut blobs = tx.open_table(BLOBS).map_err(io_err)?;
        if replace {
            blobs.retain(|_, _| false).map_err(io_err)?;
        }
        for (digest, wasm) in added {
            blobs
                .insert(digest.as_str(), wasm.as_slice())
                .map_err(io_err)?;
        }
        let used = data.state.digests();
        blobs
            .retain(|digest, _| used.contains(digest))
            .map_err(io_err)?;
    }
    tx.commit().map_err(io_err)
}

/// The components stored beside the state, by digest.
fn stored_blobs(db: &Database) -> StoreResult<BTreeMap<String, Vec<u8>>> {
    let tx = db.begin_read().map_err(io_err)?;
    let table = match tx.open_table(BLOBS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(io_err)? {
        let (digest, wasm) = row.map_err(io_err)?;
        out.insert(digest.value().to_owned(), wasm.value().to_vec());
    }
    Ok(out)
}

/// Reads plugin components kept beside the cluster state. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    db: Arc<Database>,
}

impl Blobs {
    /// The component with this digest, if this node has applied the entry
    /// (or snapshot) that brought it and a plugin still uses it.
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        let read = || -> StoreResult<Option<Vec<u8>>> {
            let tx = self.db.begin_read().map_err(io_err)?;
            let table = match tx.open_table(BLOBS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(io_err(e)),
            };
            let found = table.get(digest).map_err(io_err)?;
            Ok(found.map(|v| v.value().to_vec()))
        };
        read().map_err(|e| e.to_string())
    }
}

/// What a snapshot holds: the state machine, and the components its
/// plugins use.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    machine: MachineData,
    blobs: BTreeMap<String, Blob>,
}

impl SnapshotData {
    /// Reads a snapshot; one from before components were replicated is
    /// the bare state machine, with no components.
    fn decode(bytes: &[u8]) -> StoreResult<SnapshotData> {
        serde_json::from_slice(bytes).or_else(|_| {
            let machine = serde_json::from_slice(bytes).map_err(io_err)?;
            Ok(SnapshotData {
                machine,
                blobs: BTreeMap::new(),
            })
        })
    }
}

/// A component, as base64 in the snapshot's JSON.
#[derive(Serialize, Deserialize)]
struct Blob(#[serde(with = "edgebus_core::controller::base64_bytes")] Vec<u8>);

/// Opens (or creates) `control.redb`, returning the log store, the state
/// machine and a receiver of the applied cluster state.
pub fn open(
    path: &std::path::Path,
) -> Result<(LogStore, StateMachine, watch::Receiver<Arc<ClusterState>>), String> {
    let db = Database::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let db = Arc::new(db);
    let data: MachineData = get_meta(&db, "state_machine")
        .map_err(|e| format!("{}: {e}", path.display()))?
        .unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(data.state.clone()));
    let machine = StateMachine {
        db: db.clone(),
        data,
        published: Arc::new(tx),
    };
    Ok((LogStore { db }, machine, rx))
}

/// The raft log and vote, in `control.redb`. Every write is fsync'd before
/// it is reported done.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            let tx = db.begin_read().map_err(io_err)?;
            let table = match tx.open_table(LOG) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(io_err(e)),
            };
            let mut out = Vec::new();
            for row in table.range::<u64>((start, end)).map_err(io_err)? {
                let (_, value) = row.map_err(io_err)?;
                out.push(serde_json::from_slice(value.value()).map_err(io_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId<NodeId>> = get_meta(&db, "last_purged")?;
            let tx = db.begin_read().map_err(io_err)?;
            let last = match tx.open_table(LOG) {
                Ok(table) => match table.last().map_err(io_err)? {
                    Some((_, value)) => Some(
                        serde_json::from_slice::<Entry<TypeConfig>>(value.value())
                            .map_err(io_err)?
                            .log_id,
                    ),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io_err(e)),
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || put_meta(&db, "vote", &vote)).await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        let db = self.db.clone();
        blocking(move || put_meta(&db, "committed", &committed)).await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        let db = self.db.clone();
        blocking(move || Ok(get_meta::<Option<LogId<NodeId>>>(&db, "committed")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let entries: Vec<_> = entries.into_iter().collect();
        let result = blocking(move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                for entry in &entries {
                    let bytes = serde_json::to_vec(entry).map_err(io_err)?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(io_err)?;
                }
            }
            tx.commit().map_err(io_err)
        })
        .await;
        // Reported only after the fsync'd commit: an entry raft counts
        // towards a quorum is on disk.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            {
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            {
                let mut meta = tx.open_table(META).map_err(io_err)?;
                let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
                meta.insert("last_purged", bytes.as_slice())
                    .map_err(io_err)?;
                let mut table = tx.open_table(LOG).map_err(io_err)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }
}

/// What the state machine persists: the cluster state with the last entry
/// applied to it, in one value, so the two never disagree after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, PeerNode>,
    state: ClusterState,
}

/// The cluster state machine, persisted in `control.redb` and published on
/// a watch channel after every applied batch.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    data: MachineData,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachine {
    /// A reader of the components kept beside the state.
    pub fn blobs(&self) -> Blobs {
        Blobs {
            db: self.db.clone(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let db = self.db.clone();
        let blobs = blocking(move || stored_blobs(&db)).await?;
        let snapshot = SnapshotData {
            machine: self.data.clone(),
            blobs: blobs.into_iter().map(|(d, w)| (d, Blob(w))).collect(),
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(io_err)?;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id: format!("{:?}", self.data.last_applied.map(|l| l.index)),
        };
        let (db, stored) = (self.db.clone(), (meta.clone(), bytes.clone()));
        blocking(move || put_meta(&db, "snapshot", &stored)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>)> {
        Ok((self.data.last_applied, self.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<ControlResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One answer per entry, blank and membership entries included:
        // openraft hands answer i to the writer of entry i.
        let mut answers = Vec::new();
        let mut added = BTreeMap::new();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            let answer = match entry.payload {
                EntryPayload::Blank => Ok(ControlOutcome::Done),
                EntryPayload::Normal(request) => {
                    let answer = self.data.state.apply(&request);
                    match (&answer, request) {
                        (Err(e), request) => {
                            tracing::debug!(?request, error = %e, "control request refused");
                        }
                        (Ok(_), ControlRequest::AddPlugin { digest, wasm, .. }) => {
                            added.insert(digest, wasm);
                        }
                        (Ok(_), _) => {}
                    }
                    answer
                }
                EntryPayload::Membership(membership) => {
                    self.data.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    Ok(ControlOutcome::Done)
                }
            };
            answers.push(answer);
        }
        let (db, data) = (self.db.clone(), self.data.clone());
        blocking(move || persist(&db, &data, &added, false)).await?;
        self.published
            .send_replace(Arc::new(self.data.state.clone()));
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let SnapshotData { machine, blobs } = SnapshotData::decode(&bytes)?;
        self.data = machine;
        let blobs: BTreeMap<String, Vec<u8>> = blobs.into_iter().map(|(d, b)| (d, b.0)).collect();
        let (db, meta, data) = (self.db.clone(), meta.clone(), self.data.clone());
        blocking(move || {
            persist(&db, &data, &blobs, true)?;
            put_meta(&db, "snapshot", &(meta, bytes))
        })
        .await?;
        self.published
            .send_replace(Arc::new(self.data.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let stored: Option<(SnapshotMeta<NodeId, PeerNode>, Vec<u8>)> =
            blocking(move || get_meta(&db, "snapshot")).await?;
        Ok(stored.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(&self) -> StoreResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().map_err(io_err)?;
            let (log, machine, _) = open(&dir.path().join("control.redb"))
                .map_err(|e| io_err(std::io::Error::other(e)))?;
            Ok((dir, log, machine))
        }
    }

    fn entry(index: u64, request: ControlRequest) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(request),
        }
    }

    fn add(name: &str, digest: &str, wasm: &[u8]) -> ControlRequest {
        ControlRequest::AddPlugin {
            name: name.into(),
            digest: digest.into(),
            kind: "filter".into(),
            added_ms: 0,
            wasm: wasm.to_vec(),
        }
    }

    /// A node brought up to date by a snapshot (one that was down while
    /// the log was compacted) gets the components its state names, and a
    /// replaced component is dropped.
    #[tokio::test]
    async fn components_are_kept_by_digest_and_travel_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut leader, _) = open(&dir.path().join("a.redb")).unwrap();
        leader
            .apply([
                entry(1, add("p", "d1", b"one")),
                entry(2, add("q", "d2", b"two")),
            ])
            .await
            .unwrap();
        leader
            .apply([entry(3, add("p", "d3", b"three"))])
            .await
            .unwrap();
        let blobs = leader.blobs();
        assert_eq!(blobs.get("d1").unwrap(), None, "replaced, so dropped");
        assert_eq!(blobs.get("d3").unwrap().as_deref(), Some(&b"three"[..]));
        let snapshot = leader.build_snapshot().await.unwrap();

        let (_, mut behind, states) = open(&dir.path().join("b.redb")).unwrap();
        behind
            .apply([entry(1, add("old", "d0", b"zero"))])
            .await
            .unwrap();
        behind
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let blobs = behind.blobs();
        assert_eq!(blobs.get("d0").unwrap(), None);
        assert_eq!(blobs.get("d2").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(blobs.get("d3").unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(states.borrow().plugins["p"].version, 2);
    }

    /// openraft's own contract tests for log stores and state machines.
    #[test]
    fn control_log_passes_openraft_storage_suite() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }
}
