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
use crate::world::{
    self, filter::FilterPre, filter2::FilterPre as FilterPre2, transform::TransformPre,
    transform2::TransformPre as TransformPre2,
};

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

/// The version of the WIT package a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WitVersion {
    /// `edgebus:plugin@0.1.0`: `log` and `state` (get, set, delete).
    V0_1,
    /// `edgebus:plugin@0.2.0`: adds expiring keys, `state.list` and the
    /// `budget` import.
    V0_2,
}

impl fmt::Display for WitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
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
    Filter2(FilterPre2<HostState>),
    Transform2(TransformPre2<HostState>),
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
             (plugins get only edgebus:plugin/log, state and budget (0.2) or log and state \
             (0.1), and WASI p2 without files, network or clocks): {e:#}"
        ))
    })?;
    // Both versions' worlds export the same functions with the same types,
    // so the exports cannot tell them apart: the version is the one of the
    // edgebus interfaces the component imports (the shared `types` at
    // least). A component importing none runs the same on either.
    let version = import_version(component, &engine.engine);
    let mut not_matched = Vec::new();
    let mut attempt = |world: &str, pre: wasmtime::Result<Pre>| match pre {
        Ok(pre) => Some(pre),
        Err(e) => {
            not_matched.push(format!("as a {version} {world}: {e:#}"));
            None
        }
    };
    let pre = match version {
        WitVersion::V0_2 => attempt(
            "filter",
            FilterPre2::new(instance_pre.clone()).map(Pre::Filter2),
        )
        .or_else(|| {
            attempt(
                "transform",
                TransformPre2::new(instance_pre).map(Pre::Transform2),
            )
        }),
        WitVersion::V0_1 => attempt(
            "filter",
            FilterPre::new(instance_pre.clone()).map(Pre::Filter),
        )
        .or_else(|| {
            attempt(
                "transform",
                TransformPre::new(instance_pre).map(Pre::Transform),
            )
        }),
    };
    let Some(pre) = pre else {
        return Err(PluginError::Invalid(format!(
            "the component does not target a world of edgebus:plugin@{version}: {}",
            not_matched.join("; ")
        )));
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

/// The version of the `edgebus:plugin` interfaces `component` imports:
/// 0.1 if it imports any at 0.1, else 0.2.
fn import_version(component: &Component, engine: &wasmtime::Engine) -> WitVersion {
    let v0_1 = component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("edgebus:plugin/") && name.ends_with("@0.1.0"));
    if v0_1 {
        WitVersion::V0_1
    } else {
        WitVersion::V0_2
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugin {
    /// The world the component targets.
    pub fn kind(&self) -> PluginKind {
        match self.inner.pre {
            Pre::Filter(_) | Pre::Filter2(_) => PluginKind::Filter,
            Pre::Transform(_) | Pre::Transform2(_) => PluginKind::Transform,
        }
    }

    /// The WIT package version the component was built against.
    pub fn wit_version(&self) -> WitVersion {
        match self.inner.pre {
            Pre::Filter(_) | Pre::Transform(_) => WitVersion::V0_1,
            Pre::Filter2(_) | Pre::Transform2(_) => WitVersion::V0_2,
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
            Pre::Filter2(pre) => pre.instantiate(&mut store).map(Bindings::Filter2),
            Pre::Transform2(pre) => pre.instantiate(&mut store).map(Bindings::Transform2),
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
            Bindings::Filter(guest) => {
                guest.call_init(&mut store, &world::filter_v1::params(params))
            }
            Bindings::Transform(guest) => {
                guest.call_init(&mut store, &world::transform_v1::params(params))
            }
            Bindings::Filter2(guest) => {
                guest.call_init(&mut store, &world::filter_v2::params(params))
            }
            Bindings::Transform2(guest) => {
                guest.call_init(&mut store, &world::transform_v2::params(params))
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
            .field("wit", &self.wit_version())
            .field("hash", &self.inner.hash)
            .finish_non_exhaustive()
    }
}
