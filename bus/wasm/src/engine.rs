//! The shared runtime: one wasmtime engine with its pooling allocator,
//! compile cache, linker and epoch ticker, built when the first plugin
//! loads.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy,
};

use crate::budget::Budgets;
use crate::error::PluginError;
use crate::host::{self, HostState};
use crate::plugin::{self, Plugin};

/// One Wasm page: linear memories grow in these units.
const WASM_PAGE_BYTES: usize = 64 * 1024;
/// The longest interval between two epoch ticks. Shorter deadlines tick
/// faster (a tenth of the deadline, at least 1 ms).
const TICK_MAX: Duration = Duration::from_millis(5);
const TICK_MIN: Duration = Duration::from_millis(1);
/// Core instances one component may create. A Rust `wasm32-wasip2`
/// component has three or four (the program, and the shims `wit-component`
/// adds for indirect calls); the rest is headroom.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Tables one component may create (the program's and the shims').
const TABLES_PER_COMPONENT: u32 = 8;

/// Limits every plugin runs under, fixed for the life of an [`Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Where compiled plugins are cached on disk, keyed by a hash of the
    /// Wasm bytes and of the engine's settings. `None` compiles on every
    /// load. The directory must be writable only by the broker: a cached
    /// artifact is native code and is loaded without re-validation.
    pub cache_dir: Option<PathBuf>,
    /// How long one call (`init` or one batch) may run before it is
    /// interrupted with [`PluginError::Deadline`].
    pub deadline: Duration,
    /// The most linear memory one instance may have, in bytes; growing past
    /// it fails the call with [`PluginError::MemoryLimit`].
    pub memory_max_bytes: usize,
    /// The most instances alive at once across all plugins: the pooling
    /// allocator reserves this many slots up front.
    pub max_instances: u32,
    /// What each attachment (each [`Chain`](crate::Chain)) may use across
    /// calls, retries and replaced instances.
    pub budgets: Budgets,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            cache_dir: None,
            deadline: Duration::from_millis(50),
            memory_max_bytes: 64 * 1024 * 1024,
            max_instances: 256,
            budgets: Budgets::default(),
        }
    }
}

/// The plugin runtime: compiles plugins and hosts their instances.
///
/// One per broker. Cloning is cheap and shares everything. The wasmtime
/// engine behind it is built when the first plugin loads, so a broker that
/// runs no plugin spends no memory or code pages on it and has no thread
/// waking every few milliseconds. From then on a background thread
/// advances the engine's epoch, which is how calls meet their deadline; it
/// stops once the `Engine` and every [`Plugin`] and
/// [`Instance`](crate::Instance) made from it are dropped.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    config: EngineConfig,
    /// Made at once, so a cache directory that cannot be used stops the
    /// broker at start rather than failing its first plugin.
    cache: Option<Cache>,
    built: OnceLock<Arc<EngineInner>>,
    /// Held while the engine is built, so two first loads build it once.
    building: Mutex<()>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: EngineConfig,
    /// Epoch ticks a call may run: the deadline, rounded up, plus one tick
    /// so that a call is never cut short of its deadline.
    pub(crate) deadline_ticks: u64,
    _ticker: Ticker,
}

impl Engine {
    /// Checks `config` and opens the compile cache; the wasmtime engine
    /// itself is built by the first [`Engine::load`] (see
    /// [`EngineInner::build`]), and a failure to build it is that load's
    /// error (the next load tries again).
    pub fn new(config: EngineConfig) -> Result<Engine, PluginError> {
        validate(&config)?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                let mut cache_config = CacheConfig::new();
                cache_config.with_directory(dir);
                Some(Cache::new(cache_config).map_err(|e| {
                    PluginError::Internal(format!(
                        "compile cache at {} unusable: {e:#}",
                        dir.display()
                    ))
                })?)
            }
            None => None,
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                config,
                cache,
                built: OnceLock::new(),
                building: Mutex::new(()),
            }),
        })
    }

    /// The built engine, building it first if no load has yet.
    fn built(&self) -> Result<&Arc<EngineInner>, PluginError> {
        if let Some(inner) = self.shared.built.get() {
            return Ok(inner);
        }
        let _building = self
            .shared
            .building
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(inner) = self.shared.built.get() {
            return Ok(inner);
        }
        let inner = Arc::new(EngineInner::build(
            self.shared.config.clone(),
            self.shared.cache.clone(),
        )?);
        Ok(self.shared.built.get_or_init(|| inner))
    }

    /// Loads a plugin from the bytes of a Wasm component.
    ///
    /// Validates and compiles the component (or, with a cache directory,
    /// loads the native code compiled earlier for the same bytes), checks
    /// that the broker provides every import, and checks that it exports
    /// `init` and either `filter` or `transform` of `edgebus:plugin@0.2.0`
    /// or `@0.1.0` (the version of the interfaces it imports) with the
    /// right types. Anything else is [`PluginError::Invalid`].
    ///
    /// Compiling is CPU work that can take a second or more for a large
    /// plugin: call this from a blocking thread.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, PluginError> {
        check_component_header(wasm)?;
        // Built before the clock starts: `load_time` is the component's
        // compile (or cache load), not the runtime's one-off set-up.
        let inner = self.built()?;
        let started = Instant::now();
        let component = Component::new(&inner.engine, wasm)
            .map_err(|e| PluginError::Invalid(format!("cannot compile component: {e:#}")))?;
        let load_time = started.elapsed();
        plugin::link(Arc::clone(inner), &component, wasm, load_time)
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &EngineInner {
        self.built().expect("the engine builds")
    }

    /// The limits this engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Loads served from the on-disk compile cache since this engine was
    /// built, or 0 without a cache directory.
    pub fn cache_hits(&self) -> usize {
        self.shared.cache.as_ref().map_or(0, Cache::cache_hits)
    }

    /// Loads that compiled and stored a new artifact in the on-disk cache.
    pub fn cache_misses(&self) -> usize {
        self.shared.cache.as_ref().map_or(0, Cache::cache_misses)
    }
}

impl EngineInner {
    /// Builds the engine: Cranelift, the component model, epoch
    /// interruption, and a pooling allocator sized by `config`.
    ///
    /// Each linear memory slot reserves `memory_max_bytes` (rounded up to a
    /// Wasm page) plus a guard region, instead of wasmtime's default 4 GiB:
    /// the pool then fits the 39-bit address space of small ARM boards, at
    /// the price of explicit bounds checks in compiled code.
    fn build(config: EngineConfig, cache: Option<Cache>) -> Result<EngineInner, PluginError> {
        let memory_slot_bytes = config.memory_max_bytes.next_multiple_of(WASM_PAGE_BYTES);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(
                config
                    .max_instances
                    .saturating_mul(CORE_INSTANCES_PER_COMPONENT),
            )
            .total_memories(config.max_instances)
            .total_tables(config.max_instances.saturating_mul(TABLES_PER_COMPONENT))
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(1)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(memory_slot_bytes);

        let mut wasm_config = Config::new();
        wasm_config
            .strategy(Strategy::Cranelift)
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_reservation(memory_slot_bytes as u64)
            .memory_reservation_for_growth(0)
            .memory_may_move(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cache(cache);
        let engine = wasmtime::Engine::new(&wasm_config)
            .map_err(|e| PluginError::Internal(format!("wasmtime engine setup failed: {e:#}")))?;
        let linker = host::linker(&engine)
            .map_err(|e| PluginError::Internal(format!("linking host imports failed: {e:#}")))?;

        let tick = (config.deadline / 10).clamp(TICK_MIN, TICK_MAX);
        let deadline_ticks = u64::try_from(config.deadline.as_nanos().div_ceil(tick.as_nanos()))
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let ticker = Ticker::start(engine.clone(), tick)?;
        Ok(EngineInner {
            engine,
            linker,
            config,
            deadline_ticks,
            _ticker: ticker,
        })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn validate(config: &EngineConfig) -> Result<(), PluginError> {
    let problem = if config.deadline.is_zero() {
        Some("deadline must be positive")
    } else if config.memory_max_bytes < WASM_PAGE_BYTES {
        Some("memory_max_bytes must be at least one 64 KiB Wasm page")
    } else if config.max_instances == 0 {
        Some("max_instances must be positive")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(PluginError::Internal(format!(
            "invalid engine config: {problem}"
        ))),
        None => Ok(()),
    }
}

/// Rejects what is plainly not a component before handing it to the
/// compiler, so the operator gets a message that says what to do.
fn check_component_header(wasm: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(PluginError::Invalid(
            "not a WebAssembly binary (no \\0asm header)".to_string(),
        ));
    }
    if &wasm[4..8] == CORE_VERSION {
        return Err(PluginError::Invalid(
            "this is a core Wasm module, not a component: build the plugin for \
             wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
                .to_string(),
        ));
    }
    Ok(())
}

/// The thread that advances the engine's epoch. Dropping the `Ticker`
/// closes the channel, which wakes the thread at once, and joins it.
struct Ticker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Ticker, PluginError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("edgebus-wasm-epoch".to_string())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Internal(format!("cannot start epoch ticker: {e}")))?;
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The loop cannot panic; a join error would only repeat one.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_component_header_core_module_is_invalid() {
        let err = check_component_header(b"\0asm\x01\0\0\0");
        assert!(matches!(err, Err(PluginError::Invalid(m)) if m.contains("core Wasm module")));
    }

    #[test]
    fn check_component_header_garbage_is_invalid() {
        let err = check_component_header(b"hello, world");
        assert!(matches!(err, Err(PluginError::Invalid(m)) if m.contains("not a WebAssembly")));
    }

    #[test]
    fn ticker_drop_stops_thread_promptly() {
        let engine = wasmtime::Engine::default();
        let ticker = Ticker::start(engine, Duration::from_millis(1)).expect("ticker");
        std::thread::sleep(Duration::from_millis(10));
        let started = Instant::now();
        drop(ticker);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn the_runtime_is_built_by_the_first_load_that_compiles_and_only_once() {
        let engine = Engine::new(EngineConfig::default()).expect("engine");
        assert!(engine.shared.built.get().is_none(), "built before any load");
        assert!(matches!(
            engine.load(b"hello"),
            Err(PluginError::Invalid(_))
        ));
        assert!(
            engine.shared.built.get().is_none(),
            "a load refused before compiling built the runtime"
        );
        // A component that compiles but exports nothing a plugin must.
        let component = wat::parse_str("(component)").expect("wat");
        assert!(matches!(
            engine.load(&component),
            Err(PluginError::Invalid(_))
        ));
        let built = Arc::as_ptr(engine.shared.built.get().expect("built by the load"));
        let _ = engine.clone().load(&component);
        assert_eq!(
            Arc::as_ptr(engine.shared.built.get().expect("still built")),
            built,
            "a second load built the runtime again"
        );
    }

    #[test]
    fn an_unusable_cache_directory_is_refused_at_once_not_at_the_first_load() {
        let config = EngineConfig {
            cache_dir: Some(PathBuf::from("relative/cache")),
            ..EngineConfig::default()
        };
        let err = Engine::new(config).map(|_| ()).unwrap_err();
        assert!(
            matches!(&err, PluginError::Internal(m) if m.contains("compile cache")),
            "{err:?}"
        );
    }

    #[test]
    fn engine_new_zero_instances_is_rejected() {
        let config = EngineConfig {
            max_instances: 0,
            ..EngineConfig::default()
        };
        assert!(matches!(Engine::new(config), Err(PluginError::Internal(_))));
    }
}
