//! A loaded plugin: compiled, linked and type-checked, ready to be
//! instantiated as often as needed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::Component;

use crate::budget::{LogBudget, SharedLedger, SharedLogBudget, StateLedger};
use crate::engine::EngineInner;
use crate::error::PluginError;
use crate::host::{self, HostState};
use crate::instance::{self, Bindings, Instance, catch_host_panic};
use crate::state::{StateLayer, StateStore};
use crate::world::{self, filter::FilterPre, transform::TransformPre};

/// Which world a plugin targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// The `filter` world: one keep flag per record.
    Filter,
    /// The `transform` world: zero or more records per record.
    Transform,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Filter => "filter",
            PluginKind::Transform => "transform",
        })
    }
}

/// A compiled plugin. Cheap to clone; instances made from it share the
/// compiled code.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    engine: Arc<EngineInner>,
    pre: Pre,
    hash: String,
    load_time: Duration,
}

/// The pre-linked component: imports resolved and exports located once,
/// so that instantiation only allocates from the pool and runs the guest's
/// start-up code.
enum Pre {
    Filter(FilterPre<HostState>),
    Transform(TransformPre<HostState>),
}

/// A failed instantiation, with the state store handed back so that the
/// caller can retry or give it to another instance.
pub struct InstantiateError {
    /// Why the instance could not be created or initialised.
    pub error: PluginError,
    /// The store that was passed in, with only committed writes applied.
    pub state: Box<dyn StateStore>,
}

impl fmt::Debug for InstantiateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstantiateError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Links a compiled component against the host imports and finds which
/// world it targets.
pub(crate) fn link(
    engine: Arc<EngineInner>,
    component: &Component,
    wasm: &[u8],
    load_time: Duration,
) -> Result<Plugin, PluginError> {
    let instance_pre = engine.linker.instantiate_pre(component).map_err(|e| {
        PluginError::Invalid(format!(
            "the component needs an import the broker does not provide \
             (plugins get only edgebus:plugin/log, edgebus:plugin/state and WASI p2 \
             without files, network or clocks): {e:#}"
        ))
    })?;
    let pre = match FilterPre::new(instance_pre.clone()) {
        Ok(pre) => Pre::Filter(pre),
        Err(not_filter) => match TransformPre::new(instance_pre) {
            Ok(pre) => Pre::Transform(pre),
            Err(not_transform) => {
                return Err(PluginError::Invalid(format!(
                    "the component does not target a world of edgebus:plugin@0.1.0: \
                     as a filter: {not_filter:#}; as a transform: {not_transform:#}"
                )));
            }
        },
    };
    Ok(Plugin {
        inner: Arc::new(PluginInner {
            engine,
            pre,
            hash: sha256_hex(wasm),
            load_time,
        }),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugin {
    /// The world the component targets.
    pub fn kind(&self) -> PluginKind {
        match self.inner.pre {
            Pre::Filter(_) => PluginKind::Filter,
            Pre::Transform(_) => PluginKind::Transform,
        }
    }

    /// The hex SHA-256 of the Wasm bytes: the registry's content hash.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// How long compiling (or loading from the cache) took.
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// Creates an instance named `name` (used in logs) and calls its
    /// `init` with `params`. The instance reads and writes `state`.
    ///
    /// The guest's `init` error becomes [`PluginError::Init`] with the
    /// guest's message; writes `init` made to the state are kept only if
    /// it succeeds.
    pub fn instantiate(
        &self,
        name: &str,
        params: &[(String, String)],
        state: Box<dyn StateStore>,
    ) -> Result<Instance, PluginError> {
        self.try_instantiate(name, params, state)
            .map_err(|failed| failed.error)
    }

    /// Like [`instantiate`](Plugin::instantiate), but hands the state store
    /// back on failure.
    pub fn try_instantiate(
        &self,
        name: &str,
        params: &[(String, String)],
        state: Box<dyn StateStore>,
    ) -> Result<Instance, InstantiateError> {
        let budgets = &self.inner.engine.config.budgets;
        let shared = (StateLedger::shared(budgets), LogBudget::shared(budgets));
        self.instantiate_sharing(name, params, state, shared)
    }

    /// Instantiates with the budgets of a chain: its state ledger and log
    /// budget, which every stage and replaced instance shares.
    pub(crate) fn instantiate_sharing(
        &self,
        name: &str,
        params: &[(String, String)],
        state: Box<dyn StateStore>,
        (ledger, log): (SharedLedger, SharedLogBudget),
    ) -> Result<Instance, InstantiateError> {
        let layer = StateLayer::new(state, self.inner.engine.config.memory_max_bytes, ledger);
        match self.spawn(Arc::from(name), params, layer, log) {
            Ok(mut instance) => {
                instance.commit_state();
                Ok(instance)
            }
            Err(failed) => {
                let (error, layer) = *failed;
                Err(InstantiateError {
                    error,
                    state: layer.into_store(),
                })
            }
        }
    }

    /// Instantiates and runs `init`, leaving `init`'s state writes pending
    /// in the batch layer of `state`: the chain uses this to replace a
    /// failed instance midway through a batch. A failure hands the state
    /// back (boxed: the layer is large).
    pub(crate) fn spawn(
        &self,
        name: Arc<str>,
        params: &[(String, String)],
        state: StateLayer,
        log: SharedLogBudget,
    ) -> Result<Instance, Box<(PluginError, StateLayer)>> {
        let engine = &self.inner.engine;
        let seed = host::derive_seed(self.inner.hash.as_bytes(), name.as_bytes());
        let host = HostState::new(
            Arc::clone(&name),
            seed,
            engine.config.memory_max_bytes,
            state,
            log,
        );
        let mut store = Store::new(&engine.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(engine.deadline_ticks);
        store.data_mut().begin_call();

        let instantiated = catch_host_panic(|| match &self.inner.pre {
            Pre::Filter(pre) => pre.instantiate(&mut store).map(Bindings::Filter),
            Pre::Transform(pre) => pre.instantiate(&mut store).map(Bindings::Transform),
        });
        let bindings = match instantiated {
            Ok(bindings) => bindings,
            Err(e) => {
                let error = instance::classify(e, store.data(), &engine.config, "instantiate");
                store.data_mut().end_call(false);
                return Err(Box::new((error, store.into_data().state)));
            }
        };

        let init = catch_host_panic(|| match &bindings {
            Bindings::Filter(guest) => guest.call_init(&mut store, &world::filter_params(params)),
            Bindings::Transform(guest) => {
                guest.call_init(&mut store, &world::transform_params(params))
            }
        });
        let error = match init {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some(PluginError::Init(message)),
            Err(e) => Some(instance::classify(e, store.data(), &engine.config, "init")),
        };
        store.data_mut().end_call(error.is_none());
        match error {
            None => Ok(Instance::new(self.clone(), name, store, bindings)),
            Some(error) => Err(Box::new((error, store.into_data().state))),
        }
    }

    pub(crate) fn engine(&self) -> &EngineInner {
        &self.inner.engine
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("kind", &self.kind())
            .field("hash", &self.inner.hash)
            .finish_non_exhaustive()
    }
}
