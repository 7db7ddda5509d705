//! The record-batch format: Kafka's RecordBatch v2 (magic 2), byte for byte.
//! Producers send it, the broker stores and serves it, replicas copy it and
//! Kafka clients read it, all without re-encoding.
//!
//! # Layout
//!
//! All fixed-width integers are big-endian and signed unless noted.
//!
//! ```text
//! offset size field                   notes
//!      0    8 baseOffset              int64, offset of the first record; stamped by the broker on append  [outside CRC]
//!      8    4 batchLength             int32, bytes after this field (total length - 12), >= 49
//!     12    4 partitionLeaderEpoch    int32, epoch of the leader that appended it; -1 until stamped  [outside CRC]
//!     16    1 magic                   int8, format version, 2
//!     17    4 crc                     uint32, CRC32C (Castagnoli) of bytes [21, end)
//!     21    2 attributes              int16, see below
//!     23    4 lastOffsetDelta         int32, recordsCount - 1
//!     27    8 baseTimestamp           int64, what timestamp deltas are relative to (ms); edgebus and
//!                                     Kafka's producer write the first record's timestamp
//!     35    8 maxTimestamp            int64, largest record timestamp (ms)
//!     43    8 producerId              int64, -1 when the producer is not idempotent
//!     51    2 producerEpoch           int16, -1 when not idempotent
//!     53    4 baseSequence            int32, sequence of the first record, -1 when not idempotent
//!     57    4 recordsCount            int32, >= 1
//!     61    . records                 recordsCount records back to back, compressed as
//!                                     one block when the codec bits say so
//! ```
//!
//! Attributes:
//!
//! ```text
//! bits 0-2  compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4 (LZ4 frame), 4 zstd; 5-7 are invalid
//! bit  3    timestampType: 0 CreateTime, 1 LogAppendTime (every record's time is maxTimestamp)
//! bit  4    isTransactional
//! bit  5    isControlBatch
//! bit  6    hasDeleteHorizonMs (set by compaction; baseTimestamp is then the delete horizon)
//! bits 7-15 unused, carried as they are
//! ```
//!
//! Each record, after decompression:
//!
//! ```text
//! length              varint   bytes of the rest of this record
//! attributes          int8     unused; any value is accepted, as Kafka does
//! timestampDelta      varlong  relative to baseTimestamp
//! offsetDelta         varint   must equal the record's index in the batch
//! keyLength           varint   -1 means a null key
//! key                 bytes
//! valueLength         varint   -1 means a null value (a tombstone)
//! value               bytes
//! headersCount        varint
//!   headerKeyLength   varint   >= 0
//!   headerKey         UTF-8
//!   headerValueLength varint   -1 means a null value
//!   headerValue       bytes
//! ```
//!
//! Varints and varlongs are zigzag-encoded; see [`crate::varint`].
//!
//! The CRC starts at `attributes`, after the fields that framing and
//! stamping need. `magic` sits before it so a reader knows the format
//! before it knows where the CRC is. `baseOffset` and
//! `partitionLeaderEpoch` sit before it so the broker assigns offsets and
//! the leader stamps its epoch by overwriting bytes in place, never
//! re-encoding: the CRC the producer computed then travels unchanged to
//! every replica and consumer, and still proves the records are the
//! producer's bytes.
//!
//! A null value and a null header value decode as empty [`Bytes`], since
//! [`StoredRecord::value`] and [`Header::value`] cannot say "null". The
//! stored bytes keep the `-1`, so a Kafka client served the batch still
//! sees the tombstone.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec;
pub use crate::compression::{Compression, MAX_DECOMPRESSED_BYTES};
use crate::error::{CompressError, DecodeError};
use crate::varint;

/// Length of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// The batch format version: Kafka's RecordBatch v2.
pub const MAGIC: u8 = 2;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `base_sequence` of a batch from a producer that is not idempotent.
pub const NO_SEQUENCE: i32 = -1;
/// `partition_leader_epoch` of a batch no leader has stamped yet.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Bytes of the `baseOffset` and `batchLength` fields, which `batchLength`
/// does not count.
const LOG_OVERHEAD: usize = 12;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// First byte the CRC covers: `attributes`.
const CRC_START: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
/// Smallest encoded record: seven one-byte fields (length, attributes,
/// timestamp delta, offset delta, key length, value length, header count).
const MIN_RECORD_LEN: usize = 7;

/// One header of a record: a UTF-8 key and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value; a null value on the wire decodes as empty.
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

    /// A record with a value only, stamped with the wall clock now. (The
    /// codec never reads the clock; this is for producers.)
    pub fn now(value: impl Into<Bytes>) -> Self {
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Record::new(value, timestamp_ms)
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
    /// The payload; a null value (a Kafka tombstone) decodes as empty.
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

/// The `attributes` field of a batch: codec and flags. Its codec is always
/// one Kafka defines; unused bits are kept as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes {
    compression: Compression,
    /// Every bit but the codec's.
    flags: u16,
}

impl Attributes {
    const CODEC_MASK: u16 = 0b111;
    const LOG_APPEND_TIME: u16 = 1 << 3;
    const TRANSACTIONAL: u16 = 1 << 4;
    const CONTROL: u16 = 1 << 5;
    const DELETE_HORIZON: u16 = 1 << 6;

    /// Attributes of a plain batch: CreateTime, not transactional, not
    /// control, records compressed with `compression`.
    pub const fn new(compression: Compression) -> Attributes {
        Attributes {
            compression,
            flags: 0,
        }
    }

    /// Reads the field; fails on codec numbers 5 to 7, which Kafka does
    /// not define.
    pub fn from_bits(bits: u16) -> Result<Attributes, DecodeError> {
        let codec = (bits & Self::CODEC_MASK) as u8;
        let compression = Compression::from_codec(codec).ok_or(DecodeError::UnknownTag {
            field: "compression codec",
            tag: u64::from(codec),
        })?;
        Ok(Attributes {
            compression,
            flags: bits & !Self::CODEC_MASK,
        })
    }

    /// The field as stored.
    pub const fn bits(self) -> u16 {
        self.flags | self.compression.codec() as u16
    }

    /// The codec of the records section.
    pub const fn compression(self) -> Compression {
        self.compression
    }

    /// Whether record timestamps are the broker's append time
    /// (`maxTimestamp`) rather than the producer's.
    pub const fn is_log_append_time(self) -> bool {
        self.flags & Self::LOG_APPEND_TIME != 0
    }

    /// Whether the batch belongs to a transaction.
    pub const fn is_transactional(self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }

    /// Whether the batch holds control records (transaction markers), which
    /// consumers do not show to applications.
    pub const fn is_control(self) -> bool {
        self.flags & Self::CONTROL != 0
    }

    /// Whether compaction set a delete horizon in `baseTimestamp`.
    pub const fn has_delete_horizon(self) -> bool {
        self.flags & Self::DELETE_HORIZON != 0
    }
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes after the `batch_length` field.
    pub batch_length: u32,
    /// Epoch of the leader that appended the batch, or
    /// [`NO_PARTITION_LEADER_EPOCH`].
    pub partition_leader_epoch: i32,
    /// Format version, [`MAGIC`].
    pub magic: u8,
    /// Stored CRC32C of bytes `[21, end)`.
    pub crc: u32,
    /// Codec and flags.
    pub attributes: Attributes,
    /// Offset of the last record relative to the first: `record_count - 1`.
    pub last_offset_delta: i32,
    /// Number of records, at least 1.
    pub record_count: u32,
    /// `baseTimestamp`, which record timestamps are relative to: the first
    /// record's, as written by [`BatchBuilder`] and Kafka's producer.
    pub first_timestamp_ms: i64,
    /// Largest timestamp in the batch (`maxTimestamp`).
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
        let magic = buf[MAGIC_AT];
        if magic != MAGIC {
            return Err(DecodeError::UnsupportedMagic(magic));
        }
        let batch_length = be_u32(buf, 8);
        if (batch_length as usize) < HEADER_LEN - LOG_OVERHEAD {
            return Err(DecodeError::InvalidLength {
                field: "batch_length",
                value: i64::from(batch_length as i32),
            });
        }
        let records_count = be_u32(buf, 57) as i32;
        let record_count = match u32::try_from(records_count) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(DecodeError::InvalidLength {
                    field: "record_count",
                    value: i64::from(records_count),
                });
            }
        };
        let last_offset_delta = be_u32(buf, 23) as i32;
        if i64::from(last_offset_delta) != i64::from(record_count) - 1 {
            return Err(DecodeError::LastOffsetDelta {
                found: last_offset_delta,
                record_count,
            });
        }
        Ok(BatchHeader {
            base_offset: be_u64(buf, 0),
            batch_length,
            partition_leader_epoch: be_u32(buf, PARTITION_LEADER_EPOCH_AT) as i32,
            magic,
            crc: be_u32(buf, CRC_AT),
            attributes: Attributes::from_bits(u16::from_be_bytes([buf[21], buf[22]]))?,
            last_offset_delta,
            record_count,
            first_timestamp_ms: be_u64(buf, 27) as i64,
            max_timestamp_ms: be_u64(buf, 35) as i64,
            producer: ProducerStamp {
                producer_id: be_u64(buf, PRODUCER_ID_AT) as i64,
                producer_epoch: u16::from_be_bytes([buf[51], buf[52]]) as i16,
                base_sequence: be_u32(buf, BASE_SEQUENCE_AT) as i32,
            },
        })
    }

    /// Total encoded length of the batch, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// The timestamp of a record with `timestamp_delta`: under
    /// LogAppendTime every record carries the batch's `maxTimestamp`.
    fn record_timestamp_ms(&self, timestamp_delta: i64) -> i64 {
        if self.attributes.is_log_append_time() {
            self.max_timestamp_ms
        } else {
            self.first_timestamp_ms.wrapping_add(timestamp_delta)
        }
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

/// What [`inspect`] learns about a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// The batch header.
    pub header: BatchHeader,
    /// Encoded size of the largest record, uncompressed.
    pub largest_record_bytes: usize,
    /// Size of the records section once decompressed; the stored size when
    /// the batch is not compressed.
    pub records_bytes: usize,
}

/// Checks a whole batch: header, length, CRC, and that every record
/// decodes, decompressing first if needed, with dense offset deltas.
/// Returns the header.
///
/// The broker runs this on every produced batch before it is stored, and
/// consumers run it on every batch they receive.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, DecodeError> {
    inspect(batch).map(|info| info.header)
}

/// [`validate`], also returning the size of the largest record and of the
/// decompressed records section, so the broker can enforce its limits
/// without decoding twice.
pub fn inspect(batch: &[u8]) -> Result<BatchInfo, DecodeError> {
    let header = verify_crc(batch)?;
    let section = records_section(batch, &header)?;
    let mut largest_record_bytes = 0;
    walk(&section, &header, |_, _, len| {
        largest_record_bytes = largest_record_bytes.max(len);
    })
    .map_err(|e| shift_if_uncompressed(e, &header))?;
    Ok(BatchInfo {
        header,
        largest_record_bytes,
        records_bytes: section.len(),
    })
}

/// Checks the header, the length and the CRC, without decompressing or
/// walking the records.
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
    out[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
    out[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
        .copy_from_slice(&producer.producer_epoch.to_be_bytes());
    out[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
        .copy_from_slice(&producer.base_sequence.to_be_bytes());
    write_crc(&mut out);
    out.freeze()
}

/// Overwrites the base offset of an encoded batch. The CRC stays valid.
///
/// # Panics
///
/// If `batch` is shorter than 8 bytes.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites the partition leader epoch of an encoded batch, as the leader
/// does when it appends. The CRC stays valid.
///
/// # Panics
///
/// If `batch` is shorter than 16 bytes.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Decodes every record of a batch, validating it as [`validate`] does and
/// decompressing it if needed.
pub fn records(batch: &Bytes) -> Result<Vec<StoredRecord>, DecodeError> {
    let header = verify_crc(batch)?;
    // An uncompressed batch's records are slices of the batch itself.
    let section = match records_section(batch, &header)? {
        Cow::Borrowed(_) => batch.slice(HEADER_LEN..),
        Cow::Owned(decompressed) => Bytes::from(decompressed),
    };
    // The count is the sender's word: reserve no more than could fit.
    let fits = section.len() / MIN_RECORD_LEN;
    let mut out = Vec::with_capacity((header.record_count as usize).min(fits));
    let slice = |(start, end): Span| section.slice(start..end);
    let nullable = |span: Option<Span>| span.map(slice).unwrap_or_default();
    walk(&section, &header, |index, spans, _| {
        out.push(StoredRecord {
            offset: header.base_offset.wrapping_add(u64::from(index)),
            timestamp_ms: header.record_timestamp_ms(spans.timestamp_delta),
            key: spans.key.map(slice),
            value: nullable(spans.value),
            headers: spans
                .headers
                .into_iter()
                .map(|(key, value)| Header {
                    // decode_record checked the key is UTF-8, so nothing is lost.
                    key: String::from_utf8_lossy(&section[key.0..key.1]).into_owned(),
                    value: nullable(value),
                })
                .collect(),
        });
    })
    .map_err(|e| shift_if_uncompressed(e, &header))?;
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

/// The records section of a CRC-checked batch: borrowed when stored
/// uncompressed, else decompressed under [`MAX_DECOMPRESSED_BYTES`].
fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let stored = &batch[HEADER_LEN..];
    match header.attributes.compression() {
        Compression::None => Ok(Cow::Borrowed(stored)),
        other => codec::decompress(other, stored).map(Cow::Owned),
    }
}

/// Record errors carry positions in the records section. For an
/// uncompressed batch that is a slice of the batch, so they are moved to
/// batch positions; a compressed batch's stay positions in the decompressed
/// section.
fn shift_if_uncompressed(e: DecodeError, header: &BatchHeader) -> DecodeError {
    match header.attributes.compression() {
        Compression::None => e.shifted(HEADER_LEN),
        _ => e,
    }
}

type Span = (usize, usize);

struct RecordSpans {
    timestamp_delta: i64,
    key: Option<Span>,
    value: Option<Span>,
    headers: Vec<(Span, Option<Span>)>,
}

/// Decodes the `record_count` records of a records section, handing each to
/// `each` with its index and encoded length; the section must hold exactly
/// those records.
fn walk(
    section: &[u8],
    header: &BatchHeader,
    mut each: impl FnMut(u32, RecordSpans, usize),
) -> Result<(), DecodeError> {
    let mut pos = 0;
    for index in 0..header.record_count {
        let (spans, next) = decode_record(section, pos, index)?;
        each(index, spans, next - pos);
        pos = next;
    }
    if pos != section.len() {
        return Err(DecodeError::TrailingBytes {
            offset: pos,
            extra: section.len() - pos,
        });
    }
    Ok(())
}

fn decode_record(
    buf: &[u8],
    start: usize,
    index: u32,
) -> Result<(RecordSpans, usize), DecodeError> {
    let (len, pos) = varint::read_varint(buf, start)?;
    let len = non_negative(len, "record_length")?;
    let end = take(buf, pos, len)?;
    let body = &buf[..end];
    // The record attributes byte has no defined bits; Kafka reads and
    // ignores it, and so does this.
    let pos = take(body, pos, 1)?;
    let (timestamp_delta, pos) = varint::read_varlong(body, pos)?;
    let (offset_delta, pos) = varint::read_varint(body, pos)?;
    if i64::from(offset_delta) != i64::from(index) {
        return Err(DecodeError::OffsetDelta {
            index,
            found: offset_delta,
        });
    }
    let (key, pos) = nullable_bytes(body, pos, "key_length")?;
    let (value, pos) = nullable_bytes(body, pos, "value_length")?;
    let (header_count, mut pos) = varint::read_varint(body, pos)?;
    let header_count = non_negative(header_count, "header_count")?;
    // Not preallocated: the count is the sender's word.
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let (key_len, key_start) = varint::read_varint(body, pos)?;
        let key_end = take(body, key_start, non_negative(key_len, "header_key_length")?)?;
        std::str::from_utf8(&body[key_start..key_end])
            .map_err(|_| DecodeError::InvalidUtf8 { offset: key_start })?;
        let (value, next) = nullable_bytes(body, key_end, "header_value_length")?;
        headers.push(((key_start, key_end), value));
        pos = next;
    }
    if pos != end {
        return Err(DecodeError::TrailingBytes {
            offset: pos,
            extra: end - pos,
        });
    }
    Ok((
        RecordSpans {
            timestamp_delta,
            key,
            value,
            headers,
        },
        end,
    ))
}

/// Reads a length and that many bytes; a length of -1 is a null.
fn nullable_bytes(
    buf: &[u8],
    pos: usize,
    field: &'static str,
) -> Result<(Option<Span>, usize), DecodeError> {
    let (len, pos) = varint::read_varint(buf, pos)?;
    if len == -1 {
        return Ok((None, pos));
    }
    let end = take(buf, pos, non_negative(len, field)?)?;
    Ok((Some((pos, end)), end))
}

fn non_negative(len: i32, field: &'static str) -> Result<usize, DecodeError> {
    usize::try_from(len).map_err(|_| DecodeError::InvalidLength {
        field,
        value: i64::from(len),
    })
}

/// Returns `pos + len` if that many bytes are available.
fn take(buf: &[u8], pos: usize, len: usize) -> Result<usize, DecodeError> {
    let have = buf.len().saturating_sub(pos);
    if len <= have {
        Ok(pos + len)
    } else {
        Err(DecodeError::UnexpectedEof {
            offset: pos,
            need: len,
            have,
        })
    }
}

/// Recomputes the CRC of a whole encoded batch.
fn write_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// Builds one batch from records, in the caller's buffer.
///
/// ```
/// use edgebus_proto::batch::{BatchBuilder, Compression, ProducerStamp, Record};
/// let mut b = BatchBuilder::new();
/// b.push(&Record::new("hello", 1_700_000_000_000));
/// let batch = b.finish_compressed(ProducerStamp::NONE, Compression::Zstd).unwrap();
/// assert_eq!(edgebus_proto::batch::records(&batch).unwrap()[0].value, "hello");
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    /// Header space, then the uncompressed records.
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

    /// Encoded size of the batch so far, header included, uncompressed.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Encoded size one record adds to an uncompressed batch.
    pub fn record_size(record: &Record, timestamp_delta: i64, offset_delta: u32) -> usize {
        let body = body_len(record, timestamp_delta, offset_delta);
        varint::len_varint(kafka_len(body)) + body
    }

    /// Appends a record.
    ///
    /// # Panics
    ///
    /// If a key, value or header is longer than `i32::MAX` bytes, which
    /// Kafka's lengths cannot say.
    pub fn push(&mut self, record: &Record) {
        if self.count == 0 {
            self.first_timestamp_ms = record.timestamp_ms;
        }
        let ts_delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let body = body_len(record, ts_delta, self.count);
        let buf = &mut self.buf;
        varint::put_varint(buf, kafka_len(body));
        buf.put_u8(0);
        varint::put_varlong(buf, ts_delta);
        varint::put_varint(buf, self.count as i32);
        match &record.key {
            None => varint::put_varint(buf, -1),
            Some(k) => {
                varint::put_varint(buf, kafka_len(k.len()));
                buf.put_slice(k);
            }
        }
        varint::put_varint(buf, kafka_len(record.value.len()));
        buf.put_slice(&record.value);
        varint::put_varint(buf, kafka_len(record.headers.len()));
        for h in &record.headers {
            varint::put_varint(buf, kafka_len(h.key.len()));
            buf.put_slice(h.key.as_bytes());
            varint::put_varint(buf, kafka_len(h.value.len()));
            buf.put_slice(&h.value);
        }
        self.count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
    }

    /// Writes the header and CRC and returns the uncompressed batch, with
    /// base offset 0 and no partition leader epoch.
    ///
    /// # Panics
    ///
    /// If no record was pushed: an empty batch is not a valid batch.
    pub fn finish(self, producer: ProducerStamp) -> Bytes {
        assert!(self.count > 0, "a batch holds at least one record");
        let mut buf = self.buf;
        write_header(
            &mut buf,
            Attributes::new(Compression::None),
            self.count,
            (self.first_timestamp_ms, self.max_timestamp_ms),
            producer,
        );
        buf.freeze()
    }

    /// [`finish`](Self::finish), with the records section compressed as one
    /// block by `compression`. The header stays uncompressed.
    ///
    /// Fails for a codec this build does not write (gzip, snappy) and for a
    /// records section over [`MAX_DECOMPRESSED_BYTES`], which no reader
    /// would decompress.
    ///
    /// # Panics
    ///
    /// If no record was pushed.
    pub fn finish_compressed(
        self,
        producer: ProducerStamp,
        compression: Compression,
    ) -> Result<Bytes, CompressError> {
        if compression == Compression::None {
            return Ok(self.finish(producer));
        }
        assert!(self.count > 0, "a batch holds at least one record");
        let packed = codec::compress(compression, &self.buf[HEADER_LEN..])?;
        let mut buf = BytesMut::with_capacity(HEADER_LEN + packed.len());
        buf.resize(HEADER_LEN, 0);
        buf.extend_from_slice(&packed);
        write_header(
            &mut buf,
            Attributes::new(compression),
            self.count,
            (self.first_timestamp_ms, self.max_timestamp_ms),
            producer,
        );
        Ok(buf.freeze())
    }
}

/// Fills the header of a batch whose records section follows it, then the
/// CRC.
fn write_header(
    buf: &mut [u8],
    attributes: Attributes,
    count: u32,
    (first_timestamp_ms, max_timestamp_ms): (i64, i64),
    producer: ProducerStamp,
) {
    let batch_length = (buf.len() - LOG_OVERHEAD) as u32;
    let h = &mut buf[..HEADER_LEN];
    h[0..8].copy_from_slice(&0u64.to_be_bytes());
    h[8..12].copy_from_slice(&batch_length.to_be_bytes());
    h[12..16].copy_from_slice(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
    h[16] = MAGIC;
    h[21..23].copy_from_slice(&attributes.bits().to_be_bytes());
    h[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    h[27..35].copy_from_slice(&first_timestamp_ms.to_be_bytes());
    h[35..43].copy_from_slice(&max_timestamp_ms.to_be_bytes());
    h[43..51].copy_from_slice(&producer.producer_id.to_be_bytes());
    h[51..53].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    h[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    h[57..61].copy_from_slice(&count.to_be_bytes());
    write_crc(buf);
}

/// A length as Kafka's int32 varint carries it.
fn kafka_len(len: usize) -> i32 {
    i32::try_from(len).expect("Kafka lengths are at most i32::MAX")
}

fn body_len(record: &Record, timestamp_delta: i64, offset_delta: u32) -> usize {
    let bytes = |n: usize| varint::len_varint(kafka_len(n)) + n;
    let key = record
        .key
        .as_ref()
        .map_or(varint::len_varint(-1), |k| bytes(k.len()));
    let headers: usize = record
        .headers
        .iter()
        .map(|h| bytes(h.key.len()) + bytes(h.value.len()))
        .sum();
    1 + varint::len_varlong(timestamp_delta)
        + varint::len_varint(offset_delta as i32)
        + key
        + bytes(record.value.len())
        + varint::len_varint(kafka_len(record.headers.len()))
        + headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::frame_of_zeros;
    use proptest::prelude::*;

    const CODECS: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

    #[test]
    fn record_now_is_stamped_with_the_wall_clock() {
        let clock_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        let before = clock_ms();
        let record = Record::now("v");
        let after = clock_ms();
        assert!((before..=after).contains(&record.timestamp_ms));
        assert_eq!(record.value, "v");
    }

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

    fn build_with(records: &[Record], stamp: ProducerStamp, codec: Compression) -> Bytes {
        let mut b = BatchBuilder::new();
        for r in records {
            b.push(r);
        }
        b.finish_compressed(stamp, codec).unwrap()
    }

    fn build(records: &[Record], stamp: ProducerStamp) -> Bytes {
        build_with(records, stamp, Compression::None)
    }

    /// A batch with `header_of`'s header fields, `attributes` and
    /// `section` as its records section, with length and CRC made to
    /// match: what a careful attacker can send.
    fn sealed(header_of: &[u8], attributes: u16, section: &[u8]) -> Bytes {
        let mut out = BytesMut::from(&header_of[..HEADER_LEN]);
        out.extend_from_slice(section);
        let batch_length = (out.len() - LOG_OVERHEAD) as u32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        write_crc(&mut out);
        out.freeze()
    }

    /// One record, encoded field by field, so tests can write what the
    /// builder never would.
    fn raw_record(
        attributes: u8,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Vec<u8> {
        fn nullable(body: &mut Vec<u8>, bytes: Option<&[u8]>) {
            match bytes {
                None => varint::put_varint(body, -1),
                Some(b) => {
                    varint::put_varint(body, b.len() as i32);
                    body.extend_from_slice(b);
                }
            }
        }
        let mut body = vec![attributes];
        varint::put_varlong(&mut body, 0);
        varint::put_varint(&mut body, offset_delta);
        nullable(&mut body, key);
        nullable(&mut body, value);
        varint::put_varint(&mut body, headers.len() as i32);
        for (k, v) in headers {
            nullable(&mut body, Some(k.as_bytes()));
            nullable(&mut body, *v);
        }
        let mut out = Vec::new();
        varint::put_varint(&mut out, body.len() as i32);
        out.extend_from_slice(&body);
        out
    }

    fn one_record_batch() -> Bytes {
        build(&[Record::new("payload", 5)], ProducerStamp::NONE)
    }

    proptest! {
        #[test]
        fn batch_roundtrip_preserves_every_field(
            records in proptest::collection::vec(arb_record(), 1..20),
            base in 0u64..u64::MAX / 2,
            epoch in any::<i32>(),
            pid in -1i64..1000,
            seq in -1i32..1000,
            codec in proptest::sample::select(CODECS.to_vec()),
        ) {
            let stamp = ProducerStamp { producer_id: pid, producer_epoch: 3, base_sequence: seq };
            let mut bytes = BytesMut::from(&build_with(&records, stamp, codec)[..]);
            set_base_offset(&mut bytes, base);
            set_partition_leader_epoch(&mut bytes, epoch);
            let bytes = bytes.freeze();
            let info = inspect(&bytes).unwrap();
            let header = info.header;
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.partition_leader_epoch, epoch);
            prop_assert_eq!(header.magic, MAGIC);
            prop_assert_eq!(header.attributes, Attributes::new(codec));
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.last_offset_delta as usize, records.len() - 1);
            prop_assert_eq!(header.last_offset(), base + records.len() as u64 - 1);
            prop_assert_eq!(header.producer, stamp);
            prop_assert_eq!(header.first_timestamp_ms, records[0].timestamp_ms);
            prop_assert_eq!(header.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
            let uncompressed = build(&records, stamp);
            prop_assert_eq!(info.records_bytes, uncompressed.len() - HEADER_LEN);
            let decoded = super::records(&bytes).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
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
            prop_assert_eq!(
                inspect(&one).unwrap().largest_record_bytes,
                BatchBuilder::record_size(&record, 0, 0)
            );
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bytes = Bytes::from(data);
            let _ = BatchHeader::parse(&bytes);
            let _ = validate(&bytes);
            let _ = super::records(&bytes);
            let _ = split(&bytes);
        }

        /// A sender can compute a CRC over anything: the record decoder
        /// and the decompressors behind it must hold on any body.
        #[test]
        fn decoders_never_panic_on_valid_header_garbage_body(
            records in proptest::collection::vec(arb_record(), 1..4),
            count in 1u32..5,
            codec in proptest::sample::select(CODECS.to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut header = BytesMut::from(&build(&records, ProducerStamp::NONE)[..HEADER_LEN]);
            header[57..61].copy_from_slice(&count.to_be_bytes());
            header[23..27].copy_from_slice(&(count - 1).to_be_bytes());
            let bytes = sealed(&header, u16::from(codec.codec()), &body);
            prop_assert!(verify_crc(&bytes).is_ok());
            let _ = inspect(&bytes);
            let _ = super::records(&bytes);
        }

        /// Garbage that decompresses: a real compressed section with one
        /// byte changed and the CRC recomputed.
        #[test]
        fn decoders_never_panic_on_a_corrupted_compressed_section(
            records in proptest::collection::vec(arb_record(), 1..4),
            codec in proptest::sample::select(vec![Compression::Lz4, Compression::Zstd]),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let batch = build_with(&records, ProducerStamp::NONE, codec);
            let mut section = batch[HEADER_LEN..].to_vec();
            let i = flip.index(section.len());
            section[i] = byte;
            let bytes = sealed(&batch, u16::from(codec.codec()), &section);
            let _ = inspect(&bytes);
            let _ = super::records(&bytes);
        }

        #[test]
        fn any_corrupted_byte_after_the_crc_field_is_detected(
            records in proptest::collection::vec(arb_record(), 1..4),
            codec in proptest::sample::select(CODECS.to_vec()),
            flip in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = BytesMut::from(&build_with(&records, ProducerStamp::NONE, codec)[..]);
            let i = CRC_START + flip.index(bytes.len() - CRC_START);
            bytes[i] ^= mask;
            prop_assert!(verify_crc(&bytes).is_err());
            prop_assert!(validate(&bytes).is_err());
        }
    }

    /// The layout table above, written out byte by byte for one record.
    #[test]
    fn builder_writes_the_documented_layout() {
        let mut b = BatchBuilder::new();
        b.push(&Record::new("v", 1000).with_key("k").with_header("h", "x"));
        let stamp = ProducerStamp {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 0,
        };
        let batch = b.finish(stamp);
        #[rustfmt::skip]
        let mut expected = vec![
            0, 0, 0, 0, 0, 0, 0, 0,             // baseOffset 0
            0, 0, 0, 62,                        // batchLength: 74 - 12
            0xff, 0xff, 0xff, 0xff,             // partitionLeaderEpoch -1
            2,                                  // magic
            0, 0, 0, 0,                         // crc, filled in below
            0, 0,                               // attributes: none, CreateTime
            0, 0, 0, 0,                         // lastOffsetDelta 0
            0, 0, 0, 0, 0, 0, 0x03, 0xe8,       // baseTimestamp 1000
            0, 0, 0, 0, 0, 0, 0x03, 0xe8,       // maxTimestamp 1000
            0, 0, 0, 0, 0, 0, 0, 7,             // producerId 7
            0, 1,                               // producerEpoch 1
            0, 0, 0, 0,                         // baseSequence 0
            0, 0, 0, 1,                         // recordsCount 1
            24,                                 // length 12, zigzag
            0,                                  // attributes
            0,                                  // timestampDelta 0
            0,                                  // offsetDelta 0
            2, b'k',                            // keyLength 1, key
            2, b'v',                            // valueLength 1, value
            2,                                  // headersCount 1
            2, b'h',                            // headerKeyLength 1, key
            2, b'x',                            // headerValueLength 1, value
        ];
        let crc = crc32c::crc32c(&expected[CRC_START..]);
        expected[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(batch[..], expected[..]);
    }

    #[test]
    fn partition_leader_epoch_stamp_keeps_the_crc_valid() {
        for codec in CODECS {
            let batch = build_with(&[Record::new("v", 1)], ProducerStamp::NONE, codec);
            assert_eq!(
                validate(&batch).unwrap().partition_leader_epoch,
                NO_PARTITION_LEADER_EPOCH
            );
            let mut stamped = BytesMut::from(&batch[..]);
            set_partition_leader_epoch(&mut stamped, 7);
            set_base_offset(&mut stamped, 1_000);
            let header = validate(&stamped).unwrap();
            assert_eq!(header.partition_leader_epoch, 7);
            assert_eq!(header.base_offset, 1_000);
            assert_eq!(header.crc, validate(&batch).unwrap().crc);
            assert_eq!(super::records(&stamped.freeze()).unwrap()[0].offset, 1_000);
        }
    }

    #[test]
    fn restamp_changes_idempotence_fields_and_keeps_crc_valid() {
        for codec in CODECS {
            let batch = build_with(&[Record::new("v", 1)], ProducerStamp::NONE, codec);
            let stamp = ProducerStamp {
                producer_id: 9,
                producer_epoch: 2,
                base_sequence: 40,
            };
            let restamped = restamp(&batch, stamp);
            assert_eq!(validate(&restamped).unwrap().producer, stamp);
            assert_eq!(super::records(&restamped).unwrap()[0].value, "v");
        }
    }

    #[test]
    fn compressed_batch_of_repetitive_records_is_smaller_and_decodes() {
        let records: Vec<Record> = (0..200)
            .map(|i| Record::new("the same sensor reading, again", i).with_key("sensor-1"))
            .collect();
        let plain = build(&records, ProducerStamp::NONE);
        for codec in [Compression::Lz4, Compression::Zstd] {
            let packed = build_with(&records, ProducerStamp::NONE, codec);
            assert!(
                packed.len() * 4 < plain.len(),
                "{codec}: {} bytes",
                packed.len()
            );
            assert_eq!(
                packed[CRC_START + 2..HEADER_LEN],
                plain[CRC_START + 2..HEADER_LEN],
                "{codec}: only the length, CRC and codec bits differ"
            );
            let info = inspect(&packed).unwrap();
            assert_eq!(info.header.attributes.compression(), codec);
            assert_eq!(info.records_bytes, plain.len() - HEADER_LEN);
            assert_eq!(
                super::records(&packed).unwrap(),
                super::records(&plain).unwrap()
            );
        }
    }

    /// A few hundred bytes that inflate past the cap must be refused, not
    /// held in memory.
    #[test]
    fn decompression_bomb_is_refused_with_a_typed_error() {
        let template = one_record_batch();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let bomb = frame_of_zeros(codec, MAX_DECOMPRESSED_BYTES + 1);
            assert!(
                bomb.len() < MAX_DECOMPRESSED_BYTES / 100,
                "{codec}: {}",
                bomb.len()
            );
            let batch = sealed(&template, u16::from(codec.codec()), &bomb);
            let too_large = DecodeError::DecompressedTooLarge {
                limit: MAX_DECOMPRESSED_BYTES,
            };
            assert!(verify_crc(&batch).is_ok(), "verify_crc does not decompress");
            assert_eq!(validate(&batch), Err(too_large.clone()));
            assert_eq!(super::records(&batch), Err(too_large));
        }
    }

    #[test]
    fn batch_over_the_decompression_cap_is_not_written() {
        let mut b = BatchBuilder::new();
        b.push(&Record::new(vec![0u8; MAX_DECOMPRESSED_BYTES], 1));
        let section_bytes = b.size_bytes() - HEADER_LEN;
        assert_eq!(
            b.finish_compressed(ProducerStamp::NONE, Compression::Zstd),
            Err(CompressError::TooLarge {
                bytes: section_bytes,
                limit: MAX_DECOMPRESSED_BYTES
            })
        );
    }

    #[test]
    fn gzip_and_snappy_batches_give_the_typed_error() {
        let template = one_record_batch();
        for codec in [Compression::Gzip, Compression::Snappy] {
            let mut b = BatchBuilder::new();
            b.push(&Record::new("v", 1));
            assert_eq!(
                b.finish_compressed(ProducerStamp::NONE, codec),
                Err(CompressError::Unsupported(codec))
            );
            let batch = sealed(&template, u16::from(codec.codec()), b"opaque");
            assert_eq!(verify_crc(&batch).unwrap().attributes.compression(), codec);
            assert_eq!(
                validate(&batch),
                Err(DecodeError::UnsupportedCompression(codec))
            );
            assert_eq!(
                super::records(&batch),
                Err(DecodeError::UnsupportedCompression(codec))
            );
        }
    }

    #[test]
    fn codec_numbers_five_to_seven_are_rejected() {
        let template = one_record_batch();
        for codec in 5u16..=7 {
            let batch = sealed(&template, codec, &template[HEADER_LEN..]);
            assert_eq!(
                BatchHeader::parse(&batch),
                Err(DecodeError::UnknownTag {
                    field: "compression codec",
                    tag: u64::from(codec),
                })
            );
        }
    }

    #[test]
    fn attribute_flags_are_read_and_kept() {
        let template = one_record_batch();
        let bits = Attributes::TRANSACTIONAL | Attributes::CONTROL | Attributes::DELETE_HORIZON;
        let batch = sealed(&template, bits | 0x8000, &template[HEADER_LEN..]);
        let attributes = validate(&batch).unwrap().attributes;
        assert!(attributes.is_transactional());
        assert!(attributes.is_control());
        assert!(attributes.has_delete_horizon());
        assert!(!attributes.is_log_append_time());
        assert_eq!(attributes.compression(), Compression::None);
        assert_eq!(attributes.bits(), bits | 0x8000);
    }

    #[test]
    fn log_append_time_gives_every_record_the_max_timestamp() {
        let records = [Record::new("a", 10), Record::new("b", 30)];
        let template = build(&records, ProducerStamp::NONE);
        let batch = sealed(
            &template,
            Attributes::LOG_APPEND_TIME,
            &template[HEADER_LEN..],
        );
        let decoded = super::records(&batch).unwrap();
        assert!(decoded.iter().all(|r| r.timestamp_ms == 30));
    }

    /// Kafka tombstones: null values, and null header values, are valid
    /// and decode as empty.
    #[test]
    fn null_value_and_null_header_value_decode_as_empty() {
        let template = one_record_batch();
        let section = raw_record(0, 0, Some(b"k"), None, &[("h", None), ("g", Some(b"x"))]);
        for c in CODECS {
            let packed = codec::compress(c, &section).unwrap();
            let batch = sealed(&template, u16::from(c.codec()), &packed);
            let record = &super::records(&batch).unwrap()[0];
            assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
            assert!(record.value.is_empty());
            assert_eq!(
                record.headers,
                vec![
                    Header {
                        key: "h".into(),
                        value: Bytes::new()
                    },
                    Header {
                        key: "g".into(),
                        value: Bytes::from_static(b"x")
                    },
                ]
            );
        }
    }

    #[test]
    fn record_attributes_byte_is_ignored_as_kafka_does() {
        let template = one_record_batch();
        let section = raw_record(0xa5, 0, None, Some(b"v"), &[]);
        let batch = sealed(&template, 0, &section);
        assert_eq!(super::records(&batch).unwrap()[0].value, "v");
    }

    #[test]
    fn offset_delta_other_than_the_index_is_rejected() {
        let template = build(
            &[Record::new("a", 1), Record::new("b", 1)],
            ProducerStamp::NONE,
        );
        let mut section = raw_record(0, 0, None, Some(b"a"), &[]);
        section.extend(raw_record(0, 2, None, Some(b"b"), &[]));
        let batch = sealed(&template, 0, &section);
        assert_eq!(
            validate(&batch),
            Err(DecodeError::OffsetDelta { index: 1, found: 2 })
        );
    }

    #[test]
    fn negative_lengths_other_than_null_are_rejected() {
        let template = one_record_batch();
        let mut body = vec![0u8];
        varint::put_varlong(&mut body, 0);
        varint::put_varint(&mut body, 0);
        varint::put_varint(&mut body, -2);
        let mut section = Vec::new();
        varint::put_varint(&mut section, body.len() as i32);
        section.extend(body);
        let batch = sealed(&template, 0, &section);
        assert_eq!(
            validate(&batch),
            Err(DecodeError::InvalidLength {
                field: "key_length",
                value: -2
            })
        );
    }

    #[test]
    fn last_offset_delta_must_be_record_count_minus_one() {
        let mut batch = BytesMut::from(&one_record_batch()[..]);
        batch[23..27].copy_from_slice(&1i32.to_be_bytes());
        write_crc(&mut batch);
        assert_eq!(
            validate(&batch),
            Err(DecodeError::LastOffsetDelta {
                found: 1,
                record_count: 1
            })
        );
    }

    #[test]
    fn zero_or_negative_record_count_is_rejected() {
        for count in [0i32, -1] {
            let mut batch = BytesMut::from(&one_record_batch()[..]);
            batch[57..61].copy_from_slice(&count.to_be_bytes());
            batch[23..27].copy_from_slice(&(count - 1).to_be_bytes());
            write_crc(&mut batch);
            assert_eq!(
                validate(&batch),
                Err(DecodeError::InvalidLength {
                    field: "record_count",
                    value: i64::from(count)
                })
            );
        }
    }

    #[test]
    fn other_magic_is_rejected() {
        let mut batch = BytesMut::from(&one_record_batch()[..]);
        batch[MAGIC_AT] = 1;
        assert_eq!(validate(&batch), Err(DecodeError::UnsupportedMagic(1)));
    }

    #[test]
    fn trailing_bytes_after_the_last_record_are_rejected() {
        let template = one_record_batch();
        let mut section = template[HEADER_LEN..].to_vec();
        section.push(0);
        let batch = sealed(&template, 0, &section);
        assert_eq!(
            validate(&batch),
            Err(DecodeError::TrailingBytes {
                offset: template.len(),
                extra: 1
            })
        );
    }

    #[test]
    fn crc_corruption_is_reported_as_crc_mismatch() {
        let mut bytes = BytesMut::from(&one_record_batch()[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            validate(&bytes),
            Err(DecodeError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn truncated_batch_reports_length_mismatch() {
        let batch = one_record_batch();
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
        let b = build_with(
            &[Record::new("b", 2), Record::new("c", 3)],
            ProducerStamp::NONE,
            Compression::Zstd,
        );
        let mut both = BytesMut::new();
        both.extend_from_slice(&a);
        both.extend_from_slice(&b);
        let parts = split(&both.freeze()).unwrap();
        assert_eq!(parts, vec![a, b]);
    }
}
