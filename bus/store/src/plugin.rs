//! The plugin registry's versioning, shared by both stores, and the stored
//! form of a [`PluginInfo`] in [`crate::RedbStore`]'s `plugins` table.
//!
//! The description lives apart from the component bytes, so listing the
//! registry reads a few dozen bytes per plugin instead of every component.
//! It is a versioned byte layout rather than a redb tuple so a later field
//! can be added by bumping the version, without migrating the table.

use crate::{PluginInfo, StoreError};

/// The description of a component stored under `name`, replacing
/// `previous`: version 1 for a new name, else the previous version + 1, so
/// the broker can tell a replacement from the plugin it has loaded.
pub(crate) fn next_info(
    previous: Option<&PluginInfo>,
    name: &str,
    kind: &str,
    hash: &str,
    wasm: &[u8],
    now_ms: i64,
) -> Result<PluginInfo, StoreError> {
    let version = match previous {
        None => 1,
        Some(old) => old.version.checked_add(1).ok_or_else(|| {
            StoreError::Backend(format!("plugin {name:?} has used every version number"))
        })?,
    };
    Ok(PluginInfo {
        name: name.to_owned(),
        version,
        hash: hash.to_owned(),
        kind: kind.to_owned(),
        size_bytes: wasm.len() as u64,
        added_ms: now_ms,
    })
}

/// Version byte of the encoding, so a later layout can be told apart.
const ENCODING_VERSION: u8 = 1;
/// Bytes before the kind: version, plugin version, size, added, kind length.
const FIXED_LEN: usize = 1 + 4 + 8 + 8 + 8;

/// Encodes a description for the `plugins` table. The name is the key and
/// is not repeated. Big-endian throughout:
///
/// ```text
/// offset   size field
///      0      1 encoding version 1
///      1      4 version          u32
///      5      8 size_bytes       u64
///     13      8 added_ms         i64
///     21      8 kind length      u64
///     29      n kind             UTF-8
///   29+n   rest hash             UTF-8
/// ```
///
/// The kind's length is a u64 so any string encodes without a fallible
/// conversion; the hash runs to the end, so it needs none.
pub(crate) fn encode_info(info: &PluginInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + info.kind.len() + info.hash.len());
    out.push(ENCODING_VERSION);
    out.extend_from_slice(&info.version.to_be_bytes());
    out.extend_from_slice(&info.size_bytes.to_be_bytes());
    out.extend_from_slice(&info.added_ms.to_be_bytes());
    out.extend_from_slice(&(info.kind.len() as u64).to_be_bytes());
    out.extend_from_slice(info.kind.as_bytes());
    out.extend_from_slice(info.hash.as_bytes());
    out
}

/// Decodes what [`encode_info`] wrote for the plugin `name`; anything else
/// is [`StoreError::Corrupt`].
pub(crate) fn decode_info(name: &str, bytes: &[u8]) -> Result<PluginInfo, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "plugins".to_owned(),
        detail: format!("plugin {name:?}: {detail}"),
    };
    let Some((fixed, rest)) = bytes.split_first_chunk::<FIXED_LEN>() else {
        return Err(corrupt(format!("{} bytes, too short", bytes.len())));
    };
    if fixed[0] != ENCODING_VERSION {
        return Err(corrupt(format!("unknown encoding version {}", fixed[0])));
    }
    let field = |at: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fixed[at..at + 8]);
        b
    };
    let kind_len = u64::from_be_bytes(field(21));
    let (kind, hash) = usize::try_from(kind_len)
        .ok()
        .and_then(|len| rest.split_at_checked(len))
        .ok_or_else(|| corrupt(format!("kind of {kind_len} bytes in {}", rest.len())))?;
    let text = |field: &str, raw: &[u8]| {
        String::from_utf8(raw.to_vec()).map_err(|e| corrupt(format!("{field}: {e}")))
    };
    Ok(PluginInfo {
        name: name.to_owned(),
        version: u32::from_be_bytes([fixed[1], fixed[2], fixed[3], fixed[4]]),
        hash: text("hash", hash)?,
        kind: text("kind", kind)?,
        size_bytes: u64::from_be_bytes(field(5)),
        added_ms: i64::from_be_bytes(field(13)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "redact".to_owned(),
            version: 7,
            hash: "ab".repeat(32),
            kind: "transform".to_owned(),
            size_bytes: 123_456,
            added_ms: -5,
        }
    }

    #[test]
    fn info_encoding_roundtrips() {
        let original = info();
        assert_eq!(
            decode_info("redact", &encode_info(&original)).unwrap(),
            original
        );
        let empty_strings = PluginInfo {
            hash: String::new(),
            kind: String::new(),
            ..info()
        };
        assert_eq!(
            decode_info("redact", &encode_info(&empty_strings)).unwrap(),
            empty_strings
        );
    }

    #[test]
    fn info_decoding_bad_bytes_is_corrupt() {
        let good = encode_info(&info());
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        let mut kind_too_long = good.clone();
        kind_too_long[21..29].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut bad_utf8 = good.clone();
        bad_utf8[FIXED_LEN] = 0xff;
        for bad in [
            &good[..FIXED_LEN - 1],
            &wrong_version[..],
            &kind_too_long[..],
            &bad_utf8[..],
        ] {
            assert!(
                matches!(decode_info("redact", bad), Err(StoreError::Corrupt { .. })),
                "{bad:?} should be corrupt"
            );
        }
    }
}
