//! The plugin registry and ingest chains on a cluster node: requests go
//! through the control log, and every node brings its own registry and
//! chains to what the log holds.
//!
//! `plugin add` on any node checks the component with its engine, then
//! proposes it (name, digest, kind and the bytes, at most
//! [`MAX_REPLICATED_PLUGIN_BYTES`]); the control log numbers the versions,
//! so `plugin list` and `describe` answer the same on every node (they
//! answer from the cluster state). Applying the entry keeps the bytes by
//! digest beside the state ([`super::raft`]); each node's sync task
//! ([`Cluster::replicate_plugins`]) then stores the component in its own registry, where chains load it
//! (hot swap included). A node that was down replays the entries it missed,
//! or receives a snapshot holding the components, and syncs the same way.
//!
//! An ingest chain is proposed once its plugins initialise on the proposer;
//! every node attaches it. Only a partition's leader takes produce
//! requests, so only the leader runs the chain; followers copy the batches
//! it stored.
//!
//! The proposer answers once its own node has applied the change, so a
//! client that adds a plugin and then attaches it through the same node
//! finds it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_core::controller::{
    ClusterState, ControlError, ControlOutcome, ControlRequest, MAX_REPLICATED_PLUGIN_BYTES,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{FailurePolicy, PluginDescription, PluginRef};
use edgebus_store::{ConfigKind, LogStore};

use super::peer::MAX_PEER_FRAME;
use super::{Cluster, ProposeError};
use crate::attach::Attachments;
use crate::chain::{self, AttachPoint, ChainRunError, ChainRunner};
use crate::error::Coded;
use crate::pipelines::Pipelines;
use crate::registry::{Registry, RegistryError};

/// Room a control-log message needs besides its entries' components.
const ENTRY_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The entries one control-log append carries at most: enough that even
/// entries each adding a component of [`MAX_REPLICATED_PLUGIN_BYTES`]
/// (base64 in JSON) fit the peer frame. An append over the frame would be
/// refused every time it was sent, and the log would stop.
pub(super) const MAX_ENTRIES_PER_APPEND: u64 = (MAX_PEER_FRAME as u64 - ENTRY_OVERHEAD_BYTES)
    / ((MAX_REPLICATED_PLUGIN_BYTES as u64).div_ceil(3) * 4 + ENTRY_OVERHEAD_BYTES);
const _: () = assert!(MAX_ENTRIES_PER_APPEND >= 1);

/// How long the proposer waits for its own node to apply a change.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// How often a node brings its registry, chains and pipelines to the
/// cluster state even when the state has not changed: a step that failed
/// (a component not yet readable, a store error) is tried again.
const RESYNC: Duration = Duration::from_secs(1);

/// Why a replicated plugin, chain or pipeline request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicatedError {
    /// The control log refused it.
    #[error(transparent)]
    Refused(#[from] ControlError),
    /// It was not committed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// It was committed but this node has not applied it in time.
    #[error("committed, but not applied on this node within {0:?}")]
    NotApplied(Duration),
    /// The control log answered something else.
    #[error("unexpected answer from the control log: {0:?}")]
    Unexpected(ControlOutcome),
}

impl Coded for ReplicatedError {
    fn code(&self) -> ErrorCode {
        match self {
            ReplicatedError::Refused(e) => match e {
                ControlError::UnknownPlugin(_) => ErrorCode::UnknownPlugin,
                ControlError::PluginInUse { .. } => ErrorCode::PluginInUse,
                ControlError::PluginTooLarge { .. } => ErrorCode::PluginInvalid,
                ControlError::UnknownTopic(_) => ErrorCode::UnknownTopic,
                ControlError::PipelineExists(_) => ErrorCode::PipelineExists,
                ControlError::PipelineCycle { .. } => ErrorCode::PipelineCycle,
                ControlError::UnknownPipeline(_) => ErrorCode::UnknownPipeline,
                ControlError::TopicInUse { .. } => ErrorCode::TopicInUse,
                _ => ErrorCode::InvalidRequest,
            },
            ReplicatedError::Propose(_)
            | ReplicatedError::NotApplied(_)
            | ReplicatedError::Unexpected(_) => ErrorCode::StorageError,
        }
    }
}

/// What a node's registry, chains and pipelines are kept in step with the
/// cluster state through.
#[derive(Clone)]
pub struct LocalPlugins {
    /// The node's registry.
    pub registry: Arc<Registry>,
    /// The node's ingest chains.
    pub attachments: Arc<Attachments>,
    /// The node's pipelines.
    pub pipelines: Pipelines,
    /// The node's store (where its chains are kept).
    pub store: Arc<dyn LogStore>,
    /// The node's reader (high watermarks).
    pub reader: crate::reader::Reader,
}

impl Cluster {
    /// Starts keeping this node's registry, ingest chains and pipelines in
    /// step with the cluster state.
    pub fn replicate_plugins(&self, local: LocalPlugins) {
        self.spawn(self.clone().checkpoints(local.clone()));
        self.spawn(self.clone().hold_ingest(local.attachments.clone()));
        self.spawn(self.clone().sync(local));
    }

    /// Marks, as soon as each state is applied, the topics whose chain in
    /// the state is not the one attached here: produce to them is refused
    /// (retriably) until [`Cluster::sync`] has attached it, which may first
    /// compile components for seconds. A leader must never store a batch
    /// without the chain the control log holds.
    async fn hold_ingest(self, attachments: Arc<Attachments>) {
        let mut states = self.inner.state.clone();
        loop {
            let state = states.borrow_and_update().clone();
            for (topic, meta) in &state.ingest {
                if local_chain(&attachments, topic).as_deref() != Some(meta.chain.as_slice()) {
                    attachments.set_attaching(topic, true);
                }
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    }

    /// Commits `request`, turning a refusal into an error.
    pub(super) async fn commit(
        &self,
        request: ControlRequest,
    ) -> Result<ControlOutcome, ReplicatedError> {
        Ok(self.propose(request).await??)
    }

    /// Waits until `applied` holds on this node, checking every 10 ms.
    pub(super) async fn until_applied<F: Future<Output = bool>>(
        &self,
        mut applied: impl FnMut() -> F,
    ) -> Result<(), ReplicatedError> {
        let deadline = Instant::now() + APPLY_WAIT;
        while !applied().await {
            if Instant::now() > deadline {
                return Err(ReplicatedError::NotApplied(APPLY_WAIT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// `plugin add` on a cluster node.
    pub async fn add_plugin(
        &self,
        registry: &Arc<Registry>,
        name: String,
        wasm: Bytes,
    ) -> Result<PluginDescription, PluginClusterError> {
        if wasm.len() > MAX_REPLICATED_PLUGIN_BYTES {
            return Err(ReplicatedError::Refused(ControlError::PluginTooLarge {
                size_bytes: wasm.len(),
                max_bytes: MAX_REPLICATED_PLUGIN_BYTES,
            })
            .into());
        }
        let (checker, checked_name, checked) = (registry.clone(), name.clone(), wasm.clone());
        let (kind, digest) =
            tokio::task::spawn_blocking(move || checker.check(&checked_name, &checked)).await??;
        let request = ControlRequest::AddPlugin {
            name: name.clone(),
            digest: digest.clone(),
            kind,
            added_ms: crate::retention::now_ms(),
            wasm: wasm.to_vec(),
        };
        let version = match self.commit(request).await? {
            ControlOutcome::PluginAdded { version } => version,
            other => return Err(ReplicatedError::Unexpected(other).into()),
        };
        // Applied here once this node's state is at that version and its
        // registry holds the component (or a later version came since).
        self.until_applied(|| async {
            let current = self.state().plugins.get(&name).map(|m| m.version);
            match current {
                Some(v) if v > version => true,
                Some(v) if v == version => local_digest(registry, &name).await == digest,
                _ => false,
            }
        })
        .await?;
        let state = self.state();
        let meta = state
            .plugins
            .get(&name)
            .ok_or_else(|| RegistryError::Unknown(name.clone()))?;
        Ok(describe(&state, &name, meta))
    }

    /// `plugin list` (every plugin) and `plugin describe` (`only`) on a
    /// cluster node: the cluster's registry, the same on every node.
    pub fn list_plugins(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<PluginDescription>, RegistryError> {
        let state = self.state();
        let found: Vec<PluginDescription> = state
            .plugins
            .iter()
            .filter(|(name, _)| only.is_none_or(|n| n == *name))
            .map(|(name, meta)| describe(&state, name, meta))
            .collect();
        match only {
            Some(name) if found.is_empty() => Err(RegistryError::Unknown(name.to_owned())),
            _ => Ok(found),
        }
    }

    /// `plugin remove` on a cluster node: refused while any node's chain or
    /// pipeline uses it.
    pub async fn remove_plugin(
        &self,
        registry: &Arc<Registry>,
        name: &str,
    ) -> Result<(), PluginClusterError> {
        let request = ControlRequest::RemovePlugin {
            name: name.to_owned(),
        };
        match self.commit(request).await {
            Err(ReplicatedError::Refused(ControlError::UnknownPlugin(name))) => {
                return Err(RegistryError::Unknown(name).into());
            }
            Err(ReplicatedError::Refused(ControlError::PluginInUse { name, users })) => {
                return Err(RegistryError::InUse { name, users }.into());
            }
            other => {
                other?;
            }
        }
        self.until_applied(|| async {
            !self.state().plugins.contains_key(name)
                && local_digest(registry, name).await.is_empty()
        })
        .await?;
        Ok(())
    }

    /// `topic set-ingest` on a cluster node: the chain must initialise
    /// here before it is proposed; every node attaches it.
    pub async fn set_ingest(
        &self,
        registry: &Arc<Registry>,
        attachments: &Attachments,
        topic: &str,
        refs: Vec<PluginRef>,
        policy: FailurePolicy,
    ) -> Result<(), PluginClusterError> {
        if !refs.is_empty() {
            ChainRunner::new(
                registry.clone(),
                refs.clone(),
                policy,
                AttachPoint::Ingest,
                Arc::default(),
                chain::in_memory_state(),
            )
            .build()
            .await?;
        }
        let request = ControlRequest::SetIngest {
            topic: topic.to_owned(),
            plugins: refs.iter().map(|r| r.name.clone()).collect(),
            chain: crate::saved::encode_ingest(&refs, policy),
        };
        self.commit(request).await?;
        let expected = (!refs.is_empty()).then(|| crate::saved::encode_ingest(&refs, policy));
        self.until_applied(|| async {
            let wanted = self.state().ingest.get(topic).map(|m| m.chain.clone());
            wanted == expected && local_chain(attachments, topic) == expected
        })
        .await?;
        Ok(())
    }

    /// Brings this node's registry, ingest chains and pipelines to every
    /// state applied, and at least every [`RESYNC`].
    async fn sync(self, local: LocalPlugins) {
        let mut states = self.inner.state.clone();
        loop {
            let state = states.borrow_and_update().clone();
            self.sync_plugins(&local, &state).await;
            sync_ingest(&local, &state).await;
            self.sync_pipelines(&local, &state).await;
            remove_local_plugins(&local, &state).await;
            if let Ok(Err(_)) = tokio::time::timeout(RESYNC, states.changed()).await {
                return;
            }
        }
    }

    /// Stores here every plugin version of the state this node lacks.
    async fn sync_plugins(&self, local: &LocalPlugins, state: &ClusterState) {
        let have = local_digests(&local.registry).await;
        for (name, meta) in &state.plugins {
            if have.get(name) == Some(&meta.digest) {
                continue;
            }
            let wasm = match self.inner.blobs.get(&meta.digest) {
                Ok(Some(wasm)) => wasm,
                Ok(None) => {
                    tracing::warn!(plugin = %name, digest = %meta.digest, "component not applied here yet");
                    continue;
                }
                Err(e) => {
                    tracing::error!(plugin = %name, error = %e, "reading the component failed");
                    continue;
                }
            };
            let (registry, name, added_ms) = (local.registry.clone(), name.clone(), meta.added_ms);
            match tokio::task::spawn_blocking(move || registry.add(&name, &wasm, added_ms)).await {
                Ok(Ok(added)) => {
                    tracing::info!(plugin = %added.name, hash = %added.hash, "plugin stored from the control log");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "storing a replicated plugin failed"),
                Err(e) => tracing::error!(error = %e, "storing a replicated plugin failed"),
            }
        }
    }
}

/// Why a plugin request on a cluster node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginClusterError {
    /// The control log refused or did not commit it.
    #[error(transparent)]
    Replicated(#[from] ReplicatedError),
    /// This node's registry refused it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The chain does not initialise here.
    #[error(transparent)]
    Chain(#[from] ChainRunError),
    /// The pipeline is refused here.
    #[error(transparent)]
    Pipelines(crate::pipelines::PipelinesError),
    /// A blocking task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ProposeError> for PluginClusterError {
    fn from(e: ProposeError) -> Self {
        ReplicatedError::Propose(e).into()
    }
}

impl Coded for PluginClusterError {
    fn code(&self) -> ErrorCode {
        match self {
            PluginClusterError::Replicated(e) => e.code(),
            PluginClusterError::Registry(e) => e.code(),
            PluginClusterError::Chain(e) => e.code(),
            PluginClusterError::Pipelines(e) => e.code(),
            PluginClusterError::Task(_) => ErrorCode::StorageError,
        }
    }
}

fn describe(
    state: &ClusterState,
    name: &str,
    meta: &edgebus_core::controller::PluginMeta,
) -> PluginDescription {
    PluginDescription {
        name: name.to_owned(),
        version: meta.version,
        hash: meta.digest.clone(),
        kind: meta.kind.clone(),
        size_bytes: meta.size_bytes,
        added_ms: meta.added_ms,
        users: state.plugin_users(name),
    }
}

/// The digest of the plugin `name` in this node's registry; empty when it
/// has none. Reads the registry's descriptions only.
async fn local_digest(registry: &Arc<Registry>, name: &str) -> String {
    let (registry, name) = (registry.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || registry.list(Some(&name), |_| Vec::new()))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|found| found.into_iter().next())
        .map(|d| d.hash)
        .unwrap_or_default()
}

/// Every plugin of this node's registry, with its digest.
async fn local_digests(registry: &Arc<Registry>) -> BTreeMap<String, String> {
    let registry = registry.clone();
    match tokio::task::spawn_blocking(move || registry.list(None, |_| Vec::new())).await {
        Ok(Ok(found)) => found.into_iter().map(|d| (d.name, d.hash)).collect(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing the local registry failed");
            BTreeMap::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "listing the local registry failed");
            BTreeMap::new()
        }
    }
}

/// Attaches here every ingest chain of the state, and clears every chain
/// the state no longer has.
async fn sync_ingest(local: &LocalPlugins, state: &ClusterState) {
    for (topic, meta) in &state.ingest {
        if local_chain(&local.attachments, topic).as_deref() == Some(meta.chain.as_slice()) {
            local.attachments.set_attaching(topic, false);
            continue;
        }
        let (refs, policy) = match crate::saved::decode_ingest(&meta.chain) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::error!(%topic, error = %e, "unreadable ingest chain in the control log");
                continue;
            }
        };
        match local.attachments.set_ingest(topic, refs, policy).await {
            Ok(()) => local.attachments.set_attaching(topic, false),
            Err(e) => {
                tracing::error!(%topic, error = %e, "attaching a replicated ingest chain failed");
            }
        }
    }
    let store = local.store.clone();
    let kept = match tokio::task::spawn_blocking(move || store.configs(ConfigKind::Ingest)).await {
        Ok(Ok(kept)) => kept,
        _ => return,
    };
    for (topic, _) in kept {
        if state.ingest.contains_key(&topic) {
            continue;
        }
        local.attachments.set_attaching(&topic, false);
        let cleared = local
            .attachments
            .set_ingest(&topic, Vec::new(), FailurePolicy::default())
            .await;
        if let Err(e) = cleared {
            tracing::error!(%topic, error = %e, "clearing an ingest chain failed");
        }
    }
}

/// A topic's chain attached here, encoded as the control log holds it.
fn local_chain(attachments: &Attachments, topic: &str) -> Option<Vec<u8>> {
    attachments
        .ingest_chain(topic)
        .map(|c| crate::saved::encode_ingest(&c.refs, c.policy))
}

/// Removes here every plugin the state no longer has (after chains and
/// pipelines that used it are gone).
async fn remove_local_plugins(local: &LocalPlugins, state: &ClusterState) {
    for name in local_digests(&local.registry).await.into_keys() {
        if state.plugins.contains_key(&name) {
            continue;
        }
        let registry = local.registry.clone();
        match tokio::task::spawn_blocking(move || registry.remove(&name, Vec::new())).await {
            Ok(Ok(())) | Ok(Err(RegistryError::Unknown(_))) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "removing a plugin failed"),
            Err(e) => tracing::error!(error = %e, "removing a plugin failed"),
        }
    }
}
