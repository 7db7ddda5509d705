//! Pipelines: `PipelineCreate`, `PipelineList`, `PipelineDescribe`,
//! `PipelineDelete`.

use edgebus_proto::frame::{FailurePolicy, PluginRef, Response};

use crate::pipelines::{Pipelines, PipelinesError};

/// `PipelineCreate`.
pub async fn create(
    pipelines: &Pipelines,
    name: &str,
    from: &str,
    to: &str,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
) -> Result<Response, PipelinesError> {
    pipelines.create(name, from, to, chain, on_failure).await?;
    Ok(Response::Done)
}

/// `PipelineList` (every pipeline) and `PipelineDescribe` (`only` one).
pub fn describe(pipelines: &Pipelines, only: Option<&str>) -> Result<Response, PipelinesError> {
    Ok(Response::Pipelines(pipelines.describe(only)?))
}

/// `PipelineDelete`: its output records stay.
pub async fn delete(pipelines: &Pipelines, name: &str) -> Result<Response, PipelinesError> {
    pipelines.delete(name).await?;
    Ok(Response::Done)
}
