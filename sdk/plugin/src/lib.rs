//! # edgebus-plugin
//!
//! The guest SDK for edgebus plugins: WebAssembly components that the
//! broker runs as filters and transforms on a topic's ingest chain, on a
//! consumer's read path, or in a pipeline between topics. A plugin is one
//! trait impl and one export line:
//!
//! ```
//! use edgebus_plugin::prelude::*;
//!
//! /// Keeps records of at least `min_bytes` bytes.
//! struct MinSize { min_bytes: u64 }
//!
//! impl Filter for MinSize {
//!     fn init(params: &Params) -> Result<Self, String> {
//!         Ok(MinSize { min_bytes: params.get_u64("min_bytes")?.unwrap_or(1) })
//!     }
//!     fn filter(&mut self, record: &Record) -> Result<bool, String> {
//!         Ok(record.value.len() as u64 >= self.min_bytes)
//!     }
//! }
//!
//! export_filter!(MinSize);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate
//! is a `cdylib`); the `.wasm` is already a component. The README beside
//! this crate walks through adding and attaching it.
//!
//! ```text
//!   broker (host)                          plugin (guest)
//!   init(list<param>) ──────────────▶ glue ──▶ Filter::init(&Params)
//!   filter(list<record>) ───────────▶ glue ──▶ Filter::filter_batch(&[Record])
//!   transform(list<record>) ────────▶ glue ──▶ Transform::transform_batch(Vec<Record>)
//!   log / state / budget ◀────────── host ◀─── log::*, state::*, budget::*
//! ```
//!
//! The WIT in `wit/plugin-0.2.wit` is the contract; this crate generates its
//! bindings and hides them behind owned types. The same plugin crate
//! compiles natively, where the export macros only check the trait and the
//! `log` and `state` imports are served from memory, so its logic is tested
//! with plain `cargo test` through [`testing`].
//!
//! ## Layout
//!
//! - [`Filter`] and [`Transform`]: the traits a plugin implements.
//! - [`export_filter!`] and [`export_transform!`]: the export line.
//! - [`Record`] and [`Params`]: what a plugin is given.
//! - [`log`], [`state`] and [`budget`]: the broker's capabilities.
//! - [`json`]: dotted field paths for JSON plugins.
//! - [`testing`]: harnesses that run a plugin natively (not in guests).
//! - [`prelude`]: everything a plugin usually needs, in one `use`.
//! - Internals: `bindings` (wit-bindgen's output, `wasm32` only), `export`
//!   (the glue the export macros expand to), `host` (the seam: WIT imports
//!   in a guest, an in-memory stand-in natively).
#![warn(missing_docs)]

#[cfg(target_arch = "wasm32")]
// Generated code: unsafe canonical-ABI glue, and items (type aliases, the
// `Guest` traits) that wit-bindgen leaves undocumented.
#[allow(unsafe_code, missing_docs)]
mod bindings;
pub mod budget;
mod export;
mod filter;
mod host;
pub mod json;
pub mod log;
mod params;
mod record;
pub mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod transform;

pub use filter::Filter;
pub use params::{ParamError, Params};
pub use record::{NotJson, Record};
pub use transform::Transform;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use export::glue as __private;

/// Everything a plugin usually needs: `use edgebus_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::json::FieldPath;
    pub use crate::{
        Filter, ParamError, Params, Record, Transform, budget, export_filter, export_transform,
        log, state,
    };
}
