//! Publishes to one partition from every connection, appended together.
//!
//! A connection hands what it publishes to a partition to that partition's
//! gather task rather than to the produce path itself. The task keeps at
//! most [`MAX_APPENDS_IN_FLIGHT`] appends waiting on the writer; what
//! arrives meanwhile becomes its next append. Under load one append then
//! carries the QoS 1 publishes of many connections (one record batch, one
//! trip through the produce path and one store insert per partition and
//! group commit, instead of one per connection and read). Below that, a
//! group goes to the writer at once when nothing is in flight, and
//! otherwise after the connections the runtime is about to run (one
//! yield) have handed theirs over.
//!
//! Order: one channel and one task per partition, so a connection's
//! publishes to a partition reach the writer in the order it handed them
//! over, whatever their QoS.
//!
//! Isolation: when the produce path refuses a merged batch before the
//! writer (a record over the topic's limit, an ingest chain's refusal),
//! each connection's part is produced again on its own, so one client's
//! bad publish is refused to that client only, as without merging. A topic
//! with an ingest chain gets no merged batches at all: a chain's budgets
//! are per input batch, and its input stays what one connection sent.

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use edgebus_core::producer::AppendRefused;
use edgebus_proto::batch::{BatchBuilder, Header, ProducerStamp, Record};
use edgebus_proto::frame::Acks;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::TOPIC_HEADER;
use super::packet::{Publish, PublishRefusal};
use crate::broker::Broker;
use crate::cmd::produce::{self, Produce, ProduceError};
use crate::writer::AppendFailure;

/// Appends of one partition's task the writer has not acknowledged yet,
/// at most. Under load the task reaches it and what arrives meanwhile
/// waits to become one large append; below it an append goes out at once.
/// Two (one being committed, one queued) made the largest batches but let
/// a publish arriving just after the queued one was taken into a commit
/// wait a whole commit more: p99 at 2,000 msg/s went from 9 to 13 ms.
pub(super) const MAX_APPENDS_IN_FLIGHT: usize = 4;

/// Payload and topic bytes of the publishes merged into one batch at
/// most (a single larger part is a batch of its own), keeping batches
/// well within what a fetch serves.
pub(super) const MAX_GROUP_BYTES: usize = 256 << 10;

/// Parts waiting for a partition's task, at most; a connection that finds
/// the queue full waits (and stops reading its socket).
pub(super) const QUEUE_DEPTH: usize = 256;

/// What a publish's answer says: stored, or why not.
pub(super) type Verdict = Result<(), PublishRefusal>;

/// What a connection hands to a partition's task.
pub(super) enum Part {
    /// Consecutive QoS 1 publishes of one connection, merged with other
    /// connections' into one batch.
    Shared {
        publishes: Vec<Publish>,
        done: oneshot::Sender<Verdict>,
    },
    /// A publish stored as a batch of its own: QoS 0 (`done` is `None`:
    /// nobody is answered) or QoS 2 (stamped for deduplication).
    Alone {
        publish: Publish,
        stamp: ProducerStamp,
        acks: Acks,
        done: Option<oneshot::Sender<Verdict>>,
    },
}

impl Part {
    /// Payload and topic bytes.
    fn bytes(&self) -> usize {
        match self {
            Part::Shared { publishes, .. } => publishes.iter().map(publish_bytes).sum(),
            Part::Alone { publish, .. } => publish_bytes(publish),
        }
    }
}

/// Payload and topic bytes of one publish, as counted against
/// [`MAX_GROUP_BYTES`].
pub(super) fn publish_bytes(p: &Publish) -> usize {
    p.payload.len() + p.topic.len()
}

/// Starts the task of partition `partition` of `topic`; it ends when every
/// sender of the returned queue is gone.
pub(super) fn spawn(broker: Broker, topic: String, partition: u32) -> mpsc::Sender<Part> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(run(broker, topic, partition, rx));
    tx
}

/// Sends the verdicts of one append once the writer has decided on it.
type InFlight = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run(broker: Broker, topic: String, partition: u32, mut rx: mpsc::Receiver<Part>) {
    let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
    let mut carry: Option<Part> = None;
    loop {
        if in_flight.len() >= MAX_APPENDS_IN_FLIGHT {
            in_flight.next().await;
            continue;
        }
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
            },
        };
        if matches!(first, Part::Shared { .. }) && !in_flight.is_empty() {
            // The writer is busy with an earlier append, so waiting costs
            // nothing: let the connections that are ready run first, and
            // what they hand over joins this group.
            tokio::task::yield_now().await;
        }
        let group = gather(first, &mut rx, &mut carry);
        let merge = broker.attachments.ingest_chain(&topic).is_none();
        if let Some(f) = append(&broker, &topic, partition, group, merge).await {
            in_flight.push_back(f);
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Takes what is queued behind `first` into one group: shared parts up to
/// [`MAX_GROUP_BYTES`]; a part alone is a group of its own. A part that
/// does not fit is left in `carry` for the next group.
fn gather(first: Part, rx: &mut mpsc::Receiver<Part>, carry: &mut Option<Part>) -> Vec<Part> {
    if let Part::Alone { .. } = first {
        return vec![first];
    }
    let mut bytes = first.bytes();
    let mut group = vec![first];
    while let Ok(next) = rx.try_recv() {
        let more = next.bytes();
        if matches!(next, Part::Alone { .. }) || bytes + more > MAX_GROUP_BYTES {
            *carry = Some(next);
            break;
        }
        bytes += more;
        group.push(next);
    }
    group
}

/// Hands `group` to the produce path: one batch when `merge` says so (or
/// it is one part), else one per part. Returns what sends the verdicts.
async fn append(
    broker: &Broker,
    topic: &str,
    partition: u32,
    group: Vec<Part>,
    merge: bool,
) -> Option<InFlight> {
    if group.len() == 1 || !merge {
        let mut each = Vec::with_capacity(group.len());
        for part in group {
            each.extend(append_part(broker, topic, partition, part).await);
        }
        return match each.len() {
            0 => None,
            1 => each.pop(),
            _ => Some(Box::pin(async move {
                futures::future::join_all(each).await;
            })),
        };
    }
    let batch = record_batch(shared(&group), ProducerStamp::NONE);
    match produce_to(broker, topic, partition, Acks::Durable, batch).await {
        Ok(pending) => {
            let done: Vec<_> = group.into_iter().filter_map(Part::into_done).collect();
            Some(Box::pin(async move {
                let verdict = verdict(produce::acknowledged(pending).await);
                for d in done {
                    let _ = d.send(verdict);
                }
            }))
        }
        Err(e) => {
            tracing::debug!(topic, partition, error = %e,
                "merged MQTT publishes refused: producing each connection's on its own");
            Box::pin(append(broker, topic, partition, group, false)).await
        }
    }
}

/// One part as a batch of its own.
async fn append_part(broker: &Broker, topic: &str, partition: u32, part: Part) -> Option<InFlight> {
    let (batch, acks, done) = match part {
        Part::Shared { publishes, done } => (
            record_batch(publishes.iter(), ProducerStamp::NONE),
            Acks::Durable,
            Some(done),
        ),
        Part::Alone {
            publish,
            stamp,
            acks,
            done,
        } => (record_batch(std::iter::once(&publish), stamp), acks, done),
    };
    let produced = produce_to(broker, topic, partition, acks, batch).await;
    let Some(done) = done else {
        if let Err(e) = produced {
            tracing::debug!(topic, partition, error = %e, "MQTT QoS 0 publish dropped");
        }
        return None;
    };
    match produced {
        Ok(pending) => Some(Box::pin(async move {
            let _ = done.send(verdict(produce::acknowledged(pending).await));
        })),
        Err(e) => {
            tracing::debug!(topic, partition, error = %e, "MQTT publishes refused");
            let _ = done.send(Err(PublishRefusal::Unspecified));
            None
        }
    }
}

impl Part {
    fn into_done(self) -> Option<oneshot::Sender<Verdict>> {
        match self {
            Part::Shared { done, .. } => Some(done),
            Part::Alone { done, .. } => done,
        }
    }
}

/// The publishes of a group's shared parts, in order.
fn shared(group: &[Part]) -> impl Iterator<Item = &Publish> + Clone {
    group.iter().flat_map(|part| match part {
        Part::Shared { publishes, .. } => publishes.as_slice(),
        Part::Alone { .. } => &[],
    })
}

/// What the writer's answer means for the publishes in the batch.
fn verdict(acknowledged: Result<edgebus_proto::frame::Response, ProduceError>) -> Verdict {
    match acknowledged {
        Ok(_) => Ok(()),
        // A QoS 2 retransmission older than the dedup window's newest
        // batch: stored before.
        Err(ProduceError::Write(AppendFailure::Refused(AppendRefused::StaleDuplicate {
            ..
        }))) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "MQTT publishes not stored");
            Err(PublishRefusal::Unspecified)
        }
    }
}

/// Hands a record batch to the produce path every door shares.
pub(super) async fn produce_to(
    broker: &Broker,
    topic: &str,
    partition: u32,
    acks: Acks,
    batch: Bytes,
) -> Result<produce::Pending, ProduceError> {
    let request = Produce {
        topic: topic.to_owned(),
        partition,
        acks,
        batch,
    };
    produce::produce(
        &broker.topics,
        &broker.attachments,
        &broker.writer,
        &broker.dead_letters,
        request,
    )
    .await
}

/// One batch of the publishes' records: each MQTT topic as key and
/// `mqtt-topic` header, user properties as further headers, the payload
/// as value. The topics are copied once into one buffer that every key
/// and header slices, and one record is reused, so a record costs no
/// allocation of its own.
pub(super) fn record_batch<'a>(
    publishes: impl Iterator<Item = &'a Publish> + Clone,
    stamp: ProducerStamp,
) -> Bytes {
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (topic_bytes, bytes) = publishes.clone().fold((0, 0), |(t, b), p| {
        (
            t + p.topic.len(),
            b + p.payload.len() + p.topic.len() * 2 + 32,
        )
    });
    let mut names = BytesMut::with_capacity(topic_bytes);
    for p in publishes.clone() {
        names.extend_from_slice(p.topic.as_bytes());
    }
    let names = names.freeze();
    let mut builder = BatchBuilder::with_capacity(bytes);
    let mut record = Record {
        key: None,
        value: Bytes::new(),
        headers: vec![Header {
            key: TOPIC_HEADER.to_owned(),
            value: Bytes::new(),
        }],
        timestamp_ms,
    };
    let mut at = 0;
    for p in publishes {
        let topic = names.slice(at..at + p.topic.len());
        at += p.topic.len();
        record.headers.truncate(1);
        record.headers[0].value = topic.clone();
        record
            .headers
            .extend(p.user_properties.iter().map(|(k, v)| Header {
                key: k.clone(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            }));
        record.key = Some(topic);
        record.value = p.payload.clone();
        builder.push(&record);
    }
    builder.finish(stamp)
}

#[cfg(test)]
mod tests {
    use edgebus_proto::batch;

    use super::*;
    use crate::mqtt::packet::QoS;

    fn publish(topic: &str, payload: &[u8], pkid: u16) -> Publish {
        Publish {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            pkid,
            dup: false,
            retain: false,
            user_properties: Vec::new(),
            topic_alias: None,
        }
    }

    fn shared_part(publishes: Vec<Publish>) -> (Part, oneshot::Receiver<Verdict>) {
        let (done, rx) = oneshot::channel();
        (Part::Shared { publishes, done }, rx)
    }

    fn alone_part(p: Publish) -> Part {
        Part::Alone {
            publish: p,
            stamp: ProducerStamp::NONE,
            acks: Acks::None,
            done: None,
        }
    }

    fn pkids(group: &[Part]) -> Vec<u16> {
        group
            .iter()
            .flat_map(|part| match part {
                Part::Shared { publishes, .. } => publishes.iter().map(|p| p.pkid).collect(),
                Part::Alone { publish, .. } => vec![publish.pkid],
            })
            .collect()
    }

    #[test]
    fn gather_merges_queued_shared_parts_in_order() {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let (first, _a) = shared_part(vec![publish("s/a", b"1", 1), publish("s/a", b"2", 2)]);
        let (second, _b) = shared_part(vec![publish("s/b", b"3", 7)]);
        let (third, _c) = shared_part(vec![publish("s/a", b"4", 3)]);
        assert!(tx.try_send(second).is_ok());
        assert!(tx.try_send(third).is_ok());
        let mut carry = None;
        let group = gather(first, &mut rx, &mut carry);
        assert_eq!(pkids(&group), vec![1, 2, 7, 3]);
        assert!(carry.is_none());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn gather_stops_before_a_part_alone_and_keeps_it_for_next() {
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let (first, _a) = shared_part(vec![publish("s/a", b"1", 1)]);
        let (after, _b) = shared_part(vec![publish("s/a", b"3", 3)]);
        assert!(tx.try_send(alone_part(publish("s/a", b"2", 2))).is_ok());
        assert!(tx.try_send(after).is_ok());
        let mut carry = None;
        let group = gather(first, &mut rx, &mut carry);
        assert_eq!(pkids(&group), vec![1]);
        let alone = carry.take().expect("the part alone is carried");
        let group = gather(alone, &mut rx, &mut carry);
        assert_eq!(pkids(&group), vec![2], "a part alone is a group of its own");
        let group = gather(rx.try_recv().unwrap(), &mut rx, &mut carry);
        assert_eq!(pkids(&group), vec![3]);
    }

    #[test]
    fn gather_stops_at_max_group_bytes_but_takes_one_large_part_whole() {
        let big = vec![b'x'; MAX_GROUP_BYTES];
        let (tx, mut rx) = mpsc::channel(QUEUE_DEPTH);
        let (first, _a) = shared_part(vec![publish("t", &big[..MAX_GROUP_BYTES / 2], 1)]);
        let (second, _b) = shared_part(vec![publish("t", &big[..MAX_GROUP_BYTES / 2], 2)]);
        let (third, _c) = shared_part(vec![publish("t", &big, 3)]);
        assert!(tx.try_send(second).is_ok());
        assert!(tx.try_send(third).is_ok());
        let mut carry = None;
        let group = gather(first, &mut rx, &mut carry);
        // Two halves plus their topics are over the limit.
        assert_eq!(pkids(&group), vec![1]);
        let group = gather(carry.take().unwrap(), &mut rx, &mut carry);
        assert_eq!(pkids(&group), vec![2]);
        let group = gather(carry.take().unwrap(), &mut rx, &mut carry);
        assert_eq!(
            pkids(&group),
            vec![3],
            "a part over the limit is a batch alone"
        );
        assert!(carry.is_none());
    }

    #[test]
    fn record_batch_keys_and_headers_each_publish_by_its_topic() {
        let mut with_props = publish("dev/2/temp", b"19.0", 2);
        with_props.user_properties = vec![("unit".into(), "celsius".into())];
        let publishes = [
            publish("dev/1", b"21.5", 1),
            with_props,
            publish("d", b"", 3),
        ];
        let batch = record_batch(publishes.iter(), ProducerStamp::NONE);
        let records = batch::records(&batch).unwrap();
        assert_eq!(records.len(), 3);
        for (r, p) in records.iter().zip(&publishes) {
            assert_eq!(r.key.as_deref(), Some(p.topic.as_bytes()));
            assert_eq!(r.value, p.payload);
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|h| (h.key.as_str(), &h.value[..]))
                .collect();
            let mut expected = vec![(TOPIC_HEADER, p.topic.as_bytes())];
            expected.extend(
                p.user_properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes())),
            );
            assert_eq!(headers, expected);
        }
    }
}
