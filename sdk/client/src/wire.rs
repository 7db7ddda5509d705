//! Reading and writing length-prefixed frames on QUIC streams, with the
//! size check of [`edgebus_proto::framing`].

use bytes::{Bytes, BytesMut};
use edgebus_proto::framing::{self, LENGTH_PREFIX_BYTES};
use quinn::{ReadExactError, RecvStream, SendStream};

/// Why a frame could not be read from or written to a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix exceeds the receiver's limit. The stream cannot be
    /// resynchronised after this, so the caller should end it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading failed (reset, connection lost).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (stopped, connection lost).
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads one frame body (everything after the length prefix). Returns
/// `Ok(None)` when the peer finished the stream cleanly between frames.
pub async fn read_frame(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Option<Bytes>, WireError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = framing::body_len(prefix, max_frame_bytes).map_err(|e| WireError::FrameTooLarge {
        len: e.len,
        max: e.max,
    })?;
    let mut body = BytesMut::zeroed(len);
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(body.freeze())),
        Err(ReadExactError::FinishedEarly(_)) => Err(WireError::Truncated),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Writes already-encoded frames.
pub async fn write_frames(send: &mut SendStream, frames: &[u8]) -> Result<(), WireError> {
    send.write_all(frames).await.map_err(WireError::Write)
}
