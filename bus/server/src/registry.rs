//! The plugin registry: components stored in redb by name, each with a
//! content hash and a version, and compiled once (the engine keeps compiled
//! code on disk by hash). Chains are built from the latest version of each
//! plugin and, before each batch, swap in any plugin replaced since (hot
//! swap: the next batch sees the new version, with no restart).
//!
//! Every call here may touch the store or compile: call it from a blocking
//! task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{PluginDescription, PluginRef};
use edgebus_store::{LogStore, PluginInfo, StoreError};
use edgebus_wasm::{Chain, ChainError, Engine, Plugin, PluginError, PluginKind, StateStore};

use crate::error::Coded;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The plugin name breaks the naming rule.
    #[error("invalid plugin name: {0}")]
    InvalidName(String),
    /// No plugin with that name is registered.
    #[error("unknown plugin {0:?}")]
    Unknown(String),
    /// The component is not a valid plugin.
    #[error(transparent)]
    Invalid(#[from] PluginError),
    /// A stage of a chain could not be instantiated or initialised.
    #[error("plugin chain: {0}")]
    Chain(ChainError),
    /// A replaced plugin could not be swapped into a chain.
    #[error("plugin swap: {0}")]
    Swap(ChainError),
    /// The plugin is attached somewhere.
    #[error("plugin {name:?} is in use by {}", users.join(", "))]
    InUse {
        /// The plugin.
        name: String,
        /// Where it is attached.
        users: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for RegistryError {
    fn code(&self) -> ErrorCode {
        match self {
            RegistryError::InvalidName(_) => ErrorCode::InvalidRequest,
            RegistryError::Unknown(_) => ErrorCode::UnknownPlugin,
            RegistryError::Invalid(_) | RegistryError::Chain(_) | RegistryError::Swap(_) => {
                ErrorCode::PluginInvalid
            }
            RegistryError::InUse { .. } => ErrorCode::PluginInUse,
            RegistryError::Store(e) => e.code(),
        }
    }
}

/// A chain plus the plugin versions it was built from.
pub struct LiveChain {
    chain: Chain,
    refs: Vec<PluginRef>,
    versions: Vec<u32>,
}

impl LiveChain {
    /// Whether every stage is a filter, so outputs are always inputs.
    pub fn only_filters(&self) -> bool {
        (0..self.chain.len()).all(|i| {
            self.chain
                .plugin(i)
                .is_some_and(|p| p.kind() == PluginKind::Filter)
        })
    }

    /// The version of the plugin named `name` this chain runs (0 if it runs
    /// no such plugin).
    pub fn version_of(&self, name: &str) -> u32 {
        self.refs
            .iter()
            .position(|r| r.name == name)
            .map_or(0, |i| self.versions[i])
    }

    /// The chain, to run batches through.
    pub fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }
}

/// The broker's plugins: the engine, the stored components and a cache of
/// compiled ones.
pub struct Registry {
    engine: Engine,
    store: Arc<dyn LogStore>,
    compiled: Mutex<HashMap<String, (PluginInfo, Plugin)>>,
}

impl Registry {
    /// A registry over the components in `store`, compiled by `engine`.
    pub fn new(engine: Engine, store: Arc<dyn LogStore>) -> Registry {
        Registry {
            engine,
            store,
            compiled: Mutex::default(),
        }
    }

    fn compiled(&self) -> std::sync::MutexGuard<'_, HashMap<String, (PluginInfo, Plugin)>> {
        self.compiled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest version of a plugin, compiled (from the engine's cache
    /// when it was compiled before).
    pub fn load(&self, name: &str) -> Result<(PluginInfo, Plugin), RegistryError> {
        if let Some(found) = self.compiled().get(name) {
            return Ok(found.clone());
        }
        let (info, wasm) = self
            .store
            .plugin(name)?
            .ok_or_else(|| RegistryError::Unknown(name.to_owned()))?;
        let plugin = self.engine.load(&wasm)?;
        self.compiled()
            .insert(name.to_owned(), (info.clone(), plugin.clone()));
        Ok((info, plugin))
    }

    /// Checks that a component could be added as `name` without storing
    /// it: returns its kind (`filter` or `transform`) and hex SHA-256.
    pub fn check(&self, name: &str, wasm: &[u8]) -> Result<(String, String), RegistryError> {
        edgebus_store::topic::check_name(name).map_err(RegistryError::InvalidName)?;
        let plugin = self.engine.load(wasm)?;
        let kind = format!("{:?}", plugin.kind()).to_lowercase();
        Ok((kind, plugin.hash().to_owned()))
    }

    /// Validates a component (it must be a filter or transform of
    /// `edgebus:plugin@0.1`), stores it and makes it the current version.
    pub fn add(
        &self,
        name: &str,
        wasm: &[u8],
        now_ms: i64,
    ) -> Result<PluginDescription, RegistryError> {
        edgebus_store::topic::check_name(name).map_err(RegistryError::InvalidName)?;
        let plugin = self.engine.load(wasm)?;
        let kind = format!("{:?}", plugin.kind()).to_lowercase();
        let info = self
            .store
            .put_plugin(name, &kind, plugin.hash(), wasm, now_ms)?;
        let description = describe(&info, Vec::new());
        self.compiled().insert(name.to_owned(), (info, plugin));
        Ok(description)
    }

    /// Every plugin, or only `only`, with where each is attached.
    pub fn list(
        &self,
        only: Option<&str>,
        users_of: impl Fn(&str) -> Vec<String>,
    ) -> Result<Vec<PluginDescription>, RegistryError> {
        let found: Vec<PluginDescription> = self
            .store
            .plugins()?
            .iter()
            .filter(|i| only.is_none_or(|n| n == i.name))
            .map(|i| describe(i, users_of(&i.name)))
            .collect();
        match only {
            Some(name) if found.is_empty() => Err(RegistryError::Unknown(name.to_owned())),
            _ => Ok(found),
        }
    }

    /// Removes a plugin; refused while it is attached anywhere (`users`).
    pub fn remove(&self, name: &str, users: Vec<String>) -> Result<(), RegistryError> {
        if !users.is_empty() {
            return Err(RegistryError::InUse {
                name: name.to_owned(),
                users,
            });
        }
        if !self.store.remove_plugin(name)? {
            return Err(RegistryError::Unknown(name.to_owned()));
        }
        self.compiled().remove(name);
        Ok(())
    }

    /// Builds a chain, each plugin with the state store `state` makes for
    /// its position.
    pub fn build_chain(
        &self,
        refs: &[PluginRef],
        state: &dyn Fn(usize) -> Box<dyn StateStore>,
    ) -> Result<LiveChain, RegistryError> {
        let mut stages = Vec::with_capacity(refs.len());
        let mut versions = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            let (info, plugin) = self.load(&r.name)?;
            versions.push(info.version);
            stages.push((plugin, r.name.clone(), r.params.clone(), state(i)));
        }
        let chain = Chain::new(stages).map_err(RegistryError::Chain)?;
        Ok(LiveChain {
            chain,
            refs: refs.to_vec(),
            versions,
        })
    }

    /// Swaps in plugins replaced since the chain was built.
    pub fn refresh(&self, live: &mut LiveChain) -> Result<(), RegistryError> {
        for (i, r) in live.refs.iter().enumerate() {
            let (info, plugin) = self.load(&r.name)?;
            if info.version != live.versions[i] {
                live.chain.replace(i, plugin).map_err(RegistryError::Swap)?;
                live.versions[i] = info.version;
                tracing::info!(plugin = %r.name, version = info.version, "plugin swapped in");
            }
        }
        Ok(())
    }
}

fn describe(info: &PluginInfo, users: Vec<String>) -> PluginDescription {
    PluginDescription {
        name: info.name.clone(),
        version: info.version,
        hash: info.hash.clone(),
        kind: info.kind.clone(),
        size_bytes: info.size_bytes,
        added_ms: info.added_ms,
        users,
    }
}
