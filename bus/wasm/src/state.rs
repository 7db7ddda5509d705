//! The key-value store behind the `state` import, and the layer that
//! gives each guest call its view of it: pending writes, expiry by event
//! time, bounded listing, and the chain's state budget.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use crate::budget::{self, Breach, SharedLedger, StateUsage};

/// The most entries one `list` call returns, whatever the guest asks for:
/// the answer is copied into guest memory in one piece.
pub const LIST_MAX_ENTRIES: usize = 1000;

/// Expired keys removed at the start of one call at most, so a window
/// that expires all at once is cleared over several calls instead of
/// stalling one. Until removed, an expired key is invisible to the guest.
pub const PURGE_MAX_PER_CALL: usize = 1024;

/// Which of a store's two key spaces an operation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The plugin's keys and values, as it wrote them: what 0.1 plugins
    /// stored, and what the state budget counts.
    Data,
    /// The host's bookkeeping about them (expiry times and their index),
    /// out of the plugin's reach.
    Meta,
}

/// Key-value state of one plugin attachment, reached by the guest through
/// the WIT `state` interface.
///
/// The broker decides where state lives: in memory on the read path,
/// persisted through its writer for ingest chains, inside the pipeline's
/// redb transaction for pipelines (so output, state and source offset
/// commit together). This crate only forwards the guest's calls and its
/// own bookkeeping ([`Space::Meta`]); it never reorders them.
///
/// `Send` because an [`Instance`](crate::Instance) moves between the
/// threads of a blocking pool.
pub trait StateStore: Send {
    /// The value stored under `key` in `space`, if any.
    fn get(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value` under `key` in `space`, replacing any previous value.
    fn set(&mut self, space: Space, key: &[u8], value: &[u8]);
    /// Removes `key` from `space`; removing an absent key does nothing.
    fn delete(&mut self, space: Space, key: &[u8]);
    /// The entries of `space` whose key starts with `prefix` and sorts
    /// after `after` (from the first when `None`), in key order, at most
    /// `limit` of them.
    fn list(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// What [`Space::Data`] holds now, counted against the chain's state
    /// budget when a chain is built over it.
    fn usage(&mut self) -> StateUsage;
}

/// The usage `entries` add up to.
pub fn usage_of<'a>(entries: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> StateUsage {
    entries.fold(StateUsage::default(), |usage, (key, value)| StateUsage {
        bytes: usage.bytes + (key.len() + value.len()) as i64,
        keys: usage.keys + 1,
    })
}

/// Where a listing starts in a sorted map: at `prefix`, or just after
/// `after` when that sorts later.
fn list_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> Bound<&'a [u8]> {
    match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

/// [`StateStore::list`] over a sorted map.
pub fn list_map(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.range::<[u8], _>((list_start(prefix, after), Bound::Unbounded))
        .take_while(|(key, _)| key.starts_with(prefix))
        .take(limit)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// [`StateStore::list`] through pending writes (`Some` sets, `None`
/// deletes) over what `fetch(after, limit)` lists beneath them. Pages are
/// fetched until `limit` entries are found or `fetch` runs out, so deleted
/// keys never make a page look like the last one.
pub fn list_overlaid(
    overlay: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    mut fetch: impl FnMut(Option<&[u8]>, usize) -> Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
    while out.len() < limit {
        let want = limit - out.len();
        let page = fetch(cursor.as_deref(), want);
        let exhausted = page.len() < want;
        // Beneath a full page more may follow: only pending writes up to
        // its last key can be placed yet.
        let upper = if exhausted {
            None
        } else {
            page.last().map(|(key, _)| key.clone())
        };
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            page.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let pending = overlay
            .range::<[u8], _>((list_start(prefix, cursor.as_deref()), Bound::Unbounded))
            .take_while(|(key, _)| {
                key.starts_with(prefix) && upper.as_ref().is_none_or(|upper| *key <= upper)
            });
        for (key, value) in pending {
            merged.insert(key.clone(), value.clone());
        }
        out.extend(
            merged
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| (key, value)))
                .take(want),
        );
        if exhausted {
            break;
        }
        cursor = upper;
    }
    out
}

/// An in-memory [`StateStore`]: what read-path attachments use, and what
/// tests use to look at a plugin's state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemState {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemState {
    /// An empty store.
    pub fn new() -> MemState {
        MemState::default()
    }

    /// The plugin's entries, in key order (expired ones included until the
    /// host removes them).
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.data
    }

    /// The number of plugin keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no plugin key is stored.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn map(&mut self, space: Space) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match space {
            Space::Data => &mut self.data,
            Space::Meta => &mut self.meta,
        }
    }
}

impl From<BTreeMap<Vec<u8>, Vec<u8>>> for MemState {
    /// A store holding `data` as the plugin's entries.
    fn from(data: BTreeMap<Vec<u8>, Vec<u8>>) -> MemState {
        MemState {
            data,
            meta: BTreeMap::new(),
        }
    }
}

impl StateStore for MemState {
    fn get(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.map(space).get(key).cloned()
    }

    fn set(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.map(space).insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        self.map(space).remove(key);
    }

    fn list(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        list_map(self.map(space), prefix, after, limit)
    }

    fn usage(&mut self) -> StateUsage {
        usage_of(self.data.iter())
    }
}

/// A store shared between the instance and its owner, who keeps a clone of
/// the `Arc` to read or flush the state while the instance still runs.
impl<S: StateStore> StateStore for Arc<Mutex<S>> {
    fn get(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(space, key)
    }

    fn set(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(space, key, value);
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delete(space, key);
    }

    fn list(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list(space, prefix, after, limit)
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

/// Meta key of a plugin key's expiry time: `k` + key → 8 bytes, big-endian.
fn expiry_key(key: &[u8]) -> Vec<u8> {
    [b"k".as_slice(), key].concat()
}

/// Meta key of the expiry index: `t` + time (sortable) + key → nothing, so
/// the keys due first are listed first.
fn index_key(expires_at_ms: i64, key: &[u8]) -> Vec<u8> {
    let sortable = (expires_at_ms as u64) ^ (1 << 63);
    [b"t".as_slice(), &sortable.to_be_bytes(), key].concat()
}

/// The time and plugin key of an expiry index key.
fn parse_index_key(index: &[u8]) -> Option<(i64, &[u8])> {
    let time: [u8; 8] = index.get(1..9)?.try_into().ok()?;
    let expires_at_ms = (u64::from_be_bytes(time) ^ (1 << 63)) as i64;
    Some((expires_at_ms, &index[9..]))
}

/// Writes not yet in the store, per space: `Some` sets, `None` deletes.
#[derive(Default)]
struct Pending {
    data: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Pending {
    fn map(&self, space: Space) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        match space {
            Space::Data => &self.data,
            Space::Meta => &self.meta,
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.meta.clear();
    }

    /// Moves `newer`'s writes over these.
    fn absorb(&mut self, newer: Pending) {
        self.data.extend(newer.data);
        self.meta.extend(newer.meta);
    }
}

/// A guest's view of its [`StateStore`], with writes held back until the
/// host decides they count, expiry by event time, and the chain's budget.
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
/// Event time is the largest record timestamp given to the layer so far
/// (0 before the first); a key set to expire is hidden from the guest once
/// event time reaches its expiry, and removed (freeing its budget) at the
/// start of a later call.
///
/// [`commit`]: StateLayer::commit
pub(crate) struct StateLayer {
    store: Box<dyn StateStore>,
    batch: Pending,
    call: Pending,
    call_bytes: usize,
    call_bytes_max: usize,
    ledger: SharedLedger,
    /// Usage changes of the writes in `call` and in `batch`, as charged to
    /// the ledger.
    call_change: StateUsage,
    batch_change: StateUsage,
    now_ms: i64,
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
            batch: Pending::default(),
            call: Pending::default(),
            call_bytes: 0,
            call_bytes_max,
            ledger,
            call_change: StateUsage::default(),
            batch_change: StateUsage::default(),
            now_ms: 0,
        }
    }

    /// The value under `key` in `space`, through the pending layers,
    /// expired or not.
    fn get_raw(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        match self
            .call
            .map(space)
            .get(key)
            .or_else(|| self.batch.map(space).get(key))
        {
            Some(pending) => pending.clone(),
            None => self.store.get(space, key),
        }
    }

    /// When `key` expires, if it was set to.
    fn expires_at(&mut self, key: &[u8]) -> Option<i64> {
        let stored = self.get_raw(Space::Meta, &expiry_key(key))?;
        Some(i64::from_be_bytes(stored.as_slice().try_into().ok()?))
    }

    fn expired(&mut self, key: &[u8]) -> bool {
        self.expires_at(key).is_some_and(|at| at <= self.now_ms)
    }

    /// Moves event time forward to `timestamp_ms` (never back), then
    /// removes up to [`PURGE_MAX_PER_CALL`] keys that have expired. Called
    /// at the start of each call, with the batch's largest timestamp.
    pub(crate) fn begin_call(&mut self, timestamp_ms: Option<i64>) {
        if let Some(timestamp_ms) = timestamp_ms {
            self.now_ms = self.now_ms.max(timestamp_ms);
        }
        let due = self.list_raw(Space::Meta, b"t", None, PURGE_MAX_PER_CALL);
        for (index, _) in due {
            let Some((expires_at_ms, key)) = parse_index_key(&index) else {
                continue;
            };
            if expires_at_ms > self.now_ms {
                break;
            }
            let key = key.to_vec();
            self.forget_expiry(&key);
            if let Some(old) = self.get_raw(Space::Data, &key).map(|v| v.len()) {
                // Shrinking always passes the ledger.
                let _ = self.charge_ledger(StateUsage {
                    bytes: -((key.len() + old) as i64),
                    keys: -1,
                });
            }
            self.call.data.insert(key, None);
        }
    }

    /// Lists `space` through the pending layers.
    fn list_raw(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let StateLayer {
            store, batch, call, ..
        } = self;
        list_overlaid(call.map(space), prefix, after, limit, |after, limit| {
            list_overlaid(batch.map(space), prefix, after, limit, |after, limit| {
                store.list(space, prefix, after, limit)
            })
        })
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.get_raw(Space::Data, key)?;
        (!self.expired(key)).then_some(value)
    }

    /// Live entries under `prefix` after `after`, at most `limit` (and
    /// [`LIST_MAX_ENTRIES`]).
    pub(crate) fn list(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let limit = limit.min(LIST_MAX_ENTRIES);
        let mut out = Vec::new();
        let mut cursor = after.map(<[u8]>::to_vec);
        while out.len() < limit {
            let want = limit - out.len();
            let page = self.list_raw(Space::Data, prefix, cursor.as_deref(), want);
            let exhausted = page.len() < want;
            cursor = page.last().map(|(key, _)| key.clone());
            for (key, value) in page {
                if !self.expired(&key) {
                    out.push((key, value));
                }
            }
            if exhausted {
                break;
            }
        }
        out
    }

    /// The size of the value `key` has now, expired or not: what the
    /// ledger counts until it is removed.
    fn current_len(&mut self, key: &[u8]) -> Option<usize> {
        self.get_raw(Space::Data, key).map(|v| v.len())
    }

    pub(crate) fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StateRefused> {
        self.put(key, value, None)
    }

    /// Stores `value` under `key`, expiring `ttl_ms` of event time from now.
    pub(crate) fn set_expiring(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), StateRefused> {
        let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let expires_at_ms = self.now_ms.saturating_add(ttl_ms);
        self.put(key, value, Some(expires_at_ms))
    }

    fn put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    ) -> Result<(), StateRefused> {
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
        self.forget_expiry(&key);
        if let Some(at) = expires_at_ms {
            self.call
                .meta
                .insert(expiry_key(&key), Some(at.to_be_bytes().to_vec()));
            self.call.meta.insert(index_key(at, &key), Some(Vec::new()));
        }
        self.call.data.insert(key, Some(value));
        Ok(())
    }

    /// Drops `key`'s expiry and its index entry, if it has one.
    fn forget_expiry(&mut self, key: &[u8]) {
        if let Some(at) = self.expires_at(key) {
            self.call.meta.insert(expiry_key(key), None);
            self.call.meta.insert(index_key(at, key), None);
        }
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) -> Result<(), StateRefused> {
        self.charge_call(key.len())?;
        if let Some(old) = self.current_len(&key) {
            self.charge_ledger(StateUsage {
                bytes: -((key.len() + old) as i64),
                keys: -1,
            })?;
        }
        self.forget_expiry(&key);
        self.call.data.insert(key, None);
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

    /// Room left under the chain's state budget: bytes and keys.
    pub(crate) fn room(&self) -> (u64, u64) {
        budget::ledger(&self.ledger).room()
    }

    /// The call succeeded: its writes join the batch.
    pub(crate) fn end_call_ok(&mut self) {
        let call = std::mem::take(&mut self.call);
        self.batch.absorb(call);
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
        let batch = std::mem::take(&mut self.batch);
        for (space, writes) in [(Space::Meta, batch.meta), (Space::Data, batch.data)] {
            for (key, pending) in writes {
                match pending {
                    Some(value) => self.store.set(space, &key, &value),
                    None => self.store.delete(space, &key),
                }
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
        seeded.set(Space::Data, b"a", b"1234");
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
        assert_eq!(state.get(Space::Data, b"k"), None);
        state.set(Space::Data, b"k", b"v1");
        state.set(Space::Data, b"k", b"v2");
        state.set(Space::Meta, b"k", b"meta");
        assert_eq!(state.get(Space::Data, b"k"), Some(b"v2".to_vec()));
        assert_eq!(state.len(), 1, "meta keys are not the plugin's");
        state.delete(Space::Data, b"k");
        state.delete(Space::Data, b"absent");
        assert!(state.is_empty());
        assert_eq!(state.get(Space::Meta, b"k"), Some(b"meta".to_vec()));
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
        assert_eq!(store.get(Space::Data, b"a"), Some(b"1".to_vec()));
        assert_eq!(store.get(Space::Data, b"b"), None);
    }

    #[test]
    fn state_layer_rollback_drops_batch_writes() {
        let mut seeded = MemState::new();
        seeded.set(Space::Data, b"k", b"old");
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
        store.set(Space::Data, b"k", b"v");
        let entries = owner
            .lock()
            .map(|s| s.entries().clone())
            .unwrap_or_default();
        assert_eq!(entries.get(b"k".as_slice()), Some(&b"v".to_vec()));
    }

    fn mem_with(keys: &[&str]) -> MemState {
        MemState::from(
            keys.iter()
                .map(|k| (k.as_bytes().to_vec(), b"v".to_vec()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
        entries
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn list_map_takes_prefix_after_and_limit() {
        let state = mem_with(&["a1", "a2", "a3", "b1"]);
        let map = state.entries();
        assert_eq!(keys(&list_map(map, b"a", None, 10)), ["a1", "a2", "a3"]);
        assert_eq!(keys(&list_map(map, b"a", Some(b"a1"), 1)), ["a2"]);
        assert_eq!(keys(&list_map(map, b"a", Some(b"0"), 1)), ["a1"]);
        assert!(list_map(map, b"a", Some(b"a3"), 10).is_empty());
        assert!(list_map(map, b"a", Some(b"b"), 10).is_empty());
    }

    #[test]
    fn list_overlaid_pages_past_deleted_keys_and_adds_pending_ones() {
        let mut store = mem_with(&["k1", "k2", "k3", "k4", "k5"]);
        let overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = [
            (b"k1".to_vec(), None),
            (b"k2".to_vec(), None),
            (b"k25".to_vec(), Some(b"new".to_vec())),
            (b"k9".to_vec(), Some(b"new".to_vec())),
        ]
        .into_iter()
        .collect();
        let mut fetch = |after: Option<&[u8]>, limit| store.list(Space::Data, b"k", after, limit);
        let first = list_overlaid(&overlay, b"k", None, 2, &mut fetch);
        assert_eq!(
            keys(&first),
            ["k25", "k3"],
            "deleted keys do not end the page"
        );
        let next = list_overlaid(&overlay, b"k", Some(b"k3"), 2, &mut fetch);
        assert_eq!(keys(&next), ["k4", "k5"]);
        let last = list_overlaid(&overlay, b"k", Some(b"k5"), 2, &mut fetch);
        assert_eq!(keys(&last), ["k9"], "a short page: nothing more");
    }

    #[test]
    fn state_layer_expiring_key_hides_at_event_time_and_frees_budget() {
        let ledger = StateLedger::shared(&Budgets {
            state_max_keys: 2,
            ..Budgets::default()
        });
        let mut layer = StateLayer::new(Box::new(MemState::new()), 1024, ledger.clone());
        layer.begin_call(Some(1_000));
        assert_eq!(
            layer.set_expiring(b"a".to_vec(), b"1".to_vec(), 500),
            Ok(())
        );
        assert_eq!(layer.set(b"b".to_vec(), b"2".to_vec()), Ok(()));
        layer.end_call_ok();
        layer.commit();
        layer.begin_call(Some(1_499));
        assert_eq!(layer.get(b"a"), Some(b"1".to_vec()), "alive before 1500");
        assert_eq!(
            layer.set(b"c".to_vec(), b"3".to_vec()),
            Err(StateRefused::Budget(Breach::StateKeys { max: 2 }))
        );
        layer.end_call_failed();
        layer.begin_call(Some(1_500));
        assert_eq!(layer.get(b"a"), None, "expired at 1500");
        assert_eq!(keys(&layer.list(b"", None, 10)), ["b"]);
        assert_eq!(
            layer.set(b"c".to_vec(), b"3".to_vec()),
            Ok(()),
            "room again"
        );
        layer.end_call_ok();
        layer.commit();
        assert_eq!(
            budget::ledger(&ledger).committed(),
            StateUsage { bytes: 4, keys: 2 }
        );
        let mut store = layer.into_store();
        assert_eq!(
            store.list(Space::Meta, b"", None, 10),
            vec![],
            "expiry bookkeeping removed with the key"
        );
    }

    #[test]
    fn state_layer_set_without_ttl_clears_an_earlier_expiry() {
        let mut layer = StateLayer::new(Box::new(MemState::new()), 1024, unlimited());
        assert_eq!(layer.set_expiring(b"a".to_vec(), b"1".to_vec(), 10), Ok(()));
        assert_eq!(layer.set(b"a".to_vec(), b"2".to_vec()), Ok(()));
        layer.end_call_ok();
        layer.commit();
        layer.begin_call(Some(1_000_000));
        assert_eq!(layer.get(b"a"), Some(b"2".to_vec()));
    }

    #[test]
    fn state_layer_list_caps_at_list_max_entries() {
        let keys: Vec<String> = (0..LIST_MAX_ENTRIES + 5)
            .map(|i| format!("{i:05}"))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut layer = StateLayer::new(Box::new(mem_with(&refs)), 1024, unlimited());
        assert_eq!(
            layer.list(b"", None, u32::MAX as usize).len(),
            LIST_MAX_ENTRIES
        );
    }
}
