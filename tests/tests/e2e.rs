//! Produce and consume through a real broker: restarts, retention,
//! subscriptions and idempotent retries.

use std::time::Duration;

use edgebus_client::{
    ClientError, Position, Producer, ProducerConfig, Record, SubscribeConfig, Subscription,
    TopicSpec,
};
use edgebus_tests::TestBroker;

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: 0,
        compression: edgebus_proto::batch::Compression::None,
    }
}

fn now_ms() -> i64 {
    edgebus::retention::now_ms()
}

#[tokio::test]
async fn produce_and_consume_survive_a_broker_restart() {
    let mut broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("orders", 3)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..300 {
        let record = Record::new(format!("v{i}"), now_ms())
            .with_key(format!("k{}", i % 7))
            .with_header("n", format!("{i}"));
        acks.push(producer.send("orders", record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut placed = Vec::new();
    for a in acks {
        let meta = a.await.unwrap();
        placed.push((meta.partition, meta.offset.unwrap()));
    }

    broker.restart().await.unwrap();
    let client = broker.client().await.unwrap();
    let (topic, parts) = client.describe_topic("orders").await.unwrap();
    assert_eq!(topic.partitions, 3);
    assert_eq!(parts.iter().map(|p| p.log_end).sum::<u64>(), 300);

    for (i, (partition, offset)) in placed.iter().enumerate() {
        let fetched = client
            .fetch("orders", *partition, Position::Offset(*offset), 1)
            .await
            .unwrap();
        let r = &fetched.records[0];
        assert_eq!(r.offset, *offset);
        assert_eq!(r.value, format!("v{i}"));
        assert_eq!(r.key.as_deref(), Some(format!("k{}", i % 7).as_bytes()));
        assert_eq!(r.headers[0].value, format!("{i}"));
    }

    // Offsets continue after the restart; none is reused.
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let ack = producer
        .send_to("orders", 0, Record::new("after", now_ms()))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(ack.await.unwrap().offset, Some(parts[0].log_end));
}

#[tokio::test]
async fn same_key_goes_to_same_partition_in_order() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("keys", 4)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..50 {
        let r = Record::new(format!("{i}"), now_ms()).with_key("sensor-1");
        acks.push(producer.send("keys", r).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut last = None;
    for a in acks {
        let m = a.await.unwrap();
        assert_eq!(
            m.partition,
            edgebus_client::producer::partition_for_key(b"sensor-1", 4)
        );
        assert!(last < m.offset, "offsets increase within a partition");
        last = m.offset;
    }
}

#[tokio::test]
async fn subscription_receives_records_appended_after_it_started() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("live", 1)).await.unwrap();
    let mut sub = Subscription::start(
        client.clone(),
        "live",
        0,
        Position::Latest,
        SubscribeConfig::default(),
    )
    .await
    .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..20 {
        let record = Record::new(format!("m{i}"), now_ms());
        acks.push(producer.send("live", record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    for i in 0..20u64 {
        let r = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("record arrives")
            .unwrap()
            .unwrap();
        assert_eq!(r.offset, i);
        assert_eq!(r.value, format!("m{i}"));
    }
}

#[tokio::test]
async fn seek_by_timestamp_starts_at_first_batch_at_or_after_it() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("times", 1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for ts in [1_000, 2_000, 3_000] {
        let ack = producer
            .send("times", Record::new(format!("{ts}"), ts))
            .await
            .unwrap();
        producer.flush().await.unwrap();
        ack.await.unwrap();
    }
    let offset = client
        .list_offset("times", 0, Position::Timestamp(1_500))
        .await
        .unwrap();
    assert_eq!(offset, 1);
    let offset = client
        .list_offset("times", 0, Position::Timestamp(9_999))
        .await
        .unwrap();
    assert_eq!(offset, 3, "past every record: the log end");
}

#[tokio::test]
async fn retention_removes_expired_batches_and_keeps_the_rest() {
    let broker = TestBroker::start_with(|c| c.retention_check_interval_ms = 100)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    let mut topic = spec("metrics", 1);
    topic.retention_ms = 60_000;
    client.create_topic(topic).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    // Two old batches, then two fresh ones.
    let hour_ago = now_ms() - 3_600_000;
    for (i, ts) in [hour_ago, hour_ago + 1, now_ms(), now_ms()]
        .into_iter()
        .enumerate()
    {
        let ack = producer
            .send("metrics", Record::new(format!("r{i}"), ts))
            .await
            .unwrap();
        producer.flush().await.unwrap();
        ack.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, parts) = client.describe_topic("metrics").await.unwrap();
        if parts[0].log_start == 2 {
            assert_eq!(parts[0].log_end, 4);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched = client
        .fetch("metrics", 0, Position::Earliest, 1 << 20)
        .await
        .unwrap();
    let values: Vec<_> = fetched.records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["r2", "r3"]);
    assert_eq!(fetched.records[0].offset, 2);
}

#[tokio::test]
async fn delete_topic_removes_it_and_its_records() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("gone", 2)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let ack = producer.send("gone", Record::new("x", 1)).await.unwrap();
    producer.flush().await.unwrap();
    ack.await.unwrap();
    client.delete_topic("gone").await.unwrap();
    assert!(client.list_topics().await.unwrap().is_empty());
    client.create_topic(spec("gone", 2)).await.unwrap();
    let (_, parts) = client.describe_topic("gone").await.unwrap();
    assert!(parts.iter().all(|p| p.log_end == 0), "{parts:?}");
}

#[tokio::test]
async fn acks_leader_and_none_are_stored_too() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("fast", 1)).await.unwrap();
    for acks in [edgebus_client::Acks::Leader, edgebus_client::Acks::None] {
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        let ack = producer.send("fast", Record::new("v", 1)).await.unwrap();
        producer.flush().await.unwrap();
        ack.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client
        .list_offset("fast", 0, Position::Latest)
        .await
        .unwrap()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks=none record never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression: a subscription from an offset inside a batch delivered the
/// batch's earlier records too.
#[tokio::test]
async fn subscription_from_offset_inside_a_batch_starts_at_that_offset() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("mid", 1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..10 {
        let record = Record::new(format!("{i}"), now_ms());
        acks.push(producer.send("mid", record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for a in acks {
        a.await.unwrap();
    }
    let mut sub = Subscription::start(
        client.clone(),
        "mid",
        0,
        Position::Offset(7),
        SubscribeConfig::default(),
    )
    .await
    .unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!(first.offset, 7);
}

/// Regression: after an idempotent producer gave up on a batch (delivery
/// timeout while the broker was down), every later batch of that partition
/// failed with OutOfOrderSequence, because the abandoned sequence numbers
/// never reached the broker.
#[tokio::test]
async fn producer_recovers_after_giving_up_on_a_batch() {
    let mut broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("flaky", 1)).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            delivery_timeout: Duration::from_millis(500),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let first = producer
        .send("flaky", Record::new("kept", 1))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(first.await.unwrap().offset, Some(0));

    broker.stop().await;
    let lost = producer
        .send("flaky", Record::new("lost", 2))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert!(
        lost.await.is_err(),
        "delivery times out while the broker is down"
    );

    broker.restart().await.unwrap();
    let after = producer
        .send("flaky", Record::new("after", 3))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let offset = tokio::time::timeout(Duration::from_secs(30), after)
        .await
        .expect("ack arrives")
        .expect("the producer recovers instead of failing every later batch");
    assert_eq!(offset.offset, Some(1));
}

/// An idempotent producer may not keep more batches in flight than the
/// broker remembers per producer, or a retry after lost acks could be
/// refused as a stale duplicate; the SDK says so at once.
#[tokio::test]
async fn idempotent_producer_window_over_dedup_window_is_refused() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    let config = |window| ProducerConfig {
        window,
        ..ProducerConfig::default()
    };
    let refused = Producer::new(
        client.clone(),
        config(edgebus_client::producer::MAX_IDEMPOTENT_IN_FLIGHT + 1),
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Config(_))),
        "{refused:?}"
    );
    Producer::new(
        client,
        config(edgebus_client::producer::MAX_IDEMPOTENT_IN_FLIGHT),
    )
    .await
    .expect("a window the broker covers");
}

/// Regression: an unknown topic surfaced only on the delivery future of the
/// first record; `send` now says so itself, and so does a partition the
/// topic does not have.
#[tokio::test]
async fn send_to_an_unknown_topic_or_partition_fails_at_send() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(spec("known", 2)).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default())
        .await
        .unwrap();
    let code = |e: ClientError| e.code();
    let err = producer
        .send("missing", Record::new("v", now_ms()))
        .await
        .unwrap_err();
    assert_eq!(code(err), Some(edgebus_proto::ErrorCode::UnknownTopic));
    let err = producer
        .send_to("known", 2, Record::new("v", now_ms()))
        .await
        .unwrap_err();
    assert_eq!(code(err), Some(edgebus_proto::ErrorCode::UnknownPartition));
    let sent = producer
        .send_to("known", 1, Record::new("v", now_ms()))
        .await
        .unwrap();
    assert_eq!(sent.await.unwrap().offset, Some(0));
}
