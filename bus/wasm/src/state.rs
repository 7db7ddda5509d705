//! The key-value store behind the `state` import.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::budget::{self, Breach, SharedLedger, StateUsage};

/// Key-value state of one plugin attachment, reached by the guest through
/// the WIT `state` interface.
///
/// The broker decides where state lives: in memory on the ingest and read
/// paths, inside the pipeline's redb transaction for pipelines (so output,
/// state and source offset commit together). This crate only forwards the
/// guest's calls; it never buffers or reorders them.
///
/// `Send` because an [`Instance`](crate::Instance) moves between the
/// threads of a blocking pool.
pub trait StateStore: Send {
    /// The value stored under `key`, if any.
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`; removing an absent key does nothing.
    fn delete(&mut self, key: &[u8]);
    /// What the store holds now, counted against the chain's state budget
    /// when a chain is built over it.
    fn usage(&mut self) -> StateUsage;
}

/// The usage `entries` add up to.
fn usage_of<'a>(entries: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> StateUsage {
    entries.fold(StateUsage::default(), |usage, (key, value)| StateUsage {
        bytes: usage.bytes + (key.len() + value.len()) as i64,
        keys: usage.keys + 1,
    })
}

/// An in-memory [`StateStore`]: what ingest and read-path attachments use,
/// and what tests use to look at a plugin's state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemState(BTreeMap<Vec<u8>, Vec<u8>>);

impl MemState {
    /// An empty store.
    pub fn new() -> MemState {
        MemState::default()
    }

    /// The entries, in key order.
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.0
    }

    /// The entries, for a caller that flushes or seeds them.
    pub fn entries_mut(&mut self) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        &mut self.0
    }

    /// Takes the entries out, leaving the store empty.
    pub fn into_entries(self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.0
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<Vec<u8>, Vec<u8>>> for MemState {
    fn from(entries: BTreeMap<Vec<u8>, Vec<u8>>) -> MemState {
        MemState(entries)
    }
}

impl StateStore for MemState {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    fn usage(&mut self) -> StateUsage {
        usage_of(self.0.iter())
    }
}

/// A store shared between the instance and its owner, who keeps a clone of
/// the `Arc` to read or flush the state while the instance still runs.
impl<S: StateStore> StateStore for Arc<Mutex<S>> {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().unwrap_or_else(PoisonError::into_inner).get(key)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delete(key);
    }

    fn usage(&mut self) -> StateUsage {
        self.lock().unwrap_or_else(PoisonError::into_inner).usage()
    }
}

/// Why a guest's state write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateRefused {
    /// The writes of one call went over the per-call cap.
    #[error("state writes in one call exceed {max_bytes} bytes")]
    CallBytes { max_bytes: usize },
    /// The write would take the chain's state over its budget.
    #[error("plugin exceeded its budget: {0}")]
    Budget(Breach),
}

/// A guest's view of its [`StateStore`], with writes held back until the
/// host decides they count.
///
/// Two layers of pending writes sit over the store. Writes made during a
/// call go to the call layer; when the call succeeds they move down to the
/// batch layer, and when it traps, hits its deadline or rejects the batch
/// they are dropped. The batch layer reaches the store on [`commit`]
/// (the chain commits once per batch, or drops every stage's writes when a
/// guest rejects the batch). So a call that fails halfway leaves no trace,
/// and retrying its records one by one on a fresh instance sees the state
/// as it was before the batch, not half-updated.
///
/// [`commit`]: StateLayer::commit
pub(crate) struct StateLayer {
    store: Box<dyn StateStore>,
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    call: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    call_bytes: usize,
    call_bytes_max: usize,
    ledger: SharedLedger,
    /// Usage changes of the writes in `call` and in `batch`, as charged to
    /// the ledger.
    call_change: StateUsage,
    batch_change: StateUsage,
}

impl StateLayer {
    /// Wraps `store`; one call may write at most `call_bytes_max` bytes of
    /// keys and values, so a guest cannot grow host memory without bound
    /// in one call, and `ledger` caps what the whole chain keeps. What the
    /// store holds already is added to the ledger.
    pub(crate) fn new(
        mut store: Box<dyn StateStore>,
        call_bytes_max: usize,
        ledger: SharedLedger,
    ) -> StateLayer {
        budget::ledger(&ledger).adopt(store.usage());
        StateLayer {
            store,
            batch: BTreeMap::new(),
            call: BTreeMap::new(),
            call_bytes: 0,
            call_bytes_max,
            ledger,
            call_change: StateUsage::default(),
            batch_change: StateUsage::default(),
        }
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.call.get(key).or_else(|| self.batch.get(key)) {
            Some(pending) => pending.clone(),
            None => self.store.get(key),
        }
    }

    /// The size of the value `key` has now, if it has one.
    fn current_len(&mut self, key: &[u8]) -> Option<usize> {
        match self.call.get(key).or_else(|| self.batch.get(key)) {
            Some(pending) => pending.as_ref().map(Vec::len),
            None => self.store.get(key).map(|v| v.len()),
        }
    }

    pub(crate) fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StateRefused> {
        self.charge_call(key.len() + value.len())?;
        let change = match self.current_len(&key) {
            Some(old) => StateUsage {
                bytes: value.len() as i64 - old as i64,
                keys: 0,
            },
            None => StateUsage {
                bytes: (key.len() + value.len()) as i64,
                keys: 1,
            },
        };
        self.charge_ledger(change)?;
        self.call.insert(key, Some(value));
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) -> Result<(), StateRefused> {
        self.charge_call(key.len())?;
        if let Some(old) = self.current_len(&key) {
            self.charge_ledger(StateUsage {
                bytes: -((key.len() + old) as i64),
                keys: -1,
            })?;
        }
        self.call.insert(key, None);
        Ok(())
    }

    fn charge_call(&mut self, bytes: usize) -> Result<(), StateRefused> {
        self.call_bytes = self.call_bytes.saturating_add(bytes);
        if self.call_bytes > self.call_bytes_max {
            return Err(StateRefused::CallBytes {
                max_bytes: self.call_bytes_max,
            });
        }
        Ok(())
    }

    fn charge_ledger(&mut self, change: StateUsage) -> Result<(), StateRefused> {
        budget::ledger(&self.ledger)
            .charge(change)
            .map_err(StateRefused::Budget)?;
        self.call_change = StateUsage {
            bytes: self.call_change.bytes + change.bytes,
            keys: self.call_change.keys + change.keys,
        };
        Ok(())
    }

    /// The call succeeded: its writes join the batch.
    pub(crate) fn end_call_ok(&mut self) {
        let call = std::mem::take(&mut self.call);
        self.batch.extend(call);
        self.call_bytes = 0;
        let change = std::mem::take(&mut self.call_change);
        self.batch_change = StateUsage {
            bytes: self.batch_change.bytes + change.bytes,
            keys: self.batch_change.keys + change.keys,
        };
    }

    /// The call failed: its writes are dropped.
    pub(crate) fn end_call_failed(&mut self) {
        self.call.clear();
        self.call_bytes = 0;
        budget::ledger(&self.ledger).drop_pending(std::mem::take(&mut self.call_change));
    }

    /// Applies the batch's writes to the store.
    pub(crate) fn commit(&mut self) {
        for (key, pending) in std::mem::take(&mut self.batch) {
            match pending {
                Some(value) => self.store.set(&key, &value),
                None => self.store.delete(&key),
            }
        }
        budget::ledger(&self.ledger).commit(std::mem::take(&mut self.batch_change));
    }

    /// Drops the batch's writes.
    pub(crate) fn rollback(&mut self) {
        self.batch.clear();
        budget::ledger(&self.ledger).drop_pending(std::mem::take(&mut self.batch_change));
    }

    /// The store, with only committed writes applied. Its pending writes
    /// are dropped, and its usage leaves the chain's ledger with it.
    pub(crate) fn into_store(mut self) -> Box<dyn StateStore> {
        self.end_call_failed();
        self.rollback();
        let usage = self.store.usage();
        budget::ledger(&self.ledger).adopt(StateUsage {
            bytes: -usage.bytes,
            keys: -usage.keys,
        });
        self.store
    }

    /// The store, with only committed writes applied.
    pub(crate) fn store_mut(&mut self) -> &mut dyn StateStore {
        self.store.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budgets, StateLedger};

    fn unlimited() -> SharedLedger {
        StateLedger::shared(&Budgets::default())
    }

    #[test]
    fn state_layer_total_budget_spans_calls_and_counts_the_store() {
        let ledger = StateLedger::shared(&Budgets {
            state_max_bytes: 10,
            state_max_keys: 3,
            ..Budgets::default()
        });
        let mut seeded = MemState::new();
        seeded.set(b"a", b"1234");
        let mut layer = StateLayer::new(Box::new(seeded), 1024, ledger.clone());
        assert_eq!(layer.set(b"b".to_vec(), b"12".to_vec()), Ok(()));
        layer.end_call_ok();
        layer.commit();
        assert_eq!(
            layer.set(b"c".to_vec(), b"123".to_vec()),
            Err(StateRefused::Budget(Breach::StateBytes { max: 10 })),
            "5 + 3 held, 4 more is over 10"
        );
        assert_eq!(layer.set(b"a".to_vec(), b"1".to_vec()), Ok(()), "shrinks");
        assert_eq!(layer.set(b"c".to_vec(), b"1".to_vec()), Ok(()));
        assert_eq!(
            layer.set(b"d".to_vec(), b"".to_vec()),
            Err(StateRefused::Budget(Breach::StateKeys { max: 3 }))
        );
        layer.end_call_failed();
        assert_eq!(layer.delete(b"a".to_vec()), Ok(()));
        assert_eq!(layer.set(b"d".to_vec(), b"".to_vec()), Ok(()));
        layer.end_call_ok();
        layer.commit();
        assert_eq!(
            budget::ledger(&ledger).committed(),
            StateUsage { bytes: 4, keys: 2 }
        );
    }

    #[test]
    fn mem_state_set_get_delete_roundtrips() {
        let mut state = MemState::new();
        assert_eq!(state.get(b"k"), None);
        state.set(b"k", b"v1");
        state.set(b"k", b"v2");
        assert_eq!(state.get(b"k"), Some(b"v2".to_vec()));
        assert_eq!(state.len(), 1);
        state.delete(b"k");
        state.delete(b"absent");
        assert!(state.is_empty());
    }

    #[test]
    fn state_layer_failed_call_leaves_store_untouched() {
        let mut layer = StateLayer::new(Box::new(MemState::new()), 1024, unlimited());
        assert_eq!(layer.set(b"a".to_vec(), b"1".to_vec()), Ok(()));
        layer.end_call_ok();
        assert_eq!(layer.set(b"b".to_vec(), b"2".to_vec()), Ok(()));
        assert_eq!(layer.get(b"b"), Some(b"2".to_vec()));
        layer.end_call_failed();
        assert_eq!(layer.get(b"b"), None);
        assert_eq!(layer.get(b"a"), Some(b"1".to_vec()));
        layer.commit();
        let mut store = layer.into_store();
        assert_eq!(store.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b"), None);
    }

    #[test]
    fn state_layer_rollback_drops_batch_writes() {
        let mut seeded = MemState::new();
        seeded.set(b"k", b"old");
        let mut layer = StateLayer::new(Box::new(seeded), 1024, unlimited());
        assert_eq!(layer.delete(b"k".to_vec()), Ok(()));
        layer.end_call_ok();
        assert_eq!(layer.get(b"k"), None);
        layer.rollback();
        assert_eq!(layer.get(b"k"), Some(b"old".to_vec()));
    }

    #[test]
    fn state_layer_writes_over_budget_are_refused() {
        let mut layer = StateLayer::new(Box::new(MemState::new()), 8, unlimited());
        assert_eq!(layer.set(b"k".to_vec(), b"1234".to_vec()), Ok(()));
        assert_eq!(
            layer.set(b"k".to_vec(), b"5678".to_vec()),
            Err(StateRefused::CallBytes { max_bytes: 8 })
        );
        layer.end_call_failed();
        assert_eq!(layer.set(b"k".to_vec(), b"1234".to_vec()), Ok(()));
    }

    #[test]
    fn shared_state_set_through_clone_is_visible_to_owner() {
        let owner = Arc::new(Mutex::new(MemState::new()));
        let mut store: Box<dyn StateStore> = Box::new(Arc::clone(&owner));
        store.set(b"k", b"v");
        let entries = owner
            .lock()
            .map(|s| s.entries().clone())
            .unwrap_or_default();
        assert_eq!(entries.get(b"k".as_slice()), Some(&b"v".to_vec()));
    }
}
