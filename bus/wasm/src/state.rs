//! The key-value store behind the `state` import.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

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
}

/// Why a guest's state write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state writes in one call exceed {max_bytes} bytes")]
pub(crate) struct StateWriteLimit {
    pub(crate) max_bytes: usize,
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
}

impl StateLayer {
    /// Wraps `store`; one call may write at most `call_bytes_max` bytes of
    /// keys and values, so a guest cannot grow host memory without bound.
    pub(crate) fn new(store: Box<dyn StateStore>, call_bytes_max: usize) -> StateLayer {
        StateLayer {
            store,
            batch: BTreeMap::new(),
            call: BTreeMap::new(),
            call_bytes: 0,
            call_bytes_max,
        }
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.call.get(key).or_else(|| self.batch.get(key)) {
            Some(pending) => pending.clone(),
            None => self.store.get(key),
        }
    }

    pub(crate) fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StateWriteLimit> {
        self.charge(key.len() + value.len())?;
        self.call.insert(key, Some(value));
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) -> Result<(), StateWriteLimit> {
        self.charge(key.len())?;
        self.call.insert(key, None);
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> Result<(), StateWriteLimit> {
        self.call_bytes = self.call_bytes.saturating_add(bytes);
        if self.call_bytes > self.call_bytes_max {
            return Err(StateWriteLimit {
                max_bytes: self.call_bytes_max,
            });
        }
        Ok(())
    }

    /// The call succeeded: its writes join the batch.
    pub(crate) fn end_call_ok(&mut self) {
        let call = std::mem::take(&mut self.call);
        self.batch.extend(call);
        self.call_bytes = 0;
    }

    /// The call failed: its writes are dropped.
    pub(crate) fn end_call_failed(&mut self) {
        self.call.clear();
        self.call_bytes = 0;
    }

    /// Applies the batch's writes to the store.
    pub(crate) fn commit(&mut self) {
        for (key, pending) in std::mem::take(&mut self.batch) {
            match pending {
                Some(value) => self.store.set(&key, &value),
                None => self.store.delete(&key),
            }
        }
    }

    /// Drops the batch's writes.
    pub(crate) fn rollback(&mut self) {
        self.batch.clear();
    }

    /// The store, with only committed writes applied.
    pub(crate) fn into_store(self) -> Box<dyn StateStore> {
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
        let mut layer = StateLayer::new(Box::new(MemState::new()), 1024);
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
        let mut layer = StateLayer::new(Box::new(seeded), 1024);
        assert_eq!(layer.delete(b"k".to_vec()), Ok(()));
        layer.end_call_ok();
        assert_eq!(layer.get(b"k"), None);
        layer.rollback();
        assert_eq!(layer.get(b"k"), Some(b"old".to_vec()));
    }

    #[test]
    fn state_layer_writes_over_budget_are_refused() {
        let mut layer = StateLayer::new(Box::new(MemState::new()), 8);
        assert_eq!(layer.set(b"k".to_vec(), b"1234".to_vec()), Ok(()));
        assert_eq!(
            layer.set(b"k".to_vec(), b"5678".to_vec()),
            Err(StateWriteLimit { max_bytes: 8 })
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
