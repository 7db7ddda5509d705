//! Compressed batches through a real broker: lz4 and zstd from the producer
//! are stored and served as sent, a topic's codec compresses what arrives
//! uncompressed, plugins see decompressed records, and codecs the broker
//! lacks or records that inflate past the cap are refused with typed errors.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgebus_client::{
    AttachCounters, Client, FailurePolicy, PluginRef, Position, Producer, ProducerConfig, Record,
    StoredRecord, SubscribeConfig, Subscription, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{
    self, BatchBuilder, BatchHeader, Compression, HEADER_LEN, MAX_DECOMPRESSED_BYTES, ProducerStamp,
};
use edgebus_proto::frame::{Acks, RecordAcks, Request, Response};
use edgebus_tests::{TestBroker, add_plugin, error_code, exchange, frame, raw_default};

const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn spec(name: &str, compression: Compression) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: 1,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: 0,
        compression,
    }
}

fn pref(name: &str, params: &[(&str, &str)]) -> PluginRef {
    PluginRef {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Sensor-like records with keys, headers and distinct timestamps; their
/// values repeat enough to compress well.
fn readings(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let value = format!(
                r#"{{"sensor":"s-{}","temp":{},"unit":"celsius","site":"north-field"}}"#,
                i % 7,
                20 + i % 5
            );
            Record::new(value, BASE_TIMESTAMP_MS + 7 * i as i64)
                .with_key(format!("s-{}", i % 7))
                .with_header("seq", i.to_string())
                .with_header("source", "compression-test")
        })
        .collect()
}

/// The `temp` field of a reading.
fn temp(r: &Record) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    v["temp"].as_i64().unwrap()
}

/// The records as a consumer must read them back from offset `first`.
fn stored(records: &[Record], first: u64) -> Vec<StoredRecord> {
    records
        .iter()
        .zip(first..)
        .map(|(r, offset)| StoredRecord {
            offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .collect()
}

/// A producer whose batches are sealed by `flush` only, so each group of
/// sends between flushes is exactly one batch.
async fn producer(client: &Client, compression: Compression) -> Producer {
    let config = ProducerConfig {
        linger: Duration::from_secs(30),
        compression,
        ..ProducerConfig::default()
    };
    Producer::new(client.clone(), config).await.unwrap()
}

/// Sends `records` as one batch and waits for every ack.
async fn send_batch(producer: &Producer, topic: &str, records: &[Record]) {
    let mut acks = Vec::new();
    for r in records {
        acks.push(producer.send(topic, r.clone()).await.unwrap());
    }
    producer.flush().await.unwrap();
    for a in acks {
        a.await.unwrap();
    }
}

/// The stored batches of partition 0, as the broker serves them.
async fn raw_batches(client: &Client, topic: &str) -> Vec<Bytes> {
    let request = Request::Fetch {
        topic: topic.into(),
        partition: 0,
        from: Position::Earliest,
        max_bytes: 1 << 20,
    };
    match client.request(&request).await.unwrap() {
        Response::Fetched { batches, .. } => batch::split(&batches).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

fn codecs(batches: &[Bytes]) -> Vec<Compression> {
    batches
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap().attributes.compression())
        .collect()
}

async fn fetch_all(client: &Client, topic: &str) -> Vec<StoredRecord> {
    client
        .fetch(topic, 0, Position::Earliest, 1 << 20)
        .await
        .unwrap()
        .records
}

/// The first `count` records of a subscription from the earliest offset.
async fn subscribe(
    client: &Client,
    topic: &str,
    count: usize,
    chain: Vec<PluginRef>,
) -> Vec<StoredRecord> {
    let config = SubscribeConfig {
        chain,
        ..SubscribeConfig::default()
    };
    let mut sub = Subscription::start(client.clone(), topic, 0, Position::Earliest, config)
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let r = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("record arrives")
            .expect("subscription open")
            .unwrap();
        out.push(r);
    }
    out
}

async fn counters(client: &Client, topic: &str) -> (AttachCounters, AttachCounters) {
    let request = Request::TopicPlugins {
        topic: topic.into(),
    };
    match client.request(&request).await.unwrap() {
        Response::TopicPlugins {
            ingest_counters,
            read_counters,
            ..
        } => (ingest_counters, read_counters),
        other => panic!("unexpected {other:?}"),
    }
}

fn produce_request(topic: &str, batch: Bytes) -> Request {
    Request::Produce {
        topic: topic.into(),
        partition: 0,
        acks: Acks::Durable,
        batch,
    }
}

/// `template`'s header with `attributes` and the records section `section`,
/// its length and CRC made to match: a batch only a hand can build.
fn sealed(template: &[u8], attributes: u16, section: &[u8]) -> Bytes {
    let mut out = BytesMut::from(&template[..HEADER_LEN]);
    let batch_length = (HEADER_LEN - 12 + section.len()) as u32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out.extend_from_slice(section);
    // restamp recomputes the CRC over bytes [21, end).
    let stamp = BatchHeader::parse(template).unwrap().producer;
    batch::restamp(&out, stamp)
}

/// The connection still answers, and still stores a good batch at `offset`.
async fn still_serves(conn: &quinn::Connection, topic: &str, offset: u64) {
    let replies = exchange(conn, &frame(&Request::ListTopics, 90))
        .await
        .unwrap();
    assert!(
        matches!(replies.as_slice(), [Response::Topics(_)]),
        "{replies:?}"
    );
    let mut b = BatchBuilder::new();
    b.push(&Record::new("after", BASE_TIMESTAMP_MS));
    let good = b
        .finish_compressed(ProducerStamp::NONE, Compression::Zstd)
        .unwrap();
    let replies = exchange(conn, &frame(&produce_request(topic, good), 91))
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![Response::Produced {
            base_offset: offset,
            duplicate: false,
            records: RecordAcks::AsSent,
        }]
    );
}

#[tokio::test]
async fn sdk_producer_with_zstd_or_lz4_stores_compressed_batches_consumers_read_unchanged() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    let records = readings(300);
    let value_bytes: usize = records.iter().map(|r| r.value.len()).sum();
    for codec in [Compression::Zstd, Compression::Lz4] {
        let topic = format!("sensors-{codec}");
        client
            .create_topic(spec(&topic, Compression::None))
            .await
            .unwrap();
        let producer = producer(&client, codec).await;
        send_batch(&producer, &topic, &records[..100]).await;
        send_batch(&producer, &topic, &records[100..]).await;

        let batches = raw_batches(&client, &topic).await;
        assert_eq!(codecs(&batches), vec![codec, codec], "{codec}");
        let stored_bytes: usize = batches.iter().map(Bytes::len).sum();
        assert!(
            stored_bytes * 3 < value_bytes,
            "{codec}: {stored_bytes} bytes stored for {value_bytes} bytes of values"
        );

        let expected = stored(&records, 0);
        assert_eq!(fetch_all(&client, &topic).await, expected, "{codec} fetch");
        assert_eq!(
            subscribe(&client, &topic, records.len(), vec![]).await,
            expected,
            "{codec} subscription"
        );
    }
}

#[tokio::test]
async fn compressed_batch_is_stored_and_served_byte_for_byte() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    for codec in [Compression::Lz4, Compression::Zstd] {
        let topic = format!("verbatim-{codec}");
        client
            .create_topic(spec(&topic, Compression::Zstd))
            .await
            .unwrap();
        let mut b = BatchBuilder::new();
        for r in readings(50) {
            b.push(&r);
        }
        let sent = b.finish_compressed(ProducerStamp::NONE, codec).unwrap();
        let reply = client
            .request(&produce_request(&topic, sent.clone()))
            .await
            .unwrap();
        assert_eq!(
            reply,
            Response::Produced {
                base_offset: 0,
                duplicate: false,
                records: RecordAcks::AsSent,
            }
        );
        let batches = raw_batches(&client, &topic).await;
        assert_eq!(batches.len(), 1, "{codec}");
        // Only baseOffset and partitionLeaderEpoch (bytes 0..16, outside the
        // CRC) are the broker's to stamp; a topic codec other than the
        // batch's does not recompress it.
        assert_eq!(batches[0][..8], sent[..8], "{codec}: base offset 0");
        assert_eq!(batches[0][16..], sent[16..], "{codec}: bytes as sent");
    }
}

#[tokio::test]
async fn zstd_topic_compresses_uncompressed_batches_and_consumers_read_unchanged() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(spec("packed", Compression::Zstd))
        .await
        .unwrap();
    let records = readings(200);
    let producer = producer(&client, Compression::None).await;
    send_batch(&producer, "packed", &records[..120]).await;
    send_batch(&producer, "packed", &records[120..]).await;

    let batches = raw_batches(&client, "packed").await;
    assert_eq!(codecs(&batches), vec![Compression::Zstd, Compression::Zstd]);
    let stored_bytes: usize = batches.iter().map(Bytes::len).sum();
    let mut plain = BatchBuilder::new();
    for r in &records {
        plain.push(r);
    }
    assert!(
        stored_bytes * 3 < plain.size_bytes(),
        "{stored_bytes} bytes stored for {} uncompressed",
        plain.size_bytes()
    );
    for b in &batches {
        let header = BatchHeader::parse(b).unwrap();
        assert!(
            header.producer.is_idempotent(),
            "the producer stamp survives compression: {header:?}"
        );
    }

    let expected = stored(&records, 0);
    assert_eq!(fetch_all(&client, "packed").await, expected);
    assert_eq!(
        subscribe(&client, "packed", records.len(), vec![]).await,
        expected
    );
}

#[tokio::test]
async fn zstd_topic_answers_an_idempotent_retry_as_a_duplicate_and_keeps_sequence_checks() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(spec("retried", Compression::Zstd))
        .await
        .unwrap();
    let (producer_id, producer_epoch) = match client.request(&Request::InitProducer).await.unwrap()
    {
        Response::ProducerInit {
            producer_id,
            producer_epoch,
        } => (producer_id, producer_epoch),
        other => panic!("unexpected {other:?}"),
    };
    let records = readings(10);
    let batch_of = |range: std::ops::Range<usize>| {
        let mut b = BatchBuilder::new();
        for r in &records[range.clone()] {
            b.push(r);
        }
        b.finish(ProducerStamp {
            producer_id,
            producer_epoch,
            base_sequence: range.start as i32,
        })
    };
    let produced = |base_offset, duplicate| Response::Produced {
        base_offset,
        duplicate,
        records: RecordAcks::AsSent,
    };

    let first = produce_request("retried", batch_of(0..4));
    assert_eq!(client.request(&first).await.unwrap(), produced(0, false));
    assert_eq!(
        client.request(&first).await.unwrap(),
        produced(0, true),
        "a retry is recognised though the stored batch is recompressed"
    );
    let gap = produce_request("retried", batch_of(6..10));
    let err = client.request(&gap).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OutOfOrderSequence), "{err}");
    let next = produce_request("retried", batch_of(4..10));
    assert_eq!(client.request(&next).await.unwrap(), produced(4, false));
    assert_eq!(client.request(&next).await.unwrap(), produced(4, true));

    let batches = raw_batches(&client, "retried").await;
    assert_eq!(codecs(&batches), vec![Compression::Zstd, Compression::Zstd]);
    let sequences: Vec<i32> = batches
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap().producer.base_sequence)
        .collect();
    assert_eq!(sequences, vec![0, 4]);
    assert_eq!(fetch_all(&client, "retried").await, stored(&records, 0));
}

#[tokio::test]
async fn ingest_filter_on_zstd_topic_sees_decompressed_records_and_keeps_matches() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    client
        .create_topic(spec("hot", Compression::Zstd))
        .await
        .unwrap();
    let chain = vec![pref(
        "json-filter",
        &[("field", "temp"), ("op", ">"), ("value", "22")],
    )];
    client
        .request(&Request::SetIngest {
            topic: "hot".into(),
            chain,
            on_failure: FailurePolicy::DeadLetter,
        })
        .await
        .unwrap();
    // temp cycles 20..=24: two of every five records pass.
    let records = readings(50);
    let zstd = producer(&client, Compression::Zstd).await;
    send_batch(&zstd, "hot", &records[..25]).await;
    // A batch the filter keeps whole, sent uncompressed.
    let hot_only: Vec<Record> = records[25..]
        .iter()
        .filter(|r| temp(r) > 22)
        .cloned()
        .collect();
    let plain = producer(&client, Compression::None).await;
    send_batch(&plain, "hot", &hot_only).await;

    let kept: Vec<Record> = records[..25]
        .iter()
        .chain(&hot_only)
        .filter(|r| temp(r) > 22)
        .cloned()
        .collect();
    assert_eq!(kept.len(), 10 + hot_only.len());
    assert_eq!(hot_only.len(), 10);
    assert_eq!(fetch_all(&client, "hot").await, stored(&kept, 0));
    assert_eq!(
        codecs(&raw_batches(&client, "hot").await),
        vec![Compression::Zstd, Compression::Zstd],
        "the filtered batch and the kept one are stored with the topic's codec"
    );
    let (ingest, _) = counters(&client, "hot").await;
    assert_eq!(
        (
            ingest.records_in,
            ingest.records_out,
            ingest.filtered,
            ingest.failed
        ),
        (35, 20, 15, 0)
    );
}

#[tokio::test]
async fn read_path_filter_over_compressed_batches_sends_only_matches_with_source_offsets() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    client
        .create_topic(spec("numbers", Compression::None))
        .await
        .unwrap();
    let records: Vec<Record> = (0..20)
        .map(|i| Record::new(format!(r#"{{"n":{}}}"#, i % 10), BASE_TIMESTAMP_MS + i))
        .collect();
    send_batch(
        &producer(&client, Compression::Lz4).await,
        "numbers",
        &records[..10],
    )
    .await;
    send_batch(
        &producer(&client, Compression::Zstd).await,
        "numbers",
        &records[10..],
    )
    .await;
    assert_eq!(
        codecs(&raw_batches(&client, "numbers").await),
        vec![Compression::Lz4, Compression::Zstd]
    );

    let chain = vec![pref(
        "json-filter",
        &[("field", "n"), ("op", ">="), ("value", "7")],
    )];
    let got = subscribe(&client, "numbers", 6, chain).await;
    let all = stored(&records, 0);
    let expected: Vec<StoredRecord> = [7, 8, 9, 17, 18, 19]
        .iter()
        .map(|&i| all[i].clone())
        .collect();
    assert_eq!(got, expected);
    let (_, read) = counters(&client, "numbers").await;
    assert_eq!(
        (read.records_in, read.records_out, read.filtered),
        (20, 6, 14)
    );
}

#[tokio::test]
async fn gzip_and_snappy_batches_are_refused_and_the_connection_stays_usable() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(spec("legacy", Compression::None))
        .await
        .unwrap();
    let mut b = BatchBuilder::new();
    b.push(&Record::new("v", BASE_TIMESTAMP_MS));
    let plain = b.finish(ProducerStamp::NONE);
    let conn = raw_default(&broker).await.unwrap();
    for (i, codec) in [Compression::Gzip, Compression::Snappy]
        .into_iter()
        .enumerate()
    {
        let claimed = sealed(&plain, u16::from(codec.codec()), &plain[HEADER_LEN..]);
        assert_eq!(
            batch::verify_crc(&claimed)
                .unwrap()
                .attributes
                .compression(),
            codec,
            "the hand-built batch is well framed"
        );
        let replies = exchange(&conn, &frame(&produce_request("legacy", claimed), i as u32))
            .await
            .unwrap();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(
            error_code(&replies[0]),
            Some(ErrorCode::UnsupportedCompression),
            "{codec}: {replies:?}"
        );
    }
    still_serves(&conn, "legacy", 0).await;
    assert_eq!(fetch_all(&client, "legacy").await.len(), 1);
}

/// A few kilobytes that inflate past `MAX_DECOMPRESSED_BYTES` must be
/// refused with a typed error, not held in memory or answered with a
/// dropped connection.
#[tokio::test]
async fn decompression_bomb_is_refused_as_corrupt_and_the_broker_keeps_serving() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(spec("bombed", Compression::None))
        .await
        .unwrap();
    // One zstd frame of a 1 MiB record; a zstd stream may hold frames back
    // to back, so enough copies of it inflate past the cap.
    const FRAME_BYTES: usize = 1 << 20;
    let mut b = BatchBuilder::new();
    b.push(&Record::new(vec![0u8; FRAME_BYTES], BASE_TIMESTAMP_MS));
    let template = b
        .finish_compressed(ProducerStamp::NONE, Compression::Zstd)
        .unwrap();
    let copies = MAX_DECOMPRESSED_BYTES / FRAME_BYTES + 1;
    let section = template[HEADER_LEN..].repeat(copies);
    let bomb = sealed(&template, u16::from(Compression::Zstd.codec()), &section);
    assert!(bomb.len() < 64 << 10, "a small batch: {} bytes", bomb.len());
    assert_eq!(
        batch::validate(&bomb),
        Err(edgebus_proto::DecodeError::DecompressedTooLarge {
            limit: MAX_DECOMPRESSED_BYTES
        }),
        "the hand-built batch is a bomb, not merely malformed"
    );

    let conn = raw_default(&broker).await.unwrap();
    let replies = exchange(&conn, &frame(&produce_request("bombed", bomb), 1))
        .await
        .unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        error_code(&replies[0]),
        Some(ErrorCode::CorruptBatch),
        "{replies:?}"
    );
    still_serves(&conn, "bombed", 0).await;
    assert_eq!(fetch_all(&client, "bombed").await.len(), 1);
}

#[tokio::test]
async fn zstd_batch_with_garbage_records_section_is_refused_as_corrupt() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(spec("garbled", Compression::None))
        .await
        .unwrap();
    let mut b = BatchBuilder::new();
    b.push(&Record::new("v", BASE_TIMESTAMP_MS));
    let template = b.finish(ProducerStamp::NONE);
    let garbage = sealed(
        &template,
        u16::from(Compression::Zstd.codec()),
        b"definitely not a zstd frame",
    );
    let conn = raw_default(&broker).await.unwrap();
    let replies = exchange(&conn, &frame(&produce_request("garbled", garbage), 1))
        .await
        .unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        error_code(&replies[0]),
        Some(ErrorCode::CorruptBatch),
        "{replies:?}"
    );
    still_serves(&conn, "garbled", 0).await;
    assert_eq!(fetch_all(&client, "garbled").await.len(), 1);
}
