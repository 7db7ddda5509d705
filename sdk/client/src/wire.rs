//! Reading and writing length-prefixed frames on QUIC streams.
//!
//! Shared by the client and the broker so both apply the same size limit
//! in the same way.

use bytes::{Bytes, BytesMut};
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
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max_frame_bytes {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let mut body = BytesMut::zeroed(len as usize);
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
