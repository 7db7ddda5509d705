//! Test plugin (filter): `init` succeeds, `filter` allocates 1 MiB blocks
//! into a static until the allocator fails, which traps the instance.
//!
//! The broker's tests attach it to check the per-instance memory cap: the
//! call must trap instead of growing the broker's memory. Parameters are
//! ignored.

use edgebus_plugin::prelude::*;
use std::sync::{Mutex, PoisonError};

/// Size of each block kept.
pub const BLOCK_BYTES: usize = 1 << 20;

// A static, so that nothing the instance could free ever owns the blocks.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A filter that never stops allocating.
pub struct MemoryHog;

impl Filter for MemoryHog {
    fn init(_params: &Params) -> Result<Self, String> {
        Ok(MemoryHog)
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        let mut hoard = HOARD.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // Non-zero bytes, so every page is written, not just reserved.
            hoard.push(vec![0xa5; BLOCK_BYTES]);
        }
    }
}

export_filter!(MemoryHog);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::FilterHarness;

    #[test]
    fn init_with_any_params_succeeds() {
        assert!(FilterHarness::<MemoryHog>::new(&[]).is_ok());
        assert!(FilterHarness::<MemoryHog>::new(&[("anything", "x")]).is_ok());
    }
}
