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
//! - [`batch`]: record batches, with their byte layout and CRC32C.
//! - [`frame`]: length-prefixed request and response frames.
//! - [`error`]: decode errors and the numbered wire [`ErrorCode`]s.
//! - [`varint`]: LEB128 and zigzag varints used inside records.
#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod frame;
pub mod varint;

pub use error::{DecodeError, ErrorCode};
