//! What a persistent MQTT session keeps across connections and restarts,
//! and where MQTT topics meet edgebus topics.
//!
//! A session is stored as one JSON blob per client id in the metadata
//! store (`ConfigKind::MqttSession`). It holds, per subscription, the
//! position in each partition below which every QoS 1 delivery was
//! acknowledged: a resumed session reads on from there, so what was sent
//! but not acknowledged is sent again. It also holds the session's
//! producer id and, for QoS 2 publishes awaiting their PUBREL, the
//! producer sequence each was given: a retransmission after a restart is
//! appended with the same sequence, which the partition engine recognises
//! as a duplicate in the same transaction that stored the original.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use edgebus_store::{ConfigKind, LogStore, StoreError};
use serde::{Deserialize, Serialize};

use super::config::Mapping;
use super::packet::{self, QoS};

/// Version of the stored blob; bumped when its meaning changes.
const SESSION_FORMAT: u32 = 1;

/// One subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The MQTT topic filter.
    pub filter: String,
    /// QoS granted (0 or 1).
    pub qos: u8,
}

/// A QoS 2 publish stored (or being stored) and awaiting its PUBREL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRelease {
    /// Packet id.
    pub pkid: u16,
    /// Partition of the mapped topic it went to.
    pub partition: u32,
    /// The producer sequence it was appended with.
    pub sequence: i32,
}

/// A persistent session's stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Format version.
    pub format: u32,
    /// Subscriptions in the order they were made.
    pub subscriptions: Vec<StoredSubscription>,
    /// Per edgebus topic, the next offset to deliver in each partition.
    pub positions: HashMap<String, Vec<u64>>,
    /// The producer id QoS 2 publishes are deduplicated under.
    pub producer_id: Option<i64>,
    /// Per edgebus topic and partition, the next producer sequence.
    pub sequences: HashMap<String, Vec<i32>>,
    /// Per edgebus topic, QoS 2 publishes awaiting their PUBREL.
    pub pending_release: HashMap<String, Vec<PendingRelease>>,
}

impl StoredSession {
    /// An empty session.
    pub fn new() -> StoredSession {
        StoredSession {
            format: SESSION_FORMAT,
            ..StoredSession::default()
        }
    }

    /// The subscriptions as (filter, QoS).
    pub fn filters(&self) -> Vec<(String, QoS)> {
        self.subscriptions
            .iter()
            .map(|s| {
                let qos = if s.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                (s.filter.clone(), qos)
            })
            .collect()
    }
}

/// The stored sessions, loaded once at start and written through.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn LogStore>,
    cache: Arc<Mutex<HashMap<String, StoredSession>>>,
}

/// Why a session could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored blob is unreadable.
    #[error("stored MQTT session {client_id:?}: {detail}")]
    Corrupt {
        /// Its client id.
        client_id: String,
        /// Why.
        detail: String,
    },
    /// The blocking task failed.
    #[error("session store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Sessions {
    /// Loads every stored session.
    pub fn load(store: Arc<dyn LogStore>) -> Result<Sessions, SessionError> {
        let mut cache = HashMap::new();
        for (client_id, blob) in store.configs(ConfigKind::MqttSession)? {
            let session: StoredSession =
                serde_json::from_slice(&blob).map_err(|e| SessionError::Corrupt {
                    client_id: client_id.clone(),
                    detail: e.to_string(),
                })?;
            if session.format != SESSION_FORMAT {
                return Err(SessionError::Corrupt {
                    client_id,
                    detail: format!(
                        "format {} (this broker reads {SESSION_FORMAT})",
                        session.format
                    ),
                });
            }
            cache.insert(client_id, session);
        }
        Ok(Sessions {
            store,
            cache: Arc::new(Mutex::new(cache)),
        })
    }

    /// The stored session of `client_id`.
    pub fn get(&self, client_id: &str) -> Option<StoredSession> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(client_id).cloned()
    }

    /// Stores (`Some`) or deletes (`None`) a session durably.
    pub async fn put(
        &self,
        client_id: &str,
        session: Option<StoredSession>,
    ) -> Result<(), SessionError> {
        let blob = session
            .as_ref()
            .map(|s| serde_json::to_vec(s).expect("a session serializes"));
        let (store, key) = (self.store.clone(), client_id.to_owned());
        tokio::task::spawn_blocking(move || {
            store.put_config(ConfigKind::MqttSession, &key, blob.as_deref())
        })
        .await??;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match session {
            Some(s) => cache.insert(client_id.to_owned(), s),
            None => cache.remove(client_id),
        };
        Ok(())
    }

    /// Allocates a producer id, durably.
    pub async fn allocate_producer_id(&self) -> Result<i64, SessionError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.allocate_producer_id()).await??)
    }
}

/// The mapping whose filter matches the MQTT topic `topic`: the first in
/// config order.
pub fn mapping_for_topic<'a>(mappings: &'a [Mapping], topic: &str) -> Option<&'a Mapping> {
    mappings.iter().find(|m| packet::matches(topic, &m.filter))
}

/// The mapping that covers every topic the subscription filter `filter`
/// can match, so it is fed from one edgebus topic.
pub fn mapping_for_filter<'a>(mappings: &'a [Mapping], filter: &str) -> Option<&'a Mapping> {
    mappings.iter().find(|m| covers(&m.filter, filter))
}

/// Whether every topic matching `inner` also matches `outer`.
fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(filter: &str, topic: &str) -> Mapping {
        Mapping {
            filter: filter.into(),
            topic: topic.into(),
            retain: false,
        }
    }

    #[test]
    fn covers_checks_filter_inside_filter() {
        assert!(covers("commands/#", "commands/dev1/#"));
        assert!(covers("commands/#", "commands/+/x"));
        assert!(covers("commands/+/x", "commands/dev1/x"));
        assert!(covers("commands/+/x", "commands/+/x"));
        assert!(!covers("commands/+/x", "commands/#"));
        assert!(!covers("commands/dev1/#", "commands/+/#"));
        assert!(!covers("sensors/#", "#"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn mapping_lookup_goes_by_config_order() {
        let maps = [mapping("sensors/#", "sensors"), mapping("#", "everything")];
        assert_eq!(
            mapping_for_topic(&maps, "sensors/t1").unwrap().topic,
            "sensors"
        );
        assert_eq!(
            mapping_for_topic(&maps, "other").unwrap().topic,
            "everything"
        );
        assert_eq!(
            mapping_for_filter(&maps, "sensors/+").unwrap().topic,
            "sensors"
        );
        assert!(mapping_for_topic(&maps[..1], "other").is_none());
    }

    #[test]
    fn stored_session_roundtrips_as_json() {
        let mut s = StoredSession::new();
        s.subscriptions.push(StoredSubscription {
            filter: "c/#".into(),
            qos: 1,
        });
        s.positions.insert("c".into(), vec![3, 4]);
        s.pending_release.insert(
            "c".into(),
            vec![PendingRelease {
                pkid: 9,
                partition: 1,
                sequence: 5,
            }],
        );
        let blob = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<StoredSession>(&blob).unwrap(), s);
    }
}
