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
//!   on what one batch may decompress to.
//! - [`frame`]: length-prefixed request and response frames.
//! - [`error`]: decode and compression errors, and the numbered wire
//!   [`ErrorCode`]s.
//! - [`varint`]: Kafka's zigzag varints and varlongs, used inside records.
#![warn(missing_docs)]

pub mod batch;
pub mod compression;
pub mod error;
pub mod frame;
pub mod varint;

pub use error::{CompressError, DecodeError, ErrorCode};
