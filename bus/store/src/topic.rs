//! Topic validation, defaults, and the stored form of a [`TopicSpec`].
//!
//! Both stores validate a spec before creating the topic, so a bad name or
//! setting is refused the same way whichever store runs. The limits are
//! named constants so the broker and its tests can quote them.

use edgebus_proto::batch::Compression;

use crate::{StoreError, TopicError, TopicSpec};

/// Largest topic name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 200;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Largest `max_message_bytes` a topic may set: 64 MiB.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 64 << 20;
/// `max_message_bytes` of a topic created without one: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1 << 20;
/// `retention_ms` / `retention_bytes` value meaning "no limit".
pub const UNLIMITED: i64 = -1;

/// Checks a topic spec.
///
/// The name is 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]` and not
/// `.` or `..`: names become part of table names and possibly file paths, so
/// separators and traversal are refused. Partitions are 1 to
/// [`MAX_PARTITIONS`]. Each retention setting is [`UNLIMITED`] or positive
/// (zero would delete data as soon as it is written, which is never what a
/// user meant). `max_message_bytes` is 1 to [`MAX_MESSAGE_BYTES_LIMIT`].
pub fn validate(spec: &TopicSpec) -> Result<(), TopicError> {
    check_name(&spec.name).map_err(invalid)?;
    if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
        return Err(invalid(format!(
            "partitions must be 1..={MAX_PARTITIONS}, got {}",
            spec.partitions
        )));
    }
    for (field, value) in [
        ("retention_ms", spec.retention_ms),
        ("retention_bytes", spec.retention_bytes),
    ] {
        if value != UNLIMITED && value <= 0 {
            return Err(invalid(format!(
                "{field} must be -1 (unlimited) or positive, got {value}"
            )));
        }
    }
    if spec.max_message_bytes == 0 || spec.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
        return Err(invalid(format!(
            "max_message_bytes must be 1..={MAX_MESSAGE_BYTES_LIMIT}, got {}",
            spec.max_message_bytes
        )));
    }
    if !spec.compression.is_supported() {
        return Err(invalid(format!(
            "compression {} is not supported; use none, lz4 or zstd",
            spec.compression
        )));
    }
    Ok(())
}

/// Checks that a topic set up as `old` may become `new`: partitions are
/// only ever added, since removing one would drop its records and move
/// the keys that hash to it.
pub fn check_alter(old: &TopicSpec, new: &TopicSpec) -> Result<(), TopicError> {
    if new.partitions < old.partitions {
        return Err(invalid(format!(
            "topic {:?} has {} partitions; partitions can be added, not removed (asked for {})",
            old.name, old.partitions, new.partitions
        )));
    }
    Ok(())
}

/// Checks a name against the rules [`validate`] states, returning the
/// reason it is refused. Consumer groups ([`crate::group::validate_name`]),
/// plugins and pipelines follow the same rules, so a name that is valid in
/// one role is valid in the others and all can be table keys without
/// escaping.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name must be 1..={MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "name {name:?} contains {c:?}; allowed are A-Z a-z 0-9 . _ -"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("name {name:?} is reserved"));
    }
    Ok(())
}

/// The time-retention cutoff of a topic at `now_ms`: a batch whose max
/// timestamp is below it may be deleted. `None` when time retention is off.
pub(crate) fn retention_cutoff_ms(spec: &TopicSpec, now_ms: i64) -> Option<i64> {
    (spec.retention_ms != UNLIMITED).then(|| now_ms.saturating_sub(spec.retention_ms))
}

/// Whether size retention lets the oldest batch go: Kafka's rule, delete it
/// only while the partition stays at or above `retention_bytes` without it,
/// so size retention never takes a partition below its limit.
pub(crate) fn oldest_over_size(spec: &TopicSpec, total_bytes: u64, oldest_bytes: u64) -> bool {
    u64::try_from(spec.retention_bytes)
        .is_ok_and(|limit| total_bytes.saturating_sub(oldest_bytes) >= limit)
}

fn invalid(reason: String) -> TopicError {
    TopicError::Invalid(reason)
}

/// Length of an encoded spec (the name is the table key, not part of it).
const ENCODED_LEN: usize = 1 + 4 + 8 + 8 + 4 + 1;
/// Version byte of the encoding, so a later layout can be told apart.
/// Version 1 (no compression byte) only exists in format 1 stores, which
/// are refused before any topic is read.
const ENCODING_VERSION: u8 = 2;

/// Encodes the settings of a spec for the `topics` table. The name is the
/// key and is not repeated.
///
/// ```text
/// offset size field
///      0    1 version            1
///      1    4 partitions         u32 BE
///      5    8 retention_ms       i64 BE
///     13    8 retention_bytes    i64 BE
///     21    4 max_message_bytes  u32 BE
///     25    1 compression        u8, the batch attributes' codec number
/// ```
pub(crate) fn encode_spec(spec: &TopicSpec) -> [u8; ENCODED_LEN] {
    let mut out = [0u8; ENCODED_LEN];
    out[0] = ENCODING_VERSION;
    out[1..5].copy_from_slice(&spec.partitions.to_be_bytes());
    out[5..13].copy_from_slice(&spec.retention_ms.to_be_bytes());
    out[13..21].copy_from_slice(&spec.retention_bytes.to_be_bytes());
    out[21..25].copy_from_slice(&spec.max_message_bytes.to_be_bytes());
    out[25] = spec.compression.codec();
    out
}

/// Decodes what [`encode_spec`] wrote for the topic `name`.
pub(crate) fn decode_spec(name: &str, bytes: &[u8]) -> Result<TopicSpec, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "topics".to_owned(),
        detail: format!("topic {name:?}: {detail}"),
    };
    let raw: &[u8; ENCODED_LEN] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{} bytes, expected {ENCODED_LEN}", bytes.len())))?;
    if raw[0] != ENCODING_VERSION {
        return Err(corrupt(format!("unknown encoding version {}", raw[0])));
    }
    let u32_at = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let i64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[at..at + 8]);
        i64::from_be_bytes(b)
    };
    Ok(TopicSpec {
        name: name.to_owned(),
        partitions: u32_at(1),
        retention_ms: i64_at(5),
        retention_bytes: i64_at(13),
        max_message_bytes: u32_at(21),
        compression: Compression::from_codec(raw[25])
            .ok_or_else(|| corrupt(format!("unknown compression codec {}", raw[25])))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions: 3,
            retention_ms: UNLIMITED,
            retention_bytes: UNLIMITED,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            compression: Compression::None,
        }
    }

    fn assert_invalid(spec: &TopicSpec) {
        assert!(
            matches!(validate(spec), Err(TopicError::Invalid(_))),
            "{spec:?} should be invalid"
        );
    }

    #[test]
    fn validate_ordinary_spec_accepts() {
        validate(&spec("sensors.temp_v2-eu")).unwrap();
        validate(&spec(&"a".repeat(MAX_NAME_LEN))).unwrap();
    }

    #[test]
    fn validate_bad_name_rejects() {
        for name in ["", ".", "..", "a/b", "a b", "ü", "a\0"] {
            assert_invalid(&spec(name));
        }
        assert_invalid(&spec(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn validate_partition_count_out_of_range_rejects() {
        for partitions in [0, MAX_PARTITIONS + 1] {
            assert_invalid(&TopicSpec {
                partitions,
                ..spec("t")
            });
        }
        validate(&TopicSpec {
            partitions: MAX_PARTITIONS,
            ..spec("t")
        })
        .unwrap();
    }

    #[test]
    fn validate_zero_or_negative_retention_rejects() {
        for value in [0, -2, i64::MIN] {
            assert_invalid(&TopicSpec {
                retention_ms: value,
                ..spec("t")
            });
            assert_invalid(&TopicSpec {
                retention_bytes: value,
                ..spec("t")
            });
        }
        validate(&TopicSpec {
            retention_ms: 1,
            retention_bytes: i64::MAX,
            ..spec("t")
        })
        .unwrap();
    }

    #[test]
    fn validate_max_message_bytes_out_of_range_rejects() {
        for max_message_bytes in [0, MAX_MESSAGE_BYTES_LIMIT + 1] {
            assert_invalid(&TopicSpec {
                max_message_bytes,
                compression: Compression::None,
                ..spec("t")
            });
        }
    }

    #[test]
    fn spec_encoding_roundtrips() {
        let original = TopicSpec {
            name: "orders".to_owned(),
            partitions: 7,
            retention_ms: 86_400_000,
            retention_bytes: -1,
            max_message_bytes: 4096,
            compression: Compression::None,
        };
        let bytes = encode_spec(&original);
        assert_eq!(decode_spec("orders", &bytes).unwrap(), original);
    }

    #[test]
    fn spec_decoding_wrong_length_or_version_is_corrupt() {
        let mut bytes = encode_spec(&spec("t"));
        assert!(matches!(
            decode_spec("t", &bytes[..10]),
            Err(StoreError::Corrupt { .. })
        ));
        bytes[0] = 9;
        assert!(matches!(
            decode_spec("t", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
