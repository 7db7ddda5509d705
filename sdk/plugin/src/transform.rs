//! [`Transform`], the trait a transform plugin implements.

use crate::{Params, Record};

/// A plugin that maps, flat-maps or filter-maps records (the WIT
/// `transform` world).
///
/// Implement [`init`](Self::init) and [`transform`](Self::transform), then
/// export the type with [`export_transform!`](crate::export_transform). The
/// broker makes one instance per attachment, calls `init` once with the
/// attachment's parameters, then hands it batches.
///
/// An `Err` from any method rejects the whole batch (on ingest, the
/// producer sees the message), so return one only for what the operator
/// must fix; a record the plugin cannot read is better dropped (return no
/// records for it), perhaps with a [`log::warn`](crate::log::warn). A panic
/// traps the instance, and the topic's failure policy decides what happens
/// to the batch.
pub trait Transform: Sized {
    /// Validates `params` and builds the instance. An error is shown to the
    /// operator and the plugin is not attached.
    fn init(params: &Params) -> Result<Self, String>;

    /// The records `record` becomes: none drops it, one maps it, several fan
    /// it out. The broker assigns offsets and partitions to the output, so
    /// those fields are ignored.
    fn transform(&mut self, record: Record) -> Result<Vec<Record>, String>;

    /// For each record of `batch` in order, the records it becomes. The
    /// default calls [`transform`](Self::transform) on each; override it to
    /// work on the batch as a whole.
    fn transform_batch(&mut self, batch: Vec<Record>) -> Result<Vec<Vec<Record>>, String> {
        batch
            .into_iter()
            .map(|record| self.transform(record))
            .collect()
    }
}

/// Runs one batch through `plugin` and checks that it answered for every
/// input, so a faulty `transform_batch` is reported here rather than
/// misread by the host.
pub(crate) fn run_batch<P: Transform>(
    plugin: &mut P,
    batch: Vec<Record>,
) -> Result<Vec<Vec<Record>>, String> {
    let inputs = batch.len();
    let outputs = plugin.transform_batch(batch)?;
    if outputs.len() != inputs {
        return Err(format!(
            "transform_batch returned {} outputs for {} records",
            outputs.len(),
            inputs
        ));
    }
    Ok(outputs)
}
