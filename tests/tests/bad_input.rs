//! Bad input gets a typed error or a refusal, and the broker keeps serving.

use bytes::{BufMut, BytesMut};
use edgebus_client::tls::ALPN;
use edgebus_client::{ClientError, Producer, ProducerConfig, Record, TopicSpec};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{BatchBuilder, ProducerStamp};
use edgebus_proto::frame::{Acks, Position, Request, Response};
use edgebus_tests::{TestBroker, error_code, exchange, frame, raw_connection, raw_default};

fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: 1,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: 1024,
        compression: edgebus_proto::batch::Compression::None,
    }
}

/// The connection still answers a well-formed request.
async fn still_serves(conn: &quinn::Connection) {
    let replies = exchange(conn, &frame(&Request::ListTopics, 99))
        .await
        .expect("broker still answers on the same connection");
    assert!(
        matches!(replies.as_slice(), [Response::Topics(_)]),
        "{replies:?}"
    );
}

#[tokio::test]
async fn garbage_frame_gets_malformed_frame_and_connection_survives() {
    let broker = TestBroker::start().await.unwrap();
    let conn = raw_default(&broker).await.unwrap();
    let mut bytes = BytesMut::new();
    bytes.put_u32(20);
    bytes.put_u8(1); // version
    bytes.put_u16(6); // produce
    bytes.put_u32(7); // correlation id
    bytes.put_slice(&[0xde; 13]); // not a produce payload
    let replies = exchange(&conn, &bytes).await.unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(error_code(&replies[0]), Some(ErrorCode::MalformedFrame));
    still_serves(&conn).await;
}

#[tokio::test]
async fn unknown_kind_and_version_get_typed_errors() {
    let broker = TestBroker::start().await.unwrap();
    let conn = raw_default(&broker).await.unwrap();
    let mut bytes = BytesMut::new();
    for (version, kind) in [(1u8, 0x0777u16), (9, 3)] {
        bytes.put_u32(7);
        bytes.put_u8(version);
        bytes.put_u16(kind);
        bytes.put_u32(1);
    }
    let replies = exchange(&conn, &bytes).await.unwrap();
    let codes: Vec<_> = replies.iter().map(error_code).collect();
    assert_eq!(
        codes,
        vec![
            Some(ErrorCode::UnknownRequest),
            Some(ErrorCode::UnsupportedVersion)
        ]
    );
    still_serves(&conn).await;
}

#[tokio::test]
async fn truncated_frame_ends_the_stream_not_the_connection() {
    let broker = TestBroker::start().await.unwrap();
    let conn = raw_default(&broker).await.unwrap();
    let full = frame(&Request::DescribeTopic { name: "x".into() }, 1);
    let replies = exchange(&conn, &full[..full.len() - 3]).await.unwrap();
    assert!(replies.is_empty(), "{replies:?}");
    still_serves(&conn).await;
}

#[tokio::test]
async fn oversized_frame_gets_frame_too_large() {
    let broker = TestBroker::start_with(|c| c.limits.max_frame_bytes = 4096)
        .await
        .unwrap();
    let conn = raw_default(&broker).await.unwrap();
    let mut bytes = BytesMut::new();
    bytes.put_u32(1 << 20);
    bytes.put_slice(&[0; 64]);
    let replies = exchange(&conn, &bytes).await.unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(error_code(&replies[0]), Some(ErrorCode::FrameTooLarge));
    still_serves(&conn).await;
}

#[tokio::test]
async fn oversized_record_is_refused_by_broker_and_by_producer() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(topic("small")).await.unwrap();

    // A raw batch bypasses the producer's own check: the broker refuses it.
    let mut b = BatchBuilder::new();
    b.push(&Record::new(vec![7u8; 4096], 1));
    let produce = Request::Produce {
        topic: "small".into(),
        partition: 0,
        acks: Acks::Durable,
        batch: b.finish(ProducerStamp::NONE),
    };
    let conn = raw_default(&broker).await.unwrap();
    let replies = exchange(&conn, &frame(&produce, 3)).await.unwrap();
    assert_eq!(error_code(&replies[0]), Some(ErrorCode::RecordTooLarge));

    // The producer refuses it before sending, and later records still go.
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let big = producer
        .send("small", Record::new(vec![7u8; 4096], 1))
        .await
        .unwrap();
    let ok = producer
        .send("small", Record::new("fits", 1))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let err = big.await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RecordTooLarge), "{err}");
    assert_eq!(ok.await.unwrap().offset, Some(0));
    let (_, parts) = client.describe_topic("small").await.unwrap();
    assert_eq!(parts[0].log_end, 1, "only the record that fits is stored");
}

#[tokio::test]
async fn corrupt_batch_gets_corrupt_batch_and_nothing_is_stored() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(topic("t")).await.unwrap();
    let mut b = BatchBuilder::new();
    b.push(&Record::new("payload", 1));
    let mut batch = BytesMut::from(&b.finish(ProducerStamp::NONE)[..]);
    let last = batch.len() - 1;
    batch[last] ^= 0x20;
    let produce = Request::Produce {
        topic: "t".into(),
        partition: 0,
        acks: Acks::Durable,
        batch: batch.freeze(),
    };
    let conn = raw_default(&broker).await.unwrap();
    let replies = exchange(&conn, &frame(&produce, 3)).await.unwrap();
    assert_eq!(error_code(&replies[0]), Some(ErrorCode::CorruptBatch));
    let (_, parts) = client.describe_topic("t").await.unwrap();
    assert_eq!(parts[0].log_end, 0);
}

#[tokio::test]
async fn unknown_topic_and_partition_get_typed_errors() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    let err = client
        .fetch("nope", 0, Position::Earliest, 1024)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    let err = client.describe_topic("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");

    client.create_topic(topic("t")).await.unwrap();
    let err = client
        .list_offset("t", 5, Position::Latest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPartition), "{err}");

    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    // Surfaced by `send` itself, not by the delivery future.
    let err = producer
        .send("nope", Record::new("x", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    let err = client.create_topic(topic("t")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicExists), "{err}");
    let err = client.create_topic(topic("bad/name")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopicConfig), "{err}");
}

#[tokio::test]
async fn wrong_alpn_is_refused_at_handshake() {
    let broker = TestBroker::start().await.unwrap();
    let err = raw_connection(broker.addr(), &broker.ca(), b"h3", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("application protocol")
            || err.to_string().contains("120"),
        "unexpected error: {err}"
    );
    // Others are still served.
    raw_default(&broker).await.unwrap();
}

#[tokio::test]
async fn untrusted_broker_certificate_is_refused_by_client() {
    let broker = TestBroker::start().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = edgebus_tests::client_ca(other.path()).unwrap();
    let err = raw_connection(broker.addr(), &other_ca, ALPN, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn mtls_refuses_client_without_certificate_and_serves_one_with() {
    let certs = tempfile::tempdir().unwrap();
    let (client_ca, identity) = edgebus_tests::client_ca(certs.path()).unwrap();
    let broker = TestBroker::start_with(|c| c.tls.client_ca = Some(client_ca))
        .await
        .unwrap();

    // Without a certificate: no request is ever answered.
    let refused = async {
        let conn = raw_connection(broker.addr(), &broker.ca(), ALPN, None).await?;
        exchange(&conn, &frame(&Request::ListTopics, 1)).await
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), refused)
        .await
        .expect("refusal is prompt");
    assert!(
        result.is_err(),
        "served a client without a certificate: {result:?}"
    );

    // With a certificate signed by the client CA: served.
    let mut config = broker.client_config();
    config.identity = Some(identity);
    let client = edgebus_client::Client::connect(config).await.unwrap();
    client.list_topics().await.unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 1)
        .await
        .unwrap();
    let first = broker.client().await.unwrap();
    let second = broker.client().await;
    assert!(
        matches!(second, Err(ref e) if e.downcast_ref::<ClientError>().is_some_and(|e| matches!(e, ClientError::Connection { .. }))),
        "second connection was not refused: {second:?}"
    );
    first.list_topics().await.unwrap();
}

#[tokio::test]
async fn in_flight_limit_answers_excess_requests_with_too_many_in_flight() {
    let broker = TestBroker::start_with(|c| c.limits.max_inflight_per_connection = 2)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(topic("t")).await.unwrap();
    let mut bytes = BytesMut::new();
    for i in 0..64 {
        let mut b = BatchBuilder::new();
        b.push(&Record::new(format!("r{i}"), 1));
        let produce = Request::Produce {
            topic: "t".into(),
            partition: 0,
            acks: Acks::Durable,
            batch: b.finish(ProducerStamp::NONE),
        };
        produce.encode(i, &mut bytes);
    }
    let conn = raw_default(&broker).await.unwrap();
    let replies = exchange(&conn, &bytes).await.unwrap();
    assert_eq!(replies.len(), 64);
    let limited = replies
        .iter()
        .filter(|r| error_code(r) == Some(ErrorCode::TooManyInFlight))
        .count();
    let stored = replies
        .iter()
        .filter(|r| matches!(r, Response::Produced { .. }))
        .count();
    assert!(limited > 0, "no request hit the limit: {replies:?}");
    assert_eq!(limited + stored, 64, "{replies:?}");
    let (_, parts) = client.describe_topic("t").await.unwrap();
    assert_eq!(parts[0].log_end, stored as u64);
}
