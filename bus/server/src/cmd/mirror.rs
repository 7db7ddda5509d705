//! Mirroring, both ends: the hub's `MirrorOpen` and `MirrorAppend` (an edge
//! mirror delivering stored batches), and the edge's mirror admin requests,
//! answered by [`crate::mirror::Mirrors`].

use bytes::Bytes;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::split;
use edgebus_proto::compression::{self, Compression};
use edgebus_proto::frame::{Response, TopicSpec};

use crate::error::Coded;
use crate::topics::Topics;
use crate::writer::{MirrorBatches, MirrorCommit, MirrorRefused, MirrorSkip, Writer};

/// Why a hub refused a mirror request before the writer saw it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The writer refused it.
    #[error(transparent)]
    Refused(#[from] MirrorRefused),
    /// The payload does not decompress, or is not whole batches.
    #[error("mirror payload: {0}")]
    Payload(String),
    /// A field of the request is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Coded for HubError {
    fn code(&self) -> ErrorCode {
        match self {
            HubError::Refused(e) => e.code(),
            HubError::Payload(_) => ErrorCode::CorruptBatch,
            HubError::Invalid(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// `MirrorOpen`: creates and binds the destination on first contact, and
/// answers its log ends.
pub async fn open(
    topics: &Topics,
    writer: &Writer,
    in_cluster: bool,
    mirror: String,
    topic: String,
    partitions: u32,
    filtered: bool,
) -> Result<Response, HubError> {
    if mirror.is_empty() {
        return Err(HubError::Invalid("a mirror open names its mirror".into()));
    }
    if in_cluster {
        // Its destination would be a node-local topic the control log
        // knows nothing of.
        return Err(HubError::Invalid(
            "a cluster node cannot be a mirror hub yet".into(),
        ));
    }
    // The source's retention is the edge's business: the hub keeps what it
    // was sent until an operator says otherwise.
    let spec = topics.with_defaults(TopicSpec::new(topic, partitions));
    edgebus_store::topic::validate(&spec).map_err(|e| HubError::Invalid(e.to_string()))?;
    let (ends, created) = writer
        .open_mirror_destination(spec.clone(), mirror, filtered)
        .await?;
    if created {
        topics.cache_created(spec);
    }
    Ok(Response::MirrorPositions(ends))
}

/// `MirrorSkip`: moves the log end over records the edge lost.
pub async fn skip(writer: &Writer, skip: MirrorSkip) -> Result<Response, HubError> {
    let offset = writer.mirror_skip(skip).await?;
    Ok(Response::Offset { offset })
}

/// `MirrorCommit`: a filtered link's records and checkpoint.
pub async fn commit(
    writer: &Writer,
    mut commit: MirrorCommit,
    codec: Compression,
    payload: Bytes,
) -> Result<Response, HubError> {
    commit.batches = batches(codec, payload).await?;
    let offset = writer.mirror_commit(commit).await?;
    Ok(Response::Offset { offset })
}

/// The whole batches of a link payload.
async fn batches(codec: Compression, payload: Bytes) -> Result<Vec<Bytes>, HubError> {
    let raw = match codec {
        Compression::None => payload,
        codec => {
            let inflated = tokio::task::spawn_blocking(move || {
                compression::decompress(codec, &payload).map(Bytes::from)
            })
            .await
            .map_err(|e| HubError::Payload(e.to_string()))?;
            inflated.map_err(|e| HubError::Payload(e.to_string()))?
        }
    };
    split(&raw).map_err(|e| HubError::Payload(e.to_string()))
}

/// `MirrorAppend`: decompresses the payload, splits it into batches and
/// appends them at the log end.
pub async fn append(
    writer: &Writer,
    mirror: String,
    topic: String,
    partition: u32,
    base_offset: u64,
    codec: Compression,
    payload: Bytes,
) -> Result<Response, HubError> {
    let batches = batches(codec, payload).await?;
    let offset = writer
        .mirror_append(MirrorBatches {
            mirror,
            topic,
            partition,
            base_offset,
            batches,
        })
        .await?;
    Ok(Response::Offset { offset })
}
