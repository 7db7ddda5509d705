//! Running plugins natively in unit tests, without Wasm or a broker.
//!
//! A harness plays the broker's part for one attachment: it calls `init`
//! with parameters, hands over batches through the same length checks the
//! Wasm glue applies, and owns the attachment's state and captured log, so
//! two harnesses in one test are as isolated as two attachments.
//!
//! ```
//! use edgebus_plugin::prelude::*;
//! use edgebus_plugin::testing::{run_filter, FilterHarness};
//!
//! struct NonEmpty;
//! impl Filter for NonEmpty {
//!     fn init(_params: &Params) -> Result<Self, String> {
//!         Ok(NonEmpty)
//!     }
//!     fn filter(&mut self, record: &Record) -> Result<bool, String> {
//!         state::set_u64(b"seen", state::get_u64(b"seen")?.unwrap_or(0) + 1);
//!         Ok(!record.value.is_empty())
//!     }
//! }
//!
//! let mask = run_filter::<NonEmpty>(&[], &[Record::new("a"), Record::new("")]);
//! assert_eq!(mask, Ok(vec![true, false]));
//!
//! let mut harness = FilterHarness::<NonEmpty>::new(&[]).unwrap();
//! harness.filter(&[Record::new("a")]).unwrap();
//! assert_eq!(harness.state().get(&b"seen"[..]), Some(&1u64.to_be_bytes().to_vec()));
//! ```
//!
//! Only in native builds: a guest has the real broker behind it.

use crate::filter;
use crate::host::{NativeHost, with_host};
use crate::log::Level;
use crate::transform;
use crate::{Filter, Params, Record, Transform};
use std::collections::BTreeMap;

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its severity.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// Builds `P` with `params` and runs one batch through it.
pub fn run_filter<P: Filter>(
    params: &[(&str, &str)],
    batch: &[Record],
) -> Result<Vec<bool>, String> {
    FilterHarness::<P>::new(params)?.filter(batch)
}

/// Builds `P` with `params` and runs one batch through it.
pub fn run_transform<P: Transform>(
    params: &[(&str, &str)],
    batch: Vec<Record>,
) -> Result<Vec<Vec<Record>>, String> {
    TransformHarness::<P>::new(params)?.transform(batch)
}

/// One attachment of a filter plugin: the instance, its state and its log.
#[derive(Debug)]
pub struct FilterHarness<P> {
    plugin: P,
    params: Params,
    host: NativeHost,
}

impl<P: Filter> FilterHarness<P> {
    /// Calls `init` with `params`, as attaching the plugin does.
    pub fn new(params: &[(&str, &str)]) -> Result<Self, String> {
        let params: Params = params.iter().copied().collect();
        let mut host = NativeHost::default();
        let plugin = with_host(&mut host, || P::init(&params))?;
        Ok(Self {
            plugin,
            params,
            host,
        })
    }

    /// Runs one batch. Event time first moves to its newest timestamp, and
    /// keys that expired by then are removed, as the broker does.
    pub fn filter(&mut self, batch: &[Record]) -> Result<Vec<bool>, String> {
        self.host
            .advance(batch.iter().map(|record| record.timestamp_ms).max());
        let plugin = &mut self.plugin;
        with_host(&mut self.host, || filter::run_batch(plugin, batch))
    }

    /// Replaces the instance with a fresh `init` on the same parameters and
    /// keeps the state, as a broker restart or hot swap does to a pipeline.
    pub fn restart(&mut self) -> Result<(), String> {
        let params = &self.params;
        self.plugin = with_host(&mut self.host, || P::init(params))?;
        Ok(())
    }

    /// The state as the plugin left it (keys that expired by the last
    /// batch's event time removed).
    pub fn state(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.host.state
    }

    /// Every line logged so far, `init` included.
    pub fn logs(&self) -> &[LogLine] {
        &self.host.logs
    }
}

/// One attachment of a transform plugin: the instance, its state and its
/// log.
#[derive(Debug)]
pub struct TransformHarness<P> {
    plugin: P,
    params: Params,
    host: NativeHost,
}

impl<P: Transform> TransformHarness<P> {
    /// Calls `init` with `params`, as attaching the plugin does.
    pub fn new(params: &[(&str, &str)]) -> Result<Self, String> {
        let params: Params = params.iter().copied().collect();
        let mut host = NativeHost::default();
        let plugin = with_host(&mut host, || P::init(&params))?;
        Ok(Self {
            plugin,
            params,
            host,
        })
    }

    /// Runs one batch. Event time first moves to its newest timestamp, and
    /// keys that expired by then are removed, as the broker does.
    pub fn transform(&mut self, batch: Vec<Record>) -> Result<Vec<Vec<Record>>, String> {
        self.host
            .advance(batch.iter().map(|record| record.timestamp_ms).max());
        let plugin = &mut self.plugin;
        with_host(&mut self.host, || transform::run_batch(plugin, batch))
    }

    /// Replaces the instance with a fresh `init` on the same parameters and
    /// keeps the state, as a broker restart or hot swap does to a pipeline.
    pub fn restart(&mut self) -> Result<(), String> {
        let params = &self.params;
        self.plugin = with_host(&mut self.host, || P::init(params))?;
        Ok(())
    }

    /// The state as the plugin left it (keys that expired by the last
    /// batch's event time removed).
    pub fn state(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.host.state
    }

    /// Every line logged so far, `init` included.
    pub fn logs(&self) -> &[LogLine] {
        &self.host.logs
    }
}
