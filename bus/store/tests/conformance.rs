//! Both stores against the same conformance suite, plus redb-only checks.
//!
//! The redb harness injects crashes with [`CrashBackend`]: a wrapper around
//! redb's `FileBackend` that, after N `write`/`set_len`/`sync_data` calls,
//! simulates a power cut. Everything written since the last successful
//! `sync_data` is rolled back (the file returns to its last synced bytes)
//! and every later call fails, so the reopened file is exactly what a disk
//! would hold after losing its unsynced page cache.

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use edgebus_proto::batch::{self, BatchBuilder, ProducerStamp, Record};
use edgebus_store::conformance::{self, Harness};
use edgebus_store::{
    Append, LogStore, MemStore, ReadError, RedbStore, StoreError, TopicSpec, topic,
};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use tempfile::TempDir;

/// Fault state shared by a [`CrashBackend`] and the harness that arms it.
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

impl CrashBackend {
    /// Wraps `file`, taking its current contents as synced.
    fn new(file: std::fs::File) -> (Self, Arc<Mutex<Fault>>) {
        let inner = FileBackend::new(file).expect("file backend");
        let fault = Arc::new(Mutex::new(Fault {
            synced_len: inner.len().expect("file length"),
            ..Fault::default()
        }));
        let backend = CrashBackend {
            inner,
            fault: fault.clone(),
        };
        (backend, fault)
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

fn open_rw(path: &Path) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open file")
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
        let (backend, fault) = CrashBackend::new(open_rw(&path));
        self.current = Some((path, fault));
        RedbStore::open_with_backend(backend).expect("open fresh redb store")
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
    }
}

fn append_of(topic: &str, batch: bytes::Bytes) -> Append {
    Append {
        topic: topic.to_owned(),
        partition: 0,
        header: batch::validate(&batch).expect("valid batch"),
        batch,
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
            .append(&[append_of("t", batch)], true)
            .expect("append")
            .remove(0)
            .expect("appended");
    }
    let mut bytes = std::fs::read(&path).expect("read file");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the batch is stored verbatim");
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).expect("write file");

    let store = RedbStore::open(&path).expect("reopen");
    let read = store.read("t", 0, 0, usize::MAX);
    assert!(
        matches!(read, Err(ReadError::Store(StoreError::Corrupt { .. }))),
        "a damaged batch must be reported, got {read:?}"
    );
}

/// The fault wrapper itself: a crash rolls the file back to its last sync.
#[test]
fn crash_backend_crash_restores_last_synced_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raw");
    let (backend, fault) = CrashBackend::new(open_rw(&path));
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
    for b in &batches {
        store
            .append(&[append_of("t", b.clone())], true)
            .expect("append")
            .remove(0)
            .expect("appended");
    }
    h.fail_after_writes(&store, 3);
    assert!(
        store
            .append(&[append_of("t", batches[0].clone())], true)
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
        let (backend, fault) = CrashBackend::new(open_rw(&path));
        fault.lock().expect("fault state lock").remaining = Some(n);
        if let Ok(store) = RedbStore::open_with_backend(backend) {
            recovered_without_fault = !fault.lock().expect("fault state lock").crashed;
            drop(store);
        }
        let store = RedbStore::open(&path).expect("open after interrupted recovery");
        let read = store.read("t", 0, 0, usize::MAX).expect("read");
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
