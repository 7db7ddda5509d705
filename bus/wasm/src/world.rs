//! Host bindings generated from `wit/plugin.wit`, and the conversions
//! between [`PluginRecord`] and the generated record types.
//!
//! Both worlds are generated from the same WIT package. They share the
//! `log` and `state` interfaces (one host implementation serves both), but
//! each has its own record types because bindgen borrows the records the
//! host passes in (`Borrowing` ownership): a batch is lowered straight from
//! the host's buffers into guest memory, with no intermediate copy.
//!
//! The generated code calls `TypedFunc::new_unchecked` after it has
//! type-checked each export, hence the `unsafe_code` allowance, which is
//! scoped to the generated modules.

use crate::record::PluginRecord;

/// Bindings for the `filter` world: a batch in, a keep mask out.
#[allow(unsafe_code, missing_docs)]
pub(crate) mod filter {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        // Writes may trap: a guest that writes more state in one call than
        // the per-call budget is stopped rather than growing host memory.
        imports: {
            "edgebus:plugin/state.set": trappable,
            "edgebus:plugin/state.delete": trappable,
        },
    });
}

/// Bindings for the `transform` world: a batch in, zero or more records out
/// per input.
#[allow(unsafe_code, missing_docs)]
pub(crate) mod transform {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "edgebus:plugin/log": super::filter::edgebus::plugin::log,
            "edgebus:plugin/state": super::filter::edgebus::plugin::state,
        },
    });
}

pub(crate) use filter::edgebus::plugin::log::Level;
use filter::edgebus::plugin::types as filter_types;
use transform::edgebus::plugin::types as transform_types;

/// Calls `f` with `batch` borrowed as the filter world's records.
///
/// Headers are the only part that needs a new allocation: the WIT record
/// holds a slice of header structs, so one `Vec` per record is built and
/// borrowed; keys, values and header bytes are not copied.
pub(crate) fn with_filter_records<R>(
    batch: &[PluginRecord],
    f: impl FnOnce(&[filter_types::Record<'_>]) -> R,
) -> R {
    let headers: Vec<Vec<filter_types::Header<'_>>> = batch
        .iter()
        .map(|record| {
            record
                .headers
                .iter()
                .map(|(key, value)| filter_types::Header { key, value })
                .collect()
        })
        .collect();
    let records: Vec<filter_types::Record<'_>> = batch
        .iter()
        .zip(&headers)
        .map(|(record, headers)| filter_types::Record {
            key: record.key.as_deref(),
            value: &record.value,
            headers,
            timestamp_ms: record.timestamp_ms,
            offset: record.offset,
            partition: record.partition,
        })
        .collect();
    f(&records)
}

/// Calls `f` with `batch` borrowed as the transform world's records; see
/// [`with_filter_records`].
pub(crate) fn with_transform_records<R>(
    batch: &[PluginRecord],
    f: impl FnOnce(&[transform_types::RecordParam<'_>]) -> R,
) -> R {
    let headers: Vec<Vec<transform_types::HeaderParam<'_>>> = batch
        .iter()
        .map(|record| {
            record
                .headers
                .iter()
                .map(|(key, value)| transform_types::HeaderParam { key, value })
                .collect()
        })
        .collect();
    let records: Vec<transform_types::RecordParam<'_>> = batch
        .iter()
        .zip(&headers)
        .map(|(record, headers)| transform_types::RecordParam {
            key: record.key.as_deref(),
            value: &record.value,
            headers,
            timestamp_ms: record.timestamp_ms,
            offset: record.offset,
            partition: record.partition,
        })
        .collect();
    f(&records)
}

/// Takes ownership of a record a transform returned.
///
/// Offset and partition are dropped: the WIT contract says they are ignored
/// on returned records, because only the log assigns them.
pub(crate) fn from_transform_record(record: transform_types::RecordResult) -> PluginRecord {
    PluginRecord {
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|header| (header.key, header.value))
            .collect(),
        timestamp_ms: record.timestamp_ms,
        offset: None,
        partition: None,
    }
}

/// Borrows `params` as the WIT `param` list that `init` takes, for either
/// world (the two generated `Param` types have the same shape).
pub(crate) fn filter_params(params: &[(String, String)]) -> Vec<filter_types::Param<'_>> {
    params
        .iter()
        .map(|(key, value)| filter_types::Param { key, value })
        .collect()
}

/// See [`filter_params`].
pub(crate) fn transform_params(params: &[(String, String)]) -> Vec<transform_types::Param<'_>> {
    params
        .iter()
        .map(|(key, value)| transform_types::Param { key, value })
        .collect()
}
