//! The topic catalog: the store's topics, with their specs cached so a
//! produce never waits on a read transaction to validate, and the
//! consumer-group coordinator kept told of every topic's partitions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{TopicChanges, TopicSpec};
use edgebus_store::{LogStore, StoreError, TopicError};
use tokio::sync::Mutex;

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

/// Why a topic could not be created, altered or deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicAdminError {
    /// The store refused (exists, unknown, invalid config, storage).
    #[error(transparent)]
    Store(#[from] TopicError),
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// An alter asked for fewer partitions: removing one would drop its
    /// records and move the keys that hash to it.
    #[error(
        "topic {topic:?} has {partitions} partitions; partitions can be added, not removed \
         (asked for {asked})"
    )]
    FewerPartitions {
        /// Topic name.
        topic: String,
        /// Its partition count.
        partitions: u32,
        /// The count asked for.
        asked: u32,
    },
}

impl Coded for TopicAdminError {
    fn code(&self) -> ErrorCode {
        match self {
            TopicAdminError::Store(e) => e.code(),
            TopicAdminError::UnknownTopic(e) => e.code(),
            TopicAdminError::FewerPartitions { .. } => ErrorCode::InvalidTopicConfig,
        }
    }
}

/// `old` with `changes` applied; fewer partitions are refused (removing
/// one would drop its records).
pub fn altered(old: &TopicSpec, changes: &TopicChanges) -> Result<TopicSpec, TopicAdminError> {
    if let Some(asked) = changes.partitions.filter(|p| *p < old.partitions) {
        return Err(TopicAdminError::FewerPartitions {
            topic: old.name.clone(),
            partitions: old.partitions,
            asked,
        });
    }
    Ok(TopicSpec {
        partitions: changes.partitions.unwrap_or(old.partitions),
        retention_ms: changes.retention_ms.unwrap_or(old.retention_ms),
        retention_bytes: changes.retention_bytes.unwrap_or(old.retention_bytes),
        max_message_bytes: changes.max_message_bytes.unwrap_or(old.max_message_bytes),
        ..old.clone()
    })
}

/// The topics of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Topics {
    writer: Writer,
    specs: Arc<RwLock<HashMap<String, TopicSpec>>>,
    groups: Groups,
    default_max_message_bytes: u32,
    /// Held across each create, alter and delete, so that one's store
    /// write and cache update cannot interleave with another's: an alter
    /// must not bring back the spec of a topic deleted meanwhile, nor two
    /// alters lose one another's changes.
    admin: Arc<Mutex<()>>,
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
            admin: Arc::default(),
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
        let _admin = self.admin.lock().await;
        self.writer.create_topic(spec.clone()).await?;
        self.groups.set_topic(&spec.name, spec.partitions);
        self.specs_mut().insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Deletes a topic and its records, then forgets it here and in the
    /// coordinator.
    pub async fn delete(&self, name: String) -> Result<(), TopicAdminError> {
        let _admin = self.admin.lock().await;
        self.writer.delete_topic(name.clone()).await?;
        self.specs_mut().remove(&name);
        self.groups.remove_topic(&name);
        Ok(())
    }

    /// Changes a topic's settings in the store (through the writer, in
    /// order with the appends around it), then in the cache, and tells the
    /// coordinator of added partitions so groups rebalance onto them.
    /// Returns the new spec. Added partitions take appends and reads at
    /// once: the writer loads a partition's engine on its first append, and
    /// readers see an empty partition until then.
    pub async fn alter(
        &self,
        name: &str,
        changes: TopicChanges,
    ) -> Result<TopicSpec, TopicAdminError> {
        let _admin = self.admin.lock().await;
        let old = self.spec(name)?;
        let new = altered(&old, &changes)?;
        let stored = new.clone();
        self.writer
            .run(move |store| Ok(store.alter_topic(&stored)))
            .await
            .map_err(TopicError::Store)??;
        self.specs_mut().insert(name.to_owned(), new.clone());
        if new.partitions != old.partitions {
            self.groups.set_topic(name, new.partitions);
        }
        Ok(new)
    }

    /// `spec` as [`Topics::create`] would store it (the default record
    /// size for 0), for topics the writer creates itself: a mirror's
    /// destination on first contact.
    pub fn with_defaults(&self, mut spec: TopicSpec) -> TopicSpec {
        if spec.max_message_bytes == 0 {
            spec.max_message_bytes = self.default_max_message_bytes;
        }
        spec
    }

    /// Caches a topic the writer created itself, and tells the coordinator.
    pub fn cache_created(&self, spec: TopicSpec) {
        self.groups.set_topic(&spec.name, spec.partitions);
        self.specs_mut().insert(spec.name.clone(), spec);
    }

    fn specs_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TopicSpec>> {
        self.specs.write().unwrap_or_else(|p| p.into_inner())
    }
}
