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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgebus_client::producer::partition_for_key;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{self, BatchHeader, Record, StoredRecord};
use edgebus_proto::frame::{FailurePolicy, PipelineDescription, PluginRef, Request, Response};
use edgebus_store::{ConfigKind, LogStore};
use edgebus_wasm::{ChainOutput, PluginError, StateStore};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::plugins::{Counters, Halt, batches, dead_letter, lock, to_plugin};
use crate::writer::{Output, PipelineStep};

/// Bytes of source batches one step reads at most.
const STEP_MAX_BYTES: u32 = 1 << 20;
/// How long an idle pipeline waits before looking again, even unwoken.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// A pipeline's definition, as stored.
#[derive(Debug, Clone)]
struct Definition {
    name: String,
    from: String,
    to: String,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
}

impl Definition {
    fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Request::PipelineCreate {
            name: self.name.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            chain: self.chain.clone(),
            on_failure: self.on_failure,
        }
        .encode(0, &mut buf);
        buf[4..].to_vec()
    }

    fn decode(blob: Vec<u8>) -> Option<Definition> {
        match Request::decode(Bytes::from(blob)) {
            Ok((
                _,
                Request::PipelineCreate {
                    name,
                    from,
                    to,
                    chain,
                    on_failure,
                },
            )) => Some(Definition {
                name,
                from,
                to,
                chain,
                on_failure,
            }),
            _ => None,
        }
    }
}

/// What a running pipeline shares with `describe`.
#[derive(Default)]
struct Shared {
    counters: Counters,
    status: Mutex<String>,
    positions: Mutex<BTreeMap<u32, u64>>,
}

struct Running {
    definition: Definition,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// The broker's pipelines.
#[derive(Clone, Default)]
pub struct Pipelines {
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Names being created: reserved before `create` awaits anything, so
    /// two concurrent creates of one name cannot both start a task.
    creating: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Releases a name reservation however `create` returns.
struct Reservation<'a> {
    creating: &'a Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.creating).remove(&self.name);
    }
}

impl Pipelines {
    /// Starts every stored pipeline.
    pub fn restore(&self, broker: &Broker) {
        let configs = match broker.store().configs(ConfigKind::Pipeline) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pipelines; none started");
                return;
            }
        };
        for (name, blob) in configs {
            match Definition::decode(blob) {
                Some(def) => self.spawn(broker, def),
                None => tracing::error!(%name, "unreadable pipeline definition ignored"),
            }
        }
    }

    fn spawn(&self, broker: &Broker, definition: Definition) {
        let shared = Arc::new(Shared::default());
        *lock(&shared.status) = "starting".into();
        let task = tokio::spawn(run(broker.clone(), definition.clone(), shared.clone()));
        lock(&self.running).insert(
            definition.name.clone(),
            Running {
                definition,
                shared,
                task,
            },
        );
    }

    /// `PipelineCreate`.
    pub async fn create(
        &self,
        broker: &Broker,
        name: &str,
        from: &str,
        to: &str,
        chain: Vec<PluginRef>,
        on_failure: FailurePolicy,
    ) -> Response {
        let _reservation = {
            let running = lock(&self.running);
            let mut creating = lock(&self.creating);
            if running.contains_key(name) || !creating.insert(name.to_owned()) {
                return Response::error(
                    ErrorCode::PipelineExists,
                    format!("pipeline {name:?} exists"),
                );
            }
            Reservation {
                creating: &self.creating,
                name: name.to_owned(),
            }
        };
        if let Err(reason) = edgebus_store::topic::check_name(name) {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("invalid pipeline name: {reason}"),
            );
        }
        for topic in [from, to] {
            if broker.topic_spec(topic).is_none() {
                return Response::error(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {topic:?}"),
                );
            }
        }
        if chain.is_empty() {
            return Response::error(ErrorCode::InvalidRequest, "a pipeline needs a plugin");
        }
        let definition = Definition {
            name: name.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            chain,
            on_failure,
        };
        // Check the chain initialises before storing anything.
        let plugins = broker.plugins().clone();
        let refs = definition.chain.clone();
        let checked = tokio::task::spawn_blocking(move || {
            plugins
                .build_chain(&refs, |_| Box::new(edgebus_wasm::MemState::default()))
                .map(|_| ())
        })
        .await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e,
            Err(e) => return Response::error(ErrorCode::PluginInvalid, e.to_string()),
        }
        let (store, blob, key) = (broker.store().clone(), definition.encode(), name.to_owned());
        let stored = tokio::task::spawn_blocking(move || {
            store.put_config(ConfigKind::Pipeline, &key, Some(&blob))
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Response::error(ErrorCode::StorageError, e.to_string()),
            Err(e) => return Response::error(ErrorCode::StorageError, e.to_string()),
        }
        self.spawn(broker, definition);
        Response::Done
    }

    /// `PipelineList` / `PipelineDescribe`.
    pub fn describe(&self, only: Option<&str>) -> Response {
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
            Some(name) if out.is_empty() => Response::error(
                ErrorCode::UnknownPipeline,
                format!("unknown pipeline {name:?}"),
            ),
            _ => Response::Pipelines(out),
        }
    }

    /// `PipelineDelete`: stops it and forgets its position and state. Its
    /// output records stay.
    pub async fn delete(&self, broker: &Broker, name: &str) -> Response {
        let Some(running) = lock(&self.running).remove(name) else {
            return Response::error(
                ErrorCode::UnknownPipeline,
                format!("unknown pipeline {name:?}"),
            );
        };
        running.task.abort();
        let _ = running.task.await;
        // Through the writer, so a step the task queued before it was
        // stopped commits first and cannot write its position back after.
        let name = name.to_owned();
        let deleted = broker.writer().run(move |store| {
            store.put_config(ConfigKind::Pipeline, &name, None)?;
            store.delete_pipeline_data(&name)
        });
        match deleted.await {
            Ok(()) => Response::Done,
            Err(e) => Response::error(ErrorCode::StorageError, e.to_string()),
        }
    }

    /// Stops every pipeline task (broker shutdown); definitions stay stored.
    pub async fn stop_all(&self) {
        let running: Vec<Running> = lock(&self.running).drain().map(|(_, r)| r).collect();
        for r in running {
            r.task.abort();
            let _ = r.task.await;
        }
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
/// prefix, so two plugins never share state.
struct PipelineState {
    pipeline: String,
    prefix: Vec<u8>,
    store: Arc<dyn LogStore>,
    overlay: Overlay,
}

impl PipelineState {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }
}

impl StateStore for PipelineState {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(key);
        if let Some(v) = lock(&self.overlay).get(&key) {
            return v.clone();
        }
        match self.store.pipeline_state(&self.pipeline, &key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "state read failed");
                None
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        let key = self.key(key);
        lock(&self.overlay).insert(key, Some(value.to_vec()));
    }

    fn delete(&mut self, key: &[u8]) {
        let key = self.key(key);
        lock(&self.overlay).insert(key, None);
    }
}

/// Why a step did not commit.
enum StepError {
    /// Stop and back off, then rebuild the chain and retry.
    Halt(String),
}

async fn run(broker: Broker, def: Definition, shared: Arc<Shared>) {
    let mut halt = Halt::default();
    loop {
        let overlay: Overlay = Arc::default();
        let (plugins, refs, store, name, ov) = (
            broker.plugins().clone(),
            def.chain.clone(),
            broker.store().clone(),
            def.name.clone(),
            overlay.clone(),
        );
        let built = tokio::task::spawn_blocking(move || {
            plugins.build_chain(&refs, |i| {
                Box::new(PipelineState {
                    pipeline: name.clone(),
                    prefix: format!("{i}/").into_bytes(),
                    store: store.clone(),
                    overlay: ov.clone(),
                })
            })
        })
        .await;
        let mut live = match built {
            Ok(Ok(live)) => Some(live),
            Ok(Err(e)) => {
                backoff(&shared, &mut halt, format!("cannot build chain: {e:?}")).await;
                continue;
            }
            Err(e) => {
                backoff(&shared, &mut halt, format!("cannot build chain: {e}")).await;
                continue;
            }
        };
        let (store, name) = (broker.store().clone(), def.name.clone());
        let stored = tokio::task::spawn_blocking(move || store.pipeline_positions(&name)).await;
        let mut positions: BTreeMap<u32, u64> = match stored {
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
        lock(&shared.positions).clone_from(&positions);
        *lock(&shared.status) = "running".into();
        loop {
            let Some(spec) = broker.topic_spec(&def.from) else {
                *lock(&shared.status) = format!("source topic {:?} is missing", def.from);
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            let mut progressed = false;
            let mut failed = None;
            for p in 0..spec.partitions {
                let at = positions.get(&p).copied().unwrap_or(0);
                match step(&broker, &def, &shared, &mut live, &overlay, p, at).await {
                    Ok(Some(next)) => {
                        positions.insert(p, next);
                        lock(&shared.positions).insert(p, next);
                        progressed = true;
                        halt.clear();
                    }
                    Ok(None) => {}
                    Err(StepError::Halt(why)) => {
                        failed = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = failed {
                backoff(&shared, &mut halt, why).await;
                break;
            }
            if !progressed {
                wait_for_source(&broker, &def.from, spec.partitions).await;
            }
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

async fn wait_for_source(broker: &Broker, topic: &str, partitions: u32) {
    let mut watches: Vec<_> = (0..partitions)
        .map(|p| broker.notifier().watch(topic, p))
        .collect();
    let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
    let _ = tokio::time::timeout(IDLE_POLL, changed).await;
}

/// Runs one step on partition `p` from offset `at`. Returns the next
/// offset if something was committed.
async fn step(
    broker: &Broker,
    def: &Definition,
    shared: &Shared,
    live: &mut Option<crate::plugins::LiveChain>,
    overlay: &Overlay,
    p: u32,
    at: u64,
) -> Result<Option<u64>, StepError> {
    let read = broker
        .read_at(&def.from, p, at, STEP_MAX_BYTES)
        .await
        .map_err(|e| StepError::Halt(format!("reading {}/{p}: {e:?}", def.from)))?;
    let Some(last) = read.batches.last() else {
        return Ok(None);
    };
    let next = BatchHeader::parse(last)
        .map(|h| h.next_offset())
        .map_err(|e| StepError::Halt(e.to_string()))?;
    let mut inputs: Vec<StoredRecord> = Vec::new();
    for b in &read.batches {
        let records = batch::records(b).map_err(|e| StepError::Halt(e.to_string()))?;
        inputs.extend(records.into_iter().filter(|r| r.offset >= at));
    }
    let plugin_inputs = inputs
        .iter()
        .map(|r| {
            let mut pr = to_plugin(r, true);
            pr.partition = Some(p);
            pr
        })
        .collect();
    if let Some(chain) = live.as_mut() {
        broker
            .plugins()
            .refresh(chain, &def.chain)
            .map_err(|e| StepError::Halt(format!("{e:?}")))?;
    }
    // Plugin calls are CPU work bounded by the engine's deadline: run them
    // off the async workers, handing the chain over and back.
    let Some(mut chain) = live.take() else {
        return Err(StepError::Halt("plugin chain lost".into()));
    };
    let (chain, out) = tokio::task::spawn_blocking(move || {
        let out: ChainOutput = chain.chain_mut().process(plugin_inputs);
        (chain, out)
    })
    .await
    .map_err(|e| StepError::Halt(format!("plugin task: {e}")))?;
    *live = Some(chain);
    let mut failed: Vec<(usize, String, PluginError)> = out.failed.clone();
    if let Some((plugin, message)) = &out.rejected {
        // In a pipeline nobody waits on the batch to refuse it: a rejection
        // is a failure of every record, handled by the policy.
        let error = PluginError::Rejected(message.clone());
        failed = (0..inputs.len())
            .map(|i| (i, plugin.clone(), error.clone()))
            .collect();
    }
    if !failed.is_empty() && def.on_failure == FailurePolicy::Halt {
        lock(overlay).clear();
        let (index, plugin, error) = &failed[0];
        return Err(StepError::Halt(format!(
            "plugin {plugin:?} failed at {}/{p}@{}: {error}",
            def.from, inputs[*index].offset
        )));
    }
    let to_partitions = broker
        .topic_spec(&def.to)
        .map(|s| s.partitions)
        .ok_or_else(|| StepError::Halt(format!("destination topic {:?} is missing", def.to)))?;
    let outputs: Vec<Record> = if out.rejected.is_some() {
        Vec::new()
    } else {
        out.outputs
            .iter()
            .map(|(_, r)| crate::plugins::from_plugin(r.clone()))
            .collect()
    };
    let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    for r in outputs {
        let target = match &r.key {
            Some(k) => partition_for_key(k, to_partitions),
            None => p % to_partitions,
        };
        by_partition.entry(target).or_default().push(r);
    }
    let mut outputs = Vec::new();
    for (target, records) in &by_partition {
        outputs.extend(outputs_for(&def.to, *target, records)?);
    }
    let mut dead_lettered = 0;
    if def.on_failure == FailurePolicy::DeadLetter && !failed.is_empty() {
        let letters: Vec<Record> = failed
            .iter()
            .map(|(index, plugin, error)| {
                let version = broker.plugins().load(plugin).map_or(0, |(i, _)| i.version);
                let input = &inputs[*index];
                dead_letter(
                    input,
                    &def.from,
                    Some((p, input.offset)),
                    plugin,
                    version,
                    error,
                )
            })
            .collect();
        dead_lettered = letters.len();
        let dlq = broker
            .ensure_dlq(&def.from)
            .await
            .map_err(|e| StepError::Halt(format!("dead-letter topic: {e:?}")))?;
        outputs.extend(outputs_for(&dlq, 0, &letters)?);
    }
    let state: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        std::mem::take(&mut *lock(overlay)).into_iter().collect();
    let commit = PipelineStep {
        pipeline: def.name.clone(),
        outputs,
        state,
        source_partition: p,
        source_next_offset: next,
    };
    broker
        .writer()
        .commit_pipeline(commit)
        .await
        .map_err(|e| StepError::Halt(format!("commit failed: {e:?}")))?;
    let mut counted = out;
    counted.failed = failed;
    if counted.rejected.is_some() {
        counted.outputs.clear();
    }
    shared
        .counters
        .record(inputs.len(), &counted, dead_lettered);
    Ok(Some(next))
}

fn outputs_for(topic: &str, partition: u32, records: &[Record]) -> Result<Vec<Output>, StepError> {
    batches(records, edgebus_client::producer::DEFAULT_BATCH_MAX_BYTES)
        .into_iter()
        .map(|batch| {
            let header = BatchHeader::parse(&batch).map_err(|e| StepError::Halt(e.to_string()))?;
            Ok(Output {
                topic: topic.to_owned(),
                partition,
                record_count: header.record_count,
                batch,
            })
        })
        .collect()
}
