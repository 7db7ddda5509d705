//! # edgebus-wasm
//!
//! The plugin runtime: the only crate that touches wasmtime. It loads user
//! WebAssembly components written against `wit/plugin-0.2.wit`
//! (`edgebus:plugin@0.2.0`) or `wit/plugin.wit` (`@0.1.0`), worlds `filter`
//! and `transform`, and runs them on record batches inside a sandbox:
//!
//! - Cranelift only, with a pooling allocator sized for
//!   [`EngineConfig::max_instances`] instances;
//! - a deadline on every call, enforced by epoch interruption from a
//!   background ticker thread;
//! - a memory cap per instance ([`StoreLimits`](wasmtime::StoreLimits)
//!   plus the pool's slot size);
//! - WASI p2 linked with nothing granted: no files, network, environment
//!   or arguments; clocks frozen at zero; randomness seeded from the
//!   plugin's hash and the instance name, so replays are deterministic;
//!   stdout and stderr go to `tracing`, rate-limited;
//! - host imports `log` (to `tracing`, rate-limited), `state` (to the
//!   instance's [`StateStore`], with expiry by event time and bounded
//!   listing in 0.2) and, in 0.2, `budget` (the room left).
//!
//! ```text
//!   Engine::load(wasm) ──▶ Plugin ──instantiate(name, params, state)──▶ Instance
//!   (compile or cache)     (linked,                                    (Store: memory,
//!                           type-checked)                               WASI ctx, state)
//!
//!   Chain = [Instance, Instance, …]: failure isolation, retries, hot swap
//! ```
//!
//! Everything here is synchronous and CPU-bound: the broker calls it from
//! blocking threads.
//!
//! ## Layout
//!
//! - [`engine`]: [`Engine`] and [`EngineConfig`]: wasmtime setup, the
//!   compile cache, the epoch ticker.
//! - [`plugin`]: [`Plugin`], a compiled and type-checked component.
//! - [`instance`]: [`Instance`], one sandboxed guest and its calls.
//! - [`chain`]: [`Chain`], plugins in order with failure
//!   isolation and hot swap.
//! - [`budget`]: [`Budgets`] each chain lives within across calls and
//!   retries (state, output per batch, log rate), and the [`Breach`] a
//!   plugin that goes over one is failed with.
//! - [`record`]: [`PluginRecord`], the host's record type.
//! - [`state`]: [`StateStore`] and the in-memory [`MemState`].
//! - [`error`]: the one error type, [`PluginError`].
//! - `host`, `output`, `world` (private): the store data and WASI context,
//!   guest output to `tracing`, and the bindings generated from the WIT.
#![warn(missing_docs)]

pub mod budget;
pub mod chain;
pub mod engine;
pub mod error;
mod host;
pub mod instance;
mod output;
pub mod plugin;
pub mod record;
pub mod state;
mod world;

pub use budget::{Breach, Budgets, StateUsage};
pub use chain::{Chain, ChainError, ChainOutput, StageSpec};
pub use engine::{Engine, EngineConfig};
pub use error::PluginError;
pub use instance::{BatchOutput, Instance};
pub use plugin::{InstantiateError, Plugin, PluginKind, WitVersion};
pub use record::PluginRecord;
pub use state::{MemState, Space, StateStore};

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}

    /// The broker moves instances and chains onto blocking threads and
    /// shares engines and plugins between tasks.
    #[test]
    fn public_types_cross_threads() {
        send::<Instance>();
        send::<Chain>();
        send_sync::<Engine>();
        send_sync::<Plugin>();
        send_sync::<PluginError>();
    }
}
