//! The topic catalog: the store's topics, with their specs cached so a
//! produce never waits on a read transaction to validate, and the
//! consumer-group coordinator kept told of every topic's partitions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::TopicSpec;
use edgebus_store::{LogStore, StoreError, TopicError};

use crate::error::Coded;
use crate::groups::Groups;
use crate::writer::Writer;

/// A request named a topic that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown topic {0:?}")]
pub struct UnknownTopic(pub String);

impl Coded for UnknownTopic {
    fn code(&self) -> ErrorCode {
        ErrorCode::UnknownTopic
    }
}

/// Why a topic could not be created or deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicAdminError {
    /// The store refused (exists, unknown, invalid config, storage).
    #[error(transparent)]
    Store(#[from] TopicError),
}

impl Coded for TopicAdminError {
    fn code(&self) -> ErrorCode {
        match self {
            TopicAdminError::Store(e) => e.code(),
        }
    }
}

/// The topics of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Topics {
    writer: Writer,
    specs: Arc<RwLock<HashMap<String, TopicSpec>>>,
    groups: Groups,
    default_max_message_bytes: u32,
}

impl Topics {
    /// Loads the store's topics and tells the coordinator their partitions.
    /// Topics are created and deleted through `writer`, in order with the
    /// appends around them. New topics that ask for `max_message_bytes` 0
    /// get `default_max_message_bytes`.
    pub fn load(
        store: &dyn LogStore,
        writer: Writer,
        groups: Groups,
        default_max_message_bytes: u32,
    ) -> Result<Topics, StoreError> {
        let specs = store
            .topics()?
            .into_iter()
            .map(|t| {
                groups.set_topic(&t.name, t.partitions);
                (t.name.clone(), t)
            })
            .collect();
        Ok(Topics {
            writer,
            specs: Arc::new(RwLock::new(specs)),
            groups,
            default_max_message_bytes,
        })
    }

    /// A topic's spec, from the cache.
    pub fn spec(&self, name: &str) -> Result<TopicSpec, UnknownTopic> {
        self.specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownTopic(name.to_owned()))
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<TopicSpec> {
        let mut topics: Vec<TopicSpec> = self
            .specs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Creates a topic in the store, then caches it and tells the
    /// coordinator.
    pub async fn create(&self, mut spec: TopicSpec) -> Result<(), TopicAdminError> {
        if spec.max_message_bytes == 0 {
            spec.max_message_bytes = self.default_max_message_bytes;
        }
        self.writer.create_topic(spec.clone()).await?;
        self.groups.set_topic(&spec.name, spec.partitions);
        self.specs_mut().insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Deletes a topic and its records, then forgets it here and in the
    /// coordinator.
    pub async fn delete(&self, name: String) -> Result<(), TopicAdminError> {
        self.writer.delete_topic(name.clone()).await?;
        self.specs_mut().remove(&name);
        self.groups.remove_topic(&name);
        Ok(())
    }

    fn specs_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TopicSpec>> {
        self.specs.write().unwrap_or_else(|p| p.into_inner())
    }
}
