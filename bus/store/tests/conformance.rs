//! Both stores against the same conformance suite, plus redb-only checks.
//!
//! The redb harness injects crashes with [`CrashBackend`]: a wrapper around
//! redb's `FileBackend` that, after N `write`/`set_len`/`sync_data` calls,
//! simulates a power cut. Everything written since the last successful
//! `sync_data` is rolled back (the file returns to its last synced bytes)
//! and every later call fails, so the reopened file is exactly what a disk
//! would hold after losing its unsynced page cache.
//!
//! [`DiskFullBackend`] instead fails writes while a flag is set and rolls
//! nothing back, as a full disk does, to test that the store recovers by
//! itself once space is freed.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use edgebus_proto::batch::{self, BatchBuilder, ProducerStamp, Record};
use edgebus_store::conformance::{self, Harness};
use edgebus_store::{
    CommitError, CommittedOffset, ConfigKind, LogStore, LogWrite, MemStore, MetaStore,
    OffsetCommit, PartitionLog, PartitionOffsets, PipelineCommit, ReadError, RedbStore, StoreError,
    TopicSpec, WriteError, topic,
};
use redb::backends::FileBackend;
use redb::{BackendError, ReadableDatabase, StorageBackend};
use tempfile::TempDir;

/// Fault state shared by the [`CrashBackend`]s of one file (the store opens
/// a new one when it reopens) and the harness that arms it.
#[derive(Debug, Default)]
struct Fault {
    /// IO calls still allowed; `None` while unarmed.
    remaining: Option<u64>,
    /// Set once the simulated power cut happened.
    crashed: bool,
    /// File length at the last successful `sync_data`.
    synced_len: u64,
    /// Bytes overwritten since the last sync, oldest first, to roll back.
    undo: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct CrashBackend {
    inner: FileBackend,
    fault: Arc<Mutex<Fault>>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated power cut")
}

impl Fault {
    /// Unarmed fault state for the file at `path`, taking its current
    /// contents as synced.
    fn for_file(path: &Path) -> Arc<Mutex<Fault>> {
        let synced_len = std::fs::metadata(path).map_or(0, |m| m.len());
        Arc::new(Mutex::new(Fault {
            synced_len,
            ..Fault::default()
        }))
    }
}

impl CrashBackend {
    /// Opens the file at `path` under the shared `fault`.
    fn open(path: &Path, fault: Arc<Mutex<Fault>>) -> io::Result<Self> {
        let inner = FileBackend::new(open_rw(path)?).map_err(io::Error::other)?;
        Ok(CrashBackend { inner, fault })
    }

    /// Spends one IO call of the budget; at zero, rolls the file back to
    /// its last synced state and fails from then on.
    fn spend(&self, fault: &mut Fault) -> io::Result<()> {
        if fault.crashed {
            return Err(crashed());
        }
        match &mut fault.remaining {
            Some(0) => {
                fault.crashed = true;
                for (offset, old) in fault.undo.drain(..).rev() {
                    self.inner.write(offset, &old)?;
                }
                self.inner.set_len(fault.synced_len)?;
                self.inner.sync_data()?;
                Err(crashed())
            }
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Remembers the current bytes of `[offset, end)` that exist.
    fn save(&self, fault: &mut Fault, offset: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.inner.len()?);
        if offset < end {
            let mut old = vec![0; (end - offset) as usize];
            self.inner.read(offset, &mut old)?;
            fault.undo.push((offset, old));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fault> {
        self.fault.lock().expect("fault state lock")
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut fault = self.lock();
        self.spend(&mut fault)?;
        self.save(&mut fault, len, u64::MAX)?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut fault = self.lock();
        self.spend(&mut fault)?;
        self.inner.sync_data()?;
        fault.undo.clear();
        fault.synced_len = self.inner.len()?;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut fault = self.lock();
        self.spend(&mut fault)?;
        self.save(&mut fault, offset, offset + data.len() as u64)?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

fn open_rw(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// A store on [`CrashBackend`]s over `path`, all sharing `fault`, so a
/// reopen after the simulated power cut fails as the first backend does.
fn crash_store(path: &Path, fault: &Arc<Mutex<Fault>>) -> Result<RedbStore, StoreError> {
    let (path, fault) = (path.to_owned(), fault.clone());
    RedbStore::open_with_backend(move || CrashBackend::open(&path, fault.clone()))
}

/// redb stores in temp dirs; faults count backend IO calls.
#[derive(Default)]
struct RedbHarness {
    dirs: Vec<TempDir>,
    /// Path and fault handle of the last fresh store.
    current: Option<(PathBuf, Arc<Mutex<Fault>>)>,
}

impl Harness for RedbHarness {
    type Store = RedbStore;

    fn fresh(&mut self) -> RedbStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.redb");
        self.dirs.push(dir);
        let fault = Fault::for_file(&path);
        let store = crash_store(&path, &fault).expect("open fresh redb store");
        self.current = Some((path, fault));
        store
    }

    fn reopen(&mut self, store: RedbStore) -> RedbStore {
        drop(store);
        let (path, _) = self.current.as_ref().expect("reopen after fresh");
        RedbStore::open(path).expect("reopen redb store")
    }

    fn fail_after_writes(&mut self, _store: &RedbStore, n: u64) {
        let (_, fault) = self.current.as_ref().expect("fault after fresh");
        fault.lock().expect("fault state lock").remaining = Some(n);
    }
}

struct MemHarness;

impl Harness for MemHarness {
    type Store = MemStore;

    fn fresh(&mut self) -> MemStore {
        MemStore::new()
    }

    fn reopen(&mut self, store: MemStore) -> MemStore {
        store.reopen()
    }

    fn fail_after_writes(&mut self, store: &MemStore, n: u64) {
        store.fail_after_writes(n);
    }
}

#[test]
fn mem_store_passes_conformance_suite() {
    conformance::run_all(&mut MemHarness);
}

#[test]
fn redb_store_passes_conformance_suite() {
    conformance::run_all(&mut RedbHarness::default());
}

fn one_partition_topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions: 1,
        retention_ms: topic::UNLIMITED,
        retention_bytes: topic::UNLIMITED,
        max_message_bytes: topic::DEFAULT_MAX_MESSAGE_BYTES,
        compression: edgebus_proto::batch::Compression::None,
    }
}

/// `batch` to partition 0 of `topic` at `base_offset`, in epoch 0.
fn write_at(topic: &str, base_offset: u64, batch: bytes::Bytes) -> LogWrite {
    LogWrite {
        topic: topic.to_owned(),
        partition: 0,
        base_offset,
        leader_epoch: 0,
        batch,
        producer: None,
    }
}

/// Invariant 3: bytes damaged on disk are reported as corrupt, never served.
#[test]
fn redb_read_batch_damaged_on_disk_returns_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.redb");
    let marker = b"find-me-in-the-file-0123456789";
    {
        let store = RedbStore::open(&path).expect("open");
        store
            .create_topic(&one_partition_topic("t"))
            .expect("create");
        let mut builder = BatchBuilder::new();
        builder.push(&Record::new(&marker[..], 1));
        let batch = builder.finish(ProducerStamp::NONE);
        store
            .append_at(&[write_at("t", 0, batch)], true)
            .expect("append_at");
    }
    let mut bytes = std::fs::read(&path).expect("read file");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the batch is stored verbatim");
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).expect("write file");

    let store = RedbStore::open(&path).expect("reopen");
    let read = store.read("t", 0, 0, usize::MAX, u64::MAX);
    assert!(
        matches!(read, Err(ReadError::DamagedBatch { ref topic, partition: 0, offset: 0, .. }) if topic == "t"),
        "a damaged batch must be reported, got {read:?}"
    );
}

/// The fault wrapper itself: a crash rolls the file back to its last sync.
#[test]
fn crash_backend_crash_restores_last_synced_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raw");
    let fault = Fault::for_file(&path);
    let backend = CrashBackend::open(&path, fault.clone()).expect("open backend");
    backend.write(0, b"synced").expect("write");
    backend.sync_data().expect("sync");
    backend.write(2, b"XXXXXXXX").expect("write");
    backend.set_len(3).expect("shrink");
    backend.write(10, b"tail").expect("write");
    fault.lock().expect("lock").remaining = Some(0);
    assert!(backend.sync_data().is_err(), "the armed call fails");
    assert!(backend.write(0, b"late").is_err(), "later calls fail");
    assert_eq!(std::fs::read(&path).expect("read"), b"synced");
}

/// Invariant 1 through "a restart during recovery": a crash while redb
/// repairs a crashed file, at any IO call, still leaves a file that opens
/// with every acknowledged batch.
#[test]
fn redb_crash_during_recovery_keeps_acknowledged_batches() {
    let mut h = RedbHarness::default();
    let store = h.fresh();
    store
        .create_topic(&one_partition_topic("t"))
        .expect("create");
    let batches: Vec<bytes::Bytes> = (0..3)
        .map(|i| {
            let mut builder = BatchBuilder::new();
            builder.push(&Record::new(format!("acked-{i}"), i));
            builder.finish(ProducerStamp::NONE)
        })
        .collect();
    for (offset, b) in (0..).zip(&batches) {
        store
            .append_at(&[write_at("t", offset, b.clone())], true)
            .expect("append_at");
    }
    h.fail_after_writes(&store, 3);
    assert!(
        store
            .append_at(&[write_at("t", 3, batches[0].clone())], true)
            .is_err(),
        "the armed append crashes"
    );
    drop(store);
    let (crashed, _) = h.current.clone().expect("fresh store path");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut recovered_without_fault = false;
    for n in 0..40 {
        let path = dir.path().join(format!("recover-{n}.redb"));
        std::fs::copy(&crashed, &path).expect("copy crashed file");
        let fault = Fault::for_file(&path);
        fault.lock().expect("fault state lock").remaining = Some(n);
        if let Ok(store) = crash_store(&path, &fault) {
            recovered_without_fault = !fault.lock().expect("fault state lock").crashed;
            drop(store);
        }
        let store = RedbStore::open(&path).expect("open after interrupted recovery");
        let read = store.read("t", 0, 0, usize::MAX, u64::MAX).expect("read");
        assert_eq!(
            read.batches.len(),
            3,
            "crash at IO call {n} of recovery lost acknowledged batches"
        );
        for (i, b) in read.batches.iter().enumerate() {
            assert_eq!(
                batch::records(b).expect("valid")[0].value,
                format!("acked-{i}").as_bytes(),
                "crash at IO call {n} of recovery changed batch {i}"
            );
        }
        assert_eq!(read.offsets.log_end, 3);
    }
    assert!(
        recovered_without_fault,
        "the fault points cover the whole recovery"
    );
}

/// Fails every write, length change and sync while the shared `full` flag
/// is set, as a full disk does, and rolls nothing back: what was written
/// before stays written.
#[derive(Debug)]
struct DiskFullBackend {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

impl DiskFullBackend {
    fn open(path: &Path, full: Arc<AtomicBool>) -> io::Result<Self> {
        let inner = FileBackend::new(open_rw(path)?).map_err(io::Error::other)?;
        Ok(DiskFullBackend { inner, full })
    }

    fn check_space(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for DiskFullBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_space()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check_space()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_space()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// A store on [`DiskFullBackend`]s over `path` with the one-partition
/// topic `t`, and the flag that fills its disk.
fn disk_full_store_with_topic_t(path: &Path) -> (RedbStore, Arc<AtomicBool>) {
    let full = Arc::new(AtomicBool::new(false));
    let store = {
        let (path, full) = (path.to_owned(), full.clone());
        RedbStore::open_with_backend(move || DiskFullBackend::open(&path, full.clone()))
            .expect("open")
    };
    store
        .create_topic(&one_partition_topic("t"))
        .expect("create");
    (store, full)
}

fn idempotent_batch(tag: &str, records: i32, producer_id: i64, base_sequence: i32) -> bytes::Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        builder.push(&Record::new(format!("{tag}-{i}"), i64::from(i)));
    }
    builder.finish(ProducerStamp {
        producer_id,
        producer_epoch: 0,
        base_sequence,
    })
}

fn stored_at(batch: &bytes::Bytes, base_offset: u64) -> bytes::Bytes {
    let mut copy = bytes::BytesMut::from(&batch[..]);
    batch::set_base_offset(&mut copy, base_offset);
    batch::set_partition_leader_epoch(&mut copy, 0);
    copy.freeze()
}

fn group_commit(offset: u64) -> OffsetCommit {
    OffsetCommit {
        group: "g".to_owned(),
        topic: "t".to_owned(),
        partition: 0,
        offset,
    }
}

/// Invariants 1 and 2 through a full disk. Guards the bug where redb,
/// after one failed write, refused every write ("Previous I/O error
/// occurred") until the broker restarted: the store must reopen itself once
/// space is freed, on the same `RedbStore`, with every acknowledged batch
/// and commit intact, nothing of the refused ones, and offsets continuing
/// right after the last acknowledged batch.
#[test]
fn redb_store_after_disk_full_recovers_without_losing_acknowledged_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.redb");
    let (store, full) = disk_full_store_with_topic_t(&path);
    let pid = store.allocate_producer_id().expect("producer id");
    let mut acked: Vec<bytes::Bytes> = Vec::new();
    let with_state = |base_offset, b, state: &str| LogWrite {
        producer: Some((pid, bytes::Bytes::from(state.to_owned()))),
        ..write_at("t", base_offset, b)
    };
    for i in 0..3 {
        let b = idempotent_batch(&format!("acked{i}"), 2, pid, 2 * i);
        let base = 2 * u64::try_from(i).expect("small");
        store
            .append_at(&[with_state(base, b.clone(), &format!("s{i}"))], true)
            .expect("append_at");
        acked.push(stored_at(&b, base));
    }
    store.commit_offsets(&[group_commit(2)]).expect("commit");

    full.store(true, Ordering::SeqCst);
    let refused = idempotent_batch("refused", 3, pid, 6);
    for attempt in 0..3 {
        let append = store.append_at(&[with_state(6, refused.clone(), "lost")], true);
        assert!(
            matches!(append, Err(WriteError::Store(StoreError::DiskFull(_)))),
            "attempt {attempt}: an append on a full disk is a disk-full error, got {append:?}"
        );
        let commit = store.commit_offsets(&[group_commit(6)]);
        assert!(
            matches!(commit, Err(CommitError::Store(StoreError::DiskFull(_)))),
            "attempt {attempt}: a commit on a full disk is a disk-full error, got {commit:?}"
        );
        match store.read("t", 0, 0, usize::MAX, u64::MAX) {
            Ok(read) => assert_eq!(read.batches, acked, "attempt {attempt}: a read"),
            Err(ReadError::Store(_)) => {}
            Err(other) => panic!("attempt {attempt}: a read failed with {other}"),
        }
    }

    full.store(false, Ordering::SeqCst);
    store
        .append_at(&[with_state(6, refused.clone(), "s3")], true)
        .expect("offsets continue right after the last acknowledged batch");
    acked.push(stored_at(&refused, 6));
    let check = |store: &RedbStore, when: &str, committed: u64| {
        let read = store.read("t", 0, 0, usize::MAX, u64::MAX).expect("read");
        assert_eq!(
            read.batches, acked,
            "{when}: the log is exactly the acknowledged batches"
        );
        assert_eq!(
            read.offsets,
            PartitionOffsets {
                log_start: 0,
                log_end: 9
            },
            "{when}: offsets"
        );
        assert_eq!(
            store.committed_offsets("g").expect("committed offsets"),
            vec![CommittedOffset {
                topic: "t".to_owned(),
                partition: 0,
                offset: committed
            }],
            "{when}: the last acknowledged commit"
        );
        assert_eq!(
            store.producer_states("t", 0).expect("producer_states"),
            vec![(pid, bytes::Bytes::from_static(b"s3"))],
            "{when}: producer state committed with the batches survives"
        );
    };
    check(&store, "after recovery", 2);
    store
        .commit_offsets(&[group_commit(9)])
        .expect("commit after recovery");
    drop(store);
    let reopened = RedbStore::open(&path).expect("reopen from disk");
    check(&reopened, "after a restart", 9);
}

/// Reads racing a full disk and the reopen that follows it never panic,
/// never block the recovery, and never see anything but acknowledged
/// batches: each read either fails with a storage error or returns a prefix
/// of the final log.
#[test]
fn redb_store_reads_during_disk_full_recovery_see_only_acknowledged_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, full) = disk_full_store_with_topic_t(&dir.path().join("node.redb"));
    let store = Arc::new(store);
    let batches: Vec<bytes::Bytes> = (0..6)
        .map(|i| {
            let mut builder = BatchBuilder::new();
            builder.push(&Record::new(format!("record-{i}"), i));
            builder.finish(ProducerStamp::NONE)
        })
        .collect();
    let final_log: Vec<bytes::Bytes> = batches
        .iter()
        .zip(0..)
        .map(|(b, offset)| stored_at(b, offset))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop, final_log) = (store.clone(), stop.clone(), final_log.clone());
        std::thread::spawn(move || {
            let mut served = 0u32;
            while !stop.load(Ordering::SeqCst) {
                match store.read("t", 0, 0, usize::MAX, u64::MAX) {
                    Ok(read) => {
                        assert_eq!(
                            read.batches[..],
                            final_log[..read.batches.len()],
                            "a read served something other than acknowledged batches"
                        );
                        served += 1;
                    }
                    Err(ReadError::Store(StoreError::Io(_) | StoreError::Recovering(_))) => {}
                    Err(other) => panic!("a read failed with {other}"),
                }
            }
            served
        })
    };
    let append = |offset: u64| {
        let b = batches[usize::try_from(offset).expect("small")].clone();
        store.append_at(&[write_at("t", offset, b)], true)
    };
    for offset in 0..3 {
        append(offset).expect("append_at");
    }
    full.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert!(append(3).is_err(), "the disk is full");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    full.store(false, Ordering::SeqCst);
    for offset in 3..6 {
        append(offset).expect("append_at");
    }
    stop.store(true, Ordering::SeqCst);
    let served = reader.join().expect("the reader thread panicked");
    assert!(served > 0, "reads were served");
    assert_eq!(
        store
            .read("t", 0, 0, usize::MAX, u64::MAX)
            .expect("read")
            .batches,
        final_log
    );
}

/// A pipeline step of one output batch to `t`, moving source partition 0 to
/// `next` and state `k` to `next`.
fn pipeline_step(tag: &str, next: u64) -> PipelineCommit {
    let mut builder = BatchBuilder::new();
    builder.push(&Record::new(tag.to_owned(), 1));
    PipelineCommit {
        pipeline: "p".to_owned(),
        writes: vec![write_at("t", next - 1, builder.finish(ProducerStamp::NONE))],
        state: vec![(b"k".to_vec(), Some(next.to_be_bytes().to_vec()))],
        source_partition: 0,
        source_next_offset: next,
    }
}

/// The plugin registry, config blobs and pipeline steps take part in the
/// recovery from a full disk like appends do: while the disk is full each
/// of them fails with an IO error and applies nothing, and once space is
/// freed the same store takes them again, with what was acknowledged
/// before intact, without a restart.
#[test]
fn redb_store_registry_config_and_pipeline_writes_after_disk_full_recover() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.redb");
    let (store, full) = disk_full_store_with_topic_t(&path);
    store
        .put_plugin("f", "filter", "h1", b"v1", 1)
        .expect("put_plugin");
    store
        .put_config(ConfigKind::Pipeline, "p", Some(b"def"))
        .expect("put_config");
    store
        .commit_pipeline(&pipeline_step("first", 1))
        .expect("commit_pipeline");

    full.store(true, Ordering::SeqCst);
    for attempt in 0..2 {
        let io = |what: &str, result: Result<(), StoreError>| {
            assert!(
                matches!(result, Err(StoreError::DiskFull(_))),
                "attempt {attempt}: {what} on a full disk is a disk-full error, got {result:?}"
            );
        };
        io(
            "put_plugin",
            store.put_plugin("f", "filter", "h2", b"v2", 2).map(drop),
        );
        io("remove_plugin", store.remove_plugin("f").map(drop));
        io(
            "put_config",
            store.put_config(ConfigKind::Pipeline, "p", None),
        );
        io("delete_pipeline_data", store.delete_pipeline_data("p"));
        let step = store.commit_pipeline(&pipeline_step("refused", 2));
        assert!(
            matches!(step, Err(WriteError::Store(StoreError::DiskFull(_)))),
            "attempt {attempt}: commit_pipeline on a full disk is a disk-full error, got {step:?}"
        );
    }

    full.store(false, Ordering::SeqCst);
    store
        .commit_pipeline(&pipeline_step("second", 2))
        .expect("outputs continue right after the last acknowledged step");
    assert_eq!(
        store
            .put_plugin("f", "filter", "h3", b"v3", 3)
            .expect("put_plugin once space is back")
            .version,
        2,
        "the refused replacements bumped no version"
    );
    let check = |store: &RedbStore, when: &str| {
        assert_eq!(
            store.pipeline_positions("p").expect("positions"),
            vec![(0, 2)],
            "{when}: position"
        );
        assert_eq!(
            store.pipeline_state("p", b"k").expect("state"),
            Some(2u64.to_be_bytes().to_vec()),
            "{when}: state"
        );
        assert_eq!(
            store
                .read("t", 0, 0, usize::MAX, u64::MAX)
                .expect("read")
                .offsets
                .log_end,
            2,
            "{when}: outputs of the two acknowledged steps"
        );
        assert_eq!(
            store.configs(ConfigKind::Pipeline).expect("configs"),
            vec![("p".to_owned(), b"def".to_vec())],
            "{when}: the refused delete left the blob"
        );
        assert_eq!(
            store.plugin("f").expect("plugin").map(|(_, wasm)| wasm),
            Some(b"v3".to_vec()),
            "{when}: plugin bytes"
        );
    };
    check(&store, "after recovery");
    drop(store);
    check(&RedbStore::open(&path).expect("reopen"), "after a restart");
}

/// Writes a store as edgebus 0.1 left it: a `node` table with a store id
/// and no format version, and, if `with_topic`, one topic.
fn write_legacy_store(path: &Path, with_topic: bool, format_version: Option<u64>) {
    let node: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("node");
    let topics: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("topics");
    let db = redb::Database::create(path).expect("create legacy file");
    let txn = db.begin_write().expect("write txn");
    {
        let mut node = txn.open_table(node).expect("node table");
        node.insert("store_id", 42).expect("store id");
        if let Some(version) = format_version {
            node.insert("format_version", version).expect("version");
        }
        let mut topics = txn.open_table(topics).expect("topics table");
        if with_topic {
            topics.insert("old", &b"\x01settings"[..]).expect("topic");
        }
    }
    txn.commit().expect("commit");
}

/// A data directory from the previous release, whose batches are in
/// edgebus's own format 1, is refused with a message saying what to do,
/// never misread; and the refusal changes nothing on disk.
#[test]
fn redb_open_data_from_format_1_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.redb");
    write_legacy_store(&path, true, None);
    let refused = RedbStore::open(&path).expect_err("a format 1 store must be refused");
    assert!(
        matches!(
            refused,
            StoreError::IncompatibleFormat {
                found: 1,
                supported: edgebus_store::redb_store::FORMAT,
                ..
            }
        ),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("format 1") && message.contains("empty data directory"),
        "the message says what was found and what to do: {message}"
    );
    drop(refused);
    let db = redb::Database::open(&path).expect("the refused file still opens with redb");
    let txn = db.begin_read().expect("read txn");
    let node: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("node");
    let topics: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("topics");
    assert!(
        txn.open_table(node)
            .expect("node table")
            .get("format_version")
            .expect("get")
            .is_none(),
        "a refused open stamps no format version"
    );
    assert!(
        txn.open_table(topics)
            .expect("topics table")
            .get("old")
            .expect("get")
            .is_some(),
        "a refused open keeps the old data"
    );
}

/// A legacy store with nothing in the old batch format (no topics, no
/// saved configuration) opens and is stamped with the current format; a
/// store from a newer release is refused.
#[test]
fn redb_open_empty_format_1_store_upgrades_and_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.redb");
    write_legacy_store(&empty, false, None);
    let store = RedbStore::open(&empty).expect("an empty legacy store opens");
    store
        .create_topic(&one_partition_topic("t"))
        .expect("create");
    drop(store);
    RedbStore::open(&empty).expect("and reopens in the current format");

    let newer = dir.path().join("newer.redb");
    write_legacy_store(&newer, false, Some(edgebus_store::redb_store::FORMAT + 1));
    assert!(matches!(
        RedbStore::open(&newer),
        Err(StoreError::IncompatibleFormat { found, .. })
            if found == edgebus_store::redb_store::FORMAT + 1
    ));
}

/// The redb store's sparse time index answers every time lookup exactly as
/// the in-memory store's dense one (an entry for every batch that raised
/// the max timestamp), through appends with timestamps that jump back and
/// forth, truncations and size retention. Batch sizes cross the sparse
/// index's spacing (64 KiB) often, so both skipped and indexed batches are
/// looked up.
#[test]
fn sparse_time_index_answers_as_the_dense_one() {
    for seed in [1u64, 7, 42] {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |below: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % below
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let redb = RedbStore::open(&dir.path().join("t.redb")).expect("open");
        let mem = MemStore::new();
        let spec = TopicSpec {
            retention_bytes: 300_000,
            ..one_partition_topic("t")
        };
        redb.create_topic(&spec).expect("create");
        mem.create_topic(&spec).expect("create");
        let stores: [&dyn PartitionLog; 2] = [&redb, &mem];
        let mut clock = 1_000i64;
        let mut seen = vec![0i64, clock];
        for step in 0..400 {
            let log_end = redb.offsets("t", 0).expect("offsets").log_end;
            match next(100) {
                0..=79 => {
                    let mut builder = BatchBuilder::new();
                    let value = "x".repeat(20 + next(6_000) as usize);
                    for _ in 0..1 + next(3) {
                        clock += match next(10) {
                            0 => -(next(400) as i64),
                            1 => next(2_000) as i64,
                            _ => next(5) as i64,
                        };
                        builder.push(&Record::new(value.clone(), clock));
                        seen.push(clock);
                    }
                    let batch = builder.finish(ProducerStamp::NONE);
                    for store in stores {
                        store
                            .append_at(&[write_at("t", log_end, batch.clone())], false)
                            .expect("append");
                    }
                }
                80..=89 => {
                    let start = redb.offsets("t", 0).expect("offsets").log_start;
                    let to = start + next(log_end - start + 1);
                    for store in stores {
                        store.truncate_from("t", 0, to, &[]).expect("truncate");
                    }
                }
                _ => {
                    for store in stores {
                        store
                            .enforce_retention_holding(0, &mut [])
                            .expect("retention");
                    }
                }
            }
            let offsets = |s: &dyn PartitionLog| s.offsets("t", 0).expect("offsets");
            assert_eq!(offsets(&redb), offsets(&mem), "seed {seed} step {step}");
            let picks: Vec<i64> = (0..150)
                .map(|_| seen[next(seen.len() as u64) as usize] + next(3) as i64 - 1)
                .collect();
            for ts in picks.into_iter().chain([i64::MIN, i64::MAX]) {
                let at = |s: &dyn PartitionLog| s.offset_for_timestamp("t", 0, ts).expect("lookup");
                assert_eq!(
                    at(&redb),
                    at(&mem),
                    "seed {seed} step {step}: offset_for_timestamp({ts})"
                );
            }
        }
    }
}
