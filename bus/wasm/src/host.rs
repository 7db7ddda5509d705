//! What a plugin instance can reach: the data behind its `Store`, the
//! `log` and `state` imports, and a WASI context that grants nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::budget::{Breach, SharedLogBudget};
use crate::output::{self, GuestOutput, GuestStdio};
use crate::state::{StateLayer, StateRefused};
use crate::world::{self, Level};

/// The largest `wasi:random` request a guest may make in one call. Rust's
/// `HashMap` asks for 16 bytes; the cap keeps a guest from making the host
/// allocate large buffers on its behalf.
const RANDOM_BYTES_MAX: u64 = 1024 * 1024;

/// The versioned name under which `wasmtime-wasi` links the monotonic
/// clock. Guests importing any 0.2.x version resolve to it.
const MONOTONIC_CLOCK_INTERFACE: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The data of one instance's `Store`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) state: StateLayer,
    pub(crate) output: Arc<Mutex<GuestOutput>>,
    /// Set when a state write went over the chain's budget during the
    /// current call, so the trap that follows is reported as that breach.
    pub(crate) breach: Option<Breach>,
    /// Records and bytes the current call may still return (the chain
    /// sets it before each call; what `budget.remaining` reports).
    pub(crate) output_room: (u64, u64),
}

impl HostState {
    /// State for a new instance named `name`, whose randomness is seeded
    /// from `seed` so that replaying a pipeline gives the same output.
    pub(crate) fn new(
        name: Arc<str>,
        seed: [u8; 32],
        memory_max_bytes: usize,
        state: StateLayer,
        log: SharedLogBudget,
    ) -> HostState {
        let output = Arc::new(Mutex::new(GuestOutput::new(name, log)));
        HostState {
            wasi: deny_all_wasi(seed, &output),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_max_bytes),
            state,
            output,
            breach: None,
            output_room: (u64::MAX, u64::MAX),
        }
    }

    /// Resets per-call bookkeeping before the guest runs.
    pub(crate) fn begin_call(&mut self) {
        self.limiter.exceeded = false;
        self.breach = None;
        output::lock(&self.output).clear_stderr_tail();
    }

    /// Settles state writes and flushes output after the guest returned.
    pub(crate) fn end_call(&mut self, succeeded: bool) {
        if succeeded {
            self.state.end_call_ok();
        } else {
            self.state.end_call_failed();
        }
        output::lock(&self.output).flush();
    }

    /// What the guest last wrote to stderr during this call, if anything.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        output::lock(&self.output).stderr_tail()
    }
}

/// Builds a WASI context that grants nothing: no preopened directories, no
/// environment, no arguments, no network, stdin closed. Stdout and stderr
/// go to `tracing`. Both clocks are frozen at zero (time comes from record
/// timestamps), and randomness is a ChaCha stream seeded from `seed`.
fn deny_all_wasi(seed: [u8; 32], output: &Arc<Mutex<GuestOutput>>) -> WasiCtx {
    let insecure_seed = derive_seed(&seed, b"insecure");
    let mut insecure_random_seed = [0u8; 16];
    insecure_random_seed.copy_from_slice(&derive_seed(&seed, b"insecure-seed")[..16]);
    WasiCtxBuilder::new()
        .stdout(GuestStdio::stdout(Arc::clone(output)))
        .stderr(GuestStdio::stderr(Arc::clone(output)))
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .secure_random(StdRng::from_seed(seed))
        .insecure_random(StdRng::from_seed(insecure_seed))
        .insecure_random_seed(u128::from_le_bytes(insecure_random_seed))
        .max_random_size(RANDOM_BYTES_MAX)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Derives an independent 32-byte seed from `seed` for `purpose`.
pub(crate) fn derive_seed(seed: &[u8], purpose: &[u8]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(seed);
    context.update(b"\0");
    context.update(purpose);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl world::filter::edgebus::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        output::lock(&self.output).log(level, &message);
    }
}

impl world::filter::edgebus::plugin::state::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        let written = self.state.set(key, value);
        self.refused(written)
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        let written = self.state.delete(key);
        self.refused(written)
    }
}

impl HostState {
    /// A refused state write traps the guest (the WIT `set` cannot fail);
    /// a budget breach is remembered so the trap is reported as one.
    fn refused(&mut self, written: Result<(), StateRefused>) -> wasmtime::Result<()> {
        if let Err(StateRefused::Budget(breach)) = &written {
            self.breach = Some(breach.clone());
        }
        Ok(written?)
    }
}

impl world::filter::edgebus::plugin::types::Host for HostState {}

impl world::filter2::edgebus::plugin::log::Host for HostState {
    fn log(&mut self, level: world::filter2::edgebus::plugin::log::Level, message: String) {
        use world::filter2::edgebus::plugin::log::Level as V2;
        let level = match level {
            V2::Trace => Level::Trace,
            V2::Debug => Level::Debug,
            V2::Info => Level::Info,
            V2::Warn => Level::Warn,
            V2::Error => Level::Error,
        };
        output::lock(&self.output).log(level, &message);
    }
}

impl world::filter2::edgebus::plugin::state::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        let written = self.state.set(key, value);
        self.refused(written)
    }

    fn set_expiring(&mut self, key: Vec<u8>, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<()> {
        let written = self.state.set_expiring(key, value, ttl_ms);
        self.refused(written)
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        let written = self.state.delete(key);
        self.refused(written)
    }

    fn list(
        &mut self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Vec<world::filter2::edgebus::plugin::state::Entry> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.state
            .list(&prefix, after.as_deref(), limit)
            .into_iter()
            .map(|(key, value)| world::filter2::edgebus::plugin::state::Entry { key, value })
            .collect()
    }
}

impl world::filter2::edgebus::plugin::budget::Host for HostState {
    fn remaining(&mut self) -> world::filter2::edgebus::plugin::budget::Room {
        let (state_bytes, state_keys) = self.state.room();
        let (output_records, output_bytes) = self.output_room;
        world::filter2::edgebus::plugin::budget::Room {
            state_bytes,
            state_keys,
            output_records,
            output_bytes,
        }
    }
}

impl world::filter2::edgebus::plugin::types::Host for HostState {}

/// A clock stuck at zero, for both `wasi:clocks` interfaces: plugins must
/// take time from record timestamps so replays are deterministic.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// A pollable that is always ready: what a zero-length sleep subscribes to.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// Wraps [`StoreLimits`] to remember that the guest hit its memory cap, so
/// the trap that follows is reported as [`MemoryLimit`] rather than as a
/// generic trap.
///
/// [`MemoryLimit`]: crate::PluginError::MemoryLimit
pub(crate) struct MemoryLimiter {
    limits: StoreLimits,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    fn new(memory_max_bytes: usize) -> MemoryLimiter {
        MemoryLimiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_max_bytes)
                .trap_on_grow_failure(true)
                .build(),
            exceeded: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.limits.memory_growing(current, desired, maximum);
        if !matches!(verdict, Ok(true)) {
            self.exceeded = true;
        }
        verdict
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.exceeded = true;
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Builds the linker every plugin is instantiated against: WASIp2 with the
/// sleeping functions replaced, plus the imports of both package versions
/// (0.1: `log`, `state`; 0.2: `log`, `state`, `budget`), which live under
/// different names side by side.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    world::filter::Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |host| {
        host
    })?;
    world::filter2::Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |host| {
        host
    })?;
    forbid_sleep(&mut linker)?;
    Ok(linker)
}

/// Replaces `subscribe-duration` and `subscribe-instant`.
///
/// `wasmtime-wasi` implements them with real timers, and a guest that
/// blocks on one is not interrupted by the epoch deadline (it is waiting in
/// host code), so `thread::sleep(1h)` would hold a broker thread for an
/// hour. Here a zero-length wait is ready at once and any other wait traps.
fn forbid_sleep(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK_INTERFACE)?;
    clock.func_wrap(
        "subscribe-duration",
        |store: StoreContextMut<'_, HostState>, (nanos,): (u64,)| ready_or_trap(store, nanos == 0),
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |store: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            ready_or_trap(store, when <= HostMonotonicClock::now(&FrozenClock))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn ready_or_trap(
    mut store: StoreContextMut<'_, HostState>,
    elapsed: bool,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    if !elapsed {
        wasmtime::bail!(
            "plugins cannot sleep or wait on a clock: take time from record timestamps"
        );
    }
    let table = &mut store.data_mut().table;
    let ready = table.push(Ready)?;
    Ok((wasmtime_wasi::p2::subscribe(table, ready)?,))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budgets, LogBudget, StateLedger};
    use crate::engine::{Engine, EngineConfig};
    use crate::state::MemState;
    use wasmtime::Store;
    use wasmtime::component::Component;

    /// A component that imports `subscribe-duration` at an older 0.2.x
    /// version than the host's, and exports `sleep(nanos)` calling it.
    const SLEEPER: &str = r#"
        (component
          (import "wasi:io/poll@0.2.0" (instance $poll
            (export "pollable" (type (sub resource)))
          ))
          (alias export $poll "pollable" (type $pollable))
          (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
            (alias outer 1 $pollable (type $p))
            (export "pollable" (type $pe (eq $p)))
            (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))
          ))
          (core func $subscribe (canon lower (func $clock "subscribe-duration")))
          (core module $m
            (import "clock" "subscribe-duration" (func $subscribe (param i64) (result i32)))
            (func (export "sleep") (param i64) local.get 0 call $subscribe drop)
          )
          (core instance $i (instantiate $m
            (with "clock" (instance (export "subscribe-duration" (func $subscribe))))
          ))
          (func (export "sleep") (param "nanos" u64) (canon lift (core func $i "sleep")))
        )
    "#;

    fn call_sleep(nanos: u64) -> wasmtime::Result<()> {
        let engine = Engine::new(EngineConfig::default()).map_err(wasmtime::Error::new)?;
        let inner = engine.inner();
        let component = Component::new(&inner.engine, wat::parse_str(SLEEPER)?)?;
        let host = HostState::new(
            Arc::from("sleeper"),
            [0; 32],
            inner.config.memory_max_bytes,
            StateLayer::new(
                Box::new(MemState::new()),
                1024,
                StateLedger::shared(&Budgets::default()),
            ),
            LogBudget::shared(&Budgets::default()),
        );
        let mut store = Store::new(&inner.engine, host);
        store.set_epoch_deadline(inner.deadline_ticks);
        let instance = inner.linker.instantiate(&mut store, &component)?;
        let sleep = instance.get_typed_func::<(u64,), ()>(&mut store, "sleep")?;
        sleep.call(&mut store, (nanos,))
    }

    #[test]
    fn subscribe_duration_nonzero_traps_instead_of_blocking() {
        let started = std::time::Instant::now();
        let error = call_sleep(3_600_000_000_000).expect_err("a one-hour sleep must trap");
        assert!(format!("{error:#}").contains("plugins cannot sleep"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn subscribe_duration_zero_is_ready_at_once() {
        assert!(call_sleep(0).is_ok());
    }
}
