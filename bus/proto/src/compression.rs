//! Compression codecs of a batch's records section, numbered as Kafka
//! numbers them in the batch attributes.
//!
//! This build writes and reads `none`, `lz4` (the LZ4 *frame* format, as
//! Kafka's clients write it) and `zstd` (a zstd frame). `gzip` and `snappy`
//! are recognised and refused with a typed error rather than hand-written.
//!
//! Decompression (in the crate's private `codec` module) is bounded: a
//! records section that inflates past [`MAX_DECOMPRESSED_BYTES`] is refused
//! as it is read, so a small batch cannot make the broker allocate
//! gigabytes. Nothing is sized from a length that the compressed data
//! declares.

/// Cap on the decompressed size of one batch's records section. A batch
/// whose records inflate past it is refused, on read as on write.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

/// A codec, as carried in bits 0-2 of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as they are.
    #[default]
    None,
    /// gzip; recognised, not supported.
    Gzip,
    /// Snappy (Xerial framing); recognised, not supported.
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard frame.
    Zstd,
}

impl Compression {
    /// Every codec, in codec-number order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Kafka's number for the codec, as stored in the attributes.
    pub const fn codec(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec with Kafka's number `codec`, if there is one.
    pub fn from_codec(codec: u8) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.codec() == codec)
    }

    /// The name Kafka's `compression.type` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Whether this build compresses and decompresses with the codec.
    pub const fn is_supported(self) -> bool {
        matches!(
            self,
            Compression::None | Compression::Lz4 | Compression::Zstd
        )
    }
}

/// Compresses a whole buffer with `codec` (a mirror's link payload, say):
/// the same frames a batch's records section uses.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, crate::CompressError> {
    crate::codec::compress(codec, data)
}

/// Decompresses what [`compress`] made, refusing more than
/// [`MAX_DECOMPRESSED_BYTES`].
pub fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, crate::DecodeError> {
    crate::codec::decompress(codec, data)
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A codec name that is not one of `none|gzip|snappy|lz4|zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: expected none, gzip, snappy, lz4 or zstd")]
pub struct UnknownCompression(pub String);

impl std::str::FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCompression(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names_and_codecs_roundtrip() {
        for (codec, c) in Compression::ALL.into_iter().enumerate() {
            assert_eq!(c.codec() as usize, codec);
            assert_eq!(Compression::from_codec(c.codec()), Some(c));
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!(Compression::from_codec(5), None);
        assert_eq!(
            "LZ4".parse::<Compression>(),
            Err(UnknownCompression("LZ4".to_owned()))
        );
    }
}
