//! # edgebus-client
//!
//! The async Rust client for edgebus: connect over QUIC with verified TLS,
//! administer topics, produce with batching and idempotence, and consume
//! with subscriptions that the broker pushes to.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgebus_client::ClientError> {
//! use edgebus_client::{Client, ClientConfig, Producer, ProducerConfig, Record, TopicSpec};
//! // A host name is resolved at connect time, and names the certificate.
//! let config = ClientConfig::new(("localhost", 7171), "ca.pem");
//! let client = Client::connect(config).await?;
//! client.create_topic(TopicSpec::new("sensors", 3)).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let ack = producer.send("sensors", Record::now("21.5").with_key("t1")).await?;
//! println!("stored at {:?}", ack.await?.offset);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//!
//! [`ClientConfig::new`] takes a [`SocketAddr`](std::net::SocketAddr), a
//! `(host, port)` pair, or a [`BrokerAddr`] parsed from `host:port`; a host
//! name is resolved on every (re)connect, every address it resolves to is
//! tried at once, and it is the server name the broker's certificate must
//! carry (for an IP address that is `localhost`, what a broker's self-made
//! certificate carries). [`ClientConfig::local`] reads `EDGEBUS_BROKER` and
//! `EDGEBUS_CA`. A [`Client`] reconnects by itself until [`Client::close`].
//!
//! ## Consuming
//!
//! A [`Subscription`] is a [`futures::Stream`] of one partition's records
//! (or call its `next`). [`Subscription::start`] returns once the broker
//! has resolved the start position, so from [`Position::Latest`] nothing
//! appended after it returns is missed, and a refused subscription fails
//! there. [`Subscription::until_end`] bounds it to the log end as it began
//! (a one-shot "read what is there"), [`Subscription::until`] to any
//! offset. Dropping it, or [`Subscription::close`], ends its task and its
//! stream on the broker.
//!
//! ```no_run
//! # async fn demo(client: edgebus_client::Client) -> Result<(), edgebus_client::ClientError> {
//! use edgebus_client::{Position, SubscribeConfig, Subscription};
//! use futures::TryStreamExt;
//! let sub = Subscription::start(client, "sensors", 0, Position::Earliest, SubscribeConfig::default())
//!     .await?
//!     .until_end();
//! let records: Vec<_> = sub.try_collect().await?;
//! println!("{} records", records.len());
//! # Ok(()) }
//! ```
//!
//! Several partitions or topics with shared, committed progress: a
//! [`GroupConsumer`].
//!
//! ## Layout
//!
//! - [`client`]: [`Client`], the shared connection, and admin calls;
//!   [`ClientConfig`] and [`BrokerAddr`], how to reach a broker.
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

pub use client::{BrokerAddr, Client, ClientConfig, Fetched};
pub use consumer::{SubscribeConfig, Subscription};
pub use edgebus_proto::batch::{Compression, Header, Record, StoredRecord};
pub use edgebus_proto::frame::{
    Acks, AssignmentStrategy, AttachCounters, FailurePolicy, GroupLag, MemberInfo, PartitionInfo,
    PartitionOffset, PipelineDescription, PluginDescription, PluginRef, Position, TopicPartition,
    TopicSpec,
};
pub use error::{BrokerAddrError, ClientError};
pub use group::{GroupConfig, GroupConsumer, GroupRecord, OffsetReset};
pub use producer::{DeliveryFuture, DeliveryStatus, Producer, ProducerConfig, RecordMetadata};
