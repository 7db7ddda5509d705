//! Topic administration: `CreateTopic`, `AlterTopic`, `DeleteTopic`,
//! `ListTopics`, `DescribeTopic`.

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{Response, TopicChanges, TopicSpec};

use crate::attach::Attachments;
use crate::cluster::Cluster;
use crate::dlq::DeadLetters;
use crate::error::Coded;
use crate::pipelines::Pipelines;
use crate::reader::{FetchError, Reader};
use crate::topics::{TopicAdminError, Topics, UnknownTopic};

/// A topic that something in the broker reads or writes cannot be deleted
/// from under it.
#[derive(Debug, thiserror::Error)]
#[error("topic {topic:?} is used by {}; delete those first", users.join(", "))]
pub struct TopicInUse {
    /// Topic name.
    pub topic: String,
    /// Its users, as `pipeline:NAME`.
    pub users: Vec<String>,
}

impl Coded for TopicInUse {
    fn code(&self) -> ErrorCode {
        ErrorCode::TopicInUse
    }
}

/// Why a topic request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicRequestError {
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// Creating, altering or deleting failed.
    #[error(transparent)]
    Admin(#[from] TopicAdminError),
    /// Reading the partitions' offsets failed.
    #[error(transparent)]
    Read(#[from] FetchError),
    /// The topic to delete is in use.
    #[error(transparent)]
    InUse(#[from] TopicInUse),
}

impl Coded for TopicRequestError {
    fn code(&self) -> ErrorCode {
        match self {
            TopicRequestError::UnknownTopic(e) => e.code(),
            TopicRequestError::Admin(e) => e.code(),
            TopicRequestError::Read(e) => e.code(),
            TopicRequestError::InUse(e) => e.code(),
        }
    }
}

/// `CreateTopic` and `CreateReplicatedTopic`. On a cluster node the
/// control log places the topic's replicas and every replica node creates
/// it; a single node takes a replication factor and `min.insync.replicas`
/// of at most 1 (0 meaning the default), and no unclean election.
pub async fn create(
    topics: &Topics,
    cluster: Option<&Cluster>,
    spec: TopicSpec,
    replication_factor: u32,
    min_insync: u32,
    unclean_leader_election: bool,
) -> Result<Response, TopicRequestError> {
    match cluster {
        Some(cluster) => {
            cluster
                .create_topic(
                    spec,
                    replication_factor,
                    min_insync,
                    unclean_leader_election,
                )
                .await?
        }
        None if replication_factor > 1 || min_insync > 1 || unclean_leader_election => {
            return Err(
                TopicAdminError::Store(edgebus_store::TopicError::Invalid(format!(
                    "replication factor {replication_factor}, min.insync.replicas {min_insync} \
                     and unclean leader election need a cluster; this is a single node"
                )))
                .into(),
            );
        }
        None => topics.create(spec).await?,
    }
    Ok(Response::TopicCreated)
}

/// `AlterTopic`: answers with the new spec.
pub async fn alter(
    topics: &Topics,
    cluster: Option<&Cluster>,
    name: &str,
    changes: TopicChanges,
) -> Result<Response, TopicRequestError> {
    let spec = match cluster {
        Some(cluster) => cluster.alter_topic(name, changes).await?,
        None => topics.alter(name, changes).await?,
    };
    Ok(Response::Topics(vec![spec]))
}

/// What in the broker reads or writes `topic` besides clients, as
/// `KIND:NAME`: today pipelines (as source or destination). A topic with
/// users is not deleted. Mirrors, when they exist, are users too and
/// belong here.
fn users(pipelines: &Pipelines, topic: &str) -> Vec<String> {
    pipelines.topic_users(topic)
}

/// `DeleteTopic`: refused while a pipeline uses the topic. Otherwise the
/// records, the cached spec, the group coordinator's view, the ingest chain
/// and the memory of its read-path dead letters all go. On a cluster node
/// the delete goes through the control log, and every node holding a copy
/// deletes it (this node's pipelines, ingest chain and dead letters are
/// its own).
pub async fn delete(
    topics: &Topics,
    cluster: Option<&Cluster>,
    pipelines: &Pipelines,
    attachments: &Attachments,
    dead_letters: &DeadLetters,
    name: String,
) -> Result<Response, TopicRequestError> {
    // No pipeline may start using the topic between the check and the
    // delete.
    let _paused = pipelines.pause_creation().await;
    let mut users = users(pipelines, &name);
    // A cluster's pipelines run on other nodes too; the control log
    // refuses the delete as well, this names them with the right code.
    if let Some(cluster) = cluster {
        users.extend(cluster.state().topic_users(&name));
        users.sort();
        users.dedup();
    }
    if !users.is_empty() {
        return Err(TopicInUse { topic: name, users }.into());
    }
    match cluster {
        Some(cluster) => cluster.delete_topic(&name).await?,
        None => topics.delete(name.clone()).await?,
    }
    // The topic is gone either way; stale plugin state is only logged.
    if let Err(error) = attachments.topic_deleted(&name).await {
        tracing::warn!(topic = %name, %error, "ingest plugin state of a deleted topic not deleted");
    }
    dead_letters.topic_deleted(&name);
    Ok(Response::TopicDeleted)
}

/// `ListTopics`.
pub fn list(topics: &Topics) -> Response {
    Response::Topics(topics.list())
}

/// `DescribeTopic`: the spec and each partition's offsets and size.
pub async fn describe(
    topics: &Topics,
    reader: &Reader,
    name: &str,
) -> Result<Response, TopicRequestError> {
    let spec = topics.spec(name)?;
    let partitions = reader.partitions(spec.clone()).await?;
    Ok(Response::TopicDescription { spec, partitions })
}
