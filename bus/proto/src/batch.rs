//! The record-batch format: the unit that producers send, the broker stores
//! and consumers receive, byte for byte.
//!
//! # Layout
//!
//! All fixed-width integers are big-endian.
//!
//! ```text
//! offset size field               notes
//!      0    8 base_offset         u64, assigned by the broker on append; NOT covered by the CRC
//!      8    4 batch_length        u32, bytes that follow this field (total length - 12)
//!     12    4 crc32c              u32, CRC32C (Castagnoli) of bytes [16, end)
//!     16    1 magic               u8, format version, currently 1
//!     17    1 attributes          u8, reserved, must be 0
//!     18    4 record_count        u32, >= 1
//!     22    8 first_timestamp_ms  i64, timestamp of the first record
//!     30    8 max_timestamp_ms    i64, largest record timestamp in the batch
//!     38    8 producer_id         i64, -1 when the producer is not idempotent
//!     46    2 producer_epoch      i16, -1 when not idempotent
//!     48    4 base_sequence       i32, sequence of the first record, -1 when not idempotent
//!     52    . records             record_count records, back to back
//! ```
//!
//! Each record:
//!
//! ```text
//! length              varint u32   bytes of the rest of this record
//! timestamp_delta     varint i64   zigzag, relative to first_timestamp_ms
//! offset_delta        varint u32   must equal the record's index in the batch
//! key_length          varint i32   zigzag, -1 means "no key"
//! key                 bytes
//! value_length        varint u32
//! value               bytes
//! header_count        varint u32
//!   header_key_length   varint u32
//!   header_key          UTF-8
//!   header_value_length varint u32
//!   header_value        bytes
//! ```
//!
//! Varints are unsigned LEB128; signed ones are zigzag-encoded first.
//! Because `base_offset` sits outside the CRC, the broker assigns offsets by
//! overwriting eight bytes, never by re-encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::varint;

/// Length of the fixed batch header.
pub const HEADER_LEN: usize = 52;
/// Current batch format version.
pub const MAGIC: u8 = 1;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `base_sequence` of a batch from a producer that is not idempotent.
pub const NO_SEQUENCE: i32 = -1;

const CRC_START: usize = 16;

/// One header of a record: a UTF-8 key and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// A record as a producer builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Optional key; records with the same key go to the same partition.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Record {
    /// A record with a value only, stamped `timestamp_ms`.
    pub fn new(value: impl Into<Bytes>, timestamp_ms: i64) -> Self {
        Record {
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// A record decoded from a stored batch, with its absolute offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Absolute offset in the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers.
    pub headers: Vec<Header>,
}

/// Idempotence fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// Broker-assigned producer id.
    pub producer_id: i64,
    /// Producer epoch; a newer epoch fences older ones.
    pub producer_epoch: i16,
    /// Sequence of the first record in the batch.
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a batch from a producer that is not idempotent.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        base_sequence: NO_SEQUENCE,
    };

    /// Whether the batch takes part in producer deduplication.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes after the `batch_length` field.
    pub batch_length: u32,
    /// Stored CRC32C of bytes `[16, end)`.
    pub crc: u32,
    /// Format version.
    pub magic: u8,
    /// Reserved flags.
    pub attributes: u8,
    /// Number of records.
    pub record_count: u32,
    /// Timestamp of the first record.
    pub first_timestamp_ms: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp_ms: i64,
    /// Idempotence fields.
    pub producer: ProducerStamp,
}

impl BatchHeader {
    /// Parses the fixed header without checking the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::UnexpectedEof {
                offset: 0,
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_u64(buf, 0),
            batch_length: be_u32(buf, 8),
            crc: be_u32(buf, 12),
            magic: buf[16],
            attributes: buf[17],
            record_count: be_u32(buf, 18),
            first_timestamp_ms: be_u64(buf, 22) as i64,
            max_timestamp_ms: be_u64(buf, 30) as i64,
            producer: ProducerStamp {
                producer_id: be_u64(buf, 38) as i64,
                producer_epoch: u16::from_be_bytes([buf[46], buf[47]]) as i16,
                base_sequence: be_u32(buf, 48) as i32,
            },
        };
        if header.magic != MAGIC {
            return Err(DecodeError::UnsupportedMagic(header.magic));
        }
        if (header.batch_length as usize) < HEADER_LEN - 12 {
            return Err(DecodeError::InvalidLength {
                field: "batch_length",
                value: u64::from(header.batch_length),
            });
        }
        if header.record_count == 0 {
            return Err(DecodeError::InvalidLength {
                field: "record_count",
                value: 0,
            });
        }
        Ok(header)
    }

    /// Total encoded length of the batch, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + 12
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Checks a whole batch: header, length, CRC, and that every record decodes
/// with dense offset deltas. Returns the header.
///
/// The broker runs this on every produced batch before it is stored, and
/// consumers run it on every batch they receive.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, DecodeError> {
    inspect(batch).map(|(header, _)| header)
}

/// [`validate`], also returning the encoded size of the largest record, so
/// the broker can enforce a record size limit without decoding twice.
pub fn inspect(batch: &[u8]) -> Result<(BatchHeader, usize), DecodeError> {
    let header = verify_crc(batch)?;
    let mut pos = HEADER_LEN;
    let mut largest = 0;
    for index in 0..header.record_count {
        let (_, next) = decode_record(batch, pos, &header, index)?;
        largest = largest.max(next - pos);
        pos = next;
    }
    if pos != batch.len() {
        return Err(DecodeError::TrailingBytes {
            offset: pos,
            extra: batch.len() - pos,
        });
    }
    Ok((header, largest))
}

/// Checks the header, the length and the CRC, without walking the records.
///
/// Enough to serve a stored batch: its records were fully validated when it
/// was produced, and the CRC proves the bytes are still those bytes.
pub fn verify_crc(batch: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_len() != batch.len() {
        return Err(DecodeError::LengthMismatch {
            declared: header.total_len(),
            actual: batch.len(),
        });
    }
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if actual != header.crc {
        return Err(DecodeError::CrcMismatch {
            stored: header.crc,
            computed: actual,
        });
    }
    Ok(header)
}

/// A copy of a batch with new idempotence fields and a CRC to match. A
/// producer that had to give up on a batch restarts its sequence under a
/// new producer id, and its batches still in flight move with it.
pub fn restamp(batch: &[u8], producer: ProducerStamp) -> Bytes {
    let mut out = BytesMut::from(batch);
    if out.len() < HEADER_LEN {
        return out.freeze();
    }
    out[38..46].copy_from_slice(&producer.producer_id.to_be_bytes());
    out[46..48].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    out[48..52].copy_from_slice(&producer.base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[12..16].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Overwrites the base offset of an encoded batch. The CRC stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Decodes every record of a validated batch.
pub fn records(batch: &Bytes) -> Result<Vec<StoredRecord>, DecodeError> {
    let header = validate(batch)?;
    let mut out = Vec::with_capacity(header.record_count as usize);
    let mut pos = HEADER_LEN;
    for index in 0..header.record_count {
        let (spans, next) = decode_record(batch, pos, &header, index)?;
        out.push(StoredRecord {
            offset: header.base_offset + u64::from(index),
            timestamp_ms: spans.timestamp_ms,
            key: spans.key.map(|(s, e)| batch.slice(s..e)),
            value: batch.slice(spans.value.0..spans.value.1),
            headers: spans
                .headers
                .into_iter()
                .map(|(k, v)| Header {
                    key: k,
                    value: batch.slice(v.0..v.1),
                })
                .collect(),
        });
        pos = next;
    }
    Ok(out)
}

/// Splits a buffer of back-to-back batches (as fetched) into batches. Only
/// the framing is checked; [`records`] validates each batch as it decodes it.
pub fn split(buf: &Bytes) -> Result<Vec<Bytes>, DecodeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = BatchHeader::parse(&buf[pos..]).map_err(|e| e.shifted(pos))?;
        let end = pos + header.total_len();
        if end > buf.len() {
            return Err(DecodeError::UnexpectedEof {
                offset: pos,
                need: header.total_len(),
                have: buf.len() - pos,
            });
        }
        out.push(buf.slice(pos..end));
        pos = end;
    }
    Ok(out)
}

type Span = (usize, usize);

struct RecordSpans {
    timestamp_ms: i64,
    key: Option<Span>,
    value: Span,
    headers: Vec<(String, Span)>,
}

fn decode_record(
    buf: &[u8],
    start: usize,
    header: &BatchHeader,
    index: u32,
) -> Result<(RecordSpans, usize), DecodeError> {
    let (len, mut pos) = varint::read_u64(buf, start)?;
    let end = take(buf, pos, len)?;
    let body = &buf[..end];
    let (ts_delta, p) = varint::read_i64(body, pos)?;
    pos = p;
    let (offset_delta, p) = varint::read_u64(body, pos)?;
    pos = p;
    if offset_delta != u64::from(index) {
        return Err(DecodeError::OffsetDelta {
            index,
            found: offset_delta,
        });
    }
    let (key_len, p) = varint::read_i64(body, pos)?;
    pos = p;
    let key = match key_len {
        -1 => None,
        n if n < 0 => {
            return Err(DecodeError::InvalidLength {
                field: "key_length",
                value: n as u64,
            });
        }
        n => {
            let e = take(body, pos, n as u64)?;
            let span = (pos, e);
            pos = e;
            Some(span)
        }
    };
    let (value_len, p) = varint::read_u64(body, pos)?;
    let value_end = take(body, p, value_len)?;
    let value = (p, value_end);
    pos = value_end;
    let (header_count, p) = varint::read_u64(body, pos)?;
    pos = p;
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let (klen, p) = varint::read_u64(body, pos)?;
        let kend = take(body, p, klen)?;
        let key = std::str::from_utf8(&body[p..kend])
            .map_err(|_| DecodeError::InvalidUtf8 { offset: p })?
            .to_owned();
        let (vlen, p) = varint::read_u64(body, kend)?;
        let vend = take(body, p, vlen)?;
        headers.push((key, (p, vend)));
        pos = vend;
    }
    if pos != end {
        return Err(DecodeError::TrailingBytes {
            offset: pos,
            extra: end - pos,
        });
    }
    let timestamp_ms = header.first_timestamp_ms.wrapping_add(ts_delta);
    Ok((
        RecordSpans {
            timestamp_ms,
            key,
            value,
            headers,
        },
        end,
    ))
}

/// Returns `pos + len` if that many bytes are available.
fn take(buf: &[u8], pos: usize, len: u64) -> Result<usize, DecodeError> {
    let have = buf.len().saturating_sub(pos);
    match usize::try_from(len) {
        Ok(n) if n <= have => Ok(pos + n),
        _ => Err(DecodeError::UnexpectedEof {
            offset: pos,
            need: usize::try_from(len).unwrap_or(usize::MAX),
            have,
        }),
    }
}

/// Builds one batch from records, in the caller's buffer.
///
/// ```
/// use edgebus_proto::batch::{BatchBuilder, ProducerStamp, Record};
/// let mut b = BatchBuilder::new();
/// b.push(&Record::new("hello", 1_700_000_000_000));
/// let batch = b.finish(ProducerStamp::NONE);
/// assert_eq!(edgebus_proto::batch::records(&batch).unwrap()[0].value, "hello");
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::with_capacity(1024)
    }

    /// An empty builder with room for `bytes` of encoded records.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + bytes);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size of the batch so far, header included.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Encoded size one record adds to a batch.
    pub fn record_size(record: &Record, timestamp_delta: i64, offset_delta: u32) -> usize {
        let body = body_len(record, timestamp_delta, offset_delta);
        varint::len_u64(body as u64) + body
    }

    /// Appends a record.
    pub fn push(&mut self, record: &Record) {
        if self.count == 0 {
            self.first_timestamp_ms = record.timestamp_ms;
        }
        let ts_delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let body = body_len(record, ts_delta, self.count);
        let buf = &mut self.buf;
        varint::put_u64(buf, body as u64);
        varint::put_i64(buf, ts_delta);
        varint::put_u64(buf, u64::from(self.count));
        match &record.key {
            None => varint::put_i64(buf, -1),
            Some(k) => {
                varint::put_i64(buf, k.len() as i64);
                buf.put_slice(k);
            }
        }
        varint::put_u64(buf, record.value.len() as u64);
        buf.put_slice(&record.value);
        varint::put_u64(buf, record.headers.len() as u64);
        for h in &record.headers {
            varint::put_u64(buf, h.key.len() as u64);
            buf.put_slice(h.key.as_bytes());
            varint::put_u64(buf, h.value.len() as u64);
            buf.put_slice(&h.value);
        }
        self.count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
    }

    /// Writes the header and CRC and returns the batch, with base offset 0.
    ///
    /// # Panics
    ///
    /// If no record was pushed: an empty batch is not a valid batch.
    pub fn finish(mut self, producer: ProducerStamp) -> Bytes {
        assert!(self.count > 0, "a batch holds at least one record");
        let total = self.buf.len();
        let h = &mut self.buf[..HEADER_LEN];
        h[0..8].copy_from_slice(&0u64.to_be_bytes());
        h[8..12].copy_from_slice(&((total - 12) as u32).to_be_bytes());
        h[16] = MAGIC;
        h[17] = 0;
        h[18..22].copy_from_slice(&self.count.to_be_bytes());
        h[22..30].copy_from_slice(&self.first_timestamp_ms.to_be_bytes());
        h[30..38].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        h[38..46].copy_from_slice(&producer.producer_id.to_be_bytes());
        h[46..48].copy_from_slice(&producer.producer_epoch.to_be_bytes());
        h[48..52].copy_from_slice(&producer.base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[CRC_START..]);
        self.buf[12..16].copy_from_slice(&crc.to_be_bytes());
        self.buf.freeze()
    }
}

fn body_len(record: &Record, timestamp_delta: i64, offset_delta: u32) -> usize {
    let key = match &record.key {
        None => varint::len_i64(-1),
        Some(k) => varint::len_i64(k.len() as i64) + k.len(),
    };
    let headers: usize = record
        .headers
        .iter()
        .map(|h| {
            varint::len_u64(h.key.len() as u64)
                + h.key.len()
                + varint::len_u64(h.value.len() as u64)
                + h.value.len()
        })
        .sum();
    varint::len_i64(timestamp_delta)
        + varint::len_u64(u64::from(offset_delta))
        + key
        + varint::len_u64(record.value.len() as u64)
        + record.value.len()
        + varint::len_u64(record.headers.len() as u64)
        + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(
                ("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..20)),
                0..4,
            ),
            any::<i64>(),
        )
            .prop_map(|(key, value, headers, ts)| Record {
                key: key.map(Bytes::from),
                value: Bytes::from(value),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| Header {
                        key: k,
                        value: Bytes::from(v),
                    })
                    .collect(),
                timestamp_ms: ts,
            })
    }

    fn build(records: &[Record], stamp: ProducerStamp) -> Bytes {
        let mut b = BatchBuilder::new();
        for r in records {
            b.push(r);
        }
        b.finish(stamp)
    }

    proptest! {
        #[test]
        fn batch_roundtrip_preserves_every_field(
            records in proptest::collection::vec(arb_record(), 1..20),
            base in 0u64..u64::MAX / 2,
            pid in -1i64..1000,
            seq in -1i32..1000,
        ) {
            let stamp = ProducerStamp { producer_id: pid, producer_epoch: 3, base_sequence: seq };
            let mut bytes = BytesMut::from(&build(&records, stamp)[..]);
            set_base_offset(&mut bytes, base);
            let bytes = bytes.freeze();
            let header = validate(&bytes).unwrap();
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.producer, stamp);
            prop_assert_eq!(header.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
            let decoded = super::records(&bytes).unwrap();
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, base + i as u64);
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(&d.headers, &r.headers);
                prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
            }
        }

        #[test]
        fn record_size_matches_encoding(record in arb_record()) {
            let one = build(std::slice::from_ref(&record), ProducerStamp::NONE);
            prop_assert_eq!(one.len(), HEADER_LEN + BatchBuilder::record_size(&record, 0, 0));
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bytes = Bytes::from(data);
            let _ = BatchHeader::parse(&bytes);
            let _ = validate(&bytes);
            let _ = super::records(&bytes);
            let _ = split(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_valid_header_garbage_body(
            records in proptest::collection::vec(arb_record(), 1..4),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = BytesMut::from(&build(&records, ProducerStamp::NONE)[..]);
            let i = flip.index(bytes.len());
            bytes[i] = byte;
            let bytes = bytes.freeze();
            let _ = super::records(&bytes);
            let _ = split(&bytes);
        }

        #[test]
        fn any_corrupted_byte_after_the_crc_field_is_detected(
            records in proptest::collection::vec(arb_record(), 1..4),
            flip in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = BytesMut::from(&build(&records, ProducerStamp::NONE)[..]);
            let i = CRC_START + flip.index(bytes.len() - CRC_START);
            bytes[i] ^= mask;
            prop_assert!(validate(&bytes).is_err());
        }
    }

    #[test]
    fn restamp_changes_idempotence_fields_and_keeps_crc_valid() {
        let batch = build(&[Record::new("v", 1)], ProducerStamp::NONE);
        let stamp = ProducerStamp {
            producer_id: 9,
            producer_epoch: 2,
            base_sequence: 40,
        };
        let restamped = restamp(&batch, stamp);
        assert_eq!(validate(&restamped).unwrap().producer, stamp);
        assert_eq!(super::records(&restamped).unwrap()[0].value, "v");
    }

    #[test]
    fn crc_corruption_is_reported_as_crc_mismatch() {
        let batch = build(&[Record::new("payload", 5)], ProducerStamp::NONE);
        let mut bytes = BytesMut::from(&batch[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            validate(&bytes),
            Err(DecodeError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn truncated_batch_reports_length_mismatch() {
        let batch = build(&[Record::new("payload", 5)], ProducerStamp::NONE);
        assert!(matches!(
            validate(&batch[..batch.len() - 1]),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&batch[..10]),
            Err(DecodeError::UnexpectedEof {
                offset: 0,
                need: HEADER_LEN,
                have: 10
            })
        ));
    }

    #[test]
    fn split_returns_each_batch_of_a_concatenation() {
        let a = build(&[Record::new("a", 1)], ProducerStamp::NONE);
        let b = build(
            &[Record::new("b", 2), Record::new("c", 3)],
            ProducerStamp::NONE,
        );
        let mut both = BytesMut::new();
        both.extend_from_slice(&a);
        both.extend_from_slice(&b);
        let parts = split(&both.freeze()).unwrap();
        assert_eq!(parts, vec![a, b]);
    }
}
