//! Hostile plugins, written straight against `wit/plugin.wit`, against the
//! attachment budgets: state, output per batch, output over the topic's
//! limits, unservable batches, log floods, and other topics' acks while a
//! plugin misbehaves. A test binary of its own, so RSS is measured with no
//! other test binary allocating; within it, see [`RSS`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_client::{
    AttachCounters, Client, FailurePolicy, PluginRef, Position, Producer, ProducerConfig, Record,
    SubscribeConfig, Subscription, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{BatchBuilder, ProducerStamp};
use edgebus_proto::frame::{Acks, Request, Response};
use edgebus_tests::{TestBroker, add_plugin, exchange, frame, raw_default};
use tokio::sync::RwLock;

/// RSS is the whole process's, and libtest runs tests side by side: a test
/// that measures it holds this for writing, so it runs alone; the others,
/// some of which allocate tens of MiB, hold it for reading.
static RSS: RwLock<()> = RwLock::const_new(());

fn pref(name: &str, params: &[(&str, &str)]) -> PluginRef {
    PluginRef {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn topic(client: &Client, name: &str, max_message_bytes: u32) {
    client
        .create_topic(TopicSpec {
            name: name.into(),
            partitions: 1,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes,
            compression: edgebus_proto::batch::Compression::None,
        })
        .await
        .unwrap();
}

async fn set_ingest(client: &Client, topic: &str, chain: Vec<PluginRef>, policy: FailurePolicy) {
    client
        .request(&Request::SetIngest {
            topic: topic.into(),
            chain,
            on_failure: policy,
        })
        .await
        .unwrap();
}

/// Produces `values` as batches of `per_batch` records, waiting for each
/// batch's acks; returns how many records were acked at all.
async fn produce(client: &Client, topic: &str, values: &[Vec<u8>], per_batch: usize) -> usize {
    // A linger longer than the test, so each chunk goes out as one batch at
    // its flush (adaptive batching would send records as they come).
    let config = ProducerConfig {
        linger: Duration::from_secs(600),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut acked = 0;
    for chunk in values.chunks(per_batch) {
        let mut acks = Vec::new();
        for v in chunk {
            acks.push(
                producer
                    .send(topic, Record::new(v.clone(), 1_000))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        for ack in acks {
            acked += usize::from(ack.await.is_ok());
        }
    }
    acked
}

async fn ingest_counters(client: &Client, topic: &str) -> AttachCounters {
    match client
        .request(&Request::TopicPlugins {
            topic: topic.into(),
        })
        .await
        .unwrap()
    {
        Response::TopicPlugins {
            ingest_counters, ..
        } => ingest_counters,
        other => panic!("{other:?}"),
    }
}

/// Fetches the whole partition, batch after batch: every stored batch must
/// be servable. Returns the record count.
async fn fetch_all(client: &Client, topic: &str) -> usize {
    let mut at = 0;
    let mut count = 0;
    for _ in 0..10_000 {
        let fetched = client
            .fetch(topic, 0, Position::Offset(at), 4 << 20)
            .await
            .unwrap();
        let Some(last) = fetched.records.last() else {
            return count;
        };
        at = last.offset + 1;
        count += fetched.records.len();
    }
    panic!("fetch did not reach the end of {topic}");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Acks on topic `calm`, one record at a time, until `busy` finishes;
/// returns the slowest.
async fn calm_acks_while(client: &Client, busy: impl std::future::Future<Output = ()>) -> Duration {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let calm = async {
        let mut slowest = Duration::ZERO;
        for i in 0..10_000u32 {
            let started = Instant::now();
            let ack = producer
                .send("calm", Record::new(format!("c{i}"), 1))
                .await
                .unwrap();
            producer.flush().await.unwrap();
            ack.await.unwrap();
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    };
    tokio::pin!(busy);
    tokio::pin!(calm);
    tokio::select! {
        () = &mut busy => {}
        slowest = &mut calm => return slowest,
    }
    // The busy side finished first: one more ack shows calm still flows.
    let started = Instant::now();
    let ack = producer.send("calm", Record::new("last", 1)).await.unwrap();
    producer.flush().await.unwrap();
    ack.await.unwrap();
    started.elapsed()
}

/// A filter that stores 64 KiB under a new key per record grew the broker
/// by 1,258 MiB over 20,000 records. Now the attachment's state stops at
/// its budget (4 MiB here): the batch that would pass it fails as a budget
/// breach, and so does every batch after it.
#[tokio::test]
async fn state_hog_stops_at_the_state_budget_and_broker_memory_stays_bounded() {
    let _alone = RSS.write().await;
    let broker = TestBroker::start_with(|c| c.plugins.state_max_bytes = 4 << 20)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "hog", "state_hog").await.unwrap();
    topic(&client, "hoarded", 0).await;
    set_ingest(
        &client,
        "hoarded",
        vec![pref("hog", &[])],
        FailurePolicy::Skip,
    )
    .await;
    let values: Vec<Vec<u8>> = (0..1_000).map(|i| format!("r{i}").into_bytes()).collect();
    produce(&client, "hoarded", &values[..50], 50).await;
    let before = rss_kib();
    // 950 more records × 64 KiB: 59 MiB of state without the budget.
    produce(&client, "hoarded", &values[50..], 50).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib <= 24, "RSS grew by {grown_mib} MiB");
    let c = ingest_counters(&client, "hoarded").await;
    assert_eq!(c.records_in, 1_000);
    assert_eq!(c.records_out, 50, "only the first batch fits in 4 MiB");
    assert_eq!((c.failed, c.budget_breaches), (950, 950));
    assert_eq!(fetch_all(&client, "hoarded").await, 50);
    // What `topic describe` and the metrics show of the chain: one call
    // per batch, their times, and the state the first batch kept (50 × 64
    // KiB plus keys), within the budget.
    assert_eq!(c.calls, 20, "{c:?}");
    assert!(0 < c.call_p50_us && c.call_p50_us <= c.call_p99_us, "{c:?}");
    assert!(
        (50 * 64) << 10 <= c.state_bytes && c.state_bytes <= 4 << 20,
        "{c:?}"
    );
}

/// A transform that turns each input into 50,000 copies stored 5,000,000
/// records from one produce of 100 and stalled other topics. Now a stage
/// emits at most 16 times its input's bytes (at least 64 KiB): the first
/// single-record retry breaches, and the rest fail without another call.
#[tokio::test]
async fn amplifying_transform_is_held_to_the_output_budget_and_other_topics_keep_acking() {
    let _alone = RSS.write().await;
    // Budgets, not the deadline, are under test: on a loaded machine a
    // debug build copying 50,000 records out of the guest can take longer
    // than 50 ms.
    let broker = TestBroker::start_with(|c| c.plugins.deadline_ms = 2_000)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "amp", "amplify").await.unwrap();
    topic(&client, "amplified", 0).await;
    topic(&client, "calm", 0).await;
    set_ingest(
        &client,
        "amplified",
        vec![pref("amp", &[])],
        FailurePolicy::Skip,
    )
    .await;
    let values: Vec<Vec<u8>> = (0..100).map(|i| vec![b'a' + (i % 26) as u8; 100]).collect();
    let before = rss_kib();
    let slowest = calm_acks_while(&client, async {
        produce(&client, "amplified", &values, 100).await;
    })
    .await;
    // The guest's own memory (its 64 MiB cap, hit by the batch call) and
    // one call's output copied out of it; without the budget, over 1 GiB.
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib <= 128, "RSS grew by {grown_mib} MiB");
    assert!(
        slowest < Duration::from_secs(2),
        "calm ack took {slowest:?}"
    );
    let c = ingest_counters(&client, "amplified").await;
    assert_eq!((c.records_in, c.failed), (100, 100));
    assert!(c.budget_breaches >= 1, "{c:?}");
    // 16 × 10,000 input bytes, in records of 100 bytes.
    let stored = fetch_all(&client, "amplified").await;
    assert!(stored <= 1_600, "{stored} records stored");
}

/// A transform emitting a 4 MiB key had it stored although the topic's
/// max.message.bytes is 1 MiB. Now each output record is held to the
/// topic's limits and its input goes to the failure policy.
#[tokio::test]
async fn output_over_the_topic_limits_is_never_stored() {
    let _beside = RSS.read().await;
    // A generous output budget, so the topic's limit is what stops it,
    // and a deadline a loaded machine's debug build copying 4 MiB keys
    // out of the guest cannot miss.
    let broker = TestBroker::start_with(|c| {
        c.plugins.output_bytes_floor = 16 << 20;
        c.plugins.deadline_ms = 2_000;
    })
    .await
    .unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "fat", "fat_output").await.unwrap();
    topic(&client, "keys", 1 << 20).await;
    topic(&client, "headers", 1 << 20).await;
    let big_key = pref("fat", &[("key_bytes", "4194304"), ("headers", "0")]);
    set_ingest(&client, "keys", vec![big_key], FailurePolicy::DeadLetter).await;
    let many_headers = pref("fat", &[("key_bytes", "1"), ("headers", "10000")]);
    set_ingest(&client, "headers", vec![many_headers], FailurePolicy::Skip).await;
    let values: Vec<Vec<u8>> = (0..3).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(produce(&client, "keys", &values, 3).await, 3);
    assert_eq!(produce(&client, "headers", &values, 3).await, 3);
    assert_eq!(fetch_all(&client, "keys").await, 0);
    assert_eq!(fetch_all(&client, "headers").await, 0);
    let keys = ingest_counters(&client, "keys").await;
    assert_eq!((keys.budget_breaches, keys.dead_lettered), (3, 3));
    let headers = ingest_counters(&client, "headers").await;
    assert_eq!((headers.budget_breaches, headers.records_out), (3, 0));
    // The dead letters are the small inputs, which the DLQ can serve.
    assert_eq!(fetch_all(&client, "keys.dlq").await, 3);
}

/// A batch stored before output was bounded (here: through a raised frame
/// limit) is larger than any frame a client reads: a subscriber gets a
/// typed error instead of resubscribing forever.
#[tokio::test]
async fn oversized_stored_batch_is_a_typed_error_for_a_subscriber() {
    let _beside = RSS.read().await;
    let broker = TestBroker::start_with(|c| c.limits.max_frame_bytes = 32 << 20)
        .await
        .unwrap();
    let client = broker.client().await.unwrap();
    topic(&client, "old", 2 << 20).await;
    let mut builder = BatchBuilder::new();
    for _ in 0..5 {
        builder.push(&edgebus_proto::batch::Record {
            key: None,
            value: Bytes::from(vec![b'x'; 2_000_000]),
            headers: Vec::new(),
            timestamp_ms: 1,
        });
    }
    let produce = Request::Produce {
        topic: "old".into(),
        partition: 0,
        acks: Acks::Durable,
        batch: builder.finish(ProducerStamp::NONE),
    };
    let conn = raw_default(&broker).await.unwrap();
    let answers = exchange(&conn, &frame(&produce, 1)).await.unwrap();
    assert!(
        matches!(answers.as_slice(), [Response::Produced { .. }]),
        "{answers:?}"
    );
    // `start` waits for the broker's first push, so the refusal may come
    // there or on the first `next`.
    let started = Subscription::start(
        client.clone(),
        "old",
        0,
        Position::Earliest,
        SubscribeConfig::default(),
    )
    .await;
    let error = match started {
        Err(error) => error,
        Ok(mut sub) => tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("the subscription ends instead of looping")
            .expect("an item")
            .expect_err("the batch cannot be served"),
    };
    assert_eq!(error.code(), Some(ErrorCode::RecordTooLarge), "{error}");
    // A one-off fetch says the same, rather than sending a frame larger
    // than the client reads.
    let error = client
        .fetch("old", 0, Position::Earliest, 16 << 20)
        .await
        .expect_err("the batch cannot be served");
    assert_eq!(error.code(), Some(ErrorCode::RecordTooLarge), "{error}");
}

/// A plugin that logs in a loop and fails every call wrote 31,004 lines
/// from one produce of 300 records: each replaced instance started a fresh
/// rate limit. Now the attachment's budget (burst of 100 lines, 20 a
/// second) holds across instances, host warnings included.
#[tokio::test]
async fn log_flood_is_held_to_the_log_budget_across_replaced_instances() {
    let _beside = RSS.read().await;
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "flood", "log_flood").await.unwrap();
    topic(&client, "noisy", 0).await;
    set_ingest(
        &client,
        "noisy",
        vec![pref("flood", &[])],
        FailurePolicy::Skip,
    )
    .await;
    let values: Vec<Vec<u8>> = (0..300).map(|i| format!("r{i}").into_bytes()).collect();
    let started = Instant::now();
    produce(&client, "noisy", &values, 300).await;
    let seconds = started.elapsed().as_secs() + 1;
    let c = ingest_counters(&client, "noisy").await;
    assert_eq!((c.records_in, c.failed), (300, 300));
    // Every failing call poisons its instance, which is replaced.
    assert!(c.instance_replacements >= 1, "{c:?}");
    assert!(
        c.log_lines <= 100 + 20 * seconds,
        "{} lines in {seconds} s",
        c.log_lines
    );
    // Each call tries about 1,000 lines; records the failing-time budget
    // failed got no call.
    let called = c.records_in - c.budget_breaches;
    assert!(c.log_lines + c.log_lines_dropped >= 960 * called, "{c:?}");
}

/// A plugin that burns its whole deadline on every call gets calls only
/// until its failing-time budget (100 ms a second, bursts of 500 ms) is
/// spent, then its records fail at once, and its rate backs off; acks on
/// other topics do not wait for it meanwhile.
///
/// The bounds are on the time the budget was charged, not on counts of
/// calls: a call is charged the CPU time it got, and on a busy machine a
/// call that ran into its 50 ms (wall-time) deadline got a fraction of that,
/// more so as a chain that missed a deadline runs on `SCHED_IDLE` threads.
#[tokio::test]
async fn deadline_burner_spends_its_failing_time_budget_and_other_topics_keep_acking() {
    let _beside = RSS.read().await;
    // What one call may be charged: its CPU time is at most its wall time,
    // which ends within a tick (5 ms) of the 50 ms deadline; twice the
    // deadline allows for a late tick on a busy machine.
    const ONE_CALL: Duration = Duration::from_millis(100);
    let charged = |c: &AttachCounters| Duration::from_micros(c.failing_cpu_us);
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    add_plugin(&client, "spin", "spin").await.unwrap();
    topic(&client, "spinning", 0).await;
    topic(&client, "calm", 0).await;
    set_ingest(
        &client,
        "spinning",
        vec![pref("spin", &[])],
        FailurePolicy::Skip,
    )
    .await;
    let values: Vec<Vec<u8>> = (0..80).map(|i| format!("r{i}").into_bytes()).collect();
    let started = Instant::now();
    let slowest = calm_acks_while(&client, async {
        produce(&client, "spinning", &values, 80).await;
    })
    .await;
    let c = ingest_counters(&client, "spinning").await;
    let elapsed = started.elapsed();
    assert_eq!((c.records_in, c.failed), (80, 80));
    // Records failed without a call only once the burst was spent, and
    // calls run one after another, so spending it took 500 ms at least.
    // Without the budget, the batch and each record would each have been
    // charged up to 50 ms, 4 s in all on an idle machine.
    assert!(c.budget_breaches >= 1, "{c:?}");
    assert!(elapsed >= Duration::from_millis(500), "took {elapsed:?}");
    assert!(charged(&c) >= Duration::from_millis(500), "{c:?}");
    let most = Duration::from_millis(500) + elapsed / 10 + ONE_CALL;
    assert!(charged(&c) <= most, "charged over {most:?}: {c:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "calm ack took {slowest:?}"
    );

    // Spending it halved its rate to 50 ms a second, from a moment 500 ms
    // after the start at the earliest: what failing calls were charged
    // since is at most that rate over the time since, plus the call that
    // went over. At the full rate, five seconds on would have earned
    // 500 ms more.
    tokio::time::sleep(Duration::from_secs(5)).await;
    produce(&client, "spinning", &values[..40], 40).await;
    let later = ingest_counters(&client, "spinning").await;
    assert_eq!(later.records_in, 120);
    let since_spent = started.elapsed() - Duration::from_millis(500);
    let most = since_spent / 20 + ONE_CALL;
    let charged_later = charged(&later) - charged(&c);
    assert!(
        charged_later <= most,
        "charged {charged_later:?} over {most:?}, {since_spent:?} since the burst: {later:?}"
    );
}
