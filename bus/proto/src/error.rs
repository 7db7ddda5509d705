//! Decode and compression errors, and the wire error codes.

use crate::compression::Compression;

/// Why bytes could not be decoded. Every decoder in this crate returns this
/// instead of panicking, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended early.
    #[error("unexpected end of input at byte {offset}: need {need} bytes, have {have}")]
    UnexpectedEof {
        /// Where the missing field starts.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A varint ran past ten bytes or past 64 bits.
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow {
        /// Where the varint starts.
        offset: usize,
    },
    /// The batch format version is not one this build reads.
    #[error("unsupported batch format version {0}")]
    UnsupportedMagic(u8),
    /// A length or count field holds an impossible value.
    #[error("invalid {field}: {value}")]
    InvalidLength {
        /// The field.
        field: &'static str,
        /// Its value (Kafka's lengths and counts are signed).
        value: i64,
    },
    /// The batch length field disagrees with the bytes given.
    #[error("batch declares {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Length from the header.
        declared: usize,
        /// Length of the input.
        actual: usize,
    },
    /// The CRC32C does not match the bytes: the batch is corrupt.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A record's offset delta is not its index.
    #[error("record {index} has offset delta {found}")]
    OffsetDelta {
        /// Record index in the batch.
        index: u32,
        /// Delta found.
        found: i32,
    },
    /// The batch's `lastOffsetDelta` is not `record_count - 1`: its offsets
    /// would not be dense.
    #[error("last offset delta {found} in a batch of {record_count} records")]
    LastOffsetDelta {
        /// `lastOffsetDelta` from the header.
        found: i32,
        /// `recordsCount` from the header.
        record_count: u32,
    },
    /// The batch is compressed with a codec this build does not decode.
    #[error("{0} compression is not supported")]
    UnsupportedCompression(Compression),
    /// The compressed records section is corrupt.
    #[error("{codec} records section does not decompress: {reason}")]
    Decompress {
        /// The batch's codec.
        codec: Compression,
        /// What the decompressor said.
        reason: String,
    },
    /// The records section decompresses to more than the cap: a batch that
    /// large is refused rather than held in memory.
    #[error("records section decompresses to more than {limit} bytes")]
    DecompressedTooLarge {
        /// The cap, [`crate::compression::MAX_DECOMPRESSED_BYTES`].
        limit: usize,
    },
    /// Bytes left over after the last field.
    #[error("{extra} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A string is not UTF-8.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// An enum tag has no meaning.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// The enum.
        field: &'static str,
        /// The tag.
        tag: u64,
    },
}

impl DecodeError {
    /// The same error with byte positions moved by `by`, for errors found in
    /// a slice of a larger buffer.
    pub fn shifted(self, by: usize) -> Self {
        match self {
            DecodeError::UnexpectedEof { offset, need, have } => DecodeError::UnexpectedEof {
                offset: offset + by,
                need,
                have,
            },
            DecodeError::VarintOverflow { offset } => DecodeError::VarintOverflow {
                offset: offset + by,
            },
            DecodeError::TrailingBytes { offset, extra } => DecodeError::TrailingBytes {
                offset: offset + by,
                extra,
            },
            DecodeError::InvalidUtf8 { offset } => DecodeError::InvalidUtf8 {
                offset: offset + by,
            },
            other => other,
        }
    }
}

/// Why a batch could not be compressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompressError {
    /// This build does not write the codec.
    #[error("{0} compression is not supported")]
    Unsupported(Compression),
    /// The records section is larger than any reader would decompress.
    #[error("records section of {bytes} bytes exceeds the {limit}-byte decompression cap")]
    TooLarge {
        /// Uncompressed size of the records section.
        bytes: usize,
        /// The cap, [`crate::compression::MAX_DECOMPRESSED_BYTES`].
        limit: usize,
    },
    /// The compressor failed.
    #[error("{codec} compression failed: {reason}")]
    Codec {
        /// The codec.
        codec: Compression,
        /// What the compressor said.
        reason: String,
    },
}

/// Error codes carried in responses. Numbers are part of the protocol: a
/// retired code is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded.
    MalformedFrame = 1,
    /// The frame is larger than the broker's `max_frame_bytes`.
    FrameTooLarge = 2,
    /// The frame version is not supported.
    UnsupportedVersion = 3,
    /// The request kind is unknown.
    UnknownRequest = 4,
    /// The topic does not exist.
    UnknownTopic = 5,
    /// The partition does not exist.
    UnknownPartition = 6,
    /// A topic with that name exists.
    TopicExists = 7,
    /// The topic name or configuration is invalid.
    InvalidTopicConfig = 8,
    /// A record is larger than the topic's `max.message.bytes`.
    RecordTooLarge = 9,
    /// A batch failed validation (CRC, lengths, offsets).
    CorruptBatch = 10,
    /// The connection has more in-flight requests than `max_inflight_per_connection`.
    TooManyInFlight = 11,
    /// The requested offset is outside the log.
    OffsetOutOfRange = 12,
    /// The producer epoch is older than the one the broker knows.
    ProducerFenced = 13,
    /// A sequence number skipped ahead: earlier batches were lost.
    OutOfOrderSequence = 14,
    /// The storage layer failed; the request was not applied.
    StorageError = 15,
    /// The broker is shutting down.
    ShuttingDown = 16,
    /// A field of the request is invalid.
    InvalidRequest = 17,
    /// A retry of a batch older than the broker's dedup window; it was
    /// stored before, but its offset is no longer known.
    DuplicateSequence = 18,
    /// The consumer-group member is unknown: it never joined, left, or was
    /// expired after missing its session timeout.
    UnknownMember = 19,
    /// The request carries a member epoch that is no longer current.
    StaleGeneration = 20,
    /// An offset commit names a partition the member does not own.
    NotAssigned = 21,
    /// The group has active members; the operation needs it empty.
    GroupNotEmpty = 22,
    /// The group has no members and no committed offsets.
    UnknownGroup = 23,
    /// A plugin could not be loaded or initialised (bad component, wrong
    /// world, `init` error).
    PluginInvalid = 24,
    /// A plugin rejected the batch; the message is the plugin's.
    PluginRejected = 25,
    /// No plugin with that name is registered.
    UnknownPlugin = 26,
    /// The plugin is attached somewhere; the message names where.
    PluginInUse = 27,
    /// The attach point is halted after plugin failures and backing off.
    PluginHalted = 28,
    /// No pipeline with that name.
    UnknownPipeline = 29,
    /// A pipeline with that name exists.
    PipelineExists = 30,
    /// The batch is compressed with a codec the broker does not decode
    /// (gzip or snappy); the producer should use none, lz4 or zstd.
    UnsupportedCompression = 31,
    /// The broker's disk is full: nothing of the request was stored.
    /// Retriable once space is freed (retention, a bigger disk).
    StorageFull = 32,
    /// The pipeline's output would feed its own input, directly or through
    /// other pipelines; the message names the loop.
    PipelineCycle = 33,
    /// The topic is a pipeline's source or destination; the message names
    /// the pipelines.
    TopicInUse = 34,
    /// The node does not lead the partition; the message names the
    /// leader if known. Retriable: refresh metadata and send to it.
    NotLeader = 35,
    /// `acks=all` with fewer in-sync replicas than the partition's
    /// `min.insync.replicas`; nothing was stored. Retriable.
    NotEnoughReplicas = 36,
    /// In a cluster, another node coordinates this consumer group; the
    /// message names it. Retriable: ask `FindCoordinator` and send there.
    NotCoordinator = 37,
    /// The topic is a mirror's destination: only its mirror appends to it,
    /// so that its offsets stay the source's. Mirror codes start at 80.
    MirrorDestination = 80,
    /// A mirror append was not at the destination partition's log end (a
    /// resend of batches the hub holds, or a gap); the message names the
    /// log end. The mirror asks for the log ends again and resumes there.
    MirrorOffsetMismatch = 81,
    /// The destination topic exists and is not this mirror's: another
    /// mirror's, an ordinary topic, or one with another partition count.
    MirrorConflict = 82,
    /// No mirror with that name.
    UnknownMirror = 83,
    /// A mirror with that name exists.
    MirrorExists = 84,
}

impl ErrorCode {
    /// The code for a wire number, if it is known.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => MalformedFrame,
            2 => FrameTooLarge,
            3 => UnsupportedVersion,
            4 => UnknownRequest,
            5 => UnknownTopic,
            6 => UnknownPartition,
            7 => TopicExists,
            8 => InvalidTopicConfig,
            9 => RecordTooLarge,
            10 => CorruptBatch,
            11 => TooManyInFlight,
            12 => OffsetOutOfRange,
            13 => ProducerFenced,
            14 => OutOfOrderSequence,
            15 => StorageError,
            16 => ShuttingDown,
            17 => InvalidRequest,
            18 => DuplicateSequence,
            19 => UnknownMember,
            20 => StaleGeneration,
            21 => NotAssigned,
            22 => GroupNotEmpty,
            23 => UnknownGroup,
            24 => PluginInvalid,
            25 => PluginRejected,
            26 => UnknownPlugin,
            27 => PluginInUse,
            28 => PluginHalted,
            29 => UnknownPipeline,
            30 => PipelineExists,
            31 => UnsupportedCompression,
            32 => StorageFull,
            33 => PipelineCycle,
            34 => TopicInUse,
            35 => NotLeader,
            36 => NotEnoughReplicas,
            37 => NotCoordinator,
            80 => MirrorDestination,
            81 => MirrorOffsetMismatch,
            82 => MirrorConflict,
            83 => UnknownMirror,
            84 => MirrorExists,
            _ => return None,
        })
    }

    /// Whether a client may retry the same request and expect it to work.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::TooManyInFlight
                | ErrorCode::StorageError
                | ErrorCode::StorageFull
                | ErrorCode::ShuttingDown
                | ErrorCode::PluginHalted
                | ErrorCode::NotLeader
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::NotCoordinator
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
