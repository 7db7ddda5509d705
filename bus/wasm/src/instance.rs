//! A running plugin instance: one `Store`, one guest, one state store.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use wasmtime::{PoolConcurrencyLimitError, Store, Trap};
use wasmtime_wasi::I32Exit;

use crate::engine::EngineConfig;
use crate::error::PluginError;
use crate::host::HostState;
use crate::output;
use crate::plugin::Plugin;
use crate::record::PluginRecord;
use crate::state::{StateLayer, StateStore};
use crate::world;

/// The typed exports of an instance, by world.
pub(crate) enum Bindings {
    Filter(world::filter::Filter),
    Transform(world::transform::Transform),
    Filter2(world::filter2::Filter),
    Transform2(world::transform2::Transform),
}

/// What one call on a batch produced, in the shape the guest returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutput {
    /// From a filter: one flag per input record, `true` keeps it. Lets the
    /// caller keep records without copying them.
    Keep(Vec<bool>),
    /// From a transform: for each input record, in order, the records it
    /// became (offset and partition unset).
    Emit(Vec<Vec<PluginRecord>>),
}

/// One instance of a plugin, with its own memory, state store and limits.
///
/// Calls are synchronous CPU work bounded by the engine's deadline: run
/// them on a blocking thread (`spawn_blocking`), never inside an async
/// task. `wasmtime-wasi`'s synchronous bindings block on Tokio for some
/// guest calls (writing to stdout, dropping a stream); on a runtime worker
/// that panics, which is caught and reported as a trap. Outside any Tokio
/// runtime, `wasmtime-wasi` starts a process-wide runtime of its own the
/// first time it needs one. An `Instance` is `Send` but not `Sync`; it
/// serves one call at a time.
///
/// After [`PluginError::Trap`], [`PluginError::Deadline`] or
/// [`PluginError::MemoryLimit`] the instance is poisoned: its memory may
/// be inconsistent, so every later call fails and the owner must make a
/// new one (the [`Chain`](crate::chain::Chain) does this itself). State
/// writes of a failed call are dropped, so the replacement starts from the
/// state as it was before that call.
pub struct Instance {
    plugin: Plugin,
    name: Arc<str>,
    store: Store<HostState>,
    bindings: Bindings,
    poisoned: bool,
}

impl Instance {
    pub(crate) fn new(
        plugin: Plugin,
        name: Arc<str>,
        store: Store<HostState>,
        bindings: Bindings,
    ) -> Instance {
        Instance {
            plugin,
            name,
            store,
            bindings,
            poisoned: false,
        }
    }

    /// The name this instance logs under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs the plugin on `batch` and returns, for each input in order, its
    /// outputs: for a filter the input itself or nothing, for a transform
    /// what the guest returned.
    ///
    /// A guest `err(message)` is [`PluginError::Rejected`]. State writes
    /// the call made are committed to the store only if it succeeds.
    pub fn process(
        &mut self,
        batch: &[PluginRecord],
    ) -> Result<Vec<Vec<PluginRecord>>, PluginError> {
        Ok(match self.call(batch)? {
            BatchOutput::Keep(mask) => batch
                .iter()
                .zip(mask)
                .map(|(record, keep)| {
                    if keep {
                        vec![record.clone()]
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
            BatchOutput::Emit(outputs) => outputs,
        })
    }

    /// Like [`process`](Instance::process), but returns a filter's verdict
    /// as a mask, so kept records need not be cloned.
    pub fn call(&mut self, batch: &[PluginRecord]) -> Result<BatchOutput, PluginError> {
        let outcome = self.call_uncommitted(batch);
        match outcome {
            Ok(_) => self.commit_state(),
            Err(_) => self.rollback_state(),
        }
        outcome
    }

    /// Whether an earlier trap, deadline or memory error has made this
    /// instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The state store, for a pipeline that flushes it in its transaction.
    pub fn state_mut(&mut self) -> &mut dyn StateStore {
        self.store.data_mut().state.store_mut()
    }

    /// Gives the state store back, with every committed write applied.
    pub fn into_state(self) -> Box<dyn StateStore> {
        self.into_layer().into_store()
    }

    pub(crate) fn into_layer(self) -> StateLayer {
        self.store.into_data().state
    }

    /// Tells the guest, through `budget.remaining`, how many records and
    /// bytes its next call may return.
    pub(crate) fn set_output_room(&mut self, (records, bytes): (u64, u64)) {
        self.store.data_mut().output_room = (records, bytes);
    }

    pub(crate) fn commit_state(&mut self) {
        self.store.data_mut().state.commit();
    }

    pub(crate) fn rollback_state(&mut self) {
        self.store.data_mut().state.rollback();
    }

    /// Runs one call; on success its state writes join the pending batch
    /// layer, on failure they are dropped.
    pub(crate) fn call_uncommitted(
        &mut self,
        batch: &[PluginRecord],
    ) -> Result<BatchOutput, PluginError> {
        if self.poisoned {
            return Err(PluginError::Internal(format!(
                "instance {} was poisoned by an earlier failure and must be replaced",
                self.name
            )));
        }
        let Instance {
            plugin,
            store,
            bindings,
            ..
        } = self;
        if batch.is_empty() {
            return Ok(match bindings {
                Bindings::Filter(_) | Bindings::Filter2(_) => BatchOutput::Keep(Vec::new()),
                Bindings::Transform(_) | Bindings::Transform2(_) => BatchOutput::Emit(Vec::new()),
            });
        }
        let engine = plugin.engine();
        store.set_epoch_deadline(engine.deadline_ticks);
        store.data_mut().begin_call();
        let newest_ms = batch.iter().map(|record| record.timestamp_ms).max();
        store.data_mut().state.begin_call(newest_ms);
        let returned = match bindings {
            Bindings::Filter(guest) => catch_host_panic(|| {
                world::filter_v1::with_records(batch, |records| {
                    guest.call_filter(&mut *store, records)
                })
            })
            .map(|verdict| verdict.map(BatchOutput::Keep)),
            Bindings::Filter2(guest) => catch_host_panic(|| {
                world::filter_v2::with_records(batch, |records| {
                    guest.call_filter(&mut *store, records)
                })
            })
            .map(|verdict| verdict.map(BatchOutput::Keep)),
            Bindings::Transform(guest) => catch_host_panic(|| {
                world::transform_v1::with_records(batch, |records| {
                    guest.call_transform(&mut *store, records)
                })
            })
            .map(|verdict| {
                verdict.map(|outputs| emitted(outputs, world::transform_v1::from_record))
            }),
            Bindings::Transform2(guest) => catch_host_panic(|| {
                world::transform_v2::with_records(batch, |records| {
                    guest.call_transform(&mut *store, records)
                })
            })
            .map(|verdict| {
                verdict.map(|outputs| emitted(outputs, world::transform_v2::from_record))
            }),
        };
        // A guest that trapped, whatever the reason (a state budget breach
        // traps it too), cannot be entered again.
        let mut trapped = false;
        let outcome = match returned {
            Ok(Ok(output)) => check_shape(output, batch.len()),
            Ok(Err(message)) => Err(PluginError::Rejected(message)),
            Err(e) => {
                trapped = true;
                Err(classify(e, store.data(), &engine.config, "call"))
            }
        };
        store.data_mut().end_call(outcome.is_ok());
        if let Err(error) = &outcome
            && (trapped || error.poisons_instance())
        {
            self.poisoned = true;
            output::lock(&store.data().output)
                .host_warning(&format!("plugin instance poisoned: {error}"));
        }
        outcome
    }
}

/// Runs a guest call, turning a panic in host code into an error so that
/// it poisons the instance instead of unwinding into the broker.
///
/// wasmtime carries a host function's panic back out through the guest's
/// frames. The likely cause is calling from an async task:
/// `wasmtime-wasi`'s synchronous bindings block on Tokio (for instance when
/// the guest writes to stdout), and blocking panics on a runtime worker.
pub(crate) fn catch_host_panic<R>(
    call: impl FnOnce() -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|message| message.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_string());
        Err(wasmtime::format_err!(
            "host code panicked during the call: {message}"
        ))
    })
}

/// A guest that answers for a different number of records than it was
/// given has broken the WIT contract; that is treated as a trap.
fn check_shape(output: BatchOutput, inputs: usize) -> Result<BatchOutput, PluginError> {
    let (what, returned) = match &output {
        BatchOutput::Keep(mask) => ("flags", mask.len()),
        BatchOutput::Emit(outputs) => ("output lists", outputs.len()),
    };
    if returned == inputs {
        Ok(output)
    } else {
        Err(PluginError::Trap(format!(
            "the guest returned {returned} {what} for {inputs} records"
        )))
    }
}

/// Turns a failed wasmtime call into the error the caller acts on.
///
/// The host's flags are checked first: going over the state budget or the
/// memory cap traps, and the trap alone would not say why.
pub(crate) fn classify(
    error: wasmtime::Error,
    host: &HostState,
    config: &EngineConfig,
    during: &str,
) -> PluginError {
    if let Some(breach) = &host.breach {
        return PluginError::Budget(breach.clone());
    }
    if host.limiter.exceeded {
        return PluginError::MemoryLimit(config.memory_max_bytes);
    }
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return PluginError::Internal(format!("{during}: {error:#}"));
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return PluginError::Deadline(config.deadline),
        Some(trap) => format!("{during}: {trap}"),
        None => match error.downcast_ref::<I32Exit>() {
            Some(exit) => format!("{during}: the guest called exit({})", exit.0),
            None => format!("{during}: {error:#}"),
        },
    };
    PluginError::Trap(match host.stderr_tail() {
        Some(stderr) => format!("{message} (guest stderr: {stderr})"),
        None => message,
    })
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// A transform's outputs, per input record, as the host's records (the
/// WIT versions generate record types of their own).
fn emitted<R>(outputs: Vec<Vec<R>>, from: fn(R) -> PluginRecord) -> BatchOutput {
    BatchOutput::Emit(
        outputs
            .into_iter()
            .map(|records| records.into_iter().map(from).collect())
            .collect(),
    )
}
