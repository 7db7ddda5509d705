//! Which partition a keyed record goes to.
//!
//! Producers and the broker (a pipeline writing keyed output) must send a
//! key to the same partition, so this one function decides for both.

/// The stable partition for a key: CRC32C of the key modulo `partitions`
/// (a topic with no partitions is treated as having one).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping is part of the protocol: changing it would move keys
    /// to other partitions and break per-key order across an upgrade.
    #[test]
    fn partition_for_key_is_crc32c_modulo_partitions() {
        assert_eq!(
            crc32c::crc32c(b"sensor-1") % 4,
            partition_for_key(b"sensor-1", 4)
        );
        assert_eq!(partition_for_key(b"sensor-1", 0), 0);
        assert_eq!(partition_for_key(b"", 7), crc32c::crc32c(b"") % 7);
    }
}
