//! Frames on QUIC streams, the broker's side: length-prefixed frames read
//! under the size check of [`edgebus_proto::framing`], responses written
//! from a reused buffer, and stored batches sent without copying.

use bytes::{Bytes, BytesMut};
use edgebus_proto::frame::Response;
use edgebus_proto::framing::{self, FrameTooLarge, LENGTH_PREFIX_BYTES};
use edgebus_store::ReadBatches;
use quinn::{ReadExactError, RecvStream, SendStream};

/// Why a frame could not be read from or written to a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix exceeds the limit. The stream cannot be
    /// resynchronised after this.
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
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
    let mut body = BytesMut::zeroed(framing::body_len(prefix, max_frame_bytes)?);
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(body.freeze())),
        Err(ReadExactError::FinishedEarly(_)) => Err(WireError::Truncated),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

/// Writes one response, encoded into `buf`.
pub async fn write_response(
    send: &mut SendStream,
    correlation_id: u32,
    response: &Response,
    buf: &mut BytesMut,
) -> Result<(), WireError> {
    buf.clear();
    response.encode(correlation_id, buf);
    Ok(send.write_all(buf).await?)
}

/// Writes a `Fetched` frame whose batches go out as their own chunks, never
/// copied into the frame buffer.
pub async fn write_fetched(
    send: &mut SendStream,
    correlation_id: u32,
    read: ReadBatches,
    next_offset: u64,
    buf: &mut BytesMut,
) -> Result<(), WireError> {
    buf.clear();
    let len = read.batches.iter().map(Bytes::len).sum();
    edgebus_proto::frame::encode_fetched_head(
        correlation_id,
        read.offsets.log_start,
        read.offsets.log_end,
        next_offset,
        len,
        buf,
    );
    let mut chunks = Vec::with_capacity(read.batches.len() + 1);
    chunks.push(buf.split().freeze());
    chunks.extend(read.batches);
    Ok(send.write_all_chunks(&mut chunks).await?)
}
