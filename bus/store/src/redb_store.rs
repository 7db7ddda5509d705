//! [`RedbStore`]: partition logs in one redb file per node.
//!
//! # Tables
//!
//! ```text
//! topics                 &str            → topic settings (topic::encode_spec)
//! epochs                 (&str, u32, i32) → u64 (topic, partition, leader epoch → start offset)
//! group_offsets          (&str, &str, u32) → u64 (group, topic, partition → offset)
//! node                   &str            → u64   ("next_producer_id", "store_id", "format_version")
//! plugins                &str            → plugin description (plugin::encode_info)
//! plugin_wasm            &str            → component bytes
//! configs                (u8, &str)      → config blob (ConfigKind::tag, key)
//! pipeline_state         (&str, &[u8])   → &[u8] (pipeline or other state owner, plugin state key)
//! pipeline_positions     (&str, u32)     → u64 (pipeline, source partition → next offset)
//! deleting               (&str, u32)     → () (a deleted partition whose log is still being freed)
//! log/{topic}/{p}        u64 base_offset → whole batch (Kafka RecordBatch v2), base offset
//!                                          and leader epoch written in
//!                        ROW_KEY         → the partition's row: log_start, log_end, bytes,
//!                                          the sparse time index's state (PartitionRow)
//!                        ROW_KEY + 1 + id→ producer `id`'s dedup state (opaque; edgebus-core
//!                                          encodes it)
//! time/{topic}/{p}       i64 max_ts_ms   → u64 base offset
//! ```
//!
//! The partition's row is the source of truth for its offsets: it keeps
//! `log_end` when retention has deleted every batch, so offsets are never
//! reused, and it keeps the partition's stored bytes so size retention knows
//! when to act without scanning the log.
//!
//! The row and the producer states sit in the log table itself, at keys above
//! every offset (Kafka offsets are `i64`), because a durable commit costs
//! about one page write per B-tree page it changes: a batch appended at the
//! log end changes the table's rightmost leaf, and the row and a few producers'
//! states ride in that same leaf, where tables of their own (format 2) cost a
//! leaf each. The time index is sparse for the same reason. Measured on a
//! broker taking 1,000 single-record batches a second: 9.2 pages written
//! per fsync in format 2, 7.6 in format 3.
//!
//! The time index follows Kafka's: an entry is added only for a batch
//! whose max timestamp exceeds every earlier one in the partition, so keys
//! and values both increase, and, like Kafka's `index.interval.bytes`, only
//! once [`TIME_INDEX_INTERVAL`] bytes were stored since the last entry. A
//! lookup probes the entries on either side of the time and reads at most
//! that interval of batches between them; it answers exactly as an entry
//! for every such batch would.
//!
//! Topic names are `[A-Za-z0-9._-]`, so the `/` in table names cannot be
//! forged by a topic name.
//!
//! A plugin's description and its component bytes sit in two tables, so
//! listing the registry never reads the components.
//!
//! `format_version` in `node` names the on-disk format. Format 1 (edgebus
//! 0.1's own batch layout) had no such key; a store holding topics or
//! configuration in it is refused with [`StoreError::IncompatibleFormat`]
//! rather than misread, and an empty one is simply stamped with the current
//! format. Format 2 kept partition rows and producer states in tables of
//! their own (`partitions`, `producers`); it is upgraded in place at open,
//! in one transaction, and a release that reads only format 2 refuses the
//! result.
//!
//! Every write is one redb write transaction: a group append, a retention
//! pass, a topic creation or deletion, an offset commit all apply completely
//! or not at all (a deleted topic is gone at once; a large log's pages are
//! freed later, a step at a time, from its `deleting` row, and a topic
//! created under the name first frees the rest in its own transaction; a
//! release from before the `deleting` table would reuse such a log with
//! its old batches, so it must not open a store with rows in it), and
//! dedup state commits with the batches it describes
//! (invariant 4). A pipeline step's outputs, plugin state and source
//! position share one durable transaction too, which is what makes a
//! pipeline exactly-once: whatever a crash interrupts, the stored position
//! names exactly the steps whose outputs and state are stored.
//!
//! # Recovering from IO errors
//!
//! After any failed IO call redb refuses every later operation that reaches
//! the file ("Previous I/O error occurred") until the [`Database`] is closed
//! and opened again. A broker on an edge box whose disk filled up must take
//! writes again once space is freed, without a restart, so [`RedbStore`]
//! reopens itself:
//!
//! 1. An operation (write or read) that fails with an IO error returns
//!    [`StoreError::Io`] and marks the store for reopening. The failed write
//!    transaction applied nothing.
//! 2. The next write operation, before doing anything else, takes the old
//!    database out of service (new reads now fail fast with
//!    [`StoreError::Recovering`]), waits up to [`REOPEN_DRAIN_MAX`] for reads
//!    still using it to finish, closes it, and opens the same file again;
//!    redb repairs it on open, back to its last durable commit. Then the
//!    write proceeds on the new database. One attempt per write call: the
//!    call that hit the error returns at once instead of retrying, because
//!    the cause (a full disk) rarely clears within a call.
//! 3. If the reopen fails (the disk is still full: repair itself writes),
//!    that write returns the error and the store stays closed; reads fail
//!    with [`StoreError::Recovering`] and every later write tries again. Each
//!    attempt repairs, walking the whole file, so callers should back off
//!    between retries.
//!
//! Reads never reopen: they only mark. Until a write reopens the store,
//! reads of pages redb still caches succeed and others fail with
//! [`StoreError::Io`]. A reopen must reach the same storage: the `store_id`
//! written at the first open is checked after every reopen, and a mismatch
//! (a file replaced under the broker, a backend factory returning new empty
//! storage) is refused, because serving it would restart offsets at 0.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgebus_proto::batch::{self, BatchHeader};
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, Table, TableDefinition, TableError, WriteTransaction,
};

use crate::{
    CommitError, CommittedOffset, ConfigKind, EpochEnd, EpochStart, LogStore, LogWrite, MetaStore,
    OffsetCommit, PartitionLog, PartitionOffsets, PipelineCommit, PluginInfo, ReadBatches,
    ReadError, RetentionHold, RetentionReport, StateWrite, StoreError, TopicError, TopicSpec,
    WriteError,
};
use crate::{DELETE_STEP_BYTES, MAX_OFFSET, group, plugin, topic};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const EPOCHS: TableDefinition<(&str, u32, i32), u64> = TableDefinition::new("epochs");
const GROUP_OFFSETS: TableDefinition<(&str, &str, u32), u64> =
    TableDefinition::new("group_offsets");
const NODE: TableDefinition<&str, u64> = TableDefinition::new("node");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
const PLUGIN_WASM: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_wasm");
const CONFIGS: TableDefinition<(u8, &str), &[u8]> = TableDefinition::new("configs");
const PIPELINE_STATE: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("pipeline_state");
const PIPELINE_POSITIONS: TableDefinition<(&str, u32), u64> =
    TableDefinition::new("pipeline_positions");
/// Logs of deleted partitions whose records are still being removed, a
/// step at a time (see [`MetaStore::drain_deleted`]).
const DELETING: TableDefinition<(&str, u32), ()> = TableDefinition::new("deleting");
const NEXT_PRODUCER_ID: &str = "next_producer_id";
/// Random identity of the store, written at its first open, so a reopen
/// can tell it reached the same storage.
const STORE_ID: &str = "store_id";
/// The on-disk format of the store; see the module docs.
const FORMAT_VERSION: &str = "format_version";
/// The format this release reads and writes: batches are Kafka
/// RecordBatch v2, leader epochs are recorded, partition rows and producer
/// states sit in the partition's log table.
pub const FORMAT: u64 = 3;
/// Format 1 stores carry no `format_version` key.
const LEGACY_FORMAT: u64 = 1;
/// The format [`RedbStore`] upgrades in place; see the module docs.
const FORMAT_2: u64 = 2;

/// The key of a partition's row in its log table. Batches sit below it
/// (no log reaches past [`MAX_OFFSET`]), producer states above.
const ROW_KEY: u64 = MAX_OFFSET;

/// The log-table key of idempotent producer `id`'s dedup state (`id` ≥ 0,
/// as Kafka's are: a negative id is no idempotent producer).
fn producer_key(id: i64) -> Option<u64> {
    u64::try_from(id).ok().map(|id| ROW_KEY + 1 + id)
}

/// The producer whose dedup state is at log-table key `key` (above
/// [`ROW_KEY`]).
fn producer_of_key(key: u64) -> i64 {
    (key - ROW_KEY - 1) as i64
}

/// How long a reopen waits for reads still running on the old database
/// before giving up with [`StoreError::Recovering`] (and leaving the old
/// database in place for the next write to try again). Reads hold the
/// database for one call, which normally takes milliseconds.
pub const REOPEN_DRAIN_MAX: Duration = Duration::from_secs(5);
/// Poll interval while a reopen waits for reads to finish.
const REOPEN_DRAIN_POLL: Duration = Duration::from_millis(1);

/// Opens the store's storage again after an IO error.
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The redb-backed [`LogStore`]: one file per node, one writer.
///
/// Write operations are serialized by a lock (the broker has a single
/// writer task anyway, and redb allows one write transaction at a time).
/// Reads run in MVCC read transactions and never block the writer.
///
/// The store reopens its file by itself after an IO error: see the
/// [module docs](self) for when and what callers see meanwhile.
pub struct RedbStore {
    /// The open database; `None` between closing a failed database and
    /// opening its replacement. Every operation holds its own `Arc` for
    /// its whole duration, so a reopen knows when the old database is no
    /// longer used.
    db: RwLock<Option<Arc<Database>>>,
    /// Opens the same storage again.
    open: Opener,
    /// Serializes write operations, so a reopen never races a write.
    writer: Mutex<()>,
    /// Set when an operation hit an IO error; the next write reopens.
    needs_reopen: AtomicBool,
    /// The identity read or written at the first open.
    store_id: u64,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("store_id", &self.store_id)
            .field("needs_reopen", &self.needs_reopen.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Names of one partition's two tables.
struct PartitionTables {
    log: String,
    time: String,
}

impl PartitionTables {
    fn new(topic: &str, partition: u32) -> Self {
        PartitionTables {
            log: format!("log/{topic}/{partition}"),
            time: format!("time/{topic}/{partition}"),
        }
    }

    fn log(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.log)
    }

    fn time(&self) -> TableDefinition<'_, i64, u64> {
        TableDefinition::new(&self.time)
    }
}

/// A partition's row, at [`ROW_KEY`] of its log table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionRow {
    log_start: u64,
    log_end: u64,
    bytes: u64,
    /// The largest max timestamp of any batch stored so far, deleted ones
    /// included (Kafka's "max timestamp so far"); `None` before the first
    /// batch, and once truncation or retention has emptied the time index
    /// (the next batch then gets an entry).
    max_ts: Option<i64>,
    /// Bytes of the batches stored since the last time index entry, up to
    /// at least [`TIME_INDEX_INTERVAL`]: see [`PartitionRow::index_time`].
    unindexed: u64,
}

/// The sparse time index's spacing. A batch that raises the partition's
/// max timestamp gets an entry only when this many bytes have been stored
/// since the last entry, like Kafka's `index.interval.bytes`; so a lookup
/// reads at most this much past the entry it starts from, and most small
/// commits leave the time table alone, which saves a page in each.
const TIME_INDEX_INTERVAL: u64 = 64 << 10;

impl PartitionRow {
    const LEN: usize = 41;

    fn encode(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.log_start.to_le_bytes());
        out[8..16].copy_from_slice(&self.log_end.to_le_bytes());
        out[16..24].copy_from_slice(&self.bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.unindexed.to_le_bytes());
        if let Some(max_ts) = self.max_ts {
            out[32] = 1;
            out[33..].copy_from_slice(&max_ts.to_le_bytes());
        }
        out
    }

    fn decode(table: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let field = |at: usize| -> Option<[u8; 8]> { bytes.get(at..at + 8)?.try_into().ok() };
        let u = |at| field(at).map(u64::from_le_bytes);
        let max_ts = match bytes.get(32) {
            Some(0) => Some(None),
            Some(1) => field(33).map(|ts| Some(i64::from_le_bytes(ts))),
            _ => None,
        };
        match (bytes.len(), u(0), u(8), u(16), u(24), max_ts) {
            (
                Self::LEN,
                Some(log_start),
                Some(log_end),
                Some(bytes),
                Some(unindexed),
                Some(max_ts),
            ) => Ok(PartitionRow {
                log_start,
                log_end,
                bytes,
                max_ts,
                unindexed,
            }),
            _ => Err(corrupt(
                table,
                format!("partition row of {} bytes", bytes.len()),
            )),
        }
    }

    /// Takes a stored batch of `len` bytes and max timestamp `ts` into
    /// the max timestamp so far; returns whether it gets a time index
    /// entry. Only a batch that raises the max can (the index's keys and
    /// offsets both increase, as Kafka's do), and only once
    /// [`TIME_INDEX_INTERVAL`] bytes were stored since the last entry. So
    /// the first batch after an entry whose max timestamp reaches a given
    /// time lies within that many bytes of it, or is the next entry: what
    /// [`RedbStore::offset_for_timestamp`] relies on.
    fn index_time(&mut self, ts: i64, len: u64) -> bool {
        let raises = self.max_ts.is_none_or(|max| ts > max);
        if raises {
            let first = self.max_ts.is_none();
            self.max_ts = Some(ts);
            if first || self.unindexed >= TIME_INDEX_INTERVAL {
                self.unindexed = 0;
                return true;
            }
        }
        self.unindexed = self.unindexed.saturating_add(len);
        false
    }

    /// The row in `log`, the partition's log table; `None` if it has none
    /// (a log being removed after its topic was deleted).
    fn read(
        log: &impl ReadableTable<u64, &'static [u8]>,
        table: &str,
    ) -> Result<Option<Self>, StoreError> {
        log.get(ROW_KEY)?
            .map(|row| Self::decode(table, row.value()))
            .transpose()
    }

    fn write(self, log: &mut Table<u64, &'static [u8]>) -> Result<(), StoreError> {
        log.insert(ROW_KEY, self.encode().as_slice())?;
        Ok(())
    }

    fn offsets(self) -> PartitionOffsets {
        PartitionOffsets {
            log_start: self.log_start,
            log_end: self.log_end,
        }
    }
}

impl From<redb::StorageError> for StoreError {
    /// Sorts out the errors a reopen may cure: those of the file or device
    /// under redb, and redb's refusal to go on after one.
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                StoreError::DiskFull(io.to_string())
            }
            redb::StorageError::Io(_)
            | redb::StorageError::PreviousIo
            | redb::StorageError::DatabaseClosed
            | redb::StorageError::Backend(_) => StoreError::Io(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// Converts redb errors that wrap a [`redb::StorageError`] through it, so
/// IO failures become [`StoreError::Io`] whichever call reported them.
macro_rules! storage_wrapping_error {
    ($($error:ident),* $(,)?) => {$(
        impl From<redb::$error> for StoreError {
            fn from(e: redb::$error) -> Self {
                match e {
                    redb::$error::Storage(storage) => storage.into(),
                    other => StoreError::Backend(other.to_string()),
                }
            }
        }
    )*};
}

storage_wrapping_error!(DatabaseError, TransactionError, TableError, CommitError);

/// An error opening the redb file at `path`, naming the file: redb's own
/// messages ("Database already open. Cannot acquire lock.") do not say
/// which.
fn opening(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
            "{} is locked: it is already open (is another `edgebus serve` using this data \
             dir?)",
            path.display()
        )),
        other => naming(path, other.into()),
    }
}

/// `e` with `path` put before its detail, where it has a free-form one.
fn naming(path: &Path, e: StoreError) -> StoreError {
    let named = |detail: String| format!("{}: {detail}", path.display());
    match e {
        StoreError::Io(detail) => StoreError::Io(named(detail)),
        StoreError::Backend(detail) => StoreError::Backend(named(detail)),
        StoreError::Recovering(detail) => StoreError::Recovering(named(detail)),
        other => other,
    }
}

impl From<redb::SetDurabilityError> for StoreError {
    fn from(e: redb::SetDurabilityError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// An operation's error type that may carry a [`StoreError`], so the store
/// can notice an IO failure whatever the operation returns.
trait StoreFailure {
    fn store_error(&self) -> Option<&StoreError>;
}

impl StoreFailure for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl StoreFailure for TopicError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            TopicError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl StoreFailure for ReadError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            ReadError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl StoreFailure for CommitError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            CommitError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl StoreFailure for WriteError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            WriteError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// Converts a redb result for functions whose error type wraps
/// [`StoreError`], where `?` alone would need two conversions.
trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: Into<StoreError>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(Into::into)
    }
}

fn corrupt(table: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: table.to_owned(),
        detail: detail.into(),
    }
}

/// A fresh identity for a new store. Uniqueness matters, secrecy does not:
/// std's randomly keyed hasher over the time and process id is enough.
fn new_store_id() -> u64 {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    RandomState::new().hash_one((now_ns, std::process::id()))
}

/// The store id in `db`, `None` if it has none (or no `node` table).
fn stored_store_id(db: &Database) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read()?;
    let node = match txn.open_table(NODE) {
        Ok(node) => node,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(node.get(STORE_ID)?.map(|id| id.value()))
}

/// Closes `db` once no read holds it any more, waiting at most `max_wait`;
/// hands it back if reads still hold it then.
///
/// Closing must finish before the file is opened again: redb locks the file
/// while a `Database` is open. Reads take no lock the writer holds, so
/// waiting for them cannot deadlock.
fn close_when_unshared(mut db: Arc<Database>, max_wait: Duration) -> Result<(), Arc<Database>> {
    let deadline = Instant::now() + max_wait;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                // After an IO error redb writes nothing on close and leaves
                // the file for the next open to repair; its error only
                // repeats the one that got the database closed.
                if let Err(e) = db.close() {
                    tracing::debug!(error = %e, "closing the failed database");
                }
                return Ok(());
            }
            Err(shared) if Instant::now() >= deadline => return Err(shared),
            Err(shared) => {
                db = shared;
                thread::sleep(REOPEN_DRAIN_POLL);
            }
        }
    }
}

/// Parses the header of a stored batch, checking it sits at its key.
fn stored_header(table: &str, base_offset: u64, bytes: &[u8]) -> Result<BatchHeader, StoreError> {
    let header = BatchHeader::parse(bytes)
        .map_err(|e| corrupt(table, format!("batch at {base_offset}: {e}")))?;
    check_position(table, base_offset, &header)?;
    Ok(header)
}

fn check_position(table: &str, base_offset: u64, header: &BatchHeader) -> Result<(), StoreError> {
    if header.base_offset != base_offset || header.record_count == 0 {
        return Err(corrupt(
            table,
            format!(
                "batch keyed {base_offset} says base offset {} with {} records",
                header.base_offset, header.record_count
            ),
        ));
    }
    Ok(())
}

/// The page cache [`RedbStore::open`] gives redb: small, for gateways; redb's
/// own default (1 GiB) let a broker hold hundreds of MiB after one catch-up
/// read.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

impl RedbStore {
    /// Opens the store in the redb file at `path`, creating it if missing.
    ///
    /// After a crash redb repairs the file during this call (it walks the
    /// database to rebuild its allocator state), so recovery is opening;
    /// only transactions whose commit returned are found. A reopen after an
    /// IO error opens the same path but never creates it: a file that
    /// vanished is an error, not a new empty store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a page cache of at most `cache_bytes`.
    /// redb keeps pages it read or wrote in this cache until it is full, so
    /// it bounds what the store holds in memory after a long read or a
    /// burst of writes; a small cache costs re-reads from the OS page
    /// cache, not correctness.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| opening(path, e))?;
        let reopen_path = path.to_owned();
        Self::init(
            db,
            Box::new(move || {
                Database::builder()
                    .set_cache_size(cache_bytes)
                    .open(&reopen_path)
                    .map_err(|e| opening(&reopen_path, e))
            }),
        )
        .map_err(|e| naming(path, e))
    }

    /// Opens the store on caller-supplied redb backends: a fault-injecting
    /// one in crash tests, for instance.
    ///
    /// `backend` is called for the first open and again for every reopen
    /// after an IO error, because a backend that failed stays with the
    /// database that used it. Each call must return a backend over the same
    /// storage (a new handle to the same file, say). One over new storage,
    /// such as a fresh `redb::backends::InMemoryBackend`, is refused at
    /// reopen, since it would hold none of the acknowledged data.
    pub fn open_with_backend<B, F>(backend: F) -> Result<Self, StoreError>
    where
        B: StorageBackend,
        F: Fn() -> Result<B, std::io::Error> + Send + Sync + 'static,
    {
        let open = move || -> Result<Database, StoreError> {
            let backend = backend().map_err(|e| StoreError::Io(e.to_string()))?;
            Ok(Database::builder().create_with_backend(backend)?)
        };
        let db = open()?;
        Self::init(db, Box::new(open))
    }

    /// Creates the fixed tables, so read transactions can always open them,
    /// and reads or writes the store id.
    fn init(db: Database, open: Opener) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(TOPICS)?;
        txn.open_table(EPOCHS)?;
        txn.open_table(GROUP_OFFSETS)?;
        txn.open_table(PLUGINS)?;
        txn.open_table(PLUGIN_WASM)?;
        txn.open_table(CONFIGS)?;
        txn.open_table(PIPELINE_STATE)?;
        txn.open_table(PIPELINE_POSITIONS)?;
        let store_id = {
            let mut node = txn.open_table(NODE)?;
            let stored = node.get(STORE_ID)?.map(|id| id.value());
            let format = node.get(FORMAT_VERSION)?.map(|v| v.value());
            let id = match stored {
                Some(id) => {
                    Self::check_format(&txn, format)?;
                    id
                }
                None => {
                    let id = new_store_id();
                    node.insert(STORE_ID, id)?;
                    id
                }
            };
            if format != Some(FORMAT) {
                node.insert(FORMAT_VERSION, FORMAT)?;
            }
            id
        };
        txn.commit()?;
        Ok(RedbStore {
            db: RwLock::new(Some(Arc::new(db))),
            open,
            writer: Mutex::new(()),
            needs_reopen: AtomicBool::new(false),
            store_id,
        })
    }

    /// Refuses a store written in another format, unless it is a legacy
    /// store holding nothing the format change affects (no topics, no saved
    /// configuration), which may simply be stamped with [`FORMAT`], or a
    /// format 2 store, which is upgraded in `txn`.
    fn check_format(txn: &WriteTransaction, format: Option<u64>) -> Result<(), StoreError> {
        let found = match format {
            Some(FORMAT) => return Ok(()),
            Some(FORMAT_2) => return Self::upgrade_from_2(txn),
            Some(other) => other,
            None => {
                let empty =
                    txn.open_table(TOPICS)?.is_empty()? && txn.open_table(CONFIGS)?.is_empty()?;
                if empty {
                    return Ok(());
                }
                LEGACY_FORMAT
            }
        };
        Err(StoreError::IncompatibleFormat {
            found,
            supported: FORMAT,
            advice: "start this release on a new, empty data directory; records in the old one \
                     can be read with the release that wrote them and produced again",
        })
    }

    /// Moves format 2's `partitions` rows and `producers` states into
    /// each partition's log table, in `txn`, and drops those tables.
    fn upgrade_from_2(txn: &WriteTransaction) -> Result<(), StoreError> {
        const PARTITIONS: TableDefinition<(&str, u32), (u64, u64, u64)> =
            TableDefinition::new("partitions");
        const PRODUCERS: TableDefinition<(i64, &str, u32), &[u8]> =
            TableDefinition::new("producers");
        let mut rows = BTreeMap::new();
        for entry in txn.open_table(PARTITIONS)?.iter()? {
            let (key, value) = entry?;
            let ((topic, partition), (log_start, log_end, bytes)) = (key.value(), value.value());
            if log_end > MAX_OFFSET {
                // Format 2 let a mirror move a log end anywhere; format 3
                // keeps the row where such offsets would go.
                return Err(corrupt(
                    "partitions",
                    format!("{topic}/{partition} ends at {log_end}, past {MAX_OFFSET}"),
                ));
            }
            rows.insert((topic.to_owned(), partition), (log_start, log_end, bytes));
        }
        for ((topic, partition), (log_start, log_end, bytes)) in &rows {
            let tables = PartitionTables::new(topic, *partition);
            // Format 2's time index has an entry for every batch that
            // raised the max timestamp, so its last key is that max; the
            // next raising batch gets an entry.
            let max_ts = txn
                .open_table(tables.time())?
                .last()?
                .map(|(ts, _)| ts.value());
            let row = PartitionRow {
                log_start: *log_start,
                log_end: *log_end,
                bytes: *bytes,
                max_ts,
                unindexed: TIME_INDEX_INTERVAL,
            };
            row.write(&mut txn.open_table(tables.log())?)?;
        }
        let mut states = Vec::new();
        for entry in txn.open_table(PRODUCERS)?.iter()? {
            let (key, state) = entry?;
            let (id, topic, partition) = key.value();
            states.push((id, topic.to_owned(), partition, state.value().to_vec()));
        }
        for (id, topic, partition, state) in &states {
            // Format 2 kept a state only for a partition it had a row for,
            // and only for idempotent producers; anything else is no
            // partition's and no producer's, and is dropped.
            let known = rows.contains_key(&(topic.clone(), *partition));
            if let (Some(key), true) = (producer_key(*id), known) {
                let tables = PartitionTables::new(topic, *partition);
                txn.open_table(tables.log())?
                    .insert(key, state.as_slice())?;
            }
        }
        txn.delete_table(PARTITIONS)?;
        txn.delete_table(PRODUCERS)?;
        Ok(())
    }

    /// The open database, for one operation.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                StoreError::Recovering(
                    "the database was closed after an IO error; the next write reopens it"
                        .to_owned(),
                )
            })
    }

    /// The database slot, for a reopen. Nothing panics while holding it and
    /// its value is always whole, so a poisoned lock is still usable.
    fn slot(&self) -> RwLockWriteGuard<'_, Option<Arc<Database>>> {
        self.db.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one write operation: reopens first if an earlier operation hit
    /// an IO error, and marks the store for reopening if this one does.
    fn writing<T, E>(&self, op: impl FnOnce(&Database) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError> + StoreFailure,
    {
        // Nothing panics while holding it, and it guards no data.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if self.needs_reopen.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let db = self.database()?;
        let result = op(&db);
        self.note(&result);
        result
    }

    /// Runs one read operation on a read transaction, holding the database
    /// until the transaction is done so a reopen cannot close it mid-read.
    fn snapshot<T, E>(&self, op: impl FnOnce(&ReadTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError> + StoreFailure,
    {
        let result = self.database().map_err(E::from).and_then(|db| {
            let txn = db.begin_read().map_err(|e| E::from(e.into()))?;
            op(&txn)
        });
        self.note(&result);
        result
    }

    /// Marks the store for reopening if `result` is an IO failure.
    fn note<T, E: StoreFailure>(&self, result: &Result<T, E>) {
        if let Some(StoreError::Io(detail) | StoreError::DiskFull(detail)) =
            result.as_ref().err().and_then(E::store_error)
            && !self.needs_reopen.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(%detail, "storage IO failed; the next write reopens the database");
        }
    }

    /// Replaces a database that hit an IO error with a fresh open of the
    /// same storage. Called by [`Self::writing`] with the writer lock held,
    /// so no write uses the old database meanwhile.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.slot().take();
        if let Some(old) = old {
            match close_when_unshared(old, REOPEN_DRAIN_MAX) {
                Ok(()) => {}
                Err(old) => {
                    *self.slot() = Some(old);
                    return Err(StoreError::Recovering(format!(
                        "reads still held the failed database after {REOPEN_DRAIN_MAX:?}; \
                         the next write tries again"
                    )));
                }
            }
        }
        let db = (self.open)()?;
        match stored_store_id(&db)? {
            Some(id) if id == self.store_id => {}
            found => {
                return Err(corrupt(
                    "node",
                    format!(
                        "reopened storage has store id {found:?}, expected {}; \
                         refusing storage that is not this store's",
                        self.store_id
                    ),
                ));
            }
        }
        *self.slot() = Some(Arc::new(db));
        self.needs_reopen.store(false, Ordering::Release);
        // redb rolled the file back to its last durable commit, so any
        // non-durable append after it is gone: the operator should know.
        tracing::warn!(
            "database reopened after an IO error; any append acknowledged without \
             durability after the last durable commit is lost"
        );
        Ok(())
    }

    /// Creates the topic in `txn`; `false` if it already exists.
    fn create_in(txn: &WriteTransaction, spec: &TopicSpec) -> Result<bool, StoreError> {
        let mut topics = txn.open_table(TOPICS)?;
        if topics.get(spec.name.as_str())?.is_some() {
            return Ok(false);
        }
        topics.insert(spec.name.as_str(), topic::encode_spec(spec).as_slice())?;
        for partition in 0..spec.partitions {
            Self::create_partition(txn, &spec.name, partition)?;
        }
        Ok(true)
    }

    /// Creates an empty partition's tables and row in `txn`, after what is
    /// left of an earlier partition of that name.
    fn create_partition(
        txn: &WriteTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<(), StoreError> {
        Self::finish_deleting(txn, topic, partition)?;
        let tables = PartitionTables::new(topic, partition);
        PartitionRow::default().write(&mut txn.open_table(tables.log())?)?;
        txn.open_table(tables.time())?;
        Ok(())
    }

    /// Alters the topic in `txn` from `old` to `new`, adding the partitions
    /// `new` has beyond `old`'s, empty.
    fn alter_in(
        txn: &WriteTransaction,
        old: &TopicSpec,
        new: &TopicSpec,
    ) -> Result<(), StoreError> {
        let mut topics = txn.open_table(TOPICS)?;
        topics.insert(new.name.as_str(), topic::encode_spec(new).as_slice())?;
        for partition in old.partitions..new.partitions {
            Self::create_partition(txn, &new.name, partition)?;
        }
        Ok(())
    }

    /// Deletes the topic in `txn`; `false` if there is none.
    fn delete_in(txn: &WriteTransaction, name: &str) -> Result<bool, StoreError> {
        let mut topics = txn.open_table(TOPICS)?;
        let Some(encoded) = topics.remove(name)? else {
            return Ok(false);
        };
        let spec = topic::decode_spec(name, encoded.value())?;
        drop(encoded);
        let mut deleting = txn.open_table(DELETING)?;
        for partition in 0..spec.partitions {
            let tables = PartitionTables::new(name, partition);
            txn.delete_table(tables.time())?;
            let mut log = txn.open_table(tables.log())?;
            let bytes = PartitionRow::read(&log, &tables.log)?.map_or(0, |row| row.bytes);
            // Freeing a large log's pages takes the writer about 0.14 ms a
            // MB here: a large one is removed a step at a time instead, so
            // other partitions' appends are not held up behind it. Its row
            // and producer states go now: the partition is gone at once.
            if bytes <= DELETE_STEP_BYTES {
                drop(log);
                txn.delete_table(tables.log())?;
            } else {
                log.retain_in(ROW_KEY.., |_, _| false)?;
                deleting.insert((name, partition), ())?;
            }
        }
        txn.open_table(EPOCHS)?
            .retain_in((name, 0, i32::MIN)..=(name, u32::MAX, i32::MAX), |_, _| {
                false
            })?;
        txn.open_table(GROUP_OFFSETS)?
            .retain(|(_, topic, _), _| topic != name)?;
        let mut configs = txn.open_table(CONFIGS)?;
        configs.remove((ConfigKind::Ingest.tag(), name))?;
        configs.remove((ConfigKind::MirrorDestination.tag(), name))?;
        Ok(true)
    }

    /// Removes, in `txn`, what is left of an earlier partition `partition`
    /// of a topic named `name` that is still being removed, before a new one
    /// takes its tables.
    fn finish_deleting(
        txn: &WriteTransaction,
        name: &str,
        partition: u32,
    ) -> Result<(), StoreError> {
        if txn
            .open_table(DELETING)?
            .remove((name, partition))?
            .is_some()
        {
            txn.delete_table(PartitionTables::new(name, partition).log())?;
        }
        Ok(())
    }

    /// One step of [`MetaStore::drain_deleted`] in `txn`: removes about
    /// `budget` bytes of the first deleted log still holding records, and the
    /// log itself once it is empty. Returns whether anything is left.
    fn drain_in(txn: &WriteTransaction, budget: u64) -> Result<bool, StoreError> {
        let mut deleting = txn.open_table(DELETING)?;
        let Some(first) = deleting.first()? else {
            return Ok(false);
        };
        let (name, partition) = first.0.value();
        let (name, partition) = (name.to_owned(), partition);
        drop(first);
        let tables = PartitionTables::new(&name, partition);
        let emptied = {
            let mut log = txn.open_table(tables.log())?;
            let mut last = None;
            let mut taken = 0u64;
            for entry in log.range(..ROW_KEY)? {
                let (offset, batch) = entry?;
                taken += batch.value().len() as u64;
                last = Some(offset.value());
                if taken >= budget {
                    break;
                }
            }
            match last {
                Some(last) => {
                    log.retain_in(..=last, |_, _| false)?;
                    log.is_empty()?
                }
                None => true,
            }
        };
        if emptied {
            txn.delete_table(tables.log())?;
            deleting.remove((name.as_str(), partition))?;
        }
        Ok(!deleting.is_empty()?)
    }

    /// Refuses, in `txn`, commits of which any names a topic or partition
    /// that does not exist, reporting the first.
    fn check_commit_targets(
        txn: &WriteTransaction,
        commits: &[OffsetCommit],
    ) -> Result<(), CommitError> {
        let topics = txn.open_table(TOPICS).or_backend()?;
        for commit in commits {
            let name = commit.topic.as_str();
            let spec = topics.get(name).or_backend()?;
            let count = spec
                .map(|spec| topic::decode_spec(name, spec.value()))
                .transpose()?
                .map(|spec| spec.partitions);
            match count {
                Some(count) if commit.partition < count => {}
                Some(_) => {
                    return Err(CommitError::UnknownPartition {
                        topic: commit.topic.clone(),
                        partition: commit.partition,
                    });
                }
                None => return Err(CommitError::UnknownTopic(commit.topic.clone())),
            }
        }
        Ok(())
    }

    /// The (topic, partition, offset) entries of one group, in key order.
    fn group_entries(
        table: &impl ReadableTable<(&'static str, &'static str, u32), u64>,
        group: &str,
    ) -> Result<Vec<CommittedOffset>, StoreError> {
        let mut entries = Vec::new();
        for entry in table.range((group, "", 0)..)? {
            let (key, offset) = entry?;
            let (entry_group, topic, partition) = key.value();
            if entry_group != group {
                break;
            }
            entries.push(CommittedOffset {
                topic: topic.to_owned(),
                partition,
                offset: offset.value(),
            });
        }
        Ok(entries)
    }

    /// Begins a write transaction that is fsync'd at commit, for the writes
    /// the trait promises are durable. Immediate is redb's default today;
    /// it is stated so a change of default cannot weaken a promise.
    fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(txn)
    }

    /// Commits `txn` if it `changed` anything, else aborts it, so a write
    /// that found nothing to do costs no fsync.
    fn commit_if_changed(txn: WriteTransaction, changed: bool) -> Result<(), StoreError> {
        if changed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(())
    }

    /// Applies a group of writes in `txn`, in slice order: see
    /// [`PartitionLog::append_at`]. Both `append_at` and `commit_pipeline`
    /// store batches through it, so a pipeline's outputs get the same
    /// checks, index entries and accounting as produced batches. On error
    /// the caller aborts `txn`.
    fn append_at_in(txn: &WriteTransaction, writes: &[LogWrite]) -> Result<(), WriteError> {
        let mut epochs = txn.open_table(EPOCHS).or_backend()?;
        // Consecutive writes to one partition share its opened tables.
        for run in writes.chunk_by(|a, b| a.topic == b.topic && a.partition == b.partition) {
            let (topic, partition) = (run[0].topic.as_str(), run[0].partition);
            let tables = PartitionTables::new(topic, partition);
            // Opening a missing table in a write transaction creates it; the
            // caller aborts this one on the error below, so nothing stays.
            let mut log = txn.open_table(tables.log()).or_backend()?;
            let Some(mut row) = PartitionRow::read(&log, &tables.log)? else {
                return Err(Self::missing(txn, topic, partition)?.into());
            };
            let mut time = txn.open_table(tables.time()).or_backend()?;
            let mut latest_epoch = Self::latest_epoch(&epochs, topic, partition)?;
            for write in run {
                let header = write.header()?;
                if write.base_offset != row.log_end {
                    return Err(WriteError::NotAtLogEnd {
                        topic: topic.to_owned(),
                        partition,
                        base_offset: write.base_offset,
                        log_end: row.log_end,
                    });
                }
                crate::check_write_bounds(write, header.as_ref())?;
                if let Some(header) = &header {
                    match latest_epoch {
                        Some(latest) if write.leader_epoch < latest => {
                            return Err(WriteError::EpochBehind {
                                topic: topic.to_owned(),
                                partition,
                                epoch: write.leader_epoch,
                                latest,
                            });
                        }
                        Some(latest) if write.leader_epoch == latest => {}
                        _ => {
                            epochs
                                .insert((topic, partition, write.leader_epoch), write.base_offset)
                                .or_backend()?;
                            latest_epoch = Some(write.leader_epoch);
                        }
                    }
                    Self::write_batch(&mut log, &mut time, &mut row, write, header)?;
                }
                // check_write_bounds refused negative ids.
                if let Some((key, state)) = write
                    .producer
                    .as_ref()
                    .and_then(|(id, state)| Some((producer_key(*id)?, state)))
                {
                    log.insert(key, state.as_ref()).or_backend()?;
                }
            }
            row.write(&mut log)?;
        }
        Ok(())
    }

    /// The newest epoch in a partition's epoch table.
    fn latest_epoch(
        epochs: &impl ReadableTable<(&'static str, u32, i32), u64>,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i32>, StoreError> {
        let last = epochs
            .range((topic, partition, i32::MIN)..=(topic, partition, i32::MAX))?
            .next_back()
            .transpose()?;
        Ok(last.map(|(key, _)| key.value().2))
    }

    /// The error for a partition without a row: an unknown topic, or a
    /// partition the topic does not have.
    fn missing(
        txn: &WriteTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<ReadError, StoreError> {
        Ok(if txn.open_table(TOPICS)?.get(topic)?.is_some() {
            ReadError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            }
        } else {
            ReadError::UnknownTopic(topic.to_owned())
        })
    }

    /// Stores one batch at the log end, with its base offset and leader
    /// epoch written in, and advances `row` and the time index past it.
    fn write_batch(
        log: &mut Table<u64, &'static [u8]>,
        time: &mut Table<i64, u64>,
        row: &mut PartitionRow,
        write: &LogWrite,
        header: &BatchHeader,
    ) -> Result<(), StoreError> {
        let base_offset = write.base_offset;
        {
            let mut stored = log.insert_reserve(base_offset, write.batch.len())?;
            let stored = stored.as_mut();
            stored.copy_from_slice(&write.batch);
            batch::set_base_offset(stored, base_offset);
            batch::set_partition_leader_epoch(stored, write.leader_epoch);
        }
        row.log_end = write.end(Some(header));
        row.bytes += write.batch.len() as u64;
        if row.index_time(header.max_timestamp_ms, write.batch.len() as u64) {
            time.insert(header.max_timestamp_ms, base_offset)?;
        }
        Ok(())
    }

    /// Truncates one partition in `txn` and stores its `producers`' dedup
    /// states: see [`PartitionLog::truncate_from`].
    fn truncate_in(
        txn: &WriteTransaction,
        topic: &str,
        partition: u32,
        offset: u64,
        producers: &[(i64, Bytes)],
    ) -> Result<u64, ReadError> {
        let tables = PartitionTables::new(topic, partition);
        let mut log = txn.open_table(tables.log()).or_backend()?;
        let Some(mut row) = PartitionRow::read(&log, &tables.log)? else {
            return Err(Self::missing(txn, topic, partition)?);
        };
        for (producer_id, state) in producers {
            let key = producer_key(*producer_id).ok_or_else(|| {
                corrupt(
                    &tables.log,
                    format!("producer id {producer_id} is no idempotent producer's"),
                )
            })?;
            log.insert(key, state.as_ref()).or_backend()?;
        }
        if offset >= row.log_end {
            return Ok(row.log_end);
        }
        let new_end = Self::holding_batch(&log, &tables.log, offset)?.unwrap_or(offset);
        let mut removed = Vec::new();
        for entry in log.range(new_end..ROW_KEY).or_backend()? {
            let (key, value) = entry.or_backend()?;
            removed.push((key.value(), value.value().len() as u64));
        }
        for (base, size) in &removed {
            log.remove(base).or_backend()?;
            row.bytes = row.bytes.saturating_sub(*size);
        }
        let mut time = txn.open_table(tables.time()).or_backend()?;
        time.retain(|_, base| base < new_end).or_backend()?;
        Self::rescan_time(&log, &time, &tables.log, &mut row, new_end)?;
        txn.open_table(EPOCHS)
            .or_backend()?
            .retain_in(
                (topic, partition, i32::MIN)..=(topic, partition, i32::MAX),
                |_, start| start < new_end,
            )
            .or_backend()?;
        row.log_end = new_end;
        row.log_start = row.log_start.min(new_end);
        row.write(&mut log)?;
        Ok(new_end)
    }

    /// Sets `row`'s max timestamp so far and bytes since the last time index
    /// entry for a log truncated to end at `log_end`, whose index keeps
    /// only entries below it. With no entry left the log is as good as new
    /// for the index: the next batch gets one.
    fn rescan_time(
        log: &impl ReadableTable<u64, &'static [u8]>,
        time: &impl ReadableTable<i64, u64>,
        table: &str,
        row: &mut PartitionRow,
        log_end: u64,
    ) -> Result<(), StoreError> {
        let Some((key, base)) = time.last()?.map(|(k, b)| (k.value(), b.value())) else {
            row.max_ts = None;
            row.unindexed = 0;
            return Ok(());
        };
        let mut max_ts = key;
        row.unindexed = Self::after_time_entry(log, table, base, log_end, |_, header| {
            max_ts = max_ts.max(header.max_timestamp_ms);
            true
        })?;
        row.max_ts = Some(max_ts);
        Ok(())
    }

    /// Visits the batches from the one at `entry` (a time index entry's
    /// offset) up to `until` for as long as one that raised the max
    /// timestamp without an entry of its own may lie among them: the
    /// entry's own batch (an entry retention moved to the log start may sit
    /// at a later batch than its key's), then those within
    /// [`TIME_INDEX_INTERVAL`] bytes after it (see
    /// [`PartitionRow::index_time`]). `visit` gets each batch's base offset
    /// and header, and returns `false` to stop. Returns the bytes visited
    /// after the entry's batch.
    fn after_time_entry(
        log: &impl ReadableTable<u64, &'static [u8]>,
        table: &str,
        entry: u64,
        until: u64,
        mut visit: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<u64, StoreError> {
        let mut past = 0u64;
        for stored in log.range(entry..until.min(ROW_KEY))? {
            if past >= TIME_INDEX_INTERVAL {
                break;
            }
            let (key, value) = stored?;
            // A batch whose header is damaged is passed over: its records
            // are not served until it is mended, and a truncation or lookup
            // must not fail on a batch it only looks at.
            if let Ok(header) = stored_header(table, key.value(), value.value())
                && !visit(key.value(), &header)
            {
                break;
            }
            if key.value() != entry {
                past += value.value().len() as u64;
            }
        }
        Ok(past)
    }

    /// The base offset of the stored batch holding `offset`, if any.
    fn holding_batch(
        log: &impl ReadableTable<u64, &'static [u8]>,
        table: &str,
        offset: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(entry) = log.range(..=offset.min(ROW_KEY - 1))?.next_back() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        let header = stored_header(table, key.value(), value.value())?;
        Ok((header.next_offset() > offset).then_some(key.value()))
    }

    /// A partition's epoch table in `txn`, oldest first.
    fn epochs_in(
        txn: &ReadTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<EpochStart>, ReadError> {
        Self::partition_row(txn, topic, partition)?;
        let epochs = txn.open_table(EPOCHS).or_backend()?;
        epochs
            .range((topic, partition, i32::MIN)..=(topic, partition, i32::MAX))
            .or_backend()?
            .map(|entry| {
                let (key, start) = entry.or_backend()?;
                Ok(EpochStart {
                    epoch: key.value().2,
                    start_offset: start.value(),
                })
            })
            .collect()
    }

    /// Removes the plugin state of the owners from `first` on in key order
    /// while `ours` holds for them, in `txn`.
    fn remove_owners_in(
        txn: &WriteTransaction,
        first: &str,
        ours: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let mut state = txn.open_table(PIPELINE_STATE)?;
        let mut keys = Vec::new();
        for entry in state.range((first, &[][..])..)? {
            let (key, _) = entry?;
            let (owner, key) = key.value();
            if !ours(owner) {
                break;
            }
            keys.push((owner.to_owned(), key.to_vec()));
        }
        for (owner, key) in &keys {
            state.remove((owner.as_str(), key.as_slice()))?;
        }
        Ok(())
    }

    /// Applies `owner`'s plugin state changes in order, in `txn`.
    fn put_state_in(
        txn: &WriteTransaction,
        owner: &str,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let mut state = txn.open_table(PIPELINE_STATE)?;
        for (key, value) in changes {
            let key = (owner, key.as_slice());
            match value {
                Some(value) => state.insert(key, value.as_slice())?,
                None => state.remove(key)?,
            };
        }
        Ok(())
    }

    /// Applies a pipeline step's plugin state changes, in order, and moves
    /// its source position, in `txn`.
    fn apply_pipeline_progress(
        txn: &WriteTransaction,
        commit: &PipelineCommit,
    ) -> Result<(), StoreError> {
        let pipeline = commit.pipeline.as_str();
        Self::put_state_in(txn, pipeline, &commit.state)?;
        txn.open_table(PIPELINE_POSITIONS)?.insert(
            (pipeline, commit.source_partition),
            commit.source_next_offset,
        )?;
        Ok(())
    }

    /// Applies retention to one partition whose row is `row`, updating it.
    fn retain_partition(
        txn: &WriteTransaction,
        spec: &TopicSpec,
        partition: u32,
        mut row: PartitionRow,
        now_ms: i64,
        report: &mut RetentionReport,
        holds: &mut [RetentionHold],
    ) -> Result<(), StoreError> {
        let tables = PartitionTables::new(&spec.name, partition);
        let mut log = txn.open_table(tables.log())?;
        type Oldest = Option<(u64, u64, i64, u64)>;
        let oldest = |log: &Table<u64, &[u8]>| -> Result<Oldest, StoreError> {
            let Some(entry) = log.range(..ROW_KEY)?.next() else {
                return Ok(None);
            };
            let (key, value) = entry?;
            let header = stored_header(&tables.log, key.value(), value.value())?;
            Ok(Some((
                key.value(),
                header.next_offset(),
                header.max_timestamp_ms,
                value.value().len() as u64,
            )))
        };
        let mut allow = |base, end, size, bytes| {
            RetentionHold::allow(holds, &spec.name, partition, (base, end, size), bytes)
        };
        let before = report.batches;
        // The largest max timestamp of the batches removed.
        let mut removed_max_ts = None;
        if let Some(cutoff_ms) = topic::retention_cutoff_ms(spec, now_ms) {
            while let Some((base, end, max_ts, size)) = oldest(&log)? {
                if max_ts >= cutoff_ms || report.step_spent() || !allow(base, end, size, row.bytes)
                {
                    break;
                }
                log.remove(base)?;
                removed_max_ts = removed_max_ts.max(Some(max_ts));
                row.bytes = row.bytes.saturating_sub(size);
                report.batches += 1;
                report.bytes += size;
            }
        }
        while let Some((base, end, max_ts, size)) = oldest(&log)? {
            if !topic::oldest_over_size(spec, row.bytes, size)
                || report.step_spent()
                || !allow(base, end, size, row.bytes)
            {
                break;
            }
            log.remove(base)?;
            removed_max_ts = removed_max_ts.max(Some(max_ts));
            row.bytes = row.bytes.saturating_sub(size);
            report.batches += 1;
            report.bytes += size;
        }
        if report.batches == before {
            return Ok(());
        }
        let first = match log.range(..ROW_KEY)?.next() {
            Some(entry) => Some(entry?.0.value()),
            None => None,
        };
        row.log_start = first.unwrap_or(row.log_end);
        // Drop index entries below the new log start, but keep the max
        // timestamp so far at the log start (the largest dropped key, or a
        // batch the sparse index skipped): remaining batches may hold
        // records up to it, and later appends compare against it. An
        // emptied log starts the index afresh.
        let mut time = txn.open_table(tables.time())?;
        let mut dropped = Vec::new();
        for entry in time.iter()? {
            let (ts, base) = entry?;
            if base.value() >= row.log_start {
                break;
            }
            dropped.push(ts.value());
        }
        for ts in &dropped {
            time.remove(ts)?;
        }
        match (dropped.last(), first) {
            (Some(&ts), Some(_)) => {
                time.insert(ts.max(removed_max_ts.unwrap_or(ts)), row.log_start)?;
            }
            (_, None) => {
                row.max_ts = None;
                row.unindexed = 0;
            }
            (None, Some(_)) => {}
        }
        row.write(&mut log)?;
        Ok(())
    }

    /// One retention pass over every topic that has a limit, in one write
    /// transaction.
    fn retain_all(
        db: &Database,
        now_ms: i64,
        holds: &mut [RetentionHold],
    ) -> Result<RetentionReport, StoreError> {
        let txn = db.begin_write()?;
        let mut report = RetentionReport::default();
        {
            let specs: Vec<TopicSpec> = txn
                .open_table(TOPICS)?
                .iter()?
                .map(|entry| {
                    let (name, spec) = entry?;
                    topic::decode_spec(name.value(), spec.value())
                })
                .filter(|spec| {
                    spec.as_ref().map_or(true, |s| {
                        s.retention_ms != topic::UNLIMITED || s.retention_bytes != topic::UNLIMITED
                    })
                })
                .collect::<Result<_, _>>()?;
            for spec in &specs {
                for partition in 0..spec.partitions {
                    let tables = PartitionTables::new(&spec.name, partition);
                    let row = PartitionRow::read(&txn.open_table(tables.log())?, &tables.log)?
                        .ok_or_else(|| corrupt(&tables.log, "no partition row"))?;
                    // Size retention needs more than the limit stored to act.
                    let over_size =
                        u64::try_from(spec.retention_bytes).is_ok_and(|limit| row.bytes > limit);
                    if row.log_start == row.log_end
                        || (spec.retention_ms == topic::UNLIMITED && !over_size)
                    {
                        continue;
                    }
                    Self::retain_partition(&txn, spec, partition, row, now_ms, &mut report, holds)?;
                }
            }
        }
        txn.commit()?;
        Ok(report)
    }

    /// Reads whole batches of one partition in `txn`: see [`LogStore::read`].
    fn read_in(
        txn: &ReadTransaction,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<ReadBatches, ReadError> {
        let (log, row) = Self::partition_log(txn, topic, partition)?;
        let offsets = row.offsets().bounded(upper);
        let from = from.max(offsets.log_start);
        let mut batches = Vec::new();
        if from >= offsets.log_end {
            return Ok(ReadBatches { batches, offsets });
        }
        let tables = PartitionTables::new(topic, partition);
        let start = Self::holding_batch(&log, &tables.log, from)?.unwrap_or(from);
        let mut total = 0usize;
        for entry in log.range(start..offsets.log_end).or_backend()? {
            let (key, value) = entry.or_backend()?;
            let bytes = value.value();
            if !batches.is_empty() && total + bytes.len() > max_bytes {
                break;
            }
            // Invariant 3: a batch damaged on disk is reported, never served.
            let damaged = |detail: String| ReadError::DamagedBatch {
                topic: topic.to_owned(),
                partition,
                offset: key.value(),
                detail,
            };
            let header = batch::verify_crc(bytes).map_err(|e| damaged(e.to_string()))?;
            check_position(&tables.log, key.value(), &header)
                .map_err(|e| damaged(e.to_string()))?;
            if header.next_offset() > offsets.log_end {
                break;
            }
            total += bytes.len();
            batches.push(Bytes::copy_from_slice(bytes));
        }
        Ok(ReadBatches { batches, offsets })
    }

    /// Reads the partition's row, telling an unknown topic from an unknown
    /// partition.
    fn partition_row(
        txn: &ReadTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionRow, ReadError> {
        Ok(Self::partition_log(txn, topic, partition)?.1)
    }

    /// Opens the partition's log table and reads its row, telling an
    /// unknown topic from an unknown partition.
    fn partition_log(
        txn: &ReadTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<(ReadOnlyTable<u64, &'static [u8]>, PartitionRow), ReadError> {
        let tables = PartitionTables::new(topic, partition);
        let log = match txn.open_table(tables.log()) {
            Ok(log) => Some(log),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(StoreError::from(e).into()),
        };
        if let Some(log) = log
            && let Some(row) = PartitionRow::read(&log, &tables.log)?
        {
            return Ok((log, row));
        }
        let topics = txn.open_table(TOPICS).or_backend()?;
        if topics.get(topic).or_backend()?.is_some() {
            Err(ReadError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
        } else {
            Err(ReadError::UnknownTopic(topic.to_owned()))
        }
    }
}

impl PartitionLog for RedbStore {
    fn append_at(&self, writes: &[LogWrite], durable: bool) -> Result<(), WriteError> {
        self.append_with_state(writes, &[], durable)
    }

    fn truncate_from(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        producers: &[(i64, Bytes)],
    ) -> Result<u64, ReadError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            match Self::truncate_in(&txn, topic, partition, offset, producers) {
                Ok(new_end) => {
                    txn.commit().or_backend()?;
                    Ok(new_end)
                }
                Err(e) => {
                    txn.abort().or_backend()?;
                    Err(e)
                }
            }
        })
    }

    fn mend_batch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        batch: &[u8],
    ) -> Result<(), WriteError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            let tables = PartitionTables::new(topic, partition);
            {
                let mut log = txn.open_table(tables.log()).or_backend()?;
                let Some(mut row) = PartitionRow::read(&log, &tables.log)? else {
                    drop(log);
                    return Err(Self::missing(&txn, topic, partition)?.into());
                };
                let stored = if offset < row.log_end {
                    log.get(offset).or_backend()?.map(|old| old.value().len())
                } else {
                    None
                };
                let old_len = match stored {
                    Some(len) => len as u64,
                    None => {
                        return Err(WriteError::InvalidBatch(format!(
                            "no stored batch at {offset} to mend"
                        )));
                    }
                };
                let next = match log.range(offset + 1..ROW_KEY).or_backend()?.next() {
                    Some(entry) => entry.or_backend()?.0.value(),
                    None => row.log_end,
                };
                let epochs = txn.open_table(EPOCHS).or_backend()?;
                let mut epoch = None;
                for entry in epochs
                    .range((topic, partition, i32::MIN)..=(topic, partition, i32::MAX))
                    .or_backend()?
                {
                    let (key, start) = entry.or_backend()?;
                    if start.value() <= offset {
                        epoch = Some(key.value().2);
                    }
                }
                crate::check_mend(offset, next, epoch, batch)?;
                log.insert(offset, batch).or_backend()?;
                row.bytes = row.bytes.saturating_sub(old_len) + batch.len() as u64;
                row.write(&mut log)?;
            }
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<ReadBatches, ReadError> {
        self.snapshot(|txn| Self::read_in(txn, topic, partition, from, max_bytes, upper))
    }

    fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError> {
        self.snapshot(|txn| Ok(Self::partition_row(txn, topic, partition)?.offsets()))
    }

    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64, ReadError> {
        self.snapshot(|txn| Ok(Self::partition_row(txn, topic, partition)?.bytes))
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError> {
        self.snapshot(|txn| {
            let (log, row) = Self::partition_log(txn, topic, partition)?;
            let tables = PartitionTables::new(topic, partition);
            let time = txn.open_table(tables.time()).or_backend()?;
            // The first batch whose max timestamp reaches `timestamp_ms` is
            // the next entry's, or one the sparse index skipped, found
            // within its interval after the entry before.
            let next = match time.range(timestamp_ms..).or_backend()?.next() {
                Some(entry) => Some(entry.or_backend()?.1.value()),
                None => None,
            };
            let before = match time.range(..timestamp_ms).or_backend()?.next_back() {
                Some(entry) => Some(entry.or_backend()?.1.value()),
                None => None,
            };
            let mut found = next;
            if let Some(before) = before {
                let until = next.unwrap_or(row.log_end);
                Self::after_time_entry(&log, &tables.log, before, until, |base, header| {
                    let reaches = header.max_timestamp_ms >= timestamp_ms;
                    if reaches {
                        found = Some(base);
                    }
                    !reaches
                })?;
            }
            Ok(found.map_or(row.log_end, |base| base.max(row.log_start)))
        })
    }

    fn epochs(&self, topic: &str, partition: u32) -> Result<Vec<EpochStart>, ReadError> {
        self.snapshot(|txn| Self::epochs_in(txn, topic, partition))
    }

    fn end_offset_for_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<Option<EpochEnd>, ReadError> {
        self.snapshot(|txn| {
            let epochs = Self::epochs_in(txn, topic, partition)?;
            let log_end = Self::partition_row(txn, topic, partition)?.log_end;
            Ok(crate::end_offset_for_epoch(&epochs, log_end, epoch))
        })
    }

    fn producer_states(&self, topic: &str, partition: u32) -> Result<Vec<(i64, Bytes)>, ReadError> {
        self.snapshot(|txn| {
            let (log, _) = Self::partition_log(txn, topic, partition)?;
            let mut states = Vec::new();
            for entry in log.range(ROW_KEY + 1..).or_backend()? {
                let (key, state) = entry.or_backend()?;
                states.push((
                    producer_of_key(key.value()),
                    Bytes::copy_from_slice(state.value()),
                ));
            }
            Ok(states)
        })
    }

    fn enforce_retention_holding(
        &self,
        now_ms: i64,
        holds: &mut [RetentionHold],
    ) -> Result<RetentionReport, StoreError> {
        self.writing(|db| {
            // A failed pass deleted nothing: its counts must not stick.
            let mut attempt = holds.to_vec();
            let report = Self::retain_all(db, now_ms, &mut attempt)?;
            holds.clone_from_slice(&attempt);
            Ok(report)
        })
    }

    fn skip_to(&self, topic: &str, partition: u32, offset: u64) -> Result<u64, ReadError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            let end = {
                let tables = PartitionTables::new(topic, partition);
                let mut log = txn.open_table(tables.log()).or_backend()?;
                let Some(mut row) = PartitionRow::read(&log, &tables.log)? else {
                    drop(log);
                    return Err(Self::missing(&txn, topic, partition)?);
                };
                if offset > ROW_KEY {
                    return Err(ReadError::OffsetTooLarge(offset));
                }
                if offset > row.log_end {
                    if row.log_start == row.log_end {
                        row.log_start = offset;
                    }
                    row.log_end = offset;
                    row.write(&mut log)?;
                }
                row.log_end
            };
            txn.commit().or_backend()?;
            Ok(end)
        })
    }
}

impl MetaStore for RedbStore {
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError> {
        topic::validate(spec)?;
        self.writing(|db| {
            let txn = db.begin_write().or_backend()?;
            if !Self::create_in(&txn, spec)? {
                return Err(TopicError::Exists(spec.name.clone()));
            }
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn alter_topic(&self, spec: &TopicSpec) -> Result<(), TopicError> {
        topic::validate(spec)?;
        self.writing(|db| {
            let txn = db.begin_write().or_backend()?;
            let old = {
                let topics = txn.open_table(TOPICS).or_backend()?;
                let stored = topics.get(spec.name.as_str()).or_backend()?;
                match stored {
                    Some(encoded) => topic::decode_spec(&spec.name, encoded.value())?,
                    None => return Err(TopicError::NotFound(spec.name.clone())),
                }
            };
            topic::check_alter(&old, spec)?;
            Self::alter_in(&txn, &old, spec)?;
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        self.writing(|db| {
            let txn = db.begin_write().or_backend()?;
            if !Self::delete_in(&txn, name)? {
                return Err(TopicError::NotFound(name.to_owned()));
            }
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn drain_deleted(&self, budget: u64) -> Result<bool, StoreError> {
        self.writing(|db| {
            let mut txn = db.begin_write()?;
            // A step lost to a crash is done again from the `deleting` row.
            txn.set_durability(Durability::None)?;
            let more = Self::drain_in(&txn, budget)?;
            txn.commit()?;
            Ok(more)
        })
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, StoreError> {
        self.snapshot(|txn| {
            let topics = txn.open_table(TOPICS)?;
            topics
                .iter()?
                .map(|entry| {
                    let (name, spec) = entry?;
                    topic::decode_spec(name.value(), spec.value())
                })
                .collect()
        })
    }

    fn topic(&self, name: &str) -> Result<Option<TopicSpec>, StoreError> {
        self.snapshot(|txn| {
            let topics = txn.open_table(TOPICS)?;
            topics
                .get(name)?
                .map(|spec| topic::decode_spec(name, spec.value()))
                .transpose()
        })
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        self.writing(|db| {
            let txn = db.begin_write()?;
            let id = {
                let mut node = txn.open_table(NODE)?;
                let id = node.get(NEXT_PRODUCER_ID)?.map_or(0, |v| v.value());
                node.insert(NEXT_PRODUCER_ID, id + 1)?;
                id
            };
            txn.commit()?;
            i64::try_from(id).map_err(|_| corrupt("node", format!("next_producer_id {id}")))
        })
    }

    fn commit_offsets(&self, commits: &[OffsetCommit]) -> Result<(), CommitError> {
        group::validate_commits(commits)?;
        if commits.is_empty() {
            return Ok(());
        }
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            Self::check_commit_targets(&txn, commits)?;
            {
                let mut offsets = txn.open_table(GROUP_OFFSETS).or_backend()?;
                for commit in commits {
                    let key = (
                        commit.group.as_str(),
                        commit.topic.as_str(),
                        commit.partition,
                    );
                    offsets.insert(key, commit.offset).or_backend()?;
                }
            }
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, StoreError> {
        self.snapshot(|txn| Self::group_entries(&txn.open_table(GROUP_OFFSETS)?, group))
    }

    fn groups(&self) -> Result<Vec<String>, StoreError> {
        self.snapshot(|txn| {
            let table = txn.open_table(GROUP_OFFSETS)?;
            let mut groups: Vec<String> = Vec::new();
            for entry in table.iter()? {
                let (key, _) = entry?;
                let (group, _, _) = key.value();
                if groups.last().is_none_or(|last| last != group) {
                    groups.push(group.to_owned());
                }
            }
            Ok(groups)
        })
    }

    fn delete_group(&self, group: &str) -> Result<bool, StoreError> {
        self.writing(|db| {
            let txn = db.begin_write()?;
            let removed = {
                let mut table = txn.open_table(GROUP_OFFSETS)?;
                let entries = Self::group_entries(&table, group)?;
                for entry in &entries {
                    table.remove((group, entry.topic.as_str(), entry.partition))?;
                }
                !entries.is_empty()
            };
            Self::commit_if_changed(txn, removed)?;
            Ok(removed)
        })
    }

    fn put_plugin(
        &self,
        name: &str,
        kind: &str,
        hash: &str,
        wasm: &[u8],
        now_ms: i64,
    ) -> Result<PluginInfo, StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            let info = {
                let mut plugins = txn.open_table(PLUGINS)?;
                let previous = plugins
                    .get(name)?
                    .map(|v| plugin::decode_info(name, v.value()))
                    .transpose()?;
                let info = plugin::next_info(previous.as_ref(), name, kind, hash, wasm, now_ms)?;
                plugins.insert(name, plugin::encode_info(&info).as_slice())?;
                txn.open_table(PLUGIN_WASM)?.insert(name, wasm)?;
                info
            };
            txn.commit()?;
            Ok(info)
        })
    }

    fn plugin(&self, name: &str) -> Result<Option<(PluginInfo, Vec<u8>)>, StoreError> {
        self.snapshot(|txn| {
            let plugins = txn.open_table(PLUGINS)?;
            let Some(info) = plugins.get(name)? else {
                return Ok(None);
            };
            let info = plugin::decode_info(name, info.value())?;
            let wasm = txn.open_table(PLUGIN_WASM)?;
            let wasm = wasm.get(name)?.map(|w| w.value().to_vec());
            // The description and the bytes are written together; a
            // mismatch means one of them was damaged.
            match wasm {
                Some(wasm) if wasm.len() as u64 == info.size_bytes => Ok(Some((info, wasm))),
                found => Err(corrupt(
                    "plugin_wasm",
                    format!(
                        "plugin {name:?} is described as {} bytes, found {}",
                        info.size_bytes,
                        found.map_or("none".to_owned(), |w| format!("{} bytes", w.len()))
                    ),
                )),
            }
        })
    }

    fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        self.snapshot(|txn| {
            txn.open_table(PLUGINS)?
                .iter()?
                .map(|entry| {
                    let (name, info) = entry?;
                    plugin::decode_info(name.value(), info.value())
                })
                .collect()
        })
    }

    fn remove_plugin(&self, name: &str) -> Result<bool, StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            let removed = txn.open_table(PLUGINS)?.remove(name)?.is_some();
            txn.open_table(PLUGIN_WASM)?.remove(name)?;
            Self::commit_if_changed(txn, removed)?;
            Ok(removed)
        })
    }

    fn put_config(
        &self,
        kind: ConfigKind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            {
                let mut configs = txn.open_table(CONFIGS)?;
                match value {
                    Some(value) => configs.insert((kind.tag(), key), value)?,
                    None => configs.remove((kind.tag(), key))?,
                };
            }
            txn.commit()?;
            Ok(())
        })
    }

    fn configs(&self, kind: ConfigKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.snapshot(|txn| {
            let configs = txn.open_table(CONFIGS)?;
            let mut found = Vec::new();
            for entry in configs.range((kind.tag(), "")..)? {
                let (key, value) = entry?;
                let (tag, name) = key.value();
                if tag != kind.tag() {
                    break;
                }
                found.push((name.to_owned(), value.value().to_vec()));
            }
            Ok(found)
        })
    }

    fn pipeline_positions(&self, pipeline: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        self.snapshot(|txn| {
            txn.open_table(PIPELINE_POSITIONS)?
                .range((pipeline, 0)..=(pipeline, u32::MAX))?
                .map(|entry| {
                    let (key, offset) = entry?;
                    Ok((key.value().1, offset.value()))
                })
                .collect()
        })
    }

    fn pipeline_state(&self, pipeline: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.snapshot(|txn| {
            let state = txn.open_table(PIPELINE_STATE)?;
            Ok(state.get((pipeline, key))?.map(|v| v.value().to_vec()))
        })
    }

    fn plugin_state_list(
        &self,
        owner: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::StateEntries, StoreError> {
        self.snapshot(|txn| {
            let state = txn.open_table(PIPELINE_STATE)?;
            let start = match after {
                Some(after) if after >= prefix => Bound::Excluded((owner, after)),
                _ => Bound::Included((owner, prefix)),
            };
            let mut found = Vec::new();
            for entry in state.range::<(&str, &[u8])>((start, Bound::Unbounded))? {
                if found.len() >= limit {
                    break;
                }
                let (key, value) = entry?;
                let (at, key) = key.value();
                if at != owner || !key.starts_with(prefix) {
                    break;
                }
                found.push((key.to_vec(), value.value().to_vec()));
            }
            Ok(found)
        })
    }

    fn put_plugin_state(
        &self,
        owner: &str,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            Self::put_state_in(&txn, owner, changes)?;
            txn.commit()?;
            Ok(())
        })
    }

    fn delete_pipeline_data(&self, pipeline: &str) -> Result<(), StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            txn.open_table(PIPELINE_POSITIONS)?
                .retain_in((pipeline, 0)..=(pipeline, u32::MAX), |_, _| false)?;
            Self::remove_owners_in(&txn, pipeline, |owner| owner == pipeline)?;
            txn.commit()?;
            Ok(())
        })
    }

    fn delete_plugin_state_owners(&self, prefix: &str) -> Result<(), StoreError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            Self::remove_owners_in(&txn, prefix, |owner| owner.starts_with(prefix))?;
            txn.commit()?;
            Ok(())
        })
    }
}

impl LogStore for RedbStore {
    fn append_with_state(
        &self,
        writes: &[LogWrite],
        state: &[StateWrite],
        durable: bool,
    ) -> Result<(), WriteError> {
        self.writing(|db| {
            let mut txn = db.begin_write().or_backend()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .or_backend()?;
            if let Err(e) = Self::append_at_in(&txn, writes) {
                txn.abort().or_backend()?;
                return Err(e);
            }
            for write in state {
                Self::put_state_in(&txn, &write.owner, &write.changes)?;
            }
            txn.commit().or_backend()?;
            Ok(())
        })
    }

    fn commit_pipeline(&self, commit: &PipelineCommit) -> Result<(), WriteError> {
        self.writing(|db| {
            let txn = Self::begin_durable(db)?;
            if let Err(e) = Self::append_at_in(&txn, &commit.writes) {
                txn.abort().or_backend()?;
                return Err(e);
            }
            Self::apply_pipeline_progress(&txn, commit)?;
            txn.commit().or_backend()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use redb::TableHandle;
    use redb::backends::InMemoryBackend;

    use super::*;

    fn in_memory() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    /// A deleted log over a drain step is freed a step at a time, each step
    /// about its budget, and a small one at once.
    #[test]
    fn a_large_deleted_log_is_freed_in_steps_of_about_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("edgebus.redb")).unwrap();
        for (name, batches) in [("large", 40u64), ("small", 1)] {
            let spec = TopicSpec {
                max_message_bytes: crate::topic::DEFAULT_MAX_MESSAGE_BYTES,
                ..TopicSpec::new(name, 1)
            };
            store.create_topic(&spec).unwrap();
            for offset in 0..batches {
                let mut builder = batch::BatchBuilder::new();
                builder.push(&batch::Record::new(vec![7u8; 256 << 10], 1));
                let write = LogWrite {
                    topic: name.into(),
                    partition: 0,
                    base_offset: offset,
                    leader_epoch: 0,
                    batch: builder.finish(batch::ProducerStamp::NONE),
                    producer: None,
                };
                store.append_at(&[write], true).unwrap();
            }
        }
        store.delete_topic("small").unwrap();
        assert!(!store.drain_deleted(1 << 20).unwrap(), "freed at once");
        store.delete_topic("large").unwrap();
        let mut steps = 1;
        while store.drain_deleted(1 << 20).unwrap() {
            steps += 1;
        }
        // 10 MiB in steps of 1 MiB: a batch over the budget ends a step.
        assert!((9..=11).contains(&steps), "{steps} steps");
    }

    /// A batch whose bytes rot on disk is refused by reads until a mend
    /// writes the same batch back.
    #[test]
    fn a_rotten_batch_reads_as_damaged_until_mended() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("edgebus.redb")).unwrap();
        let spec = TopicSpec {
            max_message_bytes: crate::topic::DEFAULT_MAX_MESSAGE_BYTES,
            ..TopicSpec::new("t", 1)
        };
        store.create_topic(&spec).unwrap();
        let mut builder = batch::BatchBuilder::new();
        builder.push(&batch::Record::new("v", 1));
        let write = LogWrite {
            topic: "t".into(),
            partition: 0,
            base_offset: 0,
            leader_epoch: 3,
            batch: builder.finish(batch::ProducerStamp::NONE),
            producer: None,
        };
        store.append_at(&[write], true).unwrap();
        let whole = store.read("t", 0, 0, usize::MAX, u64::MAX).unwrap().batches;

        let db = store.database().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let tables = PartitionTables::new("t", 0);
            let mut log = txn.open_table(tables.log()).unwrap();
            let mut rotten = whole[0].to_vec();
            let last = rotten.len() - 1;
            rotten[last] ^= 0x01;
            log.insert(0, rotten.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        assert!(matches!(
            store.read("t", 0, 0, usize::MAX, u64::MAX),
            Err(ReadError::DamagedBatch { offset: 0, .. })
        ));

        store.mend_batch("t", 0, 0, &whole[0]).unwrap();
        let read = store.read("t", 0, 0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(read.batches, whole);
    }

    /// A format 2 store, with partition rows and producer states in tables
    /// of their own, is upgraded in place at open: offsets, bytes, batches
    /// and producer states are all where format 3 keeps them, appends go
    /// on after the last batch, and the old tables are gone.
    #[test]
    fn a_format_2_store_is_upgraded_in_place_at_open() {
        const PARTITIONS: TableDefinition<(&str, u32), (u64, u64, u64)> =
            TableDefinition::new("partitions");
        const PRODUCERS: TableDefinition<(i64, &str, u32), &[u8]> =
            TableDefinition::new("producers");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgebus.redb");
        let spec = TopicSpec {
            max_message_bytes: crate::topic::DEFAULT_MAX_MESSAGE_BYTES,
            ..TopicSpec::new("t", 2)
        };
        let stamped = |records: i32, base_sequence: i32, base_offset: u64| {
            let mut builder = batch::BatchBuilder::new();
            for i in 0..records {
                builder.push(&batch::Record::new(format!("v{i}"), 1));
            }
            let mut bytes = builder
                .finish(batch::ProducerStamp {
                    producer_id: 7,
                    producer_epoch: 0,
                    base_sequence,
                })
                .to_vec();
            batch::set_base_offset(&mut bytes, base_offset);
            batch::set_partition_leader_epoch(&mut bytes, 0);
            Bytes::from(bytes)
        };
        let first = stamped(3, 0, 0);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut node = txn.open_table(NODE).unwrap();
                node.insert(STORE_ID, 42).unwrap();
                node.insert(FORMAT_VERSION, FORMAT_2).unwrap();
                let encoded = topic::encode_spec(&spec);
                txn.open_table(TOPICS)
                    .unwrap()
                    .insert("t", encoded.as_slice())
                    .unwrap();
                let mut partitions = txn.open_table(PARTITIONS).unwrap();
                partitions
                    .insert(("t", 0), (0, 3, first.len() as u64))
                    .unwrap();
                partitions.insert(("t", 1), (0, 0, 0)).unwrap();
                let mut producers = txn.open_table(PRODUCERS).unwrap();
                producers.insert((7, "t", 0), &b"state-7"[..]).unwrap();
                // Of no partition: dropped by the upgrade.
                producers.insert((8, "gone", 0), &b"orphan"[..]).unwrap();
                txn.open_table(EPOCHS)
                    .unwrap()
                    .insert(("t", 0, 0), 0)
                    .unwrap();
                for partition in 0..2 {
                    let tables = PartitionTables::new("t", partition);
                    let mut log = txn.open_table(tables.log()).unwrap();
                    let mut time = txn.open_table(tables.time()).unwrap();
                    if partition == 0 {
                        log.insert(0, first.as_ref()).unwrap();
                        time.insert(1, 0).unwrap();
                    }
                }
            }
            txn.commit().unwrap();
        }

        let store = RedbStore::open(&path).unwrap();
        let offsets = |p| store.offsets("t", p).unwrap();
        assert_eq!((offsets(0).log_start, offsets(0).log_end), (0, 3));
        assert_eq!((offsets(1).log_start, offsets(1).log_end), (0, 0));
        assert_eq!(store.partition_bytes("t", 0).unwrap(), first.len() as u64);
        assert_eq!(
            store.producer_states("t", 0).unwrap(),
            vec![(7, Bytes::from_static(b"state-7"))]
        );
        assert!(store.producer_states("t", 1).unwrap().is_empty());
        let read = store.read("t", 0, 0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(read.batches, vec![first.clone()]);
        let next = stamped(2, 3, 3);
        let write = LogWrite {
            topic: "t".into(),
            partition: 0,
            base_offset: 3,
            leader_epoch: 0,
            batch: next.clone(),
            producer: Some((7, Bytes::from_static(b"state-7b"))),
        };
        store.append_at(&[write], true).unwrap();
        assert_eq!(offsets(0).log_end, 5);
        assert_eq!(
            store.producer_states("t", 0).unwrap(),
            vec![(7, Bytes::from_static(b"state-7b"))]
        );
        let read = store.read("t", 0, 0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(read.batches, vec![first, next]);
        drop(store);

        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(
            !tables.iter().any(|t| t == "partitions" || t == "producers"),
            "{tables:?}"
        );
        let node = txn.open_table(NODE).unwrap();
        assert_eq!(node.get(FORMAT_VERSION).unwrap().unwrap().value(), FORMAT);
    }

    /// Regression: opening a data dir another broker holds failed with
    /// redb's bare "Database already open. Cannot acquire lock.", naming no
    /// file.
    #[test]
    fn open_of_a_file_already_open_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgebus.redb");
        let _first = RedbStore::open(&path).unwrap();
        let Err(e) = RedbStore::open(&path) else {
            panic!("a second open of {} succeeded", path.display());
        };
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("locked"), "{message}");
    }

    #[test]
    fn open_of_an_unusable_path_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/edgebus.redb");
        let Err(e) = RedbStore::open(&path) else {
            panic!("opened {}", path.display());
        };
        assert!(matches!(e, StoreError::Io(_)), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn close_when_unshared_reader_finishing_in_time_closes() {
        let db = Arc::new(in_memory());
        let reader = Arc::clone(&db);
        let finishing = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            drop(reader);
        });
        assert!(close_when_unshared(db, Duration::from_secs(5)).is_ok());
        finishing.join().unwrap();
    }

    #[test]
    fn close_when_unshared_reader_outlasting_the_wait_hands_database_back() {
        let db = Arc::new(in_memory());
        let reader = Arc::clone(&db);
        let handed_back = close_when_unshared(db, Duration::from_millis(20)).unwrap_err();
        assert_eq!(
            Arc::strong_count(&handed_back),
            2,
            "still shared, not closed"
        );
        drop(reader);
        assert!(close_when_unshared(handed_back, Duration::ZERO).is_ok());
    }

    /// Guards against a reopen that reaches new, empty storage serving it:
    /// offsets would restart at 0 and acknowledged data would be gone.
    #[test]
    fn redb_store_reopen_onto_other_storage_refuses_it_and_keeps_failing() {
        let store = RedbStore::open_with_backend(|| Ok(InMemoryBackend::new())).unwrap();
        store.allocate_producer_id().unwrap();
        store.needs_reopen.store(true, Ordering::Release);
        for _ in 0..2 {
            assert!(matches!(
                store.allocate_producer_id(),
                Err(StoreError::Corrupt { ref table, .. }) if table == "node"
            ));
            assert!(matches!(store.topics(), Err(StoreError::Recovering(_))));
        }
    }
}
