//! WebAssembly plugins through a real broker, with components built from
//! `plugins/`: ingest chains, read-path filters, pipelines, failure
//! policies, sandbox limits and the registry.

use std::time::Duration;

use bytes::Bytes;
use edgebus_client::{
    AttachCounters, Client, DeliveryStatus, FailurePolicy, PluginRef, Position, Producer,
    ProducerConfig, Record, StoredRecord, SubscribeConfig, Subscription, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{RecordAcks, RecordFate, Request, Response};
use edgebus_tests::{TestBroker, add_plugin, plugin_wasm};

fn pref(name: &str, params: &[(&str, &str)]) -> PluginRef {
    PluginRef {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn topic(client: &Client, name: &str) {
    client
        .create_topic(TopicSpec {
            name: name.into(),
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 0,
            compression: edgebus_proto::batch::Compression::None,
        })
        .await
        .unwrap();
}

async fn set_ingest(
    client: &Client,
    topic: &str,
    chain: Vec<PluginRef>,
    on_failure: FailurePolicy,
) -> Result<Response, edgebus_client::ClientError> {
    client
        .request(&Request::SetIngest {
            topic: topic.into(),
            chain,
            on_failure,
        })
        .await
}

/// Produces each value as one batch and returns each ack's result.
async fn produce(
    client: &Client,
    topic: &str,
    values: &[String],
) -> Vec<Result<Option<u64>, ErrorCode>> {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    for v in values {
        let ack = producer
            .send(topic, Record::new(v.clone(), 1_000))
            .await
            .unwrap();
        producer.flush().await.unwrap();
        out.push(
            ack.await
                .map(|m| m.offset)
                .map_err(|e| e.code().expect("a broker error")),
        );
    }
    out
}

async fn read_all(client: &Client, topic: &str) -> Vec<StoredRecord> {
    client
        .fetch(topic, 0, Position::Earliest, 1 << 20)
        .await
        .unwrap()
        .records
}

async fn counters(client: &Client, topic: &str) -> (AttachCounters, AttachCounters) {
    match client
        .request(&Request::TopicPlugins {
            topic: topic.into(),
        })
        .await
        .unwrap()
    {
        Response::TopicPlugins {
            ingest_counters,
            read_counters,
            ..
        } => (ingest_counters, read_counters),
        other => panic!("{other:?}"),
    }
}

fn header<'a>(r: &'a StoredRecord, key: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|h| h.key == key)
        .map(|h| h.value.as_ref())
}

#[tokio::test]
async fn ingest_chain_filters_and_redacts_before_append() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    add_plugin(&client, "redact", "redact").await.unwrap();
    topic(&client, "readings").await;
    let chain = vec![
        pref(
            "json-filter",
            &[("field", "temp"), ("op", ">"), ("value", "10")],
        ),
        pref("redact", &[("fields", "owner"), ("mode", "mask")]),
    ];
    set_ingest(&client, "readings", chain, FailurePolicy::DeadLetter)
        .await
        .unwrap();
    let values: Vec<String> = [
        r#"{"temp":5,"owner":"a"}"#,
        r#"{"temp":20,"owner":"b"}"#,
        "not json",
        r#"{"temp":30,"owner":"c"}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for ack in produce(&client, "readings", &values).await {
        ack.unwrap();
    }
    let stored = read_all(&client, "readings").await;
    let temps: Vec<serde_json::Value> = stored
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(temps.len(), 2, "{temps:?}");
    assert_eq!(temps[0]["temp"], 20);
    assert_eq!(temps[1]["owner"], "***");
    let (ingest, _) = counters(&client, "readings").await;
    assert_eq!(
        (ingest.records_in, ingest.records_out, ingest.filtered),
        (4, 2, 2)
    );
}

#[tokio::test]
async fn ingest_init_error_is_shown_to_the_operator() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    topic(&client, "t").await;
    let err = set_ingest(
        &client,
        "t",
        vec![pref("json-filter", &[])],
        FailurePolicy::Skip,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginInvalid), "{err}");
    assert!(
        err.to_string().contains("field"),
        "message names the missing parameter: {err}"
    );
    let err = set_ingest(&client, "t", vec![pref("nope", &[])], FailurePolicy::Skip)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPlugin), "{err}");
}

#[tokio::test]
async fn read_path_filter_sends_only_matches_with_source_offsets() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    topic(&client, "numbers").await;
    let values: Vec<String> = (0..10).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    produce(&client, "numbers", &values).await;
    let mut sub = Subscription::start(
        client.clone(),
        "numbers",
        0,
        Position::Earliest,
        SubscribeConfig {
            chain: vec![pref(
                "json-filter",
                &[("field", "n"), ("op", ">="), ("value", "7")],
            )],
            ..SubscribeConfig::default()
        },
    )
    .await
    .unwrap();
    let mut offsets = Vec::new();
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        offsets.push(r.offset);
    }
    assert_eq!(offsets, vec![7, 8, 9]);
    let (_, read) = counters(&client, "numbers").await;
    assert_eq!(
        (read.records_in, read.records_out, read.filtered),
        (10, 3, 7)
    );
}

#[tokio::test]
async fn spinning_plugin_is_stopped_and_topics_keep_accepting() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "spin", "spin").await.unwrap();
    topic(&client, "looping").await;
    topic(&client, "other").await;
    set_ingest(
        &client,
        "looping",
        vec![pref("spin", &[])],
        FailurePolicy::Skip,
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let acks = produce(&client, "looping", &["a".into(), "b".into()]).await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadline did not stop the loop"
    );
    let (ingest, _) = counters(&client, "looping").await;
    assert_eq!((ingest.records_in, ingest.failed), (2, 2));
    assert!(read_all(&client, "looping").await.is_empty());
    // Other topics are unaffected.
    assert_eq!(
        produce(&client, "other", &["x".into()]).await[0],
        Ok(Some(0))
    );
}

#[tokio::test]
async fn trapping_plugin_dead_letters_and_loses_nothing() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    topic(&client, "events").await;
    set_ingest(
        &client,
        "events",
        vec![pref("trap", &[("needle", "boom")])],
        FailurePolicy::DeadLetter,
    )
    .await
    .unwrap();
    // Five batches of four records, one of each four trapping.
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for b in 0..5 {
        let mut acks = Vec::new();
        for i in 0..4 {
            let value = if i == 2 {
                format!("boom-{b}")
            } else {
                format!("ok-{b}-{i}")
            };
            acks.push(
                producer
                    .send("events", Record::new(value, 1))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        for a in acks {
            a.await.unwrap();
        }
    }
    let (c, _) = counters(&client, "events").await;
    assert_eq!(c.records_in, 20);
    assert_eq!(
        c.records_in,
        c.records_out + c.filtered + c.dead_lettered,
        "{c:?}"
    );
    assert_eq!((c.records_out, c.dead_lettered, c.failed), (15, 5, 5));
    assert_eq!(read_all(&client, "events").await.len(), 15);
    let letters = read_all(&client, "events.dlq").await;
    assert_eq!(letters.len(), 5);
    assert!(letters[0].value.starts_with(b"boom"));
    assert_eq!(header(&letters[0], "edgebus-plugin"), Some(&b"trap"[..]));
    assert_eq!(
        header(&letters[0], "edgebus-plugin-version"),
        Some(&b"1"[..])
    );
    assert!(header(&letters[0], "edgebus-error").is_some());
}

#[tokio::test]
async fn halt_policy_refuses_produce_until_backoff_passes() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    topic(&client, "strict").await;
    topic(&client, "calm").await;
    set_ingest(
        &client,
        "strict",
        vec![pref("trap", &[])],
        FailurePolicy::Halt,
    )
    .await
    .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            delivery_timeout: Duration::from_millis(300),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let ack = producer
        .send("strict", Record::new("boom", 1))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let err = ack.await.unwrap_err();
    assert!(
        err.code() == Some(ErrorCode::PluginHalted) || err.to_string().contains("halted"),
        "{err}"
    );
    assert!(read_all(&client, "strict").await.is_empty());
    assert_eq!(
        produce(&client, "calm", &["fine".into()]).await[0],
        Ok(Some(0))
    );
}

#[tokio::test]
async fn malformed_component_is_refused_by_plugin_add() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    for bytes in [b"not wasm at all".to_vec(), b"\0asm\x01\0\0\0".to_vec()] {
        let err = client
            .request(&Request::PluginAdd {
                name: "bad".into(),
                wasm: bytes.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PluginInvalid), "{err}");
    }
    let listed = client.request(&Request::PluginList).await.unwrap();
    assert_eq!(listed, Response::Plugins(vec![]));
}

#[tokio::test]
async fn plugin_in_use_cannot_be_removed_and_error_names_the_user() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    topic(&client, "guarded").await;
    let chain = vec![pref("json-filter", &[("field", "a"), ("op", "exists")])];
    set_ingest(&client, "guarded", chain, FailurePolicy::Skip)
        .await
        .unwrap();
    let err = client
        .request(&Request::PluginRemove {
            name: "json-filter".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginInUse), "{err}");
    assert!(err.to_string().contains("topic:guarded"), "{err}");
    set_ingest(&client, "guarded", vec![], FailurePolicy::Skip)
        .await
        .unwrap();
    client
        .request(&Request::PluginRemove {
            name: "json-filter".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn replaced_plugin_takes_effect_from_the_next_batch() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    assert_eq!(add_plugin(&client, "tag", "tag_version").await.unwrap(), 1);
    topic(&client, "tagged").await;
    set_ingest(
        &client,
        "tagged",
        vec![pref("tag", &[])],
        FailurePolicy::Skip,
    )
    .await
    .unwrap();
    produce(&client, "tagged", &["before".into()]).await;
    assert_eq!(
        add_plugin(&client, "tag", "tag_version_two").await.unwrap(),
        2
    );
    produce(&client, "tagged", &["after".into()]).await;
    let stored = read_all(&client, "tagged").await;
    assert_eq!(header(&stored[0], "plugin-version"), Some(&b"1"[..]));
    assert_eq!(header(&stored[1], "plugin-version"), Some(&b"2"[..]));
}

#[tokio::test]
async fn pipeline_downsamples_into_another_topic_and_survives_restart() {
    let mut broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "downsample", "downsample")
        .await
        .unwrap();
    topic(&client, "raw").await;
    topic(&client, "thin").await;
    client
        .request(&Request::PipelineCreate {
            name: "thinning".into(),
            from: "raw".into(),
            to: "thin".into(),
            chain: vec![pref("downsample", &[("every", "2")])],
            on_failure: FailurePolicy::DeadLetter,
        })
        .await
        .unwrap();
    let values: Vec<String> = (0..6).map(|i| format!("v{i}")).collect();
    produce(&client, "raw", &values).await;
    wait_for_len(&client, "thin", 3).await;
    broker.restart().await.unwrap();
    let client = broker.client().await.unwrap();
    let values: Vec<String> = (6..10).map(|i| format!("v{i}")).collect();
    produce(&client, "raw", &values).await;
    wait_for_len(&client, "thin", 5).await;
    let thin: Vec<_> = read_all(&client, "thin")
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(
        thin,
        vec!["v0", "v2", "v4", "v6", "v8"],
        "state and position survived"
    );
}

async fn wait_for_len(client: &Client, topic: &str, len: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = read_all(client, topic).await.len();
        if n >= len {
            assert_eq!(n, len, "more records than expected in {topic}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} has {n} of {len}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bytes built for a plugin are the bytes the broker stores.
#[tokio::test]
async fn plugin_describe_reports_hash_version_and_users() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "redact", "redact").await.unwrap();
    match client
        .request(&Request::PluginDescribe {
            name: "redact".into(),
        })
        .await
        .unwrap()
    {
        Response::Plugins(p) => {
            assert_eq!(p[0].version, 1);
            assert_eq!(p[0].kind, "transform");
            assert_eq!(p[0].size_bytes, plugin_wasm("redact").len() as u64);
            assert_eq!(p[0].hash.len(), 64);
        }
        other => panic!("{other:?}"),
    }
}

/// A rejection reaches the producer with the plugin's message, nothing of
/// that batch is stored, and the same idempotent producer's next batch is
/// still accepted (its sequence advanced past the rejected batch).
#[tokio::test]
async fn ingest_rejection_reaches_producer_and_sequence_stays_continuous() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "gate", "reject_on").await.unwrap();
    topic(&client, "gated").await;
    set_ingest(
        &client,
        "gated",
        vec![pref("gate", &[])],
        FailurePolicy::Skip,
    )
    .await
    .unwrap();
    let acks = produce(
        &client,
        "gated",
        &["first".into(), "please reject me".into(), "third".into()],
    )
    .await;
    assert_eq!(acks[0], Ok(Some(0)));
    assert_eq!(acks[1], Err(ErrorCode::PluginRejected));
    assert_eq!(
        acks[2],
        Ok(Some(1)),
        "the producer's next batch is in sequence"
    );
    let values: Vec<_> = read_all(&client, "gated")
        .await
        .iter()
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(values, vec!["first", "third"]);
}

/// Regression: a producer retry of a batch whose ack was lost ran the
/// ingest chain again and wrote its dead letters a second time.
#[tokio::test]
async fn retried_batch_does_not_dead_letter_twice() {
    use edgebus_proto::batch::{BatchBuilder, ProducerStamp};
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    topic(&client, "retried").await;
    set_ingest(
        &client,
        "retried",
        vec![pref("trap", &[])],
        FailurePolicy::DeadLetter,
    )
    .await
    .unwrap();
    let Response::ProducerInit { producer_id, .. } =
        client.request(&Request::InitProducer).await.unwrap()
    else {
        panic!("no producer id");
    };
    let mut b = BatchBuilder::new();
    b.push(&Record::new("fine", 1));
    b.push(&Record::new("boom", 1));
    let batch = b.finish(ProducerStamp {
        producer_id,
        producer_epoch: 0,
        base_sequence: 0,
    });
    let produce = Request::Produce {
        topic: "retried".into(),
        partition: 0,
        acks: edgebus_client::Acks::Durable,
        batch,
    };
    let first = client.request(&produce).await.unwrap();
    let retry = client.request(&produce).await.unwrap();
    assert_eq!(
        first,
        Response::Produced {
            base_offset: 0,
            duplicate: false,
            records: RecordAcks::Each {
                dead_letter_topic: "retried.dlq".into(),
                fates: vec![
                    RecordFate::Stored {
                        offset: 0,
                        count: 1
                    },
                    RecordFate::DeadLettered { offset: 0 },
                ],
            },
        }
    );
    // The retry is answered from the dedup state without running the chain
    // again, so the per-record fates are no longer known.
    assert_eq!(
        retry,
        Response::Produced {
            base_offset: 0,
            duplicate: true,
            records: RecordAcks::Unknown,
        }
    );
    assert_eq!(read_all(&client, "retried").await.len(), 1);
    assert_eq!(
        read_all(&client, "retried.dlq").await.len(),
        1,
        "one dead letter, not two"
    );
}

/// Reads every record a trapping read-path filter lets through, from the
/// start, so its dead letters are written.
async fn read_through_trap(client: &Client, topic: &str, kept: usize) {
    let mut sub = Subscription::start(
        client.clone(),
        topic,
        0,
        Position::Earliest,
        SubscribeConfig {
            chain: vec![pref("trap", &[("needle", "boom")])],
            on_failure: FailurePolicy::DeadLetter,
            ..SubscribeConfig::default()
        },
    )
    .await
    .unwrap();
    for _ in 0..kept {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a kept record arrives")
            .unwrap()
            .unwrap();
    }
}

/// Guards the bug where the read path wrote one dead letter per
/// subscriber that hit a failing record: each source record is
/// dead-lettered once, whichever subscriber reads it first, and a broker
/// restart does not forget which ones were.
#[tokio::test]
async fn read_path_dead_letters_once_per_source_record_across_subscribers_and_restart() {
    let mut broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    topic(&client, "feed").await;
    let values: Vec<String> = (0..9)
        .map(|i| {
            if i % 3 == 1 {
                format!("boom-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    produce(&client, "feed", &values).await;
    let wait_for_letters = |client: Client| async move {
        wait_for_len(&client, "feed.dlq", 3).await;
        read_all(&client, "feed.dlq").await
    };
    read_through_trap(&client, "feed", 6).await;
    read_through_trap(&client, "feed", 6).await;
    let letters = wait_for_letters(client.clone()).await;
    let sources: Vec<&[u8]> = letters
        .iter()
        .map(|r| header(r, "edgebus-source-offset").unwrap())
        .collect();
    assert_eq!(sources, vec![&b"1"[..], b"4", b"7"]);
    assert_eq!(
        header(&letters[0], "edgebus-attach-point"),
        Some(&b"read-path"[..])
    );
    broker.restart().await.unwrap();
    let client = broker.client().await.unwrap();
    read_through_trap(&client, "feed", 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read_all(&client, "feed.dlq").await.len(),
        3,
        "a subscriber after a restart writes no second dead letter"
    );
}

/// Guards the bug where a batch from a producer without idempotence whose
/// every record was dead-lettered stored no dead letter at all: the
/// dead letters rode on a write that stored nothing.
#[tokio::test]
async fn batch_dead_lettered_whole_by_plain_producer_keeps_its_dead_letters() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    topic(&client, "plain").await;
    set_ingest(
        &client,
        "plain",
        vec![pref("trap", &[("needle", "boom")])],
        FailurePolicy::DeadLetter,
    )
    .await
    .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            idempotent: false,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.push(
            producer
                .send("plain", Record::new(format!("boom-{i}"), 1))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(read_all(&client, "plain").await.len(), 0);
    let letters = read_all(&client, "plain.dlq").await;
    let values: Vec<&[u8]> = letters.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(values, vec![&b"boom-0"[..], b"boom-1", b"boom-2"]);
}

/// Regression: a produce through an ingest chain that drops records was
/// acked as if record `i` were stored at `base_offset + i`, so the ack of
/// a filtered record named the offset of another one. Each record's ack
/// now says what became of it: stored (with its offsets, several for a
/// fan-out), filtered, dead-lettered (where) or dropped (why).
#[tokio::test]
async fn every_ack_through_an_ingest_chain_is_true_for_its_record() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "trap", "trap_on").await.unwrap();
    add_plugin(&client, "csv-to-json", "csv_to_json")
        .await
        .unwrap();
    add_plugin(&client, "json-filter", "json_filter")
        .await
        .unwrap();
    let chain = |policy| {
        (
            vec![
                pref("trap", &[]),
                pref("csv-to-json", &[("columns", "t"), ("types", "number")]),
                pref(
                    "json-filter",
                    &[("field", "t"), ("op", ">"), ("value", "30")],
                ),
            ],
            policy,
        )
    };
    let inputs = ["10", "40", "boom", "50\n60", "5", "boom too", "70"];
    for (topic_name, (refs, policy)) in [
        ("acks-dl", chain(FailurePolicy::DeadLetter)),
        ("acks-skip", chain(FailurePolicy::Skip)),
    ] {
        topic(&client, topic_name).await;
        set_ingest(&client, topic_name, refs, policy).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let mut pending = Vec::new();
        for value in inputs {
            pending.push(
                producer
                    .send_to(topic_name, 0, Record::new(value, 1))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        let mut acks = Vec::new();
        for p in pending {
            acks.push(p.await.unwrap());
        }
        let status: Vec<_> = acks.iter().map(|m| (m.offset, m.status.clone())).collect();
        let failed = |n: u64| match policy {
            FailurePolicy::DeadLetter => DeliveryStatus::DeadLettered {
                topic: format!("{topic_name}.dlq"),
                offset: n,
            },
            _ => DeliveryStatus::Dropped {
                reason: match &acks[if n == 0 { 2 } else { 5 }].status {
                    DeliveryStatus::Dropped { reason } => {
                        assert!(reason.contains("trap"), "{reason}");
                        reason.clone()
                    }
                    other => panic!("{other:?}"),
                },
            },
        };
        assert_eq!(
            status,
            vec![
                (None, DeliveryStatus::Filtered),
                (Some(0), DeliveryStatus::Stored { count: 1 }),
                (None, failed(0)),
                (Some(1), DeliveryStatus::Stored { count: 2 }),
                (None, DeliveryStatus::Filtered),
                (None, failed(1)),
                (Some(3), DeliveryStatus::Stored { count: 1 }),
            ],
            "{topic_name}"
        );
        // The offsets named are the records' own.
        let stored: Vec<_> = read_all(&client, topic_name)
            .await
            .iter()
            .map(|r| (r.offset, r.value.clone()))
            .collect();
        assert_eq!(
            stored,
            vec![
                (0, Bytes::from_static(br#"{"t":40}"#)),
                (1, Bytes::from_static(br#"{"t":50}"#)),
                (2, Bytes::from_static(br#"{"t":60}"#)),
                (3, Bytes::from_static(br#"{"t":70}"#)),
            ]
        );
        if policy == FailurePolicy::DeadLetter {
            let letters: Vec<_> = read_all(&client, "acks-dl.dlq")
                .await
                .iter()
                .map(|r| (r.offset, r.value.clone()))
                .collect();
            assert_eq!(
                letters,
                vec![
                    (0, Bytes::from_static(b"boom")),
                    (1, Bytes::from_static(b"boom too")),
                ]
            );
        }
    }
}
