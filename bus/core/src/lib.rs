//! # edgebus-core
//!
//! State machines with no IO, driven by the broker and by tests alike:
//! inputs are `handle`-style calls that take the current time as an
//! argument, and outputs are polled. Nothing here touches a socket, a file
//! or a clock.
//!
//! ```text
//!   QUIC tasks ──requests──▶ PartitionEngine ──Append commands──▶ writer thread (redb)
//!              ◀──acks─────                  ◀──written / failed──
//! ```
//!
//! ## Layout
//!
//! - [`partition`]: the partition engine: per partition, the offset a batch
//!   gets, its producer dedup outcome and leader epoch, when each ack level
//!   is met, and the high watermark.
//! - [`producer`]: the idempotent-producer sequence rules and the stored
//!   form of a producer's dedup state.
//! - [`group`]: the consumer-group coordinator: membership, session
//!   timeouts, generations, assignment strategies and commit fencing.
//! - [`replica`]: one partition on one node of a cluster, leader or
//!   follower: Kafka's fetch protocol with epoch truncation, ISR changes and
//!   `min.insync.replicas`, around the partition engine.
//! - [`sourced`]: the producer stamps of a cluster pipeline's outputs,
//!   whose sequences are source offsets.
//! - [`controller`]: the control-plane state machine the control log
//!   applies: nodes, placement, elections, fencing and ISR changes.
#![warn(missing_docs)]

pub mod controller;
pub mod group;
pub mod partition;
pub mod producer;
pub mod replica;
pub mod sourced;
