//! What is attached to each topic: its ingest chain (stored, so it survives
//! restarts, with its plugin state) and the counters of its read-path
//! chains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use edgebus_proto::ErrorCode;
use edgebus_proto::batch::StoredRecord;
use edgebus_proto::frame::{AttachCounters, FailurePolicy, PluginRef};
use edgebus_store::{ConfigKind, LogStore, StateWrite, StoreError};

use crate::chain::{
    AttachPoint, ChainRun, ChainRunError, ChainRunner, Counters, Halt, OutputLimits,
};
use crate::error::Coded;
use crate::plugin_state::ChainState;
use crate::registry::Registry;
use crate::saved;
use crate::writer::Writer;

/// Why a topic's ingest chain could not be set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// A plugin of the chain does not initialise.
    #[error(transparent)]
    Chain(#[from] ChainRunError),
    /// The chain could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store call's task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Coded for AttachError {
    fn code(&self) -> ErrorCode {
        match self {
            AttachError::Chain(e) => e.code(),
            AttachError::Store(e) => e.code(),
            AttachError::Task(_) => ErrorCode::StorageError,
        }
    }
}

/// Why an ingest chain refused a produced batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The chain is paused after failures.
    #[error("ingest chain of {0:?} is halted after plugin failures; retry later")]
    Halted(String),
    /// A plugin failed under the halt policy; the chain pauses now.
    #[error("plugin {plugin:?} failed ({error}); ingest of {topic:?} halted for {pause:?}")]
    Tripped {
        /// The plugin.
        plugin: String,
        /// How it failed.
        error: edgebus_wasm::PluginError,
        /// The topic.
        topic: String,
        /// How long the chain pauses.
        pause: std::time::Duration,
    },
    /// The chain could not run, or a plugin rejected the batch.
    #[error(transparent)]
    Chain(ChainRunError),
    /// A cluster node has not yet attached the chain the control log
    /// holds for the topic; storing the batch without it would skip it.
    #[error("the ingest chain of {0:?} is being attached on this node; retry")]
    Attaching(String),
}

impl Coded for IngestError {
    fn code(&self) -> ErrorCode {
        match self {
            IngestError::Halted(_) | IngestError::Tripped { .. } | IngestError::Attaching(_) => {
                ErrorCode::PluginHalted
            }
            IngestError::Chain(e) => e.code(),
        }
    }
}

/// A topic's ingest chain.
pub struct IngestChain {
    /// The plugins and parameters.
    pub refs: Vec<PluginRef>,
    /// What happens to failed records.
    pub policy: FailurePolicy,
    /// Counters since start.
    pub counters: Arc<Counters>,
    /// The plugins' state, kept in the store.
    state: ChainState,
    /// One batch at a time: produce calls of the topic queue here.
    run: tokio::sync::Mutex<(ChainRunner, Halt)>,
}

impl IngestChain {
    fn new(
        registry: Arc<Registry>,
        state: ChainState,
        refs: Vec<PluginRef>,
        policy: FailurePolicy,
    ) -> IngestChain {
        let counters = Arc::new(Counters::default());
        let runner = ChainRunner::new(
            registry,
            refs.clone(),
            policy,
            AttachPoint::Ingest,
            counters.clone(),
            state.factory(&refs),
        );
        IngestChain {
            refs,
            policy,
            counters,
            state,
            run: tokio::sync::Mutex::new((runner, Halt::default())),
        }
    }

    /// The state changes the chain made since they were last taken, to
    /// store with the batch they were made for. Only while the chain is
    /// held: inside [`IngestChain::run`]'s `store`.
    pub fn take_state(&self) -> Option<StateWrite> {
        self.state.take()
    }

    /// Runs produced records of `topic` through the chain, unless it is
    /// halted, and hands what it made to `store`, which queues the append
    /// on `writer` with the chain's state changes
    /// ([`IngestChain::take_state`]). Changes it did not take (no batch
    /// was stored) are queued on `writer` after that, while the chain is
    /// still held, so they reach the store after the records and in the
    /// order of the batches.
    pub async fn run<T>(
        &self,
        writer: &Writer,
        (topic, partition): (&str, u32),
        records: &[StoredRecord],
        limits: OutputLimits,
        store: impl AsyncFnOnce(ChainRun) -> T,
    ) -> Result<T, IngestError> {
        let mut guard = self.run.lock().await;
        let (runner, halt) = &mut *guard;
        let now = Instant::now();
        if halt.active(now) {
            return Err(IngestError::Halted(topic.to_owned()));
        }
        let ran = runner.run(topic, partition, records, limits).await;
        let stored = match ran {
            Ok(run) => {
                halt.clear();
                Ok(store(run).await)
            }
            Err(e) => Err(e),
        };
        self.state.flush(writer).await;
        match stored {
            Ok(stored) => Ok(stored),
            Err(ChainRunError::Failed { plugin, error, .. }) => {
                let pause = halt.trip(now);
                tracing::warn!(%topic, %plugin, %error, ?pause, "ingest chain halted");
                Err(IngestError::Tripped {
                    plugin,
                    error,
                    topic: topic.to_owned(),
                    pause,
                })
            }
            Err(e) => Err(IngestError::Chain(e)),
        }
    }
}

/// The chains attached to topics.
pub struct Attachments {
    registry: Arc<Registry>,
    store: Arc<dyn LogStore>,
    ingest: RwLock<HashMap<String, Arc<IngestChain>>>,
    /// Topics whose chain a cluster node is still attaching: produce waits.
    attaching: RwLock<std::collections::HashSet<String>>,
    read_counters: Mutex<HashMap<String, Arc<Counters>>>,
}

impl Attachments {
    /// Restores the ingest chains kept in `store`. An unreadable chain
    /// stops the start: serving the topic without it would store what the
    /// chain was there to filter or redact.
    pub fn restore(
        registry: Arc<Registry>,
        store: Arc<dyn LogStore>,
    ) -> Result<Attachments, StoreError> {
        let attachments = Attachments {
            registry,
            ingest: RwLock::default(),
            attaching: RwLock::default(),
            read_counters: Mutex::default(),
            store,
        };
        for (topic, blob) in attachments.store.configs(ConfigKind::Ingest)? {
            let (chain, on_failure) =
                saved::decode_ingest(&blob).map_err(|e| StoreError::Corrupt {
                    table: "configs".to_owned(),
                    detail: format!("ingest chain of topic {topic:?}: {e}"),
                })?;
            attachments.install(&topic, chain, on_failure);
        }
        Ok(attachments)
    }

    fn install(&self, topic: &str, refs: Vec<PluginRef>, policy: FailurePolicy) {
        let chain = IngestChain::new(self.registry.clone(), self.state(topic), refs, policy);
        self.insert(topic, chain);
    }

    fn state(&self, topic: &str) -> ChainState {
        ChainState::ingest(self.store.clone(), topic)
    }

    fn insert(&self, topic: &str, chain: IngestChain) {
        self.ingest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), Arc::new(chain));
    }

    /// Sets a topic's ingest chain (or, empty, clears it): checks every
    /// plugin initialises, stores it, and applies it from the next produced
    /// batch. Stored plugin state carries over to a stage with the same
    /// position and plugin; the rest is deleted.
    pub async fn set_ingest(
        &self,
        topic: &str,
        refs: Vec<PluginRef>,
        policy: FailurePolicy,
    ) -> Result<(), AttachError> {
        let blob = (!refs.is_empty()).then(|| saved::encode_ingest(&refs, policy));
        let state = self.state(topic);
        let pruned = (state.clone(), refs.clone());
        let chain = if refs.is_empty() {
            None
        } else {
            let chain = IngestChain::new(self.registry.clone(), state, refs, policy);
            chain.run.lock().await.0.build().await?;
            Some(chain)
        };
        // Only once the new chain initialises: a refused chain leaves the
        // running one and its state as they were.
        tokio::task::spawn_blocking(move || pruned.0.prune(&pruned.1)).await??;
        let (store, key) = (self.store.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            store.put_config(ConfigKind::Ingest, &key, blob.as_deref())
        })
        .await??;
        match chain {
            Some(chain) => self.insert(topic, chain),
            None => self.forget(topic),
        }
        Ok(())
    }

    /// Forgets a deleted topic's chain (the store deletes its config) and
    /// deletes its ingest and read-path plugin state, so a topic made anew
    /// under the name starts without it.
    pub async fn topic_deleted(&self, topic: &str) -> Result<(), AttachError> {
        self.forget(topic);
        let (store, topic) = (self.store.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            crate::plugin_state::delete_topic_state(&*store, &topic)
        })
        .await??;
        Ok(())
    }

    fn forget(&self, topic: &str) {
        self.ingest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// Marks a topic whose chain (from a cluster's control log) is being
    /// attached here (`true`), or is attached (`false`).
    pub fn set_attaching(&self, topic: &str, attaching: bool) {
        let mut set = self.attaching.write().unwrap_or_else(|p| p.into_inner());
        if attaching {
            set.insert(topic.to_owned());
        } else {
            set.remove(topic);
        }
    }

    /// Refuses (retriably) a produce to a topic whose chain is being
    /// attached.
    pub fn ingest_ready(&self, topic: &str) -> Result<(), IngestError> {
        let set = self.attaching.read().unwrap_or_else(|p| p.into_inner());
        match set.contains(topic) {
            true => Err(IngestError::Attaching(topic.to_owned())),
            false => Ok(()),
        }
    }

    /// A topic's ingest chain, if it has one.
    pub fn ingest_chain(&self, topic: &str) -> Option<Arc<IngestChain>> {
        self.ingest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
    }

    /// The counters all read-path chains of a topic add to.
    pub fn read_counters(&self, topic: &str) -> Arc<Counters> {
        self.read_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .clone()
    }

    /// The counters of every ingest chain and topic read path, by topic.
    pub fn counters(&self) -> Vec<(String, AttachPoint, AttachCounters)> {
        let mut out: Vec<_> = self
            .ingest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(topic, chain)| {
                (
                    topic.clone(),
                    AttachPoint::Ingest,
                    chain.counters.snapshot(),
                )
            })
            .collect();
        out.extend(
            self.read_counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(topic, c)| (topic.clone(), AttachPoint::ReadPath, c.snapshot())),
        );
        out
    }

    /// The ingest chains that use a plugin, as `topic:NAME`.
    pub fn users(&self, plugin: &str) -> Vec<String> {
        self.ingest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, chain)| chain.refs.iter().any(|r| r.name == plugin))
            .map(|(topic, _)| format!("topic:{topic}"))
            .collect()
    }
}
