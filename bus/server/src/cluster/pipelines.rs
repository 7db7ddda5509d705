//! Pipelines on a cluster node: definitions in the control log, each
//! pipeline running on exactly one node, which checkpoints its progress in
//! the control log so another node can take over.
//!
//! # Which node runs a pipeline
//!
//! The leader of partition 0 of its destination topic (a cluster pipeline
//! writes to a one-partition topic). A step commits its outputs with its
//! source position through the node's own partition engine, and only a
//! partition's leader has one that appends; so the runner is the one node
//! that can commit, it moves exactly when leadership moves (the control log
//! elects a new leader when a node dies), and no two nodes run a pipeline
//! at the same leader epoch. A deposed runner's late commits are refused
//! by its engine, which no longer leads.
//!
//! # Progress and takeover: exactly-once outputs
//!
//! The runner commits outputs, plugin state and source positions in one
//! local transaction, as on a single node, and stamps the outputs as an
//! idempotent producer of the pipeline's own whose sequences are the
//! source offsets they cover ([`edgebus_core::sourced`]). Every replica
//! stores each output batch with that producer's dedup state, so a new
//! runner reads from its own copy of the destination the source offset
//! after the last output it holds, and writes outputs only from there on:
//! outputs the dead
//! runner committed after its last checkpoint are neither lost (it was in
//! sync) nor written again. The partition engine's sequence check refuses
//! a span that would repeat stored outputs; the runner then starts over
//! from what its copy shows.
//!
//! Every `cluster.pipeline_checkpoint_ms` the runner also reads its
//! positions and plugin state, with its destination's log end, and once
//! the destination's high watermark reaches that end proposes them to the
//! control log. A new runner restores that state at those positions and
//! runs the inputs up to the end of the outputs its copy holds again for
//! their state only.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use edgebus_core::controller::{
    ClusterState, ControlRequest, MAX_PIPELINE_STATE_BYTES, PipelineMeta, PipelineStateCheckpoint,
};
use edgebus_proto::frame::{FailurePolicy, PipelineDescription, PluginRef};

use super::Cluster;
use super::registry::{LocalPlugins, PluginClusterError};
use crate::chain::{self, AttachPoint, ChainRunner};
use crate::pipelines::{Pipelines, PipelinesError, Snapshot};
use crate::registry::Registry;
use crate::saved::{self, PipelineDefinition};

impl Cluster {
    /// `pipeline create` on a cluster node: the chain must initialise here
    /// before the definition is proposed.
    pub async fn create_pipeline(
        &self,
        registry: &Arc<Registry>,
        name: &str,
        definition: PipelineDefinition,
    ) -> Result<(), PluginClusterError> {
        edgebus_store::topic::check_name(name).map_err(PipelinesError::InvalidName)?;
        if definition.chain.is_empty() {
            return Err(PipelinesError::NoPlugin.into());
        }
        ChainRunner::new(
            registry.clone(),
            definition.chain.clone(),
            definition.on_failure,
            AttachPoint::Pipeline,
            Arc::default(),
            chain::in_memory_state(),
        )
        .build()
        .await
        .map_err(PipelinesError::Chain)?;
        let request = ControlRequest::CreatePipeline {
            name: name.to_owned(),
            from: definition.from.clone(),
            to: definition.to.clone(),
            plugins: definition.chain.iter().map(|r| r.name.clone()).collect(),
            definition: saved::encode_pipeline(&definition),
        };
        self.commit(request).await?;
        self.until_applied(|| async { self.state().pipelines.contains_key(name) })
            .await?;
        Ok(())
    }

    /// `pipeline delete` on a cluster node; answers once it no longer runs
    /// here.
    pub async fn delete_pipeline(
        &self,
        pipelines: &Pipelines,
        name: &str,
    ) -> Result<(), PluginClusterError> {
        let request = ControlRequest::DeletePipeline {
            name: name.to_owned(),
        };
        self.commit(request).await?;
        self.until_applied(|| async {
            !self.state().pipelines.contains_key(name)
                && !pipelines.running().iter().any(|n| n == name)
        })
        .await?;
        Ok(())
    }

    /// `pipeline list` and `describe` on a cluster node: every pipeline of
    /// the cluster, as its runner sees it when that is this node, else its
    /// definition, runner and checkpointed positions.
    pub fn describe_pipelines(
        &self,
        pipelines: &Pipelines,
        only: Option<&str>,
    ) -> Result<Vec<PipelineDescription>, PipelinesError> {
        let state = self.state();
        let mut here: HashMap<String, PipelineDescription> = pipelines
            .describe(None)?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut out = Vec::new();
        for (name, meta) in &state.pipelines {
            if only.is_some_and(|n| n != name) {
                continue;
            }
            if let Some(mut d) = here.remove(name) {
                d.status = format!("{} on node {} (this node)", d.status, self.inner.node);
                out.push(d);
                continue;
            }
            let (chain, on_failure) = match saved::decode_pipeline(&meta.definition) {
                Ok(d) => (d.chain, d.on_failure),
                Err(_) => (Vec::<PluginRef>::new(), FailurePolicy::default()),
            };
            let status = match runner(&state, meta) {
                Some(node) => format!("runs on node {node}"),
                None => format!("waiting: topic {:?} has no leader", meta.to),
            };
            out.push(PipelineDescription {
                name: name.clone(),
                from: meta.from.clone(),
                to: meta.to.clone(),
                chain,
                on_failure,
                status,
                positions: meta.positions.iter().map(|(p, o)| (*p, *o)).collect(),
                counters: Default::default(),
            });
        }
        match only {
            Some(name) if out.is_empty() => Err(PipelinesError::Unknown(name.to_owned())),
            _ => Ok(out),
        }
    }

    /// Runs here the pipelines this node is the runner of, and stops the
    /// others.
    pub(super) async fn sync_pipelines(&self, local: &LocalPlugins, state: &ClusterState) {
        let node = self.inner.node;
        let registered = state
            .nodes
            .get(&node)
            .is_some_and(|meta| meta.incarnation == self.inner.incarnation);
        for name in local.pipelines.running() {
            let Some(meta) = state.pipelines.get(&name) else {
                tracing::info!(pipeline = %name, "not in the control log: deleted here");
                if let Err(e) = local.pipelines.delete(&name).await {
                    tracing::error!(pipeline = %name, error = %e, "deleting a pipeline failed");
                }
                continue;
            };
            match runs_here(state, meta, node).filter(|_| registered) {
                None => {
                    tracing::info!(pipeline = %name, "pipeline moves to another node");
                    local.pipelines.stop(&name).await;
                }
                Some(epoch) if local.pipelines.started_under(&name) != Some(epoch) => {
                    // This node led the destination again after another
                    // did: what it wrote meanwhile may have been cut, so it
                    // starts over from the control log's checkpoint and its
                    // copy.
                    tracing::info!(pipeline = %name, "pipeline restarts under a new leader epoch");
                    local.pipelines.stop(&name).await;
                }
                Some(_) => {}
            }
        }
        if !registered {
            return;
        }
        for (name, meta) in &state.pipelines {
            let Some(epoch) = runs_here(state, meta, node) else {
                continue;
            };
            let started = local.pipelines.start_replicated(name, meta, epoch).await;
            if let Err(e) = started {
                tracing::error!(pipeline = %name, error = %e, "starting a pipeline failed");
            }
        }
    }

    /// Checkpoints the progress of the pipelines running here, every
    /// `cluster.pipeline_checkpoint_ms`.
    pub(super) async fn checkpoints(self, local: LocalPlugins) {
        // Per pipeline: what was read, waiting for the high watermark to
        // reach the destination log end read with it.
        let mut pending: HashMap<String, Snapshot> = HashMap::new();
        // Pipelines warned of a state too large to checkpoint.
        let mut oversized: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(self.inner.pipeline_checkpoint).await;
            let state = self.state();
            let running = local.pipelines.running();
            pending.retain(|name, _| running.contains(name));
            for name in running {
                let Some(meta) = state.pipelines.get(&name) else {
                    continue;
                };
                if let Some(read) = pending.get(&name)
                    && local.reader.high_watermark(&meta.to, 0) >= read.destination_end
                {
                    if read.state.is_none() && oversized.insert(name.clone()) {
                        tracing::warn!(
                            pipeline = %name,
                            "plugin state above the {MAX_PIPELINE_STATE_BYTES} bytes a checkpoint \
                             holds: checkpointing positions only, so a new runner replays from \
                             the last state checkpoint or the source's start"
                        );
                    }
                    if ahead(&read.positions, &meta.positions) {
                        let state = read.state.clone().map(|state| PipelineStateCheckpoint {
                            positions: read.positions.iter().copied().collect(),
                            state,
                        });
                        let request = ControlRequest::CheckpointPipeline {
                            name: name.clone(),
                            positions: read.positions.clone(),
                            state,
                            leader_epoch: Some(read.leader_epoch),
                        };
                        if let Err(e) = self.commit(request).await {
                            tracing::debug!(pipeline = %name, error = %e, "checkpoint not committed");
                        }
                    }
                    pending.remove(&name);
                }
                if let Entry::Vacant(slot) = pending.entry(name) {
                    match local.pipelines.progress(slot.key(), &meta.to).await {
                        Ok(Some(read)) => {
                            slot.insert(read);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(pipeline = %slot.key(), error = %e, "progress unreadable");
                        }
                    }
                }
            }
        }
    }
}

/// The node that runs a pipeline: the leader of its destination's
/// partition 0.
fn runner(state: &ClusterState, meta: &PipelineMeta) -> Option<u64> {
    state.partition(&meta.to, 0)?.leader
}

/// The leader epoch of a pipeline's destination partition when `node`
/// leads it, and so runs the pipeline.
fn runs_here(state: &ClusterState, meta: &PipelineMeta, node: u64) -> Option<i32> {
    let destination = state.partition(&meta.to, 0)?;
    (destination.leader == Some(node)).then_some(destination.leader_epoch)
}

/// Whether `positions` are past what the control log holds somewhere.
fn ahead(positions: &[(u32, u64)], checkpointed: &BTreeMap<u32, u64>) -> bool {
    positions
        .iter()
        .any(|(p, o)| checkpointed.get(p).is_none_or(|c| o > c))
}

impl From<PipelinesError> for PluginClusterError {
    fn from(e: PipelinesError) -> Self {
        PluginClusterError::Pipelines(e)
    }
}
