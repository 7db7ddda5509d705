//! edgebus errors as the Kafka error codes clients act on: retriable
//! conditions stay retriable, refusals stay final.

use edgebus_proto::ErrorCode;
use kafka_protocol::ResponseError;

use crate::error::Coded;

/// The Kafka error code for an edgebus error.
pub fn code(error: &impl Coded) -> i16 {
    kafka_error(error.code()).code()
}

/// The Kafka error for an edgebus error code.
pub fn kafka_error(code: ErrorCode) -> ResponseError {
    use ResponseError as K;
    match code {
        ErrorCode::MalformedFrame | ErrorCode::InvalidRequest | ErrorCode::UnknownRequest => {
            K::InvalidRequest
        }
        ErrorCode::FrameTooLarge | ErrorCode::RecordTooLarge => K::MessageTooLarge,
        ErrorCode::UnsupportedVersion => K::UnsupportedVersion,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => K::UnknownTopicOrPartition,
        ErrorCode::TopicExists => K::TopicAlreadyExists,
        ErrorCode::InvalidTopicConfig => K::InvalidConfig,
        ErrorCode::CorruptBatch => K::CorruptMessage,
        ErrorCode::TooManyInFlight => K::ThrottlingQuotaExceeded,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::ProducerFenced => K::InvalidProducerEpoch,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        ErrorCode::DuplicateSequence => K::DuplicateSequenceNumber,
        // Both are retriable for Kafka clients, as they are for edgebus's.
        ErrorCode::StorageError | ErrorCode::StorageFull => K::KafkaStorageError,
        ErrorCode::ShuttingDown | ErrorCode::NotLeader => K::NotLeaderOrFollower,
        ErrorCode::NotEnoughReplicas => K::NotEnoughReplicas,
        ErrorCode::NotCoordinator => K::NotCoordinator,
        ErrorCode::UnknownMember => K::UnknownMemberId,
        ErrorCode::StaleGeneration => K::IllegalGeneration,
        ErrorCode::NotAssigned => K::IllegalGeneration,
        ErrorCode::GroupNotEmpty => K::NonEmptyGroup,
        ErrorCode::UnknownGroup => K::GroupIdNotFound,
        // An ingest plugin refused the records: final, as Kafka's broker-side
        // record validation is.
        ErrorCode::PluginRejected | ErrorCode::PluginInvalid => K::InvalidRecord,
        // A halted chain resumes after its backoff: the client retries.
        ErrorCode::PluginHalted => K::RequestTimedOut,
        ErrorCode::UnsupportedCompression => K::UnsupportedCompressionType,
        ErrorCode::TopicInUse | ErrorCode::MirrorDestination => K::PolicyViolation,
        ErrorCode::UnknownPlugin
        | ErrorCode::PluginInUse
        | ErrorCode::UnknownPipeline
        | ErrorCode::PipelineExists
        | ErrorCode::PipelineCycle => K::InvalidRequest,
        _ => K::UnknownServerError,
    }
}
