//! How a failed request reaches its client.
//!
//! Everywhere in the broker an error is a domain enum of the operation that
//! failed. Every such error has a wire [`ErrorCode`] and its `Display` is
//! the message the client reads. Only where a frame is written (the request
//! dispatch, produce acks, a subscription's feed, the stream's own checks)
//! does it become a [`Response::Error`], through [`response`].

use edgebus_core::producer::AppendRefused;
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::Response;
use edgebus_store::{ReadError, StoreError, TopicError};

use crate::writer::{AppendFailure, StepError};

/// An error as clients see it: a numbered code, and the error's message.
pub trait Coded: std::fmt::Display {
    /// The wire code of this error.
    fn code(&self) -> ErrorCode;
}

/// The error response for `error`.
pub fn response(error: &impl Coded) -> Response {
    Response::error(error.code(), error.to_string())
}

impl Coded for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::DiskFull(_) => ErrorCode::StorageFull,
            _ => ErrorCode::StorageError,
        }
    }
}

impl Coded for TopicError {
    fn code(&self) -> ErrorCode {
        match self {
            TopicError::Exists(_) => ErrorCode::TopicExists,
            TopicError::NotFound(_) => ErrorCode::UnknownTopic,
            TopicError::Invalid(_) => ErrorCode::InvalidTopicConfig,
            _ => ErrorCode::StorageError,
        }
    }
}

impl Coded for ReadError {
    fn code(&self) -> ErrorCode {
        match self {
            ReadError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            ReadError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            _ => ErrorCode::StorageError,
        }
    }
}

impl Coded for AppendFailure {
    fn code(&self) -> ErrorCode {
        match self {
            AppendFailure::UnknownTopic(_) => ErrorCode::UnknownTopic,
            AppendFailure::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            AppendFailure::Refused(refused) => match refused {
                AppendRefused::ProducerFenced { .. } => ErrorCode::ProducerFenced,
                AppendRefused::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
                AppendRefused::StaleDuplicate { .. } => ErrorCode::DuplicateSequence,
                _ => ErrorCode::InvalidRequest,
            },
            AppendFailure::Stopped => ErrorCode::ShuttingDown,
            AppendFailure::DiskFull(_) => ErrorCode::StorageFull,
            AppendFailure::NotLeader { .. } => ErrorCode::NotLeader,
            AppendFailure::NotEnoughReplicas(_) => ErrorCode::NotEnoughReplicas,
            AppendFailure::MirrorDestination(_) => ErrorCode::MirrorDestination,
            _ => ErrorCode::StorageError,
        }
    }
}

impl Coded for crate::writer::MirrorRefused {
    fn code(&self) -> ErrorCode {
        use crate::writer::MirrorRefused as M;
        match self {
            M::NotAtLogEnd { .. } => ErrorCode::MirrorOffsetMismatch,
            M::Conflict { .. } => ErrorCode::MirrorConflict,
            M::InvalidBatch { .. } => ErrorCode::CorruptBatch,
            M::Append(e) => e.code(),
            M::Create(_) => ErrorCode::InvalidTopicConfig,
        }
    }
}

impl Coded for StepError {
    fn code(&self) -> ErrorCode {
        match self {
            StepError::Target(e) => e.code(),
            StepError::Store(_) => ErrorCode::StorageError,
        }
    }
}
