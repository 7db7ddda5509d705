//! Pipelines: topic A → plugin chain → topic B, running continuously in the
//! broker, exactly-once.
//!
//! Each step reads a run of batches from one source partition, runs the
//! chain, and commits the output records, the plugin state changes and the
//! next source offset in ONE redb transaction (through the single writer).
//! After a crash the stored position, state and outputs always agree, so
//! the pipeline resumes with no duplicate and no gap. A step that fails to
//! commit is thrown away whole: the chain is rebuilt from the stored state
//! and the step runs again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgebus_core::controller::{MAX_PIPELINE_STATE_BYTES, PipelineMeta};
use edgebus_core::producer::{DEDUP_WINDOW, SequenceSpan};
use edgebus_core::sourced;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{self, BatchBuilder, BatchHeader, ProducerStamp, Record, StoredRecord};
use edgebus_proto::frame::{FailurePolicy, PipelineDescription, PluginRef};
use edgebus_proto::partitioner::partition_for_key;
use edgebus_store::{ConfigKind, LogStore, StoreError};
use edgebus_wasm::state::list_overlaid;
use edgebus_wasm::{Space, StateStore, StateUsage};
use tokio::task::JoinHandle;

use crate::chain::{self, AttachPoint, ChainRunError, ChainRunner, Counters, Halt, OutputLimits};
use crate::dlq::DeadLetters;
use crate::error::Coded;
use crate::notify::Notifier;
use crate::plugin_state::{self, StageKeys};
use crate::reader::Reader;
use crate::registry::Registry;
use crate::saved;
use crate::topics::{Topics, UnknownTopic};
use crate::writer::{Output, PipelineStep, Writer};

/// Bytes of source batches one step reads at most.
const STEP_MAX_BYTES: u32 = 1 << 20;
/// How long an idle pipeline waits before looking again, even unwoken.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often a cluster pipeline's runner looks whether its copy of the
/// destination leads yet.
const LEAD_POLL: Duration = Duration::from_millis(50);

/// Why a pipeline request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelinesError {
    /// A pipeline with that name exists or is being created.
    #[error("pipeline {0:?} exists")]
    Exists(String),
    /// The name breaks the naming rule.
    #[error("invalid pipeline name: {0}")]
    InvalidName(String),
    /// The source or destination topic does not exist.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// The chain is empty.
    #[error("a pipeline needs a plugin")]
    NoPlugin,
    /// A plugin of the chain does not initialise.
    #[error(transparent)]
    Chain(#[from] ChainRunError),
    /// No pipeline with that name.
    #[error("unknown pipeline {0:?}")]
    Unknown(String),
    /// The pipeline's output would feed its own input, directly or through
    /// other pipelines, so records would go round for ever.
    #[error("pipeline {name:?} would feed its own input: {}", path.join(", "))]
    Cycle {
        /// The pipeline refused.
        name: String,
        /// The loop, one `pipeline: from → to` per step, starting with
        /// the refused pipeline.
        path: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store call's task failed.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl Coded for PipelinesError {
    fn code(&self) -> ErrorCode {
        match self {
            PipelinesError::Exists(_) => ErrorCode::PipelineExists,
            PipelinesError::InvalidName(_) | PipelinesError::NoPlugin => ErrorCode::InvalidRequest,
            PipelinesError::UnknownTopic(e) => e.code(),
            PipelinesError::Chain(e) => e.code(),
            PipelinesError::Unknown(_) => ErrorCode::UnknownPipeline,
            PipelinesError::Cycle { .. } => ErrorCode::PipelineCycle,
            PipelinesError::Store(e) => e.code(),
            PipelinesError::Task(_) => ErrorCode::StorageError,
        }
    }
}

/// A pipeline's definition, as stored.
#[derive(Debug, Clone)]
struct Definition {
    name: String,
    from: String,
    to: String,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
    /// A cluster pipeline's serial, naming the producer ids its outputs
    /// are stamped with; 0 on a single node, whose outputs commit with
    /// their source position in one transaction and need no stamp.
    serial: u64,
    /// A cluster pipeline's destination leader epoch it runs under: its
    /// steps commit only while this node leads at that epoch.
    leader_epoch: Option<i32>,
    /// A cluster pipeline's checkpointed positions when it started: inputs
    /// below them are known processed, their outputs replicated, so a run
    /// starting further back replays them for state only.
    replay_floor: BTreeMap<u32, u64>,
}

impl Definition {
    fn encode(&self) -> Vec<u8> {
        saved::encode_pipeline(&saved::PipelineDefinition {
            from: self.from.clone(),
            to: self.to.clone(),
            chain: self.chain.clone(),
            on_failure: self.on_failure,
        })
    }

    fn decode(name: String, blob: &[u8]) -> Result<Definition, saved::SavedError> {
        let d = saved::decode_pipeline(blob)?;
        Ok(Definition {
            name,
            from: d.from,
            to: d.to,
            chain: d.chain,
            on_failure: d.on_failure,
            serial: 0,
            leader_epoch: None,
            replay_floor: BTreeMap::new(),
        })
    }
}

/// A pipeline's committed progress on this node, as a cluster runner
/// checkpoints it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Source partition, next source offset.
    pub positions: Vec<(u32, u64)>,
    /// Its plugin state, encoded for the control log; `None` above
    /// [`MAX_PIPELINE_STATE_BYTES`].
    pub state: Option<Vec<u8>>,
    /// The destination's log end: every output of the steps up to
    /// `positions` is below it.
    pub destination_end: u64,
    /// The destination's leader epoch this node led at before reading
    /// the rest: no step committed under another.
    pub leader_epoch: i32,
}

/// Entries of plugin state listed from the store at a time.
const STATE_PAGE: usize = 256;

/// A pipeline's stored plugin state as the control log keeps it: each
/// entry as its key's length (u32, big-endian), the key, its value's
/// length and the value, in key order. `None` above
/// [`MAX_PIPELINE_STATE_BYTES`].
fn encode_state(store: &dyn LogStore, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.plugin_state_list(name, b"", after.as_deref(), STATE_PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(Some(out));
        };
        after = Some(last.clone());
        for (key, value) in &page {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        if out.len() > MAX_PIPELINE_STATE_BYTES {
            return Ok(None);
        }
    }
}

/// The entries [`encode_state`] wrote, as state changes to store.
fn decode_state(mut bytes: &[u8]) -> Result<plugin_state::Changes, String> {
    fn part(bytes: &mut &[u8]) -> Result<Vec<u8>, String> {
        let cut = || "state checkpoint cut short".to_owned();
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(cut)?;
        let len = u32::from_be_bytes(*len) as usize;
        let part = rest.get(..len).ok_or_else(cut)?.to_vec();
        *bytes = &rest[len..];
        Ok(part)
    }
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let key = part(&mut bytes)?;
        entries.push((key, Some(part(&mut bytes)?)));
    }
    Ok(entries)
}

/// What a running pipeline shares with `describe`.
#[derive(Default)]
struct Shared {
    counters: Arc<Counters>,
    status: Mutex<String>,
    positions: Mutex<BTreeMap<u32, u64>>,
}

struct Running {
    definition: Definition,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    /// For a cluster pipeline, the destination's leader epoch it was
    /// started under.
    leader_epoch: Option<i32>,
}

/// What pipeline tasks work with.
#[derive(Clone)]
struct Env {
    store: Arc<dyn LogStore>,
    writer: Writer,
    reader: Reader,
    topics: Topics,
    registry: Arc<Registry>,
    notifier: Notifier,
    dead_letters: DeadLetters,
}

/// The broker's pipelines. Cheap to clone.
#[derive(Clone)]
pub struct Pipelines {
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Held by `create` from its checks until the pipeline runs, and by
    /// whoever deletes a topic while checking no pipeline uses it: two
    /// concurrent creates could otherwise both pass the name and cycle
    /// checks (`a → b` and `b → a`), or a pipeline start on a topic being
    /// deleted.
    creation: Arc<tokio::sync::Mutex<()>>,
    env: Env,
}

/// Locks a mutex, recovering it if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipelines {
    /// No pipelines yet; see [`Pipelines::restore`].
    pub fn new(
        store: Arc<dyn LogStore>,
        writer: Writer,
        reader: Reader,
        topics: Topics,
        registry: Arc<Registry>,
        notifier: Notifier,
        dead_letters: DeadLetters,
    ) -> Pipelines {
        Pipelines {
            running: Arc::default(),
            creation: Arc::default(),
            env: Env {
                store,
                writer,
                reader,
                topics,
                registry,
                notifier,
                dead_letters,
            },
        }
    }

    /// Starts every stored pipeline.
    pub fn restore(&self) {
        let configs = match self.env.store.configs(ConfigKind::Pipeline) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pipelines; none started");
                return;
            }
        };
        for (name, blob) in configs {
            match Definition::decode(name.clone(), &blob) {
                Ok(def) => self.spawn(def),
                Err(error) => {
                    tracing::error!(%name, %error, "unreadable pipeline definition; not started");
                }
            }
        }
    }

    fn spawn(&self, definition: Definition) {
        self.spawn_under(definition, None);
    }

    fn spawn_under(&self, definition: Definition, leader_epoch: Option<i32>) {
        let shared = Arc::new(Shared::default());
        *lock(&shared.status) = "starting".into();
        let task = tokio::spawn(run(self.env.clone(), definition.clone(), shared.clone()));
        lock(&self.running).insert(
            definition.name.clone(),
            Running {
                definition,
                shared,
                task,
                leader_epoch,
            },
        );
    }

    /// Checks, stores and starts a pipeline.
    pub async fn create(
        &self,
        name: &str,
        from: &str,
        to: &str,
        chain: Vec<PluginRef>,
        on_failure: FailurePolicy,
    ) -> Result<(), PipelinesError> {
        let _creation = self.creation.lock().await;
        if lock(&self.running).contains_key(name) {
            return Err(PipelinesError::Exists(name.to_owned()));
        }
        edgebus_store::topic::check_name(name).map_err(PipelinesError::InvalidName)?;
        for topic in [from, to] {
            self.env.topics.spec(topic)?;
        }
        if chain.is_empty() {
            return Err(PipelinesError::NoPlugin);
        }
        if let Some(path) = self.cycle(name, from, to) {
            return Err(PipelinesError::Cycle {
                name: name.to_owned(),
                path,
            });
        }
        let definition = Definition {
            name: name.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            chain,
            on_failure,
            serial: 0,
            leader_epoch: None,
            replay_floor: BTreeMap::new(),
        };
        // Check the chain initialises before storing anything.
        ChainRunner::new(
            self.env.registry.clone(),
            definition.chain.clone(),
            on_failure,
            AttachPoint::Pipeline,
            Arc::default(),
            chain::in_memory_state(),
        )
        .build()
        .await?;
        let (store, blob, key) = (self.env.store.clone(), definition.encode(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            store.put_config(ConfigKind::Pipeline, &key, Some(&blob))
        })
        .await??;
        self.spawn(definition);
        Ok(())
    }

    /// Starts here a pipeline a cluster's control log defines (`meta`), on
    /// the node that runs it: it resumes from the control log's state
    /// checkpoint (plugin state and the positions it goes with), or
    /// without one from the source's start (from the checkpointed
    /// positions for a pipeline whose outputs are not stamped), not from
    /// what this node may hold of an earlier run. Inputs whose outputs
    /// this node's copy of the destination already holds (stamped, see
    /// [`edgebus_core::sourced`]) or that the control log's positions pass
    /// are run again for their state only. Its
    /// definition is not stored here. `leader_epoch` is the destination's,
    /// which this node leads at. Nothing happens if it already runs here.
    pub async fn start_replicated(
        &self,
        name: &str,
        meta: &PipelineMeta,
        leader_epoch: i32,
    ) -> Result<(), PipelinesError> {
        if lock(&self.running).contains_key(name) {
            return Ok(());
        }
        let corrupt = |e: String| StoreError::Corrupt {
            table: "control log".to_owned(),
            detail: format!("pipeline {name:?}: {e}"),
        };
        let mut definition = Definition::decode(name.to_owned(), &meta.definition)
            .map_err(|e| corrupt(e.to_string()))?;
        definition.serial = meta.serial;
        definition.leader_epoch = Some(leader_epoch);
        if meta.serial != 0 {
            definition.replay_floor = meta.positions.clone();
        }
        let (positions, mut state) = match &meta.state {
            Some(checkpoint) => (
                checkpoint.positions.clone(),
                decode_state(&checkpoint.state).map_err(corrupt)?,
            ),
            // Without a state checkpoint the state is rebuilt from the
            // source's start, the inputs whose outputs are held replayed.
            None if meta.serial != 0 => (BTreeMap::new(), Vec::new()),
            // Unstamped outputs: nothing tells what was written.
            None => (meta.positions.clone(), Vec::new()),
        };
        let pipeline = name.to_owned();
        self.env
            .writer
            .run(move |store| store.delete_pipeline_data(&pipeline))
            .await?;
        for (partition, offset) in &positions {
            let step = PipelineStep {
                pipeline: name.to_owned(),
                outputs: Vec::new(),
                state: std::mem::take(&mut state),
                source_partition: *partition,
                source_next_offset: *offset,
                fence: None,
            };
            self.env
                .writer
                .commit_pipeline(step)
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        self.spawn_under(definition, Some(leader_epoch));
        Ok(())
    }

    /// The destination's leader epoch a cluster pipeline running here was
    /// started under.
    pub fn started_under(&self, name: &str) -> Option<i32> {
        lock(&self.running).get(name)?.leader_epoch
    }

    /// What a cluster pipeline's runner checkpoints, read in one writer
    /// turn so that no step commits in between; `None` while this node
    /// does not lead the destination at the epoch the pipeline runs under.
    pub async fn progress(&self, name: &str, to: &str) -> Result<Option<Snapshot>, StoreError> {
        let leader_epoch = self.env.writer.leading_epoch(to, 0);
        let Some(leader_epoch) = leader_epoch.filter(|e| self.started_under(name) == Some(*e))
        else {
            return Ok(None);
        };
        let (name, to) = (name.to_owned(), to.to_owned());
        self.env
            .writer
            .run(move |store| {
                let positions = store.pipeline_positions(&name)?;
                let state = encode_state(store, &name)?;
                let destination_end = store
                    .offsets(&to, 0)
                    .map_err(|e| StoreError::Backend(e.to_string()))?
                    .log_end;
                Ok(Some(Snapshot {
                    positions,
                    state,
                    destination_end,
                    leader_epoch,
                }))
            })
            .await
    }

    /// Stops a pipeline here and keeps what it stored (it runs on another
    /// node now); `false` if it was not running here.
    pub async fn stop(&self, name: &str) -> bool {
        let Some(running) = lock(&self.running).remove(name) else {
            return false;
        };
        running.task.abort();
        let _ = running.task.await;
        true
    }

    /// The names of the pipelines running here.
    pub fn running(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Every pipeline, or only `only`.
    pub fn describe(&self, only: Option<&str>) -> Result<Vec<PipelineDescription>, PipelinesError> {
        let running = lock(&self.running);
        let mut out: Vec<PipelineDescription> = running
            .values()
            .filter(|r| only.is_none_or(|n| n == r.definition.name))
            .map(|r| {
                let d = &r.definition;
                let positions = lock(&r.shared.positions).clone();
                PipelineDescription {
                    name: d.name.clone(),
                    from: d.from.clone(),
                    to: d.to.clone(),
                    chain: d.chain.clone(),
                    on_failure: d.on_failure,
                    status: lock(&r.shared.status).clone(),
                    positions: positions.into_iter().collect(),
                    counters: r.shared.counters.snapshot(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        match only {
            Some(name) if out.is_empty() => Err(PipelinesError::Unknown(name.to_owned())),
            _ => Ok(out),
        }
    }

    /// Stops a pipeline and forgets its position and state. Its output
    /// records stay.
    pub async fn delete(&self, name: &str) -> Result<(), PipelinesError> {
        let Some(running) = lock(&self.running).remove(name) else {
            return Err(PipelinesError::Unknown(name.to_owned()));
        };
        running.task.abort();
        let _ = running.task.await;
        // Through the writer, so a step the task queued before it was
        // stopped commits first and cannot write its position back after.
        let name = name.to_owned();
        Ok(self
            .env
            .writer
            .run(move |store| {
                store.put_config(ConfigKind::Pipeline, &name, None)?;
                store.delete_pipeline_data(&name)
            })
            .await?)
    }

    /// Stops every pipeline task (broker shutdown); definitions stay stored.
    pub async fn stop_all(&self) {
        let running: Vec<Running> = lock(&self.running).drain().map(|(_, r)| r).collect();
        for r in running {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// The loop a pipeline `name` from `from` to `to` would close with the
    /// running pipelines, if any: a path of pipelines from `to` back to
    /// `from` (empty when `to` is `from`), found breadth-first so it is a
    /// shortest one. Each topic is visited once, so the search ends.
    fn cycle(&self, name: &str, from: &str, to: &str) -> Option<Vec<String>> {
        let step = |pipeline: &str, from: &str, to: &str| format!("{pipeline}: {from} → {to}");
        let running = lock(&self.running);
        let mut edges: HashMap<&str, Vec<&Definition>> = HashMap::new();
        for r in running.values() {
            edges
                .entry(&r.definition.from)
                .or_default()
                .push(&r.definition);
        }
        // How each topic reached was first reached: the pipeline into it.
        let mut reached_by: HashMap<&str, Option<&Definition>> = HashMap::from([(to, None)]);
        let mut queue = VecDeque::from([to]);
        while let Some(topic) = queue.pop_front() {
            if topic == from {
                let mut path = Vec::new();
                let mut at = topic;
                while let Some(Some(d)) = reached_by.get(at) {
                    path.push(step(&d.name, &d.from, &d.to));
                    at = &d.from;
                }
                path.push(step(name, from, to));
                path.reverse();
                return Some(path);
            }
            for d in edges.get(topic).into_iter().flatten() {
                if !reached_by.contains_key(d.to.as_str()) {
                    reached_by.insert(&d.to, Some(d));
                    queue.push_back(&d.to);
                }
            }
        }
        None
    }

    /// Stops pipelines from being created until the guard is dropped, so a
    /// caller can check [`Pipelines::topic_users`] and act on the answer
    /// before a new pipeline could change it.
    pub async fn pause_creation(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creation.lock().await
    }

    /// The pipelines that read or write a topic, as `pipeline:NAME`.
    pub fn topic_users(&self, topic: &str) -> Vec<String> {
        let mut users: Vec<String> = lock(&self.running)
            .values()
            .filter(|r| r.definition.from == topic || r.definition.to == topic)
            .map(|r| format!("pipeline:{}", r.definition.name))
            .collect();
        users.sort();
        users
    }

    /// The pipelines that use a plugin, as `pipeline:NAME`.
    pub fn users(&self, plugin: &str) -> Vec<String> {
        lock(&self.running)
            .values()
            .filter(|r| r.definition.chain.iter().any(|p| p.name == plugin))
            .map(|r| format!("pipeline:{}", r.definition.name))
            .collect()
    }
}

type Overlay = Arc<Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>;

/// Plugin state of a pipeline: reads see uncommitted writes of the current
/// step first, then the store; writes stay in the overlay until the step
/// commits them with its outputs. Each plugin of the chain gets its own key
/// prefixes (see [`StageKeys`]), so two plugins never share state.
struct PipelineState {
    pipeline: String,
    keys: StageKeys,
    store: Arc<dyn LogStore>,
    overlay: Overlay,
}

impl PipelineState {
    fn read_failed(&self, e: &StoreError) {
        tracing::warn!(pipeline = %self.pipeline, error = %e, "state read failed");
    }
}

impl StateStore for PipelineState {
    fn get(&mut self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.key(space, key);
        if let Some(v) = lock(&self.overlay).get(&key) {
            return v.clone();
        }
        self.store
            .pipeline_state(&self.pipeline, &key)
            .unwrap_or_else(|e| {
                self.read_failed(&e);
                None
            })
    }

    fn set(&mut self, space: Space, key: &[u8], value: &[u8]) {
        let key = self.keys.key(space, key);
        lock(&self.overlay).insert(key, Some(value.to_vec()));
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        let key = self.keys.key(space, key);
        lock(&self.overlay).insert(key, None);
    }

    fn list(
        &mut self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let prefix = self.keys.key(space, prefix);
        let after = after.map(|after| self.keys.key(space, after));
        let overlay = lock(&self.overlay);
        let listed = list_overlaid(
            &overlay,
            &prefix,
            after.as_deref(),
            limit,
            |after, limit| {
                self.store
                    .plugin_state_list(&self.pipeline, &prefix, after, limit)
                    .unwrap_or_else(|e| {
                        self.read_failed(&e);
                        Vec::new()
                    })
            },
        );
        listed
            .into_iter()
            .filter_map(|(key, value)| Some((self.keys.strip(space, &key)?.to_vec(), value)))
            .collect()
    }

    /// What earlier steps left in the store, so the state budget counts
    /// stored state, not only what the chain wrote since it was built.
    fn usage(&mut self) -> StateUsage {
        plugin_state::stored_usage(&*self.store, &self.pipeline, &self.keys).unwrap_or_else(|e| {
            self.read_failed(&e);
            StateUsage::default()
        })
    }
}

/// Why a step did not commit: the pipeline backs off, rebuilds its chain
/// from the stored state and retries.
struct Halted(String);

async fn run(env: Env, def: Definition, shared: Arc<Shared>) {
    let overlay: Overlay = Arc::default();
    let state: chain::StateFactory = {
        let (store, name, overlay) = (env.store.clone(), def.name.clone(), overlay.clone());
        Arc::new(move |i| {
            Box::new(PipelineState {
                pipeline: name.clone(),
                keys: StageKeys::new(&i.to_string()),
                store: store.clone(),
                overlay: overlay.clone(),
            })
        })
    };
    let mut runner = ChainRunner::new(
        env.registry.clone(),
        def.chain.clone(),
        def.on_failure,
        AttachPoint::Pipeline,
        shared.counters.clone(),
        state,
    );
    let mut halt = Halt::default();
    loop {
        // Whatever failed, start over from the stored state: a fresh chain,
        // no uncommitted state writes, the stored positions.
        runner.reset();
        lock(&overlay).clear();
        if let Err(e) = runner.build().await {
            backoff(&shared, &mut halt, format!("cannot build chain: {e}")).await;
            continue;
        }
        let (store, name) = (env.store.clone(), def.name.clone());
        let stored = tokio::task::spawn_blocking(move || store.pipeline_positions(&name)).await;
        let positions: BTreeMap<u32, u64> = match stored {
            Ok(Ok(p)) => p.into_iter().collect(),
            Ok(Err(e)) => {
                backoff(&shared, &mut halt, format!("cannot read positions: {e}")).await;
                continue;
            }
            Err(e) => {
                backoff(&shared, &mut halt, format!("cannot read positions: {e}")).await;
                continue;
            }
        };
        let mut progress = Progress {
            positions,
            ..Progress::default()
        };
        if def.serial != 0 {
            // Resume from what the engine that checks the outputs holds,
            // once this node's copy leads (the control log may say so
            // before the copy has stopped following).
            let (log_end, points) = loop {
                if let Some(found) = resume_points(&env, &def) {
                    break found;
                }
                *lock(&shared.status) = format!("waiting for this node to lead {:?}", def.to);
                tokio::time::sleep(LEAD_POLL).await;
            };
            let mut until = def.replay_floor.clone();
            for (p, resume, epoch) in points {
                let at = until.entry(p).or_default();
                *at = (*at).max(resume);
                progress.emitted.insert(p, resume);
                progress.epochs.insert(p, epoch);
            }
            for (p, until) in until {
                if until > progress.positions.get(&p).copied().unwrap_or(0) {
                    progress.replay_until.insert(p, until);
                }
            }
            // How many stamped outputs an earlier run left beyond the high
            // watermark is not known: wait for all of them.
            progress.settle = log_end;
        }
        lock(&shared.positions).clone_from(&progress.positions);
        let Halted(why) = steps(
            &env,
            &def,
            &shared,
            &mut runner,
            &overlay,
            &mut progress,
            &mut halt,
        )
        .await;
        backoff(&shared, &mut halt, why).await;
    }
}

/// How far a running pipeline got.
#[derive(Default)]
struct Progress {
    /// Source partition → the next source offset to read.
    positions: BTreeMap<u32, u64>,
    /// For a cluster pipeline, source partition → where the span of its
    /// last stamped output on this copy of the destination ended.
    emitted: BTreeMap<u32, u64>,
    /// The producer epoch of that output's span.
    epochs: BTreeMap<u32, i16>,
    /// Source partition → where the outputs this copy of the destination
    /// holds end, when that is past the position: the inputs up to there
    /// run again for their plugin state only.
    replay_until: BTreeMap<u32, u64>,
    /// Destination offsets of stamped outputs written here and not yet
    /// below the high watermark, oldest first.
    unreplicated: VecDeque<u64>,
    /// The destination's log end when this run started: the high
    /// watermark must reach it before anything more is written.
    settle: u64,
}

/// Source partition, the offset to resume it at and the producer epoch
/// of the last output.
type ResumePoint = (u32, u64, i16);

/// The destination's log end and, per source partition, the offset after
/// the last input whose outputs this node's copy of the destination holds
/// and the producer epoch it was stamped with, from the dedup state its
/// engine checks the next stamped output against; `None` while the copy
/// does not lead at the epoch the pipeline runs under.
fn resume_points(env: &Env, def: &Definition) -> Option<(u64, Vec<ResumePoint>)> {
    let partitions = env.topics.spec(&def.from).map_or(0, |s| s.partitions);
    let ids = (0..partitions).map(|p| sourced::producer_id(def.serial, p));
    let (log_end, states) =
        env.writer
            .leader_producer_states(&def.to, 0, def.leader_epoch?, ids)?;
    let points = states
        .iter()
        .filter_map(|(id, state)| {
            Some((
                sourced::source_partition(def.serial, *id)?,
                sourced::resume_point(state)?,
                state.epoch,
            ))
        })
        .collect();
    Some((log_end, points))
}

/// Runs steps over every source partition until one fails.
async fn steps(
    env: &Env,
    def: &Definition,
    shared: &Shared,
    runner: &mut ChainRunner,
    overlay: &Overlay,
    progress: &mut Progress,
    halt: &mut Halt,
) -> Halted {
    // Whether the status shows a replay, once it shows this run at all.
    let mut shown: Option<bool> = None;
    loop {
        let replaying = !progress.replay_until.is_empty();
        if shown != Some(replaying) {
            *lock(&shared.status) = if replaying {
                format!(
                    "replaying for plugin state up to {:?} (their outputs are stored)",
                    progress.replay_until
                )
            } else {
                "running".into()
            };
            shown = Some(replaying);
        }
        let Ok(spec) = env.topics.spec(&def.from) else {
            *lock(&shared.status) = format!("source topic {:?} is missing", def.from);
            shown = None;
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        let mut progressed = false;
        for p in 0..spec.partitions {
            let at = progress.positions.get(&p).copied().unwrap_or(0);
            match step(env, def, runner, overlay, progress, p, at).await {
                Ok(Some(next)) => {
                    progress.positions.insert(p, next);
                    lock(&shared.positions).insert(p, next);
                    progressed = true;
                    halt.clear();
                }
                Ok(None) => {}
                Err(halted) => return halted,
            }
        }
        if !progressed {
            wait_for_source(&env.notifier, &def.from, spec.partitions).await;
        }
    }
}

/// Pauses after a failure (1 s doubling to 30 s); the caller then rebuilds
/// the chain from the stored state and retries.
async fn backoff(shared: &Shared, halt: &mut Halt, why: String) {
    let pause = halt.trip(std::time::Instant::now());
    tracing::warn!(%why, ?pause, "pipeline halted");
    *lock(&shared.status) = format!("halted for {pause:?}: {why}");
    tokio::time::sleep(pause).await;
}

async fn wait_for_source(notifier: &Notifier, topic: &str, partitions: u32) {
    let mut watches: Vec<_> = (0..partitions).map(|p| notifier.watch(topic, p)).collect();
    let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
    let _ = tokio::time::timeout(IDLE_POLL, changed).await;
}

/// Runs one step on partition `p` from offset `at`. Returns the next
/// offset if something was committed.
async fn step(
    env: &Env,
    def: &Definition,
    runner: &mut ChainRunner,
    overlay: &Overlay,
    progress: &mut Progress,
    p: u32,
    at: u64,
) -> Result<Option<u64>, Halted> {
    let read = env
        .reader
        .read_at(&def.from, p, at, STEP_MAX_BYTES)
        .await
        .map_err(|e| Halted(format!("reading {}/{p}: {e}", def.from)))?;
    let Some(last) = read.batches.last() else {
        return Ok(None);
    };
    let replay_until = progress.replay_until.get(&p).copied();
    let read_end = BatchHeader::parse(last)
        .map(|h| h.next_offset())
        .map_err(|e| Halted(e.to_string()))?;
    // A replay stops where the outputs held end: an input boundary.
    let next = replay_until.map_or(read_end, |until| read_end.min(until));
    let mut inputs: Vec<StoredRecord> = Vec::new();
    for b in &read.batches {
        let records = batch::records(b).map_err(|e| Halted(e.to_string()))?;
        inputs.extend(
            records
                .into_iter()
                .filter(|r| (at..next).contains(&r.offset)),
        );
    }
    let to = env
        .topics
        .spec(&def.to)
        .map_err(|_| Halted(format!("destination topic {:?} is missing", def.to)))?;
    // Outputs are split into batches of the default size below, so only
    // each record is bounded: by the destination's limit, and so that the
    // batch it may sit in alone can still be fetched.
    let limits = OutputLimits {
        max_record_bytes: (to.max_message_bytes as usize).min(chain::MAX_OUTPUT_BATCH_BYTES),
        max_batch_bytes: usize::MAX,
        overhead_per_input: 0,
    };
    let run = match runner.run(&def.from, p, &inputs, limits).await {
        Ok(run) => run,
        Err(ChainRunError::Failed {
            plugin,
            error,
            offset,
        }) => {
            return Err(Halted(format!(
                "plugin {plugin:?} failed at {}/{p}@{}: {error}",
                def.from,
                offset.unwrap_or(at)
            )));
        }
        Err(e) => return Err(Halted(e.to_string())),
    };
    let encoding = |e: edgebus_proto::DecodeError| Halted(e.to_string());
    let mut outputs = Vec::new();
    let mut emitted = progress.emitted.get(&p).copied();
    let mut last_epoch = None;
    if replay_until.is_some() {
        // Stored already, with the dead letters of these inputs.
    } else if def.serial != 0 {
        if to.partitions != 1 {
            return Err(Halted(format!(
                "destination {:?} has {} partitions; a cluster pipeline writes to one",
                def.to, to.partitions
            )));
        }
        let producer_id = sourced::producer_id(def.serial, p);
        let tiled = Tiling {
            producer_id,
            inputs: &inputs,
            next,
        };
        outputs = tiled
            .outputs(&def.to, run.outputs, &mut emitted)
            .map_err(|e| Halted(format!("stamping outputs of {}/{p}: {e}", def.from)))?;
        let stamped: Vec<SequenceSpan> = outputs.iter().filter_map(|o| o.sequence).collect();
        // Outputs in a newer producer epoch replace the producer's window
        // of recent batches with their own: the batches before them must
        // be on every in-sync replica first, with their dedup state.
        let before = progress.epochs.get(&p);
        let new_epoch = stamped
            .iter()
            .any(|s| before.is_some_and(|b| *b != s.producer.producer_epoch));
        if let Some(last) = stamped.last() {
            last_epoch = Some(last.producer.producer_epoch);
        }
        until_replicated(env, &def.to, progress, stamped.len(), new_epoch).await;
    } else {
        let to_partitions = to.partitions;
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for (_, record) in run.outputs {
            let target = match &record.key {
                Some(k) => partition_for_key(k, to_partitions),
                None => p % to_partitions,
            };
            by_partition.entry(target).or_default().push(record);
        }
        for (target, records) in &by_partition {
            outputs.extend(chain::outputs(&def.to, *target, records).map_err(encoding)?);
        }
    }
    if !run.dead_letters.is_empty() && replay_until.is_none() {
        if env.dead_letters.apart() {
            // On a cluster node the dead-letter topic may be led elsewhere:
            // stored before the step, at least once (see `crate::dlq`).
            env.dead_letters
                .store_apart(&def.from, &run.dead_letters)
                .await
                .map_err(|e| Halted(format!("dead letters: {e}")))?;
        } else {
            let dlq = env
                .dead_letters
                .ensure(&def.from)
                .await
                .map_err(|e| Halted(format!("dead-letter topic: {e}")))?;
            outputs.extend(chain::outputs(&dlq, 0, &run.dead_letters).map_err(encoding)?);
        }
    }
    let state: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        std::mem::take(&mut *lock(overlay)).into_iter().collect();
    let commit = PipelineStep {
        pipeline: def.name.clone(),
        outputs,
        state,
        source_partition: p,
        source_next_offset: next,
        fence: def.leader_epoch.map(|epoch| (def.to.clone(), epoch)),
    };
    let base_offsets = env
        .writer
        .commit_pipeline(commit)
        .await
        .map_err(|e| Halted(format!("commit failed: {e}")))?;
    if let Some(end) = emitted {
        progress.emitted.insert(p, end);
    }
    if let Some(epoch) = last_epoch {
        progress.epochs.insert(p, epoch);
    }
    if replay_until.is_some_and(|until| next >= until) {
        progress.replay_until.remove(&p);
    }
    if def.serial != 0 {
        progress.unreplicated.extend(base_offsets);
    }
    Ok(Some(next))
}

/// Batches of a stamped destination this many outputs beyond its high
/// watermark at most (unless one step writes more): a follower gets each
/// producer's dedup state with the last of its batches it fetches, from
/// the leader's window of the last [`DEDUP_WINDOW`] batches, so an in-sync
/// follower, which is never further behind than the high watermark, gets
/// the state of every stamped output it holds, and a runner taking over
/// there resumes after the right input.
///
/// One less than the window: a truncation cuts nothing at or below the
/// high watermark, so a copy cut back keeps the state of at least one of
/// the producer's batches (if it has older ones) and names where to resume.
const STAMPED_AHEAD: usize = DEDUP_WINDOW - 1;

/// Waits until `adding` more stamped outputs keep those of `to` beyond its
/// high watermark within [`STAMPED_AHEAD`] (a step adding more goes
/// alone), or with `all`, until none is beyond it.
async fn until_replicated(env: &Env, to: &str, progress: &mut Progress, adding: usize, all: bool) {
    let mut watch = env.notifier.watch(to, 0);
    loop {
        let high_watermark = env.reader.high_watermark(to, 0);
        let unreplicated = &mut progress.unreplicated;
        while unreplicated.front().is_some_and(|o| *o < high_watermark) {
            unreplicated.pop_front();
        }
        if high_watermark >= progress.settle
            && (unreplicated.is_empty() || (!all && unreplicated.len() + adding <= STAMPED_AHEAD))
        {
            return;
        }
        let _ = tokio::time::timeout(IDLE_POLL, watch.changed()).await;
    }
}

/// A step's outputs for a cluster pipeline's one-partition destination,
/// stamped so that their sequences are the source offsets they cover
/// (see [`edgebus_core::sourced`]).
struct Tiling<'a> {
    producer_id: i64,
    /// The step's inputs, which `outputs` index.
    inputs: &'a [StoredRecord],
    /// The source offset after the step.
    next: u64,
}

/// The bytes a stamped batch holds before the next input's outputs go to
/// another: each input's outputs stay in one batch where they fit.
const STAMPED_BATCH_BYTES: usize = 1 << 20;

impl Tiling<'_> {
    /// Batches cut between inputs, each covering from the end of the span
    /// before (`emitted`, which it advances) to one past its last input,
    /// the last to the step's end: a copy holding only the first batches
    /// of a step names the first input whose outputs it lacks. One input's
    /// outputs too large for one frame are split, and only their last
    /// batch is stamped.
    fn outputs(
        &self,
        to: &str,
        mut records: Vec<(usize, Record)>,
        emitted: &mut Option<u64>,
    ) -> Result<Vec<Output>, String> {
        records.sort_by_key(|(input, _)| *input);
        let mut out = Vec::new();
        let mut builder = BatchBuilder::new();
        // The first and last input whose outputs `builder` holds.
        let mut covers: Option<(usize, usize)> = None;
        for group in records.chunk_by(|a, b| a.0 == b.0) {
            let input = group[0].0;
            let sizes: Vec<usize> = group
                .iter()
                .map(|(_, r)| BatchBuilder::record_size(r, i64::MIN, u32::MAX))
                .collect();
            if let Some((first, last)) = covers
                && builder.size_bytes() + sizes.iter().sum::<usize>() > STAMPED_BATCH_BYTES
            {
                let end = self.inputs[last].offset + 1;
                out.push(self.stamped(to, &mut builder, first, end, emitted)?);
                covers = None;
            }
            // Here `builder` holds outputs of earlier inputs only if this
            // input's fit beside them.
            for ((_, record), size) in group.iter().zip(sizes) {
                if !builder.is_empty()
                    && builder.size_bytes() + size > chain::MAX_OUTPUT_BATCH_BYTES
                {
                    out.push(finish(to, std::mem::take(&mut builder), None)?);
                }
                builder.push(record);
            }
            covers = Some(covers.map_or((input, input), |(first, _)| (first, input)));
        }
        if let Some((first, _)) = covers {
            out.push(self.stamped(to, &mut builder, first, self.next, emitted)?);
        }
        Ok(out)
    }

    /// The batch in `builder`, holding outputs of inputs from `first` on,
    /// stamped to cover the source offsets up to `end`.
    fn stamped(
        &self,
        to: &str,
        builder: &mut BatchBuilder,
        first: usize,
        end: u64,
        emitted: &mut Option<u64>,
    ) -> Result<Output, String> {
        let start = sourced::span_start(*emitted, self.inputs[first].offset);
        let span = sourced::span(self.producer_id, start, end).map_err(|e| e.to_string())?;
        *emitted = Some(end);
        finish(to, std::mem::take(builder), Some(span))
    }
}

/// An output batch of what `builder` holds, stamped with `span`.
fn finish(to: &str, builder: BatchBuilder, span: Option<SequenceSpan>) -> Result<Output, String> {
    let batch = builder.finish(span.map_or(ProducerStamp::NONE, |s| s.producer));
    Ok(Output {
        topic: to.to_owned(),
        partition: 0,
        record_count: BatchHeader::parse(&batch)
            .map_err(|e| e.to_string())?
            .record_count,
        batch,
        sequence: span,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn inputs(offsets: impl IntoIterator<Item = u64>) -> Vec<StoredRecord> {
        offsets
            .into_iter()
            .map(|offset| StoredRecord {
                offset,
                timestamp_ms: 0,
                key: None,
                value: Bytes::new(),
                headers: Vec::new(),
            })
            .collect()
    }

    /// `per_input` outputs of `bytes` bytes for each input index given.
    fn outputs(of: &[usize], per_input: usize, bytes: usize) -> Vec<(usize, Record)> {
        of.iter()
            .flat_map(|i| (0..per_input).map(move |_| (*i, Record::new(vec![b'x'; bytes], 0))))
            .collect()
    }

    /// Each output's span as source offsets, `None` where unstamped.
    fn spans(outputs: &[Output]) -> Vec<Option<(u64, u64)>> {
        outputs
            .iter()
            .map(|o| {
                o.sequence.map(|s| {
                    let start = (u64::try_from(s.producer.producer_epoch).unwrap() << 30)
                        + u64::try_from(s.producer.base_sequence).unwrap();
                    (start, start + u64::from(s.record_count))
                })
            })
            .collect()
    }

    const PID: i64 = 1 << 62 | 1 << 10;

    #[test]
    fn stamped_outputs_tile_the_source_offsets_from_the_last_span_to_the_steps_end() {
        // Inputs at 100..110 after a retention gap; 0..5 and 9 have outputs.
        let step = inputs(100..110);
        let tiling = Tiling {
            producer_id: PID,
            inputs: &step,
            next: 110,
        };
        let mut emitted = Some(90);
        let small = outputs(&[0, 1, 2, 3, 4, 9], 2, 100);
        let out = tiling.outputs("t", small, &mut emitted).unwrap();
        assert_eq!(spans(&out), [Some((90, 110))]);
        assert_eq!(out[0].record_count, 12);
        assert_eq!(emitted, Some(110));
        // Nothing out: nothing stamped, nothing moves.
        assert!(
            tiling
                .outputs("t", Vec::new(), &mut emitted)
                .unwrap()
                .is_empty()
        );
        assert_eq!(emitted, Some(110));

        // Outputs too large for one batch are cut between inputs, each cut
        // one past the last input whose outputs the batch holds.
        let mut emitted = None;
        let large = outputs(&[2, 0, 5, 5, 7], 1, STAMPED_BATCH_BYTES / 2 + 1);
        let out = tiling.outputs("t", large, &mut emitted).unwrap();
        assert_eq!(
            spans(&out),
            [
                Some((100, 101)),
                Some((101, 103)),
                Some((103, 106)),
                Some((106, 110))
            ]
        );
        assert_eq!(
            out.iter().map(|o| o.record_count).collect::<Vec<_>>(),
            [1, 1, 2, 1]
        );
        assert_eq!(emitted, Some(110));
    }

    #[test]
    fn one_inputs_outputs_beyond_a_frame_are_split_and_only_their_last_batch_is_stamped() {
        let step = inputs([7, 8]);
        let tiling = Tiling {
            producer_id: PID,
            inputs: &step,
            next: 9,
        };
        let mut emitted = Some(7);
        let huge = outputs(&[0], 3, chain::MAX_OUTPUT_BATCH_BYTES / 3);
        let out = tiling.outputs("t", huge, &mut emitted).unwrap();
        assert_eq!(spans(&out), [None, Some((7, 9))]);
        assert_eq!(
            out.iter().map(|o| o.record_count).collect::<Vec<_>>(),
            [2, 1]
        );
    }
}
