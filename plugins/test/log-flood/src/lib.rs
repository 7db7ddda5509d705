//! Test plugin (filter): logs `lines` lines (default 1000) on every record
//! and then panics, which traps the instance.
//!
//! The broker's tests attach it to check that the log budget of an
//! attachment holds across the instances that replace failed ones.

use edgebus_plugin::prelude::*;

/// A filter that floods the log and fails.
pub struct LogFlood {
    lines: u64,
}

impl Filter for LogFlood {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(LogFlood {
            lines: params.get_u64("lines")?.unwrap_or(1000),
        })
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        for i in 0..self.lines {
            log::warn(&format!("log-flood line {i}"));
        }
        panic!("log-flood: failing after {} lines", self.lines);
    }
}

export_filter!(LogFlood);
