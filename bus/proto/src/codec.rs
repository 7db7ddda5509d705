//! The codecs themselves: compressing and decompressing a batch's records
//! section with the well-kept crates made for them (`lz4_flex`, `zstd`),
//! bounded by [`MAX_DECOMPRESSED_BYTES`] on both sides.

use std::io::{self, Read};

use crate::compression::{Compression, MAX_DECOMPRESSED_BYTES};
use crate::error::{CompressError, DecodeError};

/// Largest zstd window (as a power of two) a frame may ask the decoder to
/// allocate: 64 MiB, the same as [`MAX_DECOMPRESSED_BYTES`], since a window
/// larger than the whole output is never needed. zstd's own default is 2^27;
/// only level 22 without a known content size declares a window that large.
const ZSTD_WINDOW_LOG_MAX: u32 = 26;

/// Kafka's default `compression.zstd.level`.
const ZSTD_LEVEL: i32 = 3;

/// Bytes read from a decompressor per step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Compresses a records section as one block.
pub(crate) fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    // A section no reader would inflate must not be written either.
    if data.len() > MAX_DECOMPRESSED_BYTES {
        return Err(CompressError::TooLarge {
            bytes: data.len(),
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    let failed = |e: &dyn std::fmt::Display| CompressError::Codec {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            // 64 KiB independent blocks without checksums, as Kafka's Java
            // client writes them: its reader refuses linked blocks.
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            io::Write::write_all(&mut encoder, data).map_err(|e| failed(&e))?;
            encoder.finish().map_err(|e| failed(&e))
        }
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| failed(&e)),
        Compression::Gzip | Compression::Snappy => Err(CompressError::Unsupported(codec)),
    }
}

/// Decompresses a records section, refusing to produce more than
/// [`MAX_DECOMPRESSED_BYTES`].
pub(crate) fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data)),
        Compression::Zstd => {
            let failed = |e: io::Error| DecodeError::Decompress {
                codec,
                reason: e.to_string(),
            };
            let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(failed)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(failed)?;
            read_bounded(codec, decoder)
        }
        Compression::Gzip | Compression::Snappy => Err(DecodeError::UnsupportedCompression(codec)),
    }
}

/// Reads `reader` to its end in chunks, failing as soon as the output would
/// pass the cap. The buffer grows by doubling but never past the cap, so a
/// refused bomb costs at most the cap in memory.
fn read_bounded(codec: Compression, mut reader: impl Read) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecodeError::Decompress {
                    codec,
                    reason: e.to_string(),
                });
            }
        };
        if n > MAX_DECOMPRESSED_BYTES - out.len() {
            return Err(DecodeError::DecompressedTooLarge {
                limit: MAX_DECOMPRESSED_BYTES,
            });
        }
        if out.capacity() - out.len() < n {
            let target = (out.capacity() * 2)
                .max(out.len() + n)
                .min(MAX_DECOMPRESSED_BYTES);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gzip_and_snappy_give_the_typed_error_both_ways() {
        for c in [Compression::Gzip, Compression::Snappy] {
            assert!(!c.is_supported());
            assert_eq!(compress(c, b"x"), Err(CompressError::Unsupported(c)));
            assert_eq!(
                decompress(c, b"x"),
                Err(DecodeError::UnsupportedCompression(c))
            );
        }
    }

    /// A zstd frame without a known content size declares its window; one
    /// asking for 128 MiB must be refused before the decoder allocates it.
    #[test]
    fn zstd_frame_declaring_a_window_over_the_cap_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX + 1).unwrap();
        io::Write::write_all(&mut encoder, b"tiny").unwrap();
        let frame = encoder.finish().unwrap();
        assert!(matches!(
            decompress(Compression::Zstd, &frame),
            Err(DecodeError::Decompress {
                codec: Compression::Zstd,
                ..
            })
        ));
    }

    /// A frame of `len` zeros, written without [`compress`]'s cap: the
    /// shape of a decompression bomb.
    pub(crate) fn frame_of_zeros(codec: Compression, len: usize) -> Vec<u8> {
        let zeros = vec![0u8; len];
        match codec {
            Compression::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                io::Write::write_all(&mut encoder, &zeros).unwrap();
                encoder.finish().unwrap()
            }
            Compression::Zstd => zstd::bulk::compress(&zeros, ZSTD_LEVEL).unwrap(),
            other => panic!("no bomb for {other}"),
        }
    }

    /// Exactly the cap decompresses; one byte more is refused, for each
    /// codec, and is not written either.
    #[test]
    fn decompression_stops_one_byte_past_the_cap() {
        for c in [Compression::Lz4, Compression::Zstd] {
            let at_cap = frame_of_zeros(c, MAX_DECOMPRESSED_BYTES);
            assert_eq!(
                decompress(c, &at_cap).unwrap().len(),
                MAX_DECOMPRESSED_BYTES
            );
            let over = frame_of_zeros(c, MAX_DECOMPRESSED_BYTES + 1);
            assert_eq!(
                decompress(c, &over),
                Err(DecodeError::DecompressedTooLarge {
                    limit: MAX_DECOMPRESSED_BYTES
                })
            );
            assert_eq!(
                compress(c, &vec![0u8; MAX_DECOMPRESSED_BYTES + 1]),
                Err(CompressError::TooLarge {
                    bytes: MAX_DECOMPRESSED_BYTES + 1,
                    limit: MAX_DECOMPRESSED_BYTES
                })
            );
        }
    }

    proptest! {
        #[test]
        fn compressed_sections_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
                let packed = compress(c, &data).unwrap();
                prop_assert_eq!(decompress(c, &packed).unwrap(), data.clone());
            }
        }

        #[test]
        fn decompress_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            for c in Compression::ALL {
                let _ = decompress(c, &data);
            }
        }
    }
}
