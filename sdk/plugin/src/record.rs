//! [`Record`], the owned form of the WIT `record` that plugins read and build.

use serde_json::Value;

/// The record's value is not a JSON document.
#[derive(Debug, thiserror::Error)]
#[error("record value is not JSON: {source}")]
pub struct NotJson {
    /// What serde_json reported.
    #[from]
    pub source: serde_json::Error,
}

impl From<NotJson> for String {
    fn from(error: NotJson) -> Self {
        error.to_string()
    }
}

/// A record as a plugin sees it: the WIT `record` with plain Rust types.
///
/// The fields are public because a plugin reads and rewrites them freely;
/// the builder methods exist for transforms that make new records and for
/// tests. `offset` and `partition` are set on the read path and in
/// pipelines, absent on ingest, and ignored on records a transform returns:
/// the broker assigns them on append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Optional key; records with the same key share a partition.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// Application headers as `(name, value)`, in order. Names may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the Unix epoch, set by the producer or at append.
    /// Plugins see no wall clock, so this is their only notion of time.
    pub timestamp_ms: i64,
    /// The record's offset in its partition, where it has one.
    pub offset: Option<u64>,
    /// The record's partition, where it has one.
    pub partition: Option<u32>,
}

impl Record {
    /// A keyless record with `value`, no headers and timestamp 0.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header, keeping any others of the same name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the offset, as the read path and pipelines do.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Sets the partition, as the read path and pipelines do.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The value parsed as a JSON document. With `?` in a plugin method,
    /// a non-JSON value fails the batch; match on the result instead to
    /// drop or pass such records.
    pub fn json(&self) -> Result<Value, NotJson> {
        Ok(serde_json::from_slice(&self.value)?)
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// Replaces every header called `name` with one header holding `value`,
    /// appended last.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.retain(|(key, _)| key != name);
        self.headers.push((name.to_owned(), value.into()));
    }

    /// Removes every header called `name`; returns how many there were.
    pub fn remove_header(&mut self, name: &str) -> usize {
        let before = self.headers.len();
        self.headers.retain(|(key, _)| key != name);
        before - self.headers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_builders_set_every_field() {
        let record = Record::new("v")
            .with_key("k")
            .with_header("h", "1")
            .with_timestamp_ms(42)
            .with_offset(7)
            .with_partition(3);
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.value, b"v");
        assert_eq!(record.headers, vec![("h".to_owned(), b"1".to_vec())]);
        assert_eq!(record.timestamp_ms, 42);
        assert_eq!(record.offset, Some(7));
        assert_eq!(record.partition, Some(3));
    }

    #[test]
    fn json_with_document_parses_value() {
        let document = Record::new(r#"{"celsius": 21.5}"#).json().unwrap();
        assert_eq!(document["celsius"], 21.5);
    }

    #[test]
    fn json_with_garbage_reports_not_json() {
        let error: String = Record::new("21.5 C").json().unwrap_err().into();
        assert!(error.starts_with("record value is not JSON: "), "{error}");
    }

    #[test]
    fn header_with_repeated_name_returns_first() {
        let record = Record::new("").with_header("h", "1").with_header("h", "2");
        assert_eq!(record.header("h"), Some(&b"1"[..]));
        assert_eq!(record.header("missing"), None);
    }

    #[test]
    fn set_header_with_existing_name_replaces_all() {
        let mut record = Record::new("")
            .with_header("h", "1")
            .with_header("other", "x")
            .with_header("h", "2");
        record.set_header("h", "3");
        assert_eq!(
            record.headers,
            vec![
                ("other".to_owned(), b"x".to_vec()),
                ("h".to_owned(), b"3".to_vec())
            ]
        );
    }

    #[test]
    fn remove_header_with_repeated_name_counts_removed() {
        let mut record = Record::new("").with_header("h", "1").with_header("h", "2");
        assert_eq!(record.remove_header("h"), 2);
        assert_eq!(record.remove_header("h"), 0);
        assert!(record.headers.is_empty());
    }
}
