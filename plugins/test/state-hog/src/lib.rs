//! Test plugin (filter): keeps every record, and for each one stores a
//! fresh value of `value_bytes` bytes (default 65536) under a key never
//! used before.
//!
//! The broker's tests attach it to check the state budget of an
//! attachment: each call writes little, but the total must stay bounded.

use edgebus_plugin::prelude::*;

/// Bytes stored per record unless `value_bytes` says otherwise.
pub const DEFAULT_VALUE_BYTES: u64 = 64 * 1024;

/// A filter whose state grows by one key per record.
pub struct StateHog {
    value: Vec<u8>,
    next: u64,
}

impl Filter for StateHog {
    fn init(params: &Params) -> Result<Self, String> {
        let bytes = params
            .get_u64("value_bytes")?
            .unwrap_or(DEFAULT_VALUE_BYTES);
        Ok(StateHog {
            value: vec![0x5a; bytes as usize],
            next: 0,
        })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        // The counter restarts with each instance; the record's value keeps
        // keys fresh across replaced instances too.
        let mut key = self.next.to_be_bytes().to_vec();
        key.extend_from_slice(&record.value);
        self.next += 1;
        state::set(&key, &self.value);
        Ok(true)
    }
}

export_filter!(StateHog);
