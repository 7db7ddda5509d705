//! One-off reads: `Fetch` and `ListOffsets`. (`Subscribe`, the continuous
//! read, is [`crate::feed`].)

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch::BatchHeader;
use edgebus_proto::frame::{Position, Response};

use crate::reader::{self, FetchError, Reader};

/// `Fetch`: every batch of one read, in one `Fetched` response.
pub async fn fetch(
    reader: &Reader,
    topic: &str,
    partition: u32,
    from: Position,
    max_bytes: u32,
) -> Result<Response, FetchError> {
    let read = reader.read(topic, partition, from, max_bytes).await?;
    if let Some(e) = reader::unservable(&read.batches) {
        return Err(e);
    }
    let len = read.batches.iter().map(Bytes::len).sum();
    let mut buf = BytesMut::with_capacity(len);
    for b in &read.batches {
        buf.extend_from_slice(b);
    }
    let next_offset = read
        .batches
        .last()
        .and_then(|b| BatchHeader::parse(b).ok())
        .map_or(read.offsets.log_end, |h| h.next_offset());
    Ok(Response::Fetched {
        log_start: read.offsets.log_start,
        log_end: read.offsets.log_end,
        next_offset,
        batches: buf.freeze(),
    })
}

/// `ListOffsets`: a position resolved to an offset.
pub async fn list_offsets(
    reader: &Reader,
    topic: &str,
    partition: u32,
    position: Position,
) -> Result<Response, FetchError> {
    let offset = reader.resolve(topic, partition, position).await?;
    Ok(Response::Offset { offset })
}
