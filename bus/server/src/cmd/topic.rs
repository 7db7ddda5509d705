//! Topic administration: `CreateTopic`, `DeleteTopic`, `ListTopics`,
//! `DescribeTopic`.

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{Response, TopicSpec};

use crate::attach::Attachments;
use crate::dlq::DeadLetters;
use crate::error::Coded;
use crate::reader::{FetchError, Reader};
use crate::topics::{TopicAdminError, Topics, UnknownTopic};

/// Why a topic request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicRequestError {
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// Creating or deleting failed.
    #[error(transparent)]
    Admin(#[from] TopicAdminError),
    /// Reading the partitions' offsets failed.
    #[error(transparent)]
    Read(#[from] FetchError),
}

impl Coded for TopicRequestError {
    fn code(&self) -> ErrorCode {
        match self {
            TopicRequestError::UnknownTopic(e) => e.code(),
            TopicRequestError::Admin(e) => e.code(),
            TopicRequestError::Read(e) => e.code(),
        }
    }
}

/// `CreateTopic`.
pub async fn create(topics: &Topics, spec: TopicSpec) -> Result<Response, TopicRequestError> {
    topics.create(spec).await?;
    Ok(Response::TopicCreated)
}

/// `DeleteTopic`: the records, the cached spec, the group coordinator's
/// view, the ingest chain and the memory of its read-path dead letters all
/// go.
pub async fn delete(
    topics: &Topics,
    attachments: &Attachments,
    dead_letters: &DeadLetters,
    name: String,
) -> Result<Response, TopicRequestError> {
    topics.delete(name.clone()).await?;
    attachments.topic_deleted(&name);
    dead_letters.topic_deleted(&name);
    Ok(Response::TopicDeleted)
}

/// `ListTopics`.
pub fn list(topics: &Topics) -> Response {
    Response::Topics(topics.list())
}

/// `DescribeTopic`: the spec and each partition's offsets.
pub async fn describe(
    topics: &Topics,
    reader: &Reader,
    name: &str,
) -> Result<Response, TopicRequestError> {
    let spec = topics.spec(name)?;
    let partitions = reader.partitions(spec.clone()).await?;
    Ok(Response::TopicDescription { spec, partitions })
}
