//! Plugins: `PluginAdd`, `PluginList`, `PluginDescribe`, `PluginRemove`,
//! and a topic's ingest chain: `SetIngest`, `TopicPlugins`. On a cluster
//! node the registry and the chains go through the control log
//! ([`crate::cluster`]).

use std::sync::Arc;

use bytes::Bytes;
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{FailurePolicy, PluginRef, Response};

use crate::attach::{AttachError, Attachments};
use crate::cluster::{Cluster, PluginClusterError};
use crate::error::Coded;
use crate::pipelines::Pipelines;
use crate::registry::{Registry, RegistryError};
use crate::topics::{Topics, UnknownTopic};

/// Why a plugin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginRequestError {
    /// The registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// The ingest chain could not be set.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The registry call's task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The cluster refused or did not commit the change.
    #[error(transparent)]
    Cluster(#[from] PluginClusterError),
}

impl Coded for PluginRequestError {
    fn code(&self) -> ErrorCode {
        match self {
            PluginRequestError::Registry(e) => e.code(),
            PluginRequestError::UnknownTopic(e) => e.code(),
            PluginRequestError::Attach(e) => e.code(),
            PluginRequestError::Task(_) => ErrorCode::StorageError,
            PluginRequestError::Cluster(e) => e.code(),
        }
    }
}

/// Everywhere a plugin is attached: ingest chains and pipelines.
fn users(attachments: &Attachments, pipelines: &Pipelines, plugin: &str) -> Vec<String> {
    let mut users = attachments.users(plugin);
    users.extend(pipelines.users(plugin));
    users.sort();
    users
}

/// `PluginAdd`: a new plugin, or a new version of one (hot swap).
pub async fn add(
    registry: &Arc<Registry>,
    cluster: Option<&Cluster>,
    name: String,
    wasm: Bytes,
) -> Result<Response, PluginRequestError> {
    if let Some(cluster) = cluster {
        return Ok(Response::Plugins(vec![
            cluster.add_plugin(registry, name, wasm).await?,
        ]));
    }
    let registry = registry.clone();
    let added =
        tokio::task::spawn_blocking(move || registry.add(&name, &wasm, crate::retention::now_ms()))
            .await??;
    Ok(Response::Plugins(vec![added]))
}

/// `PluginList` (every plugin) and `PluginDescribe` (`only` one), each with
/// where it is attached.
pub async fn list(
    registry: &Arc<Registry>,
    cluster: Option<&Cluster>,
    attachments: &Arc<Attachments>,
    pipelines: &Pipelines,
    only: Option<String>,
) -> Result<Response, PluginRequestError> {
    if let Some(cluster) = cluster {
        return Ok(Response::Plugins(cluster.list_plugins(only.as_deref())?));
    }
    let (registry, attachments, pipelines) =
        (registry.clone(), attachments.clone(), pipelines.clone());
    let found = tokio::task::spawn_blocking(move || {
        registry.list(only.as_deref(), |n| users(&attachments, &pipelines, n))
    })
    .await??;
    Ok(Response::Plugins(found))
}

/// `PluginRemove`: refused while the plugin is attached anywhere.
pub async fn remove(
    registry: &Arc<Registry>,
    cluster: Option<&Cluster>,
    attachments: &Attachments,
    pipelines: &Pipelines,
    name: String,
) -> Result<Response, PluginRequestError> {
    if let Some(cluster) = cluster {
        cluster.remove_plugin(registry, &name).await?;
        return Ok(Response::Done);
    }
    let users = users(attachments, pipelines, &name);
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || registry.remove(&name, users)).await??;
    Ok(Response::Done)
}

/// `SetIngest`: sets (or, with an empty chain, clears) a topic's ingest
/// chain, from the next produced batch.
pub async fn set_ingest(
    topics: &Topics,
    cluster: Option<(&Cluster, &Arc<Registry>)>,
    attachments: &Attachments,
    topic: &str,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
) -> Result<Response, PluginRequestError> {
    topics.spec(topic)?;
    match cluster {
        Some((cluster, registry)) => {
            cluster
                .set_ingest(registry, attachments, topic, chain, on_failure)
                .await?;
        }
        None => attachments.set_ingest(topic, chain, on_failure).await?,
    }
    Ok(Response::Done)
}

/// `TopicPlugins`: a topic's ingest chain and its plugin counters.
pub fn topic_plugins(
    topics: &Topics,
    attachments: &Attachments,
    topic: &str,
) -> Result<Response, UnknownTopic> {
    topics.spec(topic)?;
    let chain = attachments.ingest_chain(topic);
    Ok(Response::TopicPlugins {
        ingest: chain.as_ref().map(|c| c.refs.clone()).unwrap_or_default(),
        on_failure: chain.as_ref().map(|c| c.policy).unwrap_or_default(),
        ingest_counters: chain
            .as_ref()
            .map(|c| c.counters.snapshot())
            .unwrap_or_default(),
        read_counters: attachments.read_counters(topic).snapshot(),
    })
}
