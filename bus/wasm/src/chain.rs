//! Plugins applied in order to a batch, with failure isolation and hot
//! swap: the unit the broker attaches to a topic, a subscription or a
//! pipeline.
//!
//! ```text
//!  batch ──▶ [stage 0] ──▶ [stage 1] ──▶ … ──▶ outputs (input index, record)
//!               │ trap / deadline / memory cap
//!               ▼
//!          fresh instance, same params and state; the batch is retried
//!          one record at a time so only the failing records are dropped
//!          (reported in `failed`) and the rest go on down the chain
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::budget::{
    self, Breach, Budgets, FailingTime, LogBudget, OutputBudget, SharedFailingTime, SharedLedger,
    SharedLogBudget, StateLedger,
};
use crate::error::PluginError;
use crate::instance::{BatchOutput, Instance};
use crate::output;
use crate::plugin::Plugin;
use crate::record::PluginRecord;
use crate::state::{StateLayer, StateStore};

/// One stage to build a [`Chain`] from: the plugin, the stage's name (for
/// logs and [`ChainOutput::failed`]), its `init` parameters, and its state.
pub type StageSpec = (Plugin, String, Vec<(String, String)>, Box<dyn StateStore>);

/// A failure to build or change a [`Chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The stage at `position` could not be instantiated.
    #[error("plugin {name} at position {position}: {error}")]
    Stage {
        /// Where in the chain.
        position: usize,
        /// The stage's name.
        name: String,
        /// Why instantiation or `init` failed.
        #[source]
        error: PluginError,
    },
    /// There is no stage at `position`.
    #[error("no stage at position {position}: the chain has {len}")]
    NoStage {
        /// The position asked for.
        position: usize,
        /// How many stages the chain has.
        len: usize,
    },
}

/// What a chain did with one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainOutput {
    /// The surviving records in input order, each with the index of the
    /// input record it came from (a fanned-out record keeps its origin's
    /// index). Empty when the batch was rejected.
    pub outputs: Vec<(usize, PluginRecord)>,
    /// Records a stage dropped: a filter said no, or a transform returned
    /// nothing for them.
    pub filtered: usize,
    /// Records that made a stage trap, run out of time or memory, with the
    /// index of their input record and the stage's name. They go to the
    /// topic's failure policy (skip, dead-letter or halt).
    pub failed: Vec<(usize, String, PluginError)>,
    /// Set when a guest returned `err(message)`: `(stage name, message)`.
    /// The whole batch is refused and no stage's state writes are kept.
    pub rejected: Option<(String, String)>,
    /// How many poisoned instances were replaced while processing.
    pub replaced: usize,
    /// Lines the chain's plugins (and the host, about their failures)
    /// wrote to the broker's log while processing.
    pub log_lines: u64,
    /// Lines dropped because the chain's log budget was spent.
    pub log_lines_dropped: u64,
    /// What the calls that failed cost, as the failing-time budget was
    /// charged for them (see [`Budgets::failing_ms_per_second`]).
    pub failing_time: Duration,
}

/// An ordered list of plugin instances, each with its name, parameters
/// and state store.
///
/// State writes are committed once per batch, after every stage ran: a
/// rejected batch leaves no trace in any stage's state, and records
/// retried after a trap see the state as it was before the failed call.
///
/// [`process`](Chain::process) is blocking CPU work: each call may run up
/// to the engine deadline per stage (more when records are retried).
///
/// The chain's [`Budgets`] (those of the engine of its first plugin) hold
/// across its stages, its calls and every instance it replaces: one state
/// ledger, one log budget, and an output budget per stage and batch.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Stage>,
    shared: Option<Shared>,
}

/// What every stage of a chain, and every instance it makes, shares.
#[derive(Clone)]
struct Shared {
    budgets: Budgets,
    ledger: SharedLedger,
    log: SharedLogBudget,
    failing: SharedFailingTime,
}

struct Stage {
    /// Its place in the chain, which the failing-time budget tells stages
    /// apart by.
    position: usize,
    plugin: Plugin,
    name: Arc<str>,
    params: Vec<(String, String)>,
    slot: Slot,
    log: SharedLogBudget,
    failing: SharedFailingTime,
    max_headers: usize,
}

/// A stage's instance, or its state while it has none.
enum Slot {
    Running(Instance),
    /// Creating an instance failed; the next batch tries again.
    Down(StateLayer),
    /// Only while an instance is being replaced.
    Vacant,
}

impl Chain {
    /// Instantiates every stage, in order: `(plugin, name, params, state)`.
    pub fn new(stages: Vec<StageSpec>) -> Result<Chain, ChainError> {
        let mut chain = Chain::default();
        for (plugin, name, params, state) in stages {
            chain.push(plugin, name, params, state)?;
        }
        Ok(chain)
    }

    /// Instantiates `plugin` as a new last stage.
    pub fn push(
        &mut self,
        plugin: Plugin,
        name: impl Into<String>,
        params: Vec<(String, String)>,
        state: Box<dyn StateStore>,
    ) -> Result<(), ChainError> {
        let name: String = name.into();
        let shared = self
            .shared
            .get_or_insert_with(|| {
                let budgets = plugin.engine().config.budgets.clone();
                Shared {
                    ledger: StateLedger::shared(&budgets),
                    log: LogBudget::shared(&budgets),
                    failing: FailingTime::shared(&budgets),
                    budgets,
                }
            })
            .clone();
        let instance = plugin
            .instantiate_sharing(&name, &params, state, (shared.ledger, shared.log.clone()))
            .map_err(|failed| ChainError::Stage {
                position: self.stages.len(),
                name: name.clone(),
                error: failed.error,
            })?;
        self.stages.push(Stage {
            position: self.stages.len(),
            plugin,
            name: Arc::from(name),
            params,
            slot: Slot::Running(instance),
            log: shared.log,
            failing: shared.failing,
            max_headers: shared.budgets.output_max_headers,
        });
        Ok(())
    }

    /// Swaps the plugin at `position` for `plugin` (typically a new
    /// version), from the next batch on. The new instance gets the same
    /// name, parameters and state. If it cannot be instantiated the old
    /// version keeps running and the error is returned.
    pub fn replace(&mut self, position: usize, plugin: Plugin) -> Result<(), ChainError> {
        let len = self.stages.len();
        let stage = self
            .stages
            .get_mut(position)
            .ok_or(ChainError::NoStage { position, len })?;
        let Some(state) = stage.take_state() else {
            return Err(ChainError::Stage {
                position,
                name: stage.name.to_string(),
                error: stage.vacant(),
            });
        };
        match plugin.spawn(
            Arc::clone(&stage.name),
            &stage.params,
            state,
            stage.log.clone(),
        ) {
            Ok(mut instance) => {
                instance.commit_state();
                stage.plugin = plugin;
                stage.slot = Slot::Running(instance);
                Ok(())
            }
            Err(failed) => {
                let (error, state) = *failed;
                stage.slot = Slot::Down(state);
                if stage.respawn().is_ok() {
                    stage.commit();
                }
                Err(ChainError::Stage {
                    position,
                    name: stage.name.to_string(),
                    error,
                })
            }
        }
    }

    /// Runs `batch` through every stage; see [`ChainOutput`].
    pub fn process(&mut self, batch: Vec<PluginRecord>) -> ChainOutput {
        let mut output = ChainOutput::default();
        let Some(shared) = self.shared.clone() else {
            output.outputs = batch.into_iter().enumerate().collect();
            return output;
        };
        let logged = log_totals(&shared.log);
        let input_bytes = batch.iter().map(payload_bytes).sum();
        let budget = shared.budgets.output_for(batch.len(), input_bytes);
        let mut items: Vec<(usize, PluginRecord)> = batch.into_iter().enumerate().collect();
        for stage in &mut self.stages {
            match stage.run(items, &mut output, budget) {
                Ok(survivors) => items = survivors,
                Err(message) => {
                    output.rejected = Some((stage.name.to_string(), message));
                    items = Vec::new();
                    break;
                }
            }
        }
        for stage in &mut self.stages {
            if output.rejected.is_some() {
                stage.rollback();
            } else {
                stage.commit();
            }
        }
        output.outputs = items;
        let (lines, dropped) = log_totals(&shared.log);
        output.log_lines = lines - logged.0;
        output.log_lines_dropped = dropped - logged.1;
        output
    }

    /// Bytes of keys and values the chain's stages keep in state, as its
    /// state budget counts them.
    pub fn state_bytes(&self) -> u64 {
        self.shared.as_ref().map_or(0, |shared| {
            u64::try_from(budget::ledger(&shared.ledger).committed().bytes).unwrap_or(0)
        })
    }

    /// The number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Whether the chain has no stage (it then passes batches through).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The stages' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|stage| &*stage.name)
    }

    /// The plugin running at `position`.
    pub fn plugin(&self, position: usize) -> Option<&Plugin> {
        self.stages.get(position).map(|stage| &stage.plugin)
    }

    /// The committed state of the stage at `position`.
    pub fn state_mut(&mut self, position: usize) -> Option<&mut dyn StateStore> {
        match &mut self.stages.get_mut(position)?.slot {
            Slot::Running(instance) => Some(instance.state_mut()),
            Slot::Down(state) => Some(state.store_mut()),
            Slot::Vacant => None,
        }
    }

    /// Takes the chain apart, giving back each stage's state store.
    pub fn into_states(self) -> Vec<Box<dyn StateStore>> {
        self.stages
            .into_iter()
            .filter_map(|stage| match stage.slot {
                Slot::Running(instance) => Some(instance.into_state()),
                Slot::Down(state) => Some(state.into_store()),
                Slot::Vacant => None,
            })
            .collect()
    }
}

impl Stage {
    /// Runs the stage over `items`, emitting at most `budget`; `Err`
    /// carries a guest's rejection.
    ///
    /// A call that traps, runs out of time or memory is retried one record
    /// at a time on fresh instances, so only the failing records are lost.
    /// A budget breach is not retried: it fails the call's records, and
    /// once a retried record breaches, the records after it fail with the
    /// same breach without another call.
    fn run(
        &mut self,
        items: Vec<(usize, PluginRecord)>,
        output: &mut ChainOutput,
        mut budget: OutputBudget,
    ) -> Result<Vec<(usize, PluginRecord)>, String> {
        if items.is_empty() {
            return Ok(items);
        }
        let (indices, records): (Vec<usize>, Vec<PluginRecord>) = items.into_iter().unzip();
        let error = match self.call(&records, output, &mut budget) {
            Ok(result) => return Ok(expand(indices, records, result, output)),
            Err(PluginError::Rejected(message)) => return Err(message),
            Err(error) => error,
        };
        if records.len() == 1 || !error.poisons_instance() {
            output.failed.extend(
                indices
                    .into_iter()
                    .map(|index| (index, self.name.to_string(), error.clone())),
            );
            return Ok(Vec::new());
        }
        output::host_warning(
            &self.log,
            &self.name,
            &format!(
                "retrying the batch of {} records one record at a time after: {error}",
                records.len()
            ),
        );
        let mut survivors = Vec::with_capacity(records.len());
        let mut breached: Option<PluginError> = None;
        for (index, record) in indices.into_iter().zip(records) {
            if let Some(error) = &breached {
                output
                    .failed
                    .push((index, self.name.to_string(), error.clone()));
                continue;
            }
            let single = std::slice::from_ref(&record);
            match self.call(single, output, &mut budget) {
                Ok(result) => survivors.extend(expand(vec![index], vec![record], result, output)),
                Err(PluginError::Rejected(message)) => return Err(message),
                Err(error) => {
                    if matches!(error, PluginError::Budget(_)) {
                        breached = Some(error.clone());
                    }
                    output.failed.push((index, self.name.to_string(), error));
                }
            }
        }
        Ok(survivors)
    }

    /// One call on a running instance, unless the chain's failing calls
    /// have spent their time budget; a call that fails is charged its
    /// time.
    fn call(
        &mut self,
        records: &[PluginRecord],
        output: &mut ChainOutput,
        budget: &mut OutputBudget,
    ) -> Result<BatchOutput, PluginError> {
        budget::failing_time(&self.failing)
            .admit()
            .map_err(PluginError::Budget)?;
        let started = CallClock::start();
        let result = self.call_admitted(records, output, budget);
        let mut failing = budget::failing_time(&self.failing);
        if result.is_err() {
            let spent = started.spent();
            failing.charge(self.position, spent);
            output.failing_time += spent;
        } else {
            failing.succeeded(self.position);
        }
        drop(failing);
        result
    }

    /// The call itself, replacing the instance first if it is missing and
    /// afterwards if the call poisoned it. A transform's output is taken
    /// from `budget`; output over it fails the call with
    /// [`PluginError::Budget`].
    fn call_admitted(
        &mut self,
        records: &[PluginRecord],
        output: &mut ChainOutput,
        budget: &mut OutputBudget,
    ) -> Result<BatchOutput, PluginError> {
        if !matches!(self.slot, Slot::Running(_)) {
            self.respawn()?;
        }
        let Slot::Running(instance) = &mut self.slot else {
            return Err(self.vacant());
        };
        instance.set_output_room(budget.room());
        let result = instance.call_uncommitted(records);
        if instance.is_poisoned() {
            output.replaced += 1;
            // A failed replacement leaves the slot down; the next call
            // retries it and reports the error against its own records.
            let _ = self.respawn();
        }
        let result = result?;
        if let BatchOutput::Emit(lists) = &result {
            let max = self.max_headers;
            if let Some(count) = lists
                .iter()
                .flatten()
                .map(|record| record.headers.len())
                .find(|&count| count > max)
            {
                return Err(PluginError::Budget(Breach::Headers { count, max }));
            }
            let records = lists.iter().map(Vec::len).sum();
            let bytes = lists.iter().flatten().map(payload_bytes).sum();
            budget.spend(records, bytes).map_err(PluginError::Budget)?;
        }
        Ok(result)
    }

    /// Replaces the instance with a fresh one, same params, same state
    /// (including writes pending in this batch).
    fn respawn(&mut self) -> Result<(), PluginError> {
        let Some(state) = self.take_state() else {
            return Err(self.vacant());
        };
        match self.plugin.spawn(
            Arc::clone(&self.name),
            &self.params,
            state,
            self.log.clone(),
        ) {
            Ok(instance) => {
                self.slot = Slot::Running(instance);
                Ok(())
            }
            Err(failed) => {
                let (error, state) = *failed;
                output::host_warning(
                    &self.log,
                    &self.name,
                    &format!("cannot replace the plugin instance: {error}"),
                );
                self.slot = Slot::Down(state);
                Err(error)
            }
        }
    }

    /// Moves the state out, leaving the slot vacant until the caller puts
    /// an instance or the state back.
    fn take_state(&mut self) -> Option<StateLayer> {
        match std::mem::replace(&mut self.slot, Slot::Vacant) {
            Slot::Running(instance) => Some(instance.into_layer()),
            Slot::Down(state) => Some(state),
            Slot::Vacant => None,
        }
    }

    fn vacant(&self) -> PluginError {
        PluginError::Internal(format!("stage {} lost its state store", self.name))
    }

    fn commit(&mut self) {
        match &mut self.slot {
            Slot::Running(instance) => instance.commit_state(),
            Slot::Down(state) => state.commit(),
            Slot::Vacant => {}
        }
    }

    fn rollback(&mut self) {
        match &mut self.slot {
            Slot::Running(instance) => instance.rollback_state(),
            Slot::Down(state) => state.rollback(),
            Slot::Vacant => {}
        }
    }
}

/// What a call costs the broker: the CPU time of the calling thread (the
/// call runs on it from start to end), so a call that ran out of its
/// deadline while other threads had the CPU costs what it ran, not what it
/// waited. Wall time where the platform cannot tell.
struct CallClock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl CallClock {
    fn start() -> CallClock {
        CallClock {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    fn spent(&self) -> Duration {
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => self.wall.elapsed(),
        }
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
#[cfg(unix)]
#[allow(unsafe_code)]
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (done == 0).then(|| {
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The bytes of a record that count against the output budget: key,
/// value, and header names and values.
fn payload_bytes(record: &PluginRecord) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    record.key.as_ref().map_or(0, Bytes::len) + record.value.len() + headers
}

/// Lines written and dropped under `log`, so far.
fn log_totals(log: &SharedLogBudget) -> (u64, u64) {
    let budget = budget::log_budget(log);
    (budget.written_total, budget.dropped_total)
}

/// Pairs each output with the index of the input it came from.
fn expand(
    indices: Vec<usize>,
    records: Vec<PluginRecord>,
    result: BatchOutput,
    output: &mut ChainOutput,
) -> Vec<(usize, PluginRecord)> {
    let mut survivors = Vec::with_capacity(records.len());
    match result {
        BatchOutput::Keep(mask) => {
            for ((index, record), keep) in indices.into_iter().zip(records).zip(mask) {
                if keep {
                    survivors.push((index, record));
                } else {
                    output.filtered += 1;
                }
            }
        }
        BatchOutput::Emit(lists) => {
            for (index, list) in indices.into_iter().zip(lists) {
                if list.is_empty() {
                    output.filtered += 1;
                }
                survivors.extend(list.into_iter().map(|record| (index, record)));
            }
        }
    }
    survivors
}
