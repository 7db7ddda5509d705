//! The broker's parts, made once at start and shared by every connection.
//! Request handlers take the few of them they touch (see [`crate::cmd`]).

use std::sync::Arc;

use edgebus_store::{LogStore, StoreError};

use crate::attach::Attachments;
use crate::cluster::Cluster;
use crate::cmd::node::NodeFacts;
use crate::config::Limits;
use crate::dlq::DeadLetters;
use crate::feed::Subscriptions;
use crate::groups::Groups;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::pipelines::Pipelines;
use crate::reader::Reader;
use crate::registry::Registry;
use crate::topics::Topics;
use crate::writer::Writer;

/// Handles to every part of a running broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    /// The limits in force.
    pub limits: Arc<Limits>,
    /// The store.
    pub store: Arc<dyn LogStore>,
    /// The single group-commit writer.
    pub writer: Writer,
    /// The topic catalog.
    pub topics: Topics,
    /// Partition reads.
    pub reader: Reader,
    /// Consumer groups.
    pub groups: Groups,
    /// The plugin registry.
    pub registry: Arc<Registry>,
    /// Ingest chains and read-path counters per topic.
    pub attachments: Arc<Attachments>,
    /// `<topic>.dlq` topics.
    pub dead_letters: DeadLetters,
    /// Running pipelines.
    pub pipelines: Pipelines,
    /// Subscription feeds.
    pub subscriptions: Subscriptions,
    /// What this node is, for `NodeInfo`.
    pub node: Arc<NodeFacts>,
    /// Counters and histograms, updated where their events happen.
    pub metrics: Arc<Metrics>,
    /// Wakes readers waiting for partitions to grow.
    pub notifier: Notifier,
    /// The cluster this node is in; `None` on a single node.
    pub cluster: Option<Cluster>,
    /// Edge-to-hub mirrors this node runs.
    pub mirrors: crate::mirror::Mirrors,
}

impl Broker {
    /// Starts the writer on `store` and loads its topics. Pipelines are not
    /// started yet: see [`Pipelines::restore`].
    pub fn new(
        store: Arc<dyn LogStore>,
        limits: Limits,
        registry: Arc<Registry>,
        attachments: Arc<Attachments>,
        node: NodeFacts,
        mirror: crate::mirror::MirrorConfig,
    ) -> Result<Broker, StoreError> {
        let notifier = Notifier::default();
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::spawn(
            store.clone(),
            notifier.clone(),
            limits.max_group_commit_bytes,
            metrics.clone(),
        )?;
        let groups = Groups::new(store.clone(), writer.clone());
        let topics = Topics::load(
            &*store,
            writer.clone(),
            groups.clone(),
            limits.max_message_bytes,
        )?;
        let reader = Reader::new(
            store.clone(),
            writer.clone(),
            limits.max_fetch_bytes,
            metrics.clone(),
        );
        let dead_letters = DeadLetters::new(topics.clone(), writer.clone(), reader.clone());
        let pipelines = Pipelines::new(
            store.clone(),
            writer.clone(),
            reader.clone(),
            topics.clone(),
            registry.clone(),
            notifier.clone(),
            dead_letters.clone(),
        );
        let subscriptions = Subscriptions::new(
            (store.clone(), writer.clone()),
            reader.clone(),
            notifier.clone(),
            registry.clone(),
            attachments.clone(),
            dead_letters.clone(),
        );
        let parts = crate::mirror::MirrorParts {
            store: store.clone(),
            writer: writer.clone(),
            reader: reader.clone(),
            notifier: notifier.clone(),
            topics: topics.clone(),
            registry: registry.clone(),
            attachments: attachments.clone(),
            dead_letters: dead_letters.clone(),
        };
        let mirrors = crate::mirror::Mirrors::new(parts, mirror);
        Ok(Broker {
            mirrors,
            limits: Arc::new(limits),
            store,
            writer,
            topics,
            reader,
            groups,
            registry,
            attachments,
            dead_letters,
            pipelines,
            subscriptions,
            node: Arc::new(node),
            metrics,
            notifier,
            cluster: None,
        })
    }
}
