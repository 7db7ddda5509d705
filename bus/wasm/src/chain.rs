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

use crate::error::PluginError;
use crate::instance::{BatchOutput, Instance};
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
#[derive(Default)]
pub struct Chain {
    stages: Vec<Stage>,
}

struct Stage {
    plugin: Plugin,
    name: Arc<str>,
    params: Vec<(String, String)>,
    slot: Slot,
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
        let instance =
            plugin
                .instantiate(&name, &params, state)
                .map_err(|error| ChainError::Stage {
                    position: self.stages.len(),
                    name: name.clone(),
                    error,
                })?;
        self.stages.push(Stage {
            plugin,
            name: Arc::from(name),
            params,
            slot: Slot::Running(instance),
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
        match plugin.spawn(Arc::clone(&stage.name), &stage.params, state) {
            Ok(mut instance) => {
                instance.commit_state();
                stage.plugin = plugin;
                stage.slot = Slot::Running(instance);
                Ok(())
            }
            Err((error, state)) => {
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
        let mut items: Vec<(usize, PluginRecord)> = batch.into_iter().enumerate().collect();
        for stage in &mut self.stages {
            match stage.run(items, &mut output) {
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
        output
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
    /// Runs the stage over `items`; `Err` carries a guest's rejection.
    fn run(
        &mut self,
        items: Vec<(usize, PluginRecord)>,
        output: &mut ChainOutput,
    ) -> Result<Vec<(usize, PluginRecord)>, String> {
        if items.is_empty() {
            return Ok(items);
        }
        let (indices, records): (Vec<usize>, Vec<PluginRecord>) = items.into_iter().unzip();
        let error = match self.call(&records, output) {
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
        tracing::warn!(
            target: "edgebus::plugin",
            plugin = &*self.name,
            records = records.len(),
            "retrying the batch one record at a time after: {error}"
        );
        let mut survivors = Vec::with_capacity(records.len());
        for (index, record) in indices.into_iter().zip(records) {
            let single = std::slice::from_ref(&record);
            match self.call(single, output) {
                Ok(result) => survivors.extend(expand(vec![index], vec![record], result, output)),
                Err(PluginError::Rejected(message)) => return Err(message),
                Err(error) => output.failed.push((index, self.name.to_string(), error)),
            }
        }
        Ok(survivors)
    }

    /// One call on a running instance, replacing the instance first if it
    /// is missing and afterwards if the call poisoned it.
    fn call(
        &mut self,
        records: &[PluginRecord],
        output: &mut ChainOutput,
    ) -> Result<BatchOutput, PluginError> {
        if !matches!(self.slot, Slot::Running(_)) {
            self.respawn()?;
        }
        let Slot::Running(instance) = &mut self.slot else {
            return Err(self.vacant());
        };
        let result = instance.call_uncommitted(records);
        if instance.is_poisoned() {
            output.replaced += 1;
            // A failed replacement leaves the slot down; the next call
            // retries it and reports the error against its own records.
            let _ = self.respawn();
        }
        result
    }

    /// Replaces the instance with a fresh one, same params, same state
    /// (including writes pending in this batch).
    fn respawn(&mut self) -> Result<(), PluginError> {
        let Some(state) = self.take_state() else {
            return Err(self.vacant());
        };
        match self
            .plugin
            .spawn(Arc::clone(&self.name), &self.params, state)
        {
            Ok(instance) => {
                self.slot = Slot::Running(instance);
                Ok(())
            }
            Err((error, state)) => {
                tracing::warn!(
                    target: "edgebus::plugin",
                    plugin = &*self.name,
                    "cannot replace the plugin instance: {error}"
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
