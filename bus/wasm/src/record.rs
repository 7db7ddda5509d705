//! The host's view of a record crossing into and out of a plugin.

use bytes::Bytes;

/// One record as plugins see it, owned by the host.
///
/// It mirrors the WIT `record` type field for field, so the broker hands
/// its stored bytes over without copying them (`Bytes` share the batch's
/// buffer) and this crate lowers them into guest memory with one copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginRecord {
    /// Optional key; records with the same key share a partition.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers, in order; names may repeat.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch, set by the producer or at append.
    pub timestamp_ms: i64,
    /// The record's offset in its partition, on the read path and in
    /// pipelines. `None` on ingest, and on every record a transform returns.
    pub offset: Option<u64>,
    /// The record's partition, on the read path and in pipelines. `None` on
    /// ingest, and on every record a transform returns.
    pub partition: Option<u32>,
}

impl PluginRecord {
    /// A record with just a value, as a producer would send it on ingest.
    pub fn with_value(value: impl Into<Bytes>) -> PluginRecord {
        PluginRecord {
            value: value.into(),
            ..PluginRecord::default()
        }
    }

    /// The value of the first header named `key`, if any.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_ref())
    }
}
