//! A plugin that grows its memory without bound fails cleanly at its cap,
//! and the broker's memory does not grow with each failure. A test binary
//! of its own, so no other test allocates while RSS is measured.

use edgebus_client::{
    Client, FailurePolicy, PluginRef, Producer, ProducerConfig, Record, TopicSpec,
};
use edgebus_proto::frame::{Request, Response};
use edgebus_tests::{TestBroker, add_plugin};

async fn produce_one_by_one(client: &Client, topic: &str, n: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..n {
        let ack = producer
            .send(topic, Record::new(format!("r{i}"), 1))
            .await
            .unwrap();
        producer.flush().await.unwrap();
        ack.await.unwrap();
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn memory_hog_fails_at_its_cap_and_broker_memory_stays_bounded() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "hog", "memory_hog").await.unwrap();
    client
        .create_topic(TopicSpec {
            name: "hungry".into(),
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 0,
            compression: edgebus_proto::batch::Compression::None,
        })
        .await
        .unwrap();
    let chain = vec![PluginRef {
        name: "hog".into(),
        params: vec![],
    }];
    client
        .request(&Request::SetIngest {
            topic: "hungry".into(),
            chain,
            on_failure: FailurePolicy::Skip,
        })
        .await
        .unwrap();
    produce_one_by_one(&client, "hungry", 1).await;
    let before = rss_kib();
    produce_one_by_one(&client, "hungry", 10).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 8,
        "RSS grew by {grown_mib} MiB over 10 capped failures"
    );
    match client
        .request(&Request::TopicPlugins {
            topic: "hungry".into(),
        })
        .await
        .unwrap()
    {
        Response::TopicPlugins {
            ingest_counters, ..
        } => assert_eq!(ingest_counters.failed, 11),
        other => panic!("{other:?}"),
    }
}
