//! # edgebus-proto
//!
//! The pure wire codec of edgebus: the record-batch format that producers
//! send, the broker stores and consumers read byte for byte, and the request
//! and response frames carried on QUIC streams.
//!
//! This crate does no IO. Encoders append to the caller's buffer; decoders
//! take bytes and return a value or a precise [`DecodeError`], and never
//! panic on any input (each has a property test that says so).
//!
//! ## Layout
//!
//! - [`batch`]: Kafka's RecordBatch v2, with its byte layout and CRC32C.
//! - [`compression`]: the codecs of a batch's records section, and the cap
//!   on what one batch may decompress to; `codec` (private) compresses and
//!   decompresses under that cap.
//! - [`frame`]: request and response frames, the table of frame kinds,
//!   and the ALPN id.
//! - [`framing`]: the length prefix that delimits frames on a stream, and
//!   its size check.
//! - [`error`]: decode and compression errors, and the numbered wire
//!   [`ErrorCode`]s.
//! - [`varint`]: Kafka's zigzag varints and varlongs, used inside records.
//! - [`partitioner`]: the key-to-partition mapping producers and the broker
//!   share.
//! - [`limits`]: default frame and batch sizes.
//! - [`local`]: where a broker on this machine keeps its data and local CA.
#![warn(missing_docs)]

pub mod batch;
mod codec;
pub mod compression;
pub mod error;
pub mod frame;
pub mod framing;
pub mod limits;
pub mod local;
pub mod partitioner;
pub mod varint;

pub use error::{CompressError, DecodeError, ErrorCode};
