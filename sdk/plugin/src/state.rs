//! Key-value state for stateful plugins (windows, deduplication).
//!
//! Each attachment of a plugin has its own state. In a pipeline, state
//! changes commit in the same transaction as the output records and the
//! source offset, so they are exactly-once; if a batch fails, its changes
//! are rolled back with it. A plugin should therefore keep what must
//! survive a batch here, not in its own fields, which a failed batch does
//! not roll back and a restart or hot swap empties.
//!
//! Keys can expire ([`set_expiring`]): time is event time, the largest
//! record timestamp the attachment was given so far, so an expired key is
//! gone the same way when a pipeline replays. [`list`] walks keys in
//! bounded pages. On a topic's ingest chain the broker stores state after
//! the batch's records, so a broker restart keeps it.
//!
//! Integers are stored as 8 bytes, big-endian, so they read the same from
//! any plugin version. In native builds the store is an in-memory map (see
//! [`crate::testing`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a stored value could not be read or written in the requested form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The stored value is not an 8-byte integer.
    #[error("state under key `{}` is {len} bytes, not an 8-byte integer", .key.escape_ascii())]
    NotAnInteger {
        /// The key read.
        key: Vec<u8>,
        /// The stored value's length.
        len: usize,
    },
    /// The value could not be converted from or to JSON.
    #[error("state under key `{}` is not the expected JSON: {source}", .key.escape_ascii())]
    Json {
        /// The key read or written.
        key: Vec<u8>,
        /// What serde_json reported.
        source: serde_json::Error,
    },
}

impl From<StateError> for String {
    fn from(error: StateError) -> Self {
        error.to_string()
    }
}

/// The value stored under `key`, if any.
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    crate::host::state_get(key)
}

/// Stores `value` under `key`.
pub fn set(key: &[u8], value: &[u8]) {
    crate::host::state_set(key, value);
}

/// Removes `key`.
pub fn delete(key: &[u8]) {
    crate::host::state_delete(key);
}

/// Stores `value` under `key` until `ttl_ms` milliseconds of event time
/// after the newest record timestamp seen so far; then the key is gone,
/// and its bytes no longer count against the state budget.
pub fn set_expiring(key: &[u8], value: &[u8], ttl_ms: u64) {
    crate::host::state_set_expiring(key, value, ttl_ms);
}

/// Up to `limit` live entries (never more than 1,000) whose key starts with
/// `prefix` and sorts after `after`, in key order. Pass the last key
/// returned as `after` for the next page; a page shorter than `limit`
/// is the last.
pub fn list(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    crate::host::state_list(prefix, after, limit)
}

/// The unsigned integer stored under `key` by [`set_u64`], if any.
pub fn get_u64(key: &[u8]) -> Result<Option<u64>, StateError> {
    get_integer(key).map(|bytes| bytes.map(u64::from_be_bytes))
}

/// Stores an unsigned integer under `key`.
pub fn set_u64(key: &[u8], value: u64) {
    set(key, &value.to_be_bytes());
}

/// The signed integer stored under `key` by [`set_i64`], if any.
pub fn get_i64(key: &[u8]) -> Result<Option<i64>, StateError> {
    get_integer(key).map(|bytes| bytes.map(i64::from_be_bytes))
}

/// Stores a signed integer under `key`.
pub fn set_i64(key: &[u8], value: i64) {
    set(key, &value.to_be_bytes());
}

/// The value stored under `key` by [`set_json`], if any.
pub fn get_json<T: DeserializeOwned>(key: &[u8]) -> Result<Option<T>, StateError> {
    get(key)
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|source| StateError::Json {
                key: key.to_vec(),
                source,
            })
        })
        .transpose()
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(value).map_err(|source| StateError::Json {
        key: key.to_vec(),
        source,
    })?;
    set(key, &bytes);
    Ok(())
}

fn get_integer(key: &[u8]) -> Result<Option<[u8; 8]>, StateError> {
    get(key)
        .map(|bytes| {
            <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| StateError::NotAnInteger {
                key: key.to_vec(),
                len: bytes.len(),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn get_after_set_and_delete_follows_writes() {
        assert_eq!(get(b"k"), None);
        set(b"k", b"v");
        assert_eq!(get(b"k"), Some(b"v".to_vec()));
        delete(b"k");
        assert_eq!(get(b"k"), None);
    }

    #[test]
    fn integers_after_set_read_back_big_endian() {
        set_u64(b"u", 258);
        assert_eq!(get(b"u"), Some(vec![0, 0, 0, 0, 0, 0, 1, 2]));
        assert_eq!(get_u64(b"u").unwrap(), Some(258));
        set_i64(b"i", -5);
        assert_eq!(get_i64(b"i").unwrap(), Some(-5));
        assert_eq!(get_u64(b"absent").unwrap(), None);
    }

    #[test]
    fn get_u64_with_wrong_length_reports_key_and_length() {
        set(b"k\n", b"abc");
        let error = get_u64(b"k\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "state under key `k\\n` is 3 bytes, not an 8-byte integer"
        );
    }

    #[test]
    fn json_after_set_round_trips_and_rejects_other_types() {
        let mut map = BTreeMap::new();
        map.insert("a".to_owned(), 1u32);
        set_json(b"j", &map).unwrap();
        assert_eq!(get_json::<BTreeMap<String, u32>>(b"j").unwrap(), Some(map));
        assert!(get_json::<Vec<u32>>(b"j").is_err());
    }

    #[test]
    fn set_json_with_non_string_map_keys_fails() {
        let mut map = BTreeMap::new();
        map.insert(vec![1u8], 1u32);
        assert!(set_json(b"j", &map).is_err());
        assert_eq!(get(b"j"), None);
    }

    #[test]
    fn list_pages_by_prefix_and_after() {
        for key in ["a1", "a2", "a3", "b1"] {
            set(key.as_bytes(), b"v");
        }
        let page = |after: Option<&[u8]>| -> Vec<Vec<u8>> {
            list(b"a", after, 2).into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(page(None), [b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(page(Some(b"a2")), [b"a3".to_vec()]);
    }
}
