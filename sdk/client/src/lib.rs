//! # edgebus-client
//!
//! The async Rust client for edgebus: connect over QUIC with verified TLS,
//! administer topics, produce with batching and idempotence, and consume
//! with subscriptions that the broker pushes to.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgebus_client::ClientError> {
//! use edgebus_client::{Client, ClientConfig, Producer, ProducerConfig, Record};
//! let config = ClientConfig::new("127.0.0.1:7171".parse().unwrap(), "ca.pem");
//! let client = Client::connect(config).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let ack = producer.send("sensors", Record::new("21.5", 0).with_key("t1")).await?;
//! println!("stored at {:?}", ack.await?.offset);
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! - [`client`]: [`Client`], the shared connection, and admin calls.
//! - [`producer`]: [`Producer`]: linger, batch size, key-hash partitioner,
//!   pipelined acks, retries and idempotence.
//! - [`consumer`]: [`Subscription`], a pushed feed of one partition.
//! - [`group`]: [`GroupConsumer`], a member of a consumer group with
//!   committed offsets.
//! - [`local`]: where a broker on this machine keeps its data and CA.
//! - [`tls`]: CA and client identity loading.
//! - [`wire`]: length-prefixed frames on QUIC streams.
#![warn(missing_docs)]

pub mod client;
pub mod consumer;
pub mod error;
pub mod group;
pub mod local;
pub mod producer;
pub mod tls;
pub mod wire;

pub use client::{Client, ClientConfig, Fetched};
pub use consumer::{SubscribeConfig, Subscription};
pub use edgebus_proto::batch::{Compression, Header, Record, StoredRecord};
pub use edgebus_proto::frame::{
    Acks, AssignmentStrategy, AttachCounters, FailurePolicy, GroupLag, MemberInfo, PartitionInfo,
    PartitionOffset, PipelineDescription, PluginDescription, PluginRef, Position, TopicPartition,
    TopicSpec,
};
pub use error::ClientError;
pub use group::{GroupConfig, GroupConsumer, GroupRecord, OffsetReset};
pub use producer::{DeliveryFuture, DeliveryStatus, Producer, ProducerConfig, RecordMetadata};
