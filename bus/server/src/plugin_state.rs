//! Plugin state that outlives the broker process, in the store's plugin
//! state table: one owner per attachment (a pipeline's name,
//! `ingest:<topic>` for a topic's ingest chain, `read:<topic>/<partition>/
//! <name>` for read-path subscriptions that name their state), and within
//! it each stage under prefixes of its own, one per key space:
//!
//! ```text
//!   owner            key
//!   "p1"             "0/" + plugin key      → value     (pipeline stage 0, data)
//!   "p1"             "0~" + host key        → bookkeeping (expiry times)
//!   "ingest:t"       "0-dedupe/" + key      → value     (ingest stage 0, plugin dedupe)
//!   "read:t/0/g"     "0-dedupe/" + key      → value     (read path of t/0 named g)
//! ```
//!
//! Pipeline stages are named by position only (a pipeline's chain never
//! changes, and the names predate expiry); ingest and read-path stages by
//! position and plugin, so a chain set anew with another plugin in a
//! position does not inherit the state of the plugin that was there.
//!
//! Ingest and named read-path state is held in memory while its chain
//! runs (it is bounded by the state budget) and loaded from the store when
//! the chain is built. The changes an ingest batch made are stored in the
//! group commit that stores the batch (see [`ChainState::take`]), or, when
//! no batch is stored, queued for the store through the writer (see
//! [`ChainState::flush`]); a read path's are stored after each frame it
//! sends, with the offset after that frame (see
//! [`ChainState::store_through`]).

use std::sync::{Arc, Mutex, PoisonError};

use edgebus_proto::frame::PluginRef;
use edgebus_store::{LogStore, StateEntries, StateWrite, StoreError};
use edgebus_wasm::state::usage_of;
use edgebus_wasm::{MemState, Space, StateStore, StateUsage};

use crate::chain::StateFactory;
use crate::writer::Writer;

/// Entries read from the store per page when a stage's state is loaded or
/// counted.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// Changes in order: `Some` sets, `None` deletes; keys as stored.
pub type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The store keys of one stage: a prefix per key space.
#[derive(Debug, Clone)]
pub struct StageKeys {
    data: Vec<u8>,
    meta: Vec<u8>,
}

impl StageKeys {
    /// The keys of stage `stage` (`"0"`, or `"0-dedupe"`).
    pub fn new(stage: &str) -> StageKeys {
        StageKeys {
            data: format!("{stage}/").into_bytes(),
            meta: format!("{stage}~").into_bytes(),
        }
    }

    /// The prefix every stored key of `space` starts with.
    pub fn prefix(&self, space: Space) -> &[u8] {
        match space {
            Space::Data => &self.data,
            Space::Meta => &self.meta,
        }
    }

    /// The stored key of `key` in `space`.
    pub fn key(&self, space: Space, key: &[u8]) -> Vec<u8> {
        [self.prefix(space), key].concat()
    }

    /// The key a stored key of `space` stands for.
    pub fn strip<'a>(&self, space: Space, stored: &'a [u8]) -> Option<&'a [u8]> {
        stored.strip_prefix(self.prefix(space))
    }
}

/// Every entry of `owner` under `prefix`, read in pages.
fn read_all(store: &dyn LogStore, owner: &str, prefix: &[u8]) -> Result<StateEntries, StoreError> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|(key, _): &(Vec<u8>, Vec<u8>)| key.clone());
        let page = store.plugin_state_list(owner, prefix, after.as_deref(), LOAD_PAGE_ENTRIES)?;
        let last = page.len() < LOAD_PAGE_ENTRIES;
        all.extend(page);
        if last {
            return Ok(all);
        }
    }
}

/// What a stage keeps in the store for its plugin (its data space, keys
/// counted without the stage's prefix), as the state budget counts it.
pub fn stored_usage(
    store: &dyn LogStore,
    owner: &str,
    keys: &StageKeys,
) -> Result<StateUsage, StoreError> {
    let entries = read_all(store, owner, keys.prefix(Space::Data))?;
    let stripped: Vec<(Vec<u8>, Vec<u8>)> = entries
        .into_iter()
        .filter_map(|(key, value)| Some((keys.strip(Space::Data, &key)?.to_vec(), value)))
        .collect();
    Ok(usage_of(stripped.iter().map(|(k, v)| (k, v))))
}

/// The owner name of a topic's ingest chain state.
fn ingest_owner(topic: &str) -> String {
    format!("ingest:{topic}")
}

/// The prefix of every owner name of `topic`'s read-path state. Topic
/// names hold no `/`, so no other topic's owners share it.
fn read_path_owners(topic: &str) -> String {
    format!("read:{topic}/")
}

/// Deletes the stored plugin state of `topic`: its ingest chain's and
/// every named read path's, so a topic made anew under the name starts
/// without it.
pub fn delete_topic_state(store: &dyn LogStore, topic: &str) -> Result<(), StoreError> {
    store.delete_pipeline_data(&ingest_owner(topic))?;
    store.delete_plugin_state_owners(&read_path_owners(topic))
}

/// Where a read path's stored state stops: outside every stage's keys
/// (stage names start with a digit).
const THROUGH_KEY: &[u8] = b"@through";

/// The stage name of an ingest or read-path chain's stage at `position`.
fn chain_stage(position: usize, plugin: &str) -> String {
    format!("{position}-{plugin}")
}

/// A chain's stored state (a topic's ingest chain, or a named read path):
/// loaded from the store when the chain is built, changes queued until
/// [`ChainState::take`] or [`ChainState::flush`] hands them to the writer.
#[derive(Clone)]
pub struct ChainState {
    store: Arc<dyn LogStore>,
    owner: String,
    changes: Arc<Mutex<Changes>>,
}

impl ChainState {
    /// The state of `topic`'s ingest chain.
    pub fn ingest(store: Arc<dyn LogStore>, topic: &str) -> ChainState {
        ChainState {
            store,
            owner: ingest_owner(topic),
            changes: Arc::default(),
        }
    }

    /// The state of read-path subscriptions of `topic`'s `partition` that
    /// name it `name`.
    pub fn read_path(
        store: Arc<dyn LogStore>,
        topic: &str,
        partition: u32,
        name: &str,
    ) -> ChainState {
        ChainState {
            store,
            owner: format!("{}{partition}/{name}", read_path_owners(topic)),
            changes: Arc::default(),
        }
    }

    /// Makes each stage's store for a chain of `refs`, loaded from the
    /// store. A stage whose state cannot be read starts empty, and says so
    /// in the log.
    pub fn factory(&self, refs: &[PluginRef]) -> StateFactory {
        let (this, stages) = (self.clone(), stage_names(refs));
        Arc::new(move |position| {
            let keys = StageKeys::new(&stages[position]);
            let mem = match this.load(&keys) {
                Ok(mem) => mem,
                Err(error) => {
                    tracing::error!(owner = %this.owner, %error,
                        "stored plugin state unreadable; the stage starts with none");
                    MemState::new()
                }
            };
            Box::new(StageState {
                mem,
                keys,
                changes: this.changes.clone(),
            })
        })
    }

    fn load(&self, keys: &StageKeys) -> Result<MemState, StoreError> {
        let mut mem = MemState::new();
        for space in [Space::Data, Space::Meta] {
            for (key, value) in read_all(&*self.store, &self.owner, keys.prefix(space))? {
                if let Some(key) = keys.strip(space, &key) {
                    mem.set(space, key, &value);
                }
            }
        }
        Ok(mem)
    }

    /// Takes the changes committed since the last take or flush, for the
    /// caller to store with the records they were made with.
    pub fn take(&self) -> Option<StateWrite> {
        let changes =
            std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner));
        (!changes.is_empty()).then(|| StateWrite {
            owner: self.owner.clone(),
            changes,
        })
    }

    /// Queues the changes not taken with a batch for the store, after
    /// everything already queued on `writer`, so stored state never runs
    /// ahead of stored records: after a crash between the two, a retried
    /// batch is not taken for its own duplicate. The caller holds the
    /// chain, so flushes keep their order.
    /// A failed write is logged: the state stays right in memory, and the
    /// next restart forgets the lost changes.
    pub async fn flush(&self, writer: &Writer) {
        let Some(StateWrite { owner, changes }) = self.take() else {
            return;
        };
        let queued = writer.queue(move |store| store.put_plugin_state(&owner, &changes));
        let owner = self.owner.clone();
        if let Ok(done) = queued.await {
            tokio::spawn(async move {
                if let Ok(Err(error)) = done.await {
                    tracing::warn!(%owner, %error, "plugin state not stored");
                }
            });
        }
    }

    /// The offset after the last frame whose changes a read path stored
    /// ([`ChainState::store_through`]): its state has seen the records
    /// below it.
    pub fn stored_through(&self) -> Result<Option<u64>, StoreError> {
        let stored = self.store.pipeline_state(&self.owner, THROUGH_KEY)?;
        Ok(stored.and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?))))
    }

    /// Stores a read path's changes with `next`, the offset after the frame
    /// just sent, in one durable transaction, and waits until they are
    /// stored (a chain rebuilt after a failure loads them). One commit per
    /// frame: frames carry up to the subscription's `max_bytes`, so a busy
    /// subscription sends few, large ones.
    pub async fn store_through(&self, writer: &Writer, next: u64) -> Result<(), StoreError> {
        let StateWrite { owner, mut changes } = self.take().unwrap_or_else(|| StateWrite {
            owner: self.owner.clone(),
            changes: Vec::new(),
        });
        changes.push((THROUGH_KEY.to_vec(), Some(next.to_be_bytes().to_vec())));
        writer
            .run(move |store| store.put_plugin_state(&owner, &changes))
            .await
    }

    /// Drops the changes not yet stored (those of a run whose frame was
    /// not sent).
    pub fn discard(&self) {
        drop(self.take());
    }

    /// Deletes everything stored under this owner.
    pub async fn forget(&self, writer: &Writer) -> Result<(), StoreError> {
        self.discard();
        let owner = self.owner.clone();
        writer
            .run(move |store| store.delete_pipeline_data(&owner))
            .await
    }

    /// Deletes stored state that no stage of `refs` will read: all of it
    /// for an empty chain.
    pub fn prune(&self, refs: &[PluginRef]) -> Result<(), StoreError> {
        let kept: Vec<StageKeys> = stage_names(refs)
            .iter()
            .map(|s| StageKeys::new(s))
            .collect();
        let stale: Changes = read_all(&*self.store, &self.owner, b"")?
            .into_iter()
            .filter(|(key, _)| {
                !kept.iter().any(|keys| {
                    key.starts_with(keys.prefix(Space::Data))
                        || key.starts_with(keys.prefix(Space::Meta))
                })
            })
            .map(|(key, _)| (key, None))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.store.put_plugin_state(&self.owner, &stale)
    }
}

fn stage_names(refs: &[PluginRef]) -> Vec<String> {
    refs.iter()
        .enumerate()
        .map(|(position, r)| chain_stage(position, &r.name))
        .collect()
}

/// One stage's state: all of it in memory, each change also queued
/// for the store under its stored key.
struct StageState {
    mem: MemState,
    keys: StageKeys,
    changes: Arc<Mutex<Changes>>,
}

impl StageState {
    fn queue(&self, space: Space, key: &[u8], value: Option<&[u8]>) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.keys.key(space, key), value.map(<[u8]>::to_vec)));
    }
}

impl StateStore for StageState {
    fn get(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.mem.get(space, key)
    }

    fn set(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.mem.set(space, key, value);
        self.queue(space, key, Some(value));
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        self.mem.delete(space, key);
        self.queue(space, key, None);
    }

    fn list(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.mem.list(space, prefix, after, limit)
    }

    fn usage(&mut self) -> StateUsage {
        self.mem.usage()
    }
}
