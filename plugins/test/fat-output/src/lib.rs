//! Test plugin (transform): replaces every record with one that has a key
//! of `key_bytes` bytes (default 4 MiB) and `headers` headers (default
//! 10000).
//!
//! The broker's tests attach it to check that plugin output is held to
//! the topic's limits, as a producer's records are.

use edgebus_plugin::prelude::*;

/// A transform whose records break the topic's limits.
pub struct FatOutput {
    key: Vec<u8>,
    headers: usize,
}

impl Transform for FatOutput {
    fn init(params: &Params) -> Result<Self, String> {
        let key_bytes = params.get_u64("key_bytes")?.unwrap_or(4 << 20);
        let headers = params.get_u64("headers")?.unwrap_or(10_000);
        Ok(FatOutput {
            key: vec![b'k'; key_bytes as usize],
            headers: headers as usize,
        })
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        record.key = Some(self.key.clone());
        record.headers = (0..self.headers)
            .map(|i| (format!("h{i}"), b"v".to_vec()))
            .collect();
        Ok(vec![record])
    }
}

export_transform!(FatOutput);
