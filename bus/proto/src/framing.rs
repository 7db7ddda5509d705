//! Length-prefix framing: how frames are delimited on a byte stream.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes, the
//! frame body (see [`crate::frame`] for what the body holds). A reader checks
//! the length against its limit before it reads or allocates the body, so a
//! hostile prefix cannot make a peer allocate gigabytes.
//!
//! Pure: the caller owns the stream. The broker and the client each read
//! and write QUIC streams with these, so both apply the limit the same way.

use bytes::BytesMut;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// A length prefix announced more than the reader accepts. The stream
/// cannot be resynchronised after this: the reader should stop reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// Declared length.
    pub len: u32,
    /// The reader's limit.
    pub max: u32,
}

/// The body length a length prefix announces, if it is within
/// `max_frame_bytes`.
pub fn body_len(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    max_frame_bytes: u32,
) -> Result<usize, FrameTooLarge> {
    let len = u32::from_be_bytes(prefix);
    if len > max_frame_bytes {
        return Err(FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len as usize)
}

/// Reserves a length prefix at the end of `buf` and returns where the frame
/// starts, for [`finish_frame`] once the body is written.
pub fn begin_frame(buf: &mut BytesMut) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    start
}

/// Fills in the length prefix of the frame at `start`: every byte written
/// after the prefix, plus `trailing_bytes` the caller sends right after
/// `buf` without copying them in.
pub fn finish_frame(buf: &mut BytesMut, start: usize, trailing_bytes: usize) {
    let len = (buf.len() - start - LENGTH_PREFIX_BYTES + trailing_bytes) as u32;
    buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn body_len_at_the_limit_is_accepted_and_one_more_is_not() {
        assert_eq!(body_len(100u32.to_be_bytes(), 100), Ok(100));
        assert_eq!(
            body_len(101u32.to_be_bytes(), 100),
            Err(FrameTooLarge { len: 101, max: 100 })
        );
    }

    #[test]
    fn finished_frame_prefix_counts_body_and_trailing_bytes() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        let start = begin_frame(&mut buf);
        buf.extend_from_slice(b"body");
        finish_frame(&mut buf, start, 6);
        assert_eq!(&buf[..], b"xy\0\0\0\x0abody");
    }

    proptest! {
        #[test]
        fn begin_finish_roundtrips_through_body_len(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::new();
            let start = begin_frame(&mut buf);
            buf.extend_from_slice(&body);
            finish_frame(&mut buf, start, 0);
            let prefix = [buf[0], buf[1], buf[2], buf[3]];
            prop_assert_eq!(body_len(prefix, u32::MAX), Ok(body.len()));
        }
    }
}
