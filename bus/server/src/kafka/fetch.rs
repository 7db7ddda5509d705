//! `Fetch` and `ListOffsets`. A Fetch answers with the stored batches as
//! they are (Kafka RecordBatch v2, compressed ones still compressed),
//! never past the high watermark, and long-polls: it waits up to
//! `max_wait_ms` (at most [`MAX_WAIT`]) until `min_bytes` are there,
//! woken by the writer's notifier rather than polling the store.
//!
//! There are no fetch sessions: the answer carries session id 0, so
//! clients send full fetches, as Kafka allows.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch;
use edgebus_proto::frame::Position;
use futures::FutureExt;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::*;

use super::error;
use super::listener::Door;
use crate::reader::FetchError;

/// The longest a Fetch is held waiting for `min_bytes`, whatever
/// `max_wait_ms` asks.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// `ListOffsets` timestamps with a meaning of their own.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// A partition's part of a fetch answer that carries only an error.
fn partition_error(partition: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
}

/// `Fetch`.
pub async fn fetch(door: &Door, request: FetchRequest) -> FetchResponse {
    let b = &door.broker;
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes > 0 {
        request.max_bytes as usize
    } else {
        usize::MAX
    };
    // Watched before the first read, so growth between a read and the
    // wait is not missed.
    let mut watches: Vec<_> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter_map(|p| {
                let partition = u32::try_from(p.partition).ok()?;
                Some(b.notifier.watch(t.topic.0.as_str(), partition))
            })
        })
        .collect();
    loop {
        let (response, bytes, failed) = read_once(door, &request, max_bytes).await;
        if bytes >= min_bytes || failed || tokio::time::Instant::now() >= deadline {
            return response;
        }
        if watches.is_empty() {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        let grown = futures::future::select_all(watches.iter_mut().map(|w| w.changed().boxed()));
        if tokio::time::timeout_at(deadline, grown).await.is_err() {
            let (response, _, _) = read_once(door, &request, max_bytes).await;
            return response;
        }
    }
}

/// One pass over the partitions asked for: the answer, the record bytes
/// it carries, and whether any partition failed (which ends the wait).
async fn read_once(
    door: &Door,
    request: &FetchRequest,
    max_bytes: usize,
) -> (FetchResponse, usize, bool) {
    let b = &door.broker;
    let mut response = FetchResponse::default();
    let mut total = 0usize;
    let mut failed = false;
    for topic in &request.topics {
        let name = topic.topic.0.as_str();
        let spec = b.topics.spec(name).ok();
        let mut answer = FetchableTopicResponse::default().with_topic(topic.topic.clone());
        for p in &topic.partitions {
            let exists = spec
                .as_ref()
                .is_some_and(|s| u32::try_from(p.partition).is_ok_and(|i| i < s.partitions));
            if !exists {
                failed = true;
                answer.partitions.push(partition_error(
                    p.partition,
                    ResponseError::UnknownTopicOrPartition.code(),
                ));
                continue;
            }
            let partition = p.partition as u32;
            let high_watermark = b.reader.high_watermark(name, partition);
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(high_watermark as i64)
                .with_last_stable_offset(high_watermark as i64)
                .with_log_start_offset(-1)
                .with_aborted_transactions(Some(Vec::new()))
                .with_records(Some(Bytes::new()));
            let offset = u64::try_from(p.fetch_offset).ok();
            match offset {
                Some(offset) if offset == high_watermark => {}
                Some(offset) if offset < high_watermark && total < max_bytes => {
                    let budget = (p.partition_max_bytes.max(1) as usize)
                        .min(max_bytes - total)
                        .min(u32::MAX as usize) as u32;
                    match b.reader.read_at(name, partition, offset, budget).await {
                        Ok(read) if offset < read.offsets.log_start => {
                            failed = true;
                            data.error_code = ResponseError::OffsetOutOfRange.code();
                            data.log_start_offset = read.offsets.log_start as i64;
                        }
                        Ok(read) => {
                            data.log_start_offset = read.offsets.log_start as i64;
                            let len: usize = read.batches.iter().map(Bytes::len).sum();
                            let mut records = BytesMut::with_capacity(len);
                            for stored in &read.batches {
                                records.extend_from_slice(stored);
                            }
                            total += len;
                            data.records = Some(records.freeze());
                        }
                        Err(e) => {
                            failed = true;
                            data.error_code = error::code(&e);
                        }
                    }
                }
                Some(offset) if offset < high_watermark => {}
                _ => {
                    failed = true;
                    data.error_code = ResponseError::OffsetOutOfRange.code();
                }
            }
            answer.partitions.push(data);
        }
        response.responses.push(answer);
    }
    (response, total, failed)
}

/// `ListOffsets`: earliest, latest, or the first record at or after a
/// timestamp (offset -1 when there is none, as in Kafka).
pub async fn list_offsets(door: &Door, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let mut answer = ListOffsetsTopicResponse::default().with_name(topic.name.clone());
        for p in topic.partitions {
            let mut data = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            match offset_for(door, topic.name.0.as_str(), p.partition_index, p.timestamp).await {
                Ok(Some((offset, timestamp))) => {
                    data.offset = offset as i64;
                    data.timestamp = timestamp;
                }
                Ok(None) => {}
                Err(code) => data.error_code = code,
            }
            answer.partitions.push(data);
        }
        response.topics.push(answer);
    }
    response
}

/// The offset (and the timestamp of its record, -1 for earliest and
/// latest) that `timestamp` asks for.
async fn offset_for(
    door: &Door,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<Option<(u64, i64)>, i16> {
    let reader = &door.broker.reader;
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    let spec = door.broker.topics.spec(topic).map_err(|_| unknown)?;
    let partition = u32::try_from(partition)
        .ok()
        .filter(|&p| p < spec.partitions)
        .ok_or(unknown)?;
    let code = |e: FetchError| error::code(&e);
    match timestamp {
        LATEST => Ok(Some((reader.high_watermark(topic, partition), -1))),
        EARLIEST | EARLIEST_LOCAL => {
            let offset = reader
                .resolve(topic, partition, Position::Earliest)
                .await
                .map_err(code)?;
            Ok(Some((offset, -1)))
        }
        MAX_TIMESTAMP => Err(ResponseError::UnsupportedVersion.code()),
        ts if ts >= 0 => {
            let end = reader.high_watermark(topic, partition);
            let at = reader
                .resolve(topic, partition, Position::Timestamp(ts))
                .await
                .map_err(code)?;
            if at >= end {
                return Ok(None);
            }
            // The time index points at a batch; the answer is the first
            // record in it stamped at or after the timestamp.
            let read = reader
                .read_at(topic, partition, at, 1)
                .await
                .map_err(code)?;
            let corrupt = ResponseError::CorruptMessage.code();
            for stored in &read.batches {
                let records = batch::records(stored).map_err(|_| corrupt)?;
                if let Some(r) = records
                    .iter()
                    .find(|r| r.timestamp_ms >= ts && r.offset >= at)
                {
                    return Ok(Some((r.offset, r.timestamp_ms)));
                }
            }
            Ok(None)
        }
        _ => Err(ResponseError::InvalidRequest.code()),
    }
}
