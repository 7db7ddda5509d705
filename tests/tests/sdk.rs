//! The Rust SDK as an application uses it: subscriptions as streams that
//! start where they say, end when dropped or bounded, clients that close,
//! host names, and the topic and record constructors.

use std::time::Duration;

use edgebus_client::{
    Client, ClientConfig, ClientError, Position, Producer, ProducerConfig, Record, StoredRecord,
    SubscribeConfig, Subscription, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_tests::TestBroker;
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(10);

async fn produce(producer: &Producer, topic: &str, values: impl IntoIterator<Item = String>) {
    let mut acks = Vec::new();
    for v in values {
        acks.push(producer.send_to(topic, 0, Record::now(v)).await.unwrap());
    }
    producer.flush().await.unwrap();
    for a in acks {
        a.await.unwrap();
    }
}

async fn start(client: &Client, topic: &str, from: Position) -> Subscription {
    tokio::time::timeout(
        PATIENCE,
        Subscription::start(client.clone(), topic, 0, from, SubscribeConfig::default()),
    )
    .await
    .expect("subscription starts")
    .unwrap()
}

fn values(records: &[StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// Guards the bug where `start` returned before the broker had resolved
/// `Latest`, so a record produced right after it could land before the
/// subscription's start and never be delivered. (On an idle machine the
/// broker usually won that race anyway; the position check right after
/// `start` is what the old code failed every time.)
#[tokio::test]
async fn subscription_from_latest_gets_a_record_produced_right_after_start() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(TopicSpec::new("race", 1))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    // Opens the producer's stream first, so each round's produce is as
    // quick as it can be.
    produce(&producer, "race", ["r0".to_owned()]).await;
    for round in 1..=30u64 {
        let mut sub = start(&client, "race", Position::Latest).await;
        assert_eq!(
            sub.position(),
            Some(round),
            "round {round}: start returned unresolved"
        );
        assert_eq!(sub.log_end(), Some(round), "round {round}");
        produce(&producer, "race", [format!("r{round}")]).await;
        let record = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the record never arrived"))
            .expect("subscription open")
            .unwrap();
        assert_eq!(record.offset, round);
        assert_eq!(record.value, format!("r{round}"));
    }
}

#[tokio::test]
async fn subscription_is_a_stream() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(TopicSpec::new("s", 1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    produce(&producer, "s", (0..5).map(|i| format!("m{i}"))).await;
    let sub = start(&client, "s", Position::Offset(1)).await;
    let got: Vec<StoredRecord> = tokio::time::timeout(
        PATIENCE,
        sub.take(3).map(|r| r.unwrap()).collect::<Vec<_>>(),
    )
    .await
    .expect("records arrive");
    assert_eq!(values(&got), ["m1", "m2", "m3"]);
}

#[tokio::test]
async fn until_end_stops_at_the_log_end_the_subscription_began_at() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(TopicSpec::new("b", 1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();

    // An empty partition: nothing to read, and it ends at once.
    let empty = start(&client, "b", Position::Earliest).await.until_end();
    let got = tokio::time::timeout(PATIENCE, empty.collect::<Vec<_>>())
        .await
        .expect("an empty bounded read ends");
    assert!(got.is_empty());

    produce(&producer, "b", (0..5).map(|i| format!("m{i}"))).await;
    let mut sub = start(&client, "b", Position::Earliest).await.until_end();
    assert_eq!(sub.log_end(), Some(5));
    // Records appended after the start are past the bound.
    produce(&producer, "b", (5..8).map(|i| format!("m{i}"))).await;
    let mut got = Vec::new();
    while let Some(r) = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a bounded read ends")
    {
        got.push(r.unwrap());
    }
    assert_eq!(values(&got), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(sub.position(), Some(5));
    tokio::time::timeout(PATIENCE, sub.close())
        .await
        .expect("the reader task of a finished bounded read ends");

    // From the end there is nothing before the bound.
    let latest = start(&client, "b", Position::Latest).await.until_end();
    let got = tokio::time::timeout(PATIENCE, latest.collect::<Vec<_>>())
        .await
        .expect("a bounded read from the end ends");
    assert!(got.is_empty());

    // An explicit bound inside a batch stops inside it.
    let sub = start(&client, "b", Position::Offset(2)).await.until(6);
    let got: Vec<StoredRecord> =
        tokio::time::timeout(PATIENCE, sub.map(|r| r.unwrap()).collect::<Vec<_>>())
            .await
            .expect("a bounded read ends");
    assert_eq!(values(&got), ["m2", "m3", "m4", "m5"]);
}

/// Guards the bug where a dropped subscription kept its reader task and
/// its stream on the broker open forever: with a limit of 4 streams per
/// connection, the fifth subscription could never start.
#[tokio::test]
async fn dropped_and_closed_subscriptions_release_their_broker_streams() {
    let broker = TestBroker::start_with(|c| c.limits.max_streams_per_connection = 4)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(TopicSpec::new("d", 1)).await.unwrap();
    for round in 0..12 {
        let sub = start(&client, "d", Position::Latest).await;
        if round % 2 == 0 {
            drop(sub);
        } else {
            tokio::time::timeout(PATIENCE, sub.close())
                .await
                .expect("close ends the reader task");
        }
    }
}

#[tokio::test]
async fn subscription_to_an_unknown_topic_fails_at_start() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    let started = Subscription::start(
        client,
        "missing",
        0,
        Position::Earliest,
        SubscribeConfig::default(),
    )
    .await;
    assert_eq!(
        started.unwrap_err().code(),
        Some(ErrorCode::UnknownTopic),
        "the broker's refusal comes back from start"
    );
}

#[tokio::test]
async fn client_close_ends_subscriptions_and_refuses_later_calls() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    client.create_topic(TopicSpec::new("c", 1)).await.unwrap();
    let mut sub = start(&client, "c", Position::Earliest).await;
    let other = client.clone();
    tokio::time::timeout(PATIENCE, client.close())
        .await
        .expect("close returns");
    assert!(other.is_closed(), "clones share the closed connection");
    let ended = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("the subscription ends");
    assert!(matches!(ended, Some(Err(ClientError::Closed))), "{ended:?}");
    let ended = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("the subscription stays ended");
    assert!(ended.is_none());
    assert!(matches!(
        other.list_topics().await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn client_connects_to_a_host_name_with_its_server_name() {
    let broker = TestBroker::start().await.unwrap();
    let config = ClientConfig::new(("localhost", broker.addr().port()), broker.ca());
    assert_eq!(config.server_name, "localhost");
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.broker(), broker.addr());
    client.list_topics().await.unwrap();

    let parsed =
        format!("localhost:{}", broker.addr().port()).parse::<edgebus_client::BrokerAddr>();
    let client = Client::connect(ClientConfig::new(parsed.unwrap(), broker.ca()))
        .await
        .unwrap();
    client.list_topics().await.unwrap();
}

#[tokio::test]
async fn topic_spec_new_takes_the_broker_default_record_size() {
    let broker = TestBroker::start_with(|c| c.limits.max_message_bytes = 12_345)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    client
        .create_topic(TopicSpec::new("defaults", 2).with_retention(Duration::from_secs(3600)))
        .await
        .unwrap();
    let (spec, partitions) = client.describe_topic("defaults").await.unwrap();
    assert_eq!(spec.max_message_bytes, 12_345);
    assert_eq!(spec.retention_ms, 3_600_000);
    assert_eq!(spec.retention_bytes, -1);
    assert_eq!(partitions.len(), 2);
}
