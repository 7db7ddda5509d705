//! Pipelines: `PipelineCreate`, `PipelineList`, `PipelineDescribe`,
//! `PipelineDelete`. On a cluster node definitions go through the control
//! log and each pipeline runs on one node ([`crate::cluster`]).

use std::sync::Arc;

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{FailurePolicy, PluginRef, Response};

use crate::cluster::{Cluster, PluginClusterError};
use crate::error::Coded;
use crate::pipelines::{Pipelines, PipelinesError};
use crate::registry::Registry;
use crate::saved::PipelineDefinition;

/// Why a pipeline request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineRequestError {
    /// This node's pipelines refused it.
    #[error(transparent)]
    Pipelines(#[from] PipelinesError),
    /// The cluster refused or did not commit it.
    #[error(transparent)]
    Cluster(#[from] PluginClusterError),
}

impl Coded for PipelineRequestError {
    fn code(&self) -> ErrorCode {
        match self {
            PipelineRequestError::Pipelines(e) => e.code(),
            PipelineRequestError::Cluster(e) => e.code(),
        }
    }
}

/// `PipelineCreate`.
pub async fn create(
    pipelines: &Pipelines,
    cluster: Option<(&Cluster, &Arc<Registry>)>,
    name: &str,
    from: &str,
    to: &str,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
) -> Result<Response, PipelineRequestError> {
    match cluster {
        Some((cluster, registry)) => {
            let definition = PipelineDefinition {
                from: from.to_owned(),
                to: to.to_owned(),
                chain,
                on_failure,
            };
            cluster.create_pipeline(registry, name, definition).await?;
        }
        None => pipelines.create(name, from, to, chain, on_failure).await?,
    }
    Ok(Response::Done)
}

/// `PipelineList` (every pipeline) and `PipelineDescribe` (`only` one).
pub fn describe(
    pipelines: &Pipelines,
    cluster: Option<&Cluster>,
    only: Option<&str>,
) -> Result<Response, PipelinesError> {
    Ok(Response::Pipelines(match cluster {
        Some(cluster) => cluster.describe_pipelines(pipelines, only)?,
        None => pipelines.describe(only)?,
    }))
}

/// `PipelineDelete`: its output records stay.
pub async fn delete(
    pipelines: &Pipelines,
    cluster: Option<&Cluster>,
    name: &str,
) -> Result<Response, PipelineRequestError> {
    match cluster {
        Some(cluster) => cluster.delete_pipeline(pipelines, name).await?,
        None => pipelines.delete(name).await?,
    }
    Ok(Response::Done)
}
