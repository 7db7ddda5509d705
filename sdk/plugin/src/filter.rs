//! [`Filter`], the trait a filter plugin implements.

use crate::{Params, Record};

/// A plugin that keeps or drops records (the WIT `filter` world).
///
/// Implement [`init`](Self::init) and [`filter`](Self::filter), then export
/// the type with [`export_filter!`](crate::export_filter). The broker makes
/// one instance per attachment, calls `init` once with the attachment's
/// parameters, then hands it batches.
///
/// An `Err` from any method rejects the whole batch (on ingest, the
/// producer sees the message), so return one only for what the operator
/// must fix; a record the plugin cannot read is better dropped, perhaps
/// with a [`log::warn`](crate::log::warn). A panic traps the instance, and
/// the topic's failure policy decides what happens to the batch.
pub trait Filter: Sized {
    /// Validates `params` and builds the instance. An error is shown to the
    /// operator and the plugin is not attached.
    fn init(params: &Params) -> Result<Self, String>;

    /// Whether to keep `record`.
    fn filter(&mut self, record: &Record) -> Result<bool, String>;

    /// One flag per record of `batch`, in order. The default calls
    /// [`filter`](Self::filter) on each; override it to work on the batch
    /// as a whole.
    fn filter_batch(&mut self, batch: &[Record]) -> Result<Vec<bool>, String> {
        batch.iter().map(|record| self.filter(record)).collect()
    }
}

/// Runs one batch through `plugin` and checks the mask's length, so a
/// faulty `filter_batch` is reported here rather than misread by the host.
pub(crate) fn run_batch<P: Filter>(plugin: &mut P, batch: &[Record]) -> Result<Vec<bool>, String> {
    let mask = plugin.filter_batch(batch)?;
    if mask.len() != batch.len() {
        return Err(format!(
            "filter_batch returned {} flags for {} records",
            mask.len(),
            batch.len()
        ));
    }
    Ok(mask)
}
