//! `Produce` and `InitProducerId`, through the produce path the QUIC door
//! uses ([`crate::cmd::produce`]): the topic's ingest chain runs, the
//! batch is stored byte for byte when no plugin changes it, and an
//! idempotent producer's id, epoch and sequence are checked by the same
//! partition engine dedup state.
//!
//! Acks: 0 is `none` (no answer is sent, as Kafka does), 1 is `durable`
//! and -1 is `all`. Kafka's acks=1 ("the leader has it") becomes
//! `durable`, not edgebus's `leader`: a Kafka leader's ack is backed by
//! replicas that edgebus on one node does not have, so only an fsync'd
//! commit keeps the promise that an acknowledged record survives a crash.

use edgebus_proto::frame::{Acks, Response};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;

use super::api::{Call, FrameError};
use super::error;
use super::listener::{Door, Reply};
use crate::cmd::produce::{self, Pending, Produce};

/// The edgebus ack level of a Kafka `acks`.
pub fn acks(kafka_acks: i16) -> Option<Acks> {
    match kafka_acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Durable),
        -1 => Some(Acks::All),
        _ => None,
    }
}

/// One partition's outcome as far as it is known when accepted.
enum Accepted {
    Pending(Pending),
    Refused(i16, String),
}

/// Accepts every batch of the request, in order, and returns the answer
/// to come once their acks arrive (none for acks=0).
pub async fn accept(door: &Door, call: &Call, request: ProduceRequest) -> Reply {
    let b = &door.broker;
    let level = acks(request.acks);
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let accepted = match (level, data.records, u32::try_from(data.index)) {
                _ if request.transactional_id.is_some() => Accepted::Refused(
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                    "transactions are not supported".into(),
                ),
                (None, _, _) => Accepted::Refused(
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks {} (use 0, 1 or -1)", request.acks),
                ),
                (_, _, Err(_)) => Accepted::Refused(
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("partition {}", data.index),
                ),
                (_, None, _) => Accepted::Refused(
                    ResponseError::CorruptMessage.code(),
                    "no record batch".into(),
                ),
                (Some(acks), Some(batch), Ok(partition)) => {
                    let p = Produce {
                        topic: name.clone(),
                        partition,
                        acks,
                        batch,
                    };
                    match produce::produce(&b.topics, &b.attachments, &b.writer, &b.dead_letters, p)
                        .await
                    {
                        Ok(pending) => Accepted::Pending(pending),
                        Err(e) => Accepted::Refused(error::code(&e), e.to_string()),
                    }
                }
            };
            partitions.push((data.index, accepted));
        }
        topics.push((name, partitions));
    }
    let call = call.clone();
    Box::pin(async move {
        if level == Some(Acks::None) {
            return Ok(None);
        }
        answer(&call, topics).await.map(Some)
    })
}

async fn answer(
    call: &Call,
    topics: Vec<(String, Vec<(i32, Accepted)>)>,
) -> Result<bytes::Bytes, FrameError> {
    let mut response = ProduceResponse::default();
    for (name, partitions) in topics {
        let mut topic = TopicProduceResponse::default().with_name(TopicName(name.into()));
        for (index, accepted) in partitions {
            let mut p = PartitionProduceResponse::default()
                .with_index(index)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let outcome = match accepted {
                Accepted::Refused(code, why) => Err((code, why)),
                Accepted::Pending(pending) => match produce::acknowledged(pending).await {
                    Ok(Response::Produced { base_offset, .. }) => Ok(base_offset),
                    Ok(other) => Err((
                        ResponseError::UnknownServerError.code(),
                        format!("unexpected produce outcome {other:?}"),
                    )),
                    Err(e) => Err((error::code(&e), e.to_string())),
                },
            };
            match outcome {
                Ok(base_offset) => p.base_offset = base_offset as i64,
                Err((code, why)) => {
                    p.error_code = code;
                    p.base_offset = -1;
                    p.error_message = Some(why.into());
                }
            }
            topic.partition_responses.push(p);
        }
        response.responses.push(topic);
    }
    call.respond(&response)
}

/// `InitProducerId`: a new producer id from the allocator `edgebus
/// produce` uses, epoch 0. Transactional ids are refused.
pub async fn init_producer_id(
    door: &Door,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return response;
    }
    // On a cluster node, ids carry the node id, as the QUIC door's do.
    let node = door.broker.cluster.as_ref().map(|c| c.node());
    match produce::init_producer(&door.broker.store, node).await {
        Ok(Response::ProducerInit {
            producer_id,
            producer_epoch,
        }) => {
            response.producer_id = ProducerId(producer_id);
            response.producer_epoch = producer_epoch;
        }
        Ok(_) => response.error_code = ResponseError::UnknownServerError.code(),
        Err(e) => response.error_code = error::code(&e),
    }
    response
}
