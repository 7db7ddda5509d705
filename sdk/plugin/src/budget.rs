//! What the attachment may still use: the broker's budgets, seen from the
//! plugin, so a well-behaved plugin can adapt (stop caching, expire keys
//! sooner, emit less) before a write or an output over budget stops it.
//!
//! In native builds nothing is budgeted and every room is `u64::MAX`.

/// Room left under the attachment's budgets, at the moment of asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes of keys and values the state may still grow by.
    pub state_bytes: u64,
    /// Keys the state may still gain.
    pub state_keys: u64,
    /// Records this plugin may still return for the batch in hand.
    pub output_records: u64,
    /// Bytes (keys, values, headers) it may still return for the batch.
    pub output_bytes: u64,
}

/// The room left now.
pub fn remaining() -> Room {
    crate::host::budget_room()
}
