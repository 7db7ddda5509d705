//! Consumer groups through a real broker: assignment, failover, committed
//! offsets, fencing, resets, and restarts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use edgebus_client::{
    Client, GroupConfig, GroupConsumer, Producer, ProducerConfig, Record, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{
    AssignmentStrategy, PartitionOffset, Position, Request, Response, TopicPartition,
};
use edgebus_tests::TestBroker;

const SESSION: Duration = Duration::from_millis(1500);

fn config(group: &str, topic: &str) -> GroupConfig {
    let mut c = GroupConfig::new(group, vec![topic.to_owned()]);
    c.session_timeout = SESSION;
    c.auto_commit = None;
    c
}

async fn topic_with_records(client: &Client, name: &str, partitions: u32, per_partition: u64) {
    client
        .create_topic(TopicSpec {
            name: name.into(),
            partitions,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: 0,
            compression: edgebus_proto::batch::Compression::None,
        })
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let r = Record::new(format!("{p}-{i}"), 1);
            acks.push(producer.send_to(name, p, r).await.unwrap());
        }
    }
    producer.flush().await.unwrap();
    for a in acks {
        a.await.unwrap();
    }
}

/// Waits until `check` holds for the consumers' assignments.
async fn wait_for(
    consumers: &[&GroupConsumer],
    what: &str,
    check: impl Fn(&[Vec<TopicPartition>]) -> bool,
) -> Vec<Vec<TopicPartition>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now: Vec<Vec<TopicPartition>> = consumers
            .iter()
            .map(|c| c.assignment().borrow().clone())
            .collect();
        if check(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn disjoint_and_total(sets: &[Vec<TopicPartition>], total: usize) -> bool {
    let all: Vec<&TopicPartition> = sets.iter().flatten().collect();
    let unique: BTreeSet<&TopicPartition> = all.iter().copied().collect();
    all.len() == unique.len() && unique.len() == total
}

/// Reads whatever arrives within `quiet` of the last record.
async fn drain(c: &mut GroupConsumer, quiet: Duration) -> Vec<(u32, u64)> {
    let mut got = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, c.next()).await {
        let r = item.unwrap();
        got.push((r.partition, r.record.offset));
    }
    got
}

#[tokio::test]
async fn three_consumers_on_six_partitions_get_two_each() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "six", 6, 0).await;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(
            GroupConsumer::join(client.clone(), config("g", "six"))
                .await
                .unwrap(),
        );
    }
    let refs: Vec<&GroupConsumer> = consumers.iter().collect();
    let sets = wait_for(&refs, "2 partitions each", |s| {
        disjoint_and_total(s, 6) && s.iter().all(|p| p.len() == 2)
    })
    .await;
    assert_eq!(sets.len(), 3);
}

#[tokio::test]
async fn dead_member_partitions_move_within_session_and_nothing_is_skipped() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "work", 6, 50).await;
    let mut a = GroupConsumer::join(client.clone(), config("g", "work"))
        .await
        .unwrap();
    let mut b = GroupConsumer::join(client.clone(), config("g", "work"))
        .await
        .unwrap();
    let mut c = GroupConsumer::join(client.clone(), config("g", "work"))
        .await
        .unwrap();
    wait_for(&[&a, &b, &c], "balanced", |s| {
        disjoint_and_total(s, 6) && s.iter().all(|p| p.len() == 2)
    })
    .await;
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    for consumer in [&mut a, &mut b, &mut c] {
        seen.extend(drain(consumer, Duration::from_millis(300)).await);
    }
    // c dies: no commit, no leave.
    let died = Instant::now();
    c.abort();
    wait_for(&[&a, &b], "the dead member's partitions", |s| {
        disjoint_and_total(s, 6)
    })
    .await;
    let moved_after = died.elapsed();
    println!("rebalance after death took {moved_after:?} (session {SESSION:?})");
    // The session runs from the member's last heartbeat, so the move comes
    // within one session of the death; the slack only absorbs a slow CI box.
    assert!(
        moved_after <= SESSION + Duration::from_secs(1),
        "partitions moved only after {moved_after:?}"
    );
    for consumer in [&mut a, &mut b] {
        seen.extend(drain(consumer, Duration::from_millis(500)).await);
    }
    let expected: BTreeSet<(u32, u64)> =
        (0..6).flat_map(|p| (0..50).map(move |o| (p, o))).collect();
    assert_eq!(seen, expected, "every record delivered at least once");
}

#[tokio::test]
async fn clean_handoff_does_not_redeliver_committed_records() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "handoff", 2, 40).await;
    let mut a = GroupConsumer::join(client.clone(), config("g", "handoff"))
        .await
        .unwrap();
    wait_for(&[&a], "both partitions", |s| s[0].len() == 2).await;
    let first = drain(&mut a, Duration::from_millis(1500)).await;
    assert_eq!(first.len(), 80);
    let mut b = GroupConsumer::join(client.clone(), config("g", "handoff"))
        .await
        .unwrap();
    wait_for(&[&a, &b], "one partition each", |s| {
        disjoint_and_total(s, 2) && s.iter().all(|p| p.len() == 1)
    })
    .await;
    let again = drain(&mut b, Duration::from_millis(500)).await;
    assert!(
        again.is_empty(),
        "b re-read records a committed before the handoff: {again:?}"
    );
}

#[tokio::test]
async fn restarted_member_resumes_at_committed_offset() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "resume", 1, 30).await;
    let mut a = GroupConsumer::join(client.clone(), config("g", "resume"))
        .await
        .unwrap();
    for expected in 0..10 {
        let r = a.next().await.unwrap().unwrap();
        assert_eq!(r.record.offset, expected);
    }
    a.close().await.unwrap();
    let mut again = GroupConsumer::join(client.clone(), config("g", "resume"))
        .await
        .unwrap();
    let r = again.next().await.unwrap().unwrap();
    assert_eq!(
        r.record.offset, 10,
        "resumes after the last processed record"
    );
}

async fn join_raw(client: &Client, group: &str, topic: &str) -> (String, u32, Vec<TopicPartition>) {
    let r = client
        .request(&Request::JoinGroup {
            group: group.into(),
            member_id: String::new(),
            topics: vec![topic.into()],
            session_timeout_ms: 1500,
            strategy: AssignmentStrategy::Sticky,
        })
        .await
        .unwrap();
    match r {
        Response::GroupAssignment {
            member_id,
            epoch,
            partitions,
            ..
        } => (member_id, epoch, partitions),
        other => panic!("{other:?}"),
    }
}

async fn heartbeat_raw(
    client: &Client,
    member: &str,
    owned: &[TopicPartition],
) -> (u32, Vec<TopicPartition>) {
    let r = client
        .request(&Request::Heartbeat {
            group: "g".into(),
            member_id: member.into(),
            owned: owned.to_vec(),
            wait_ms: 0,
        })
        .await
        .unwrap();
    match r {
        Response::GroupAssignment {
            epoch, partitions, ..
        } => (epoch, partitions),
        other => panic!("{other:?}"),
    }
}

fn commit(member: &str, epoch: u32, tp: &TopicPartition, offset: u64) -> Request {
    Request::CommitOffsets {
        group: "g".into(),
        member_id: member.into(),
        epoch,
        offsets: vec![PartitionOffset {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset,
        }],
    }
}

#[tokio::test]
async fn commit_from_stale_generation_or_dead_member_is_rejected() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "fence", 2, 0).await;
    let (a, epoch1, owned) = join_raw(&client, "g", "fence").await;
    assert_eq!(owned.len(), 2);
    client
        .request(&commit(&a, epoch1, &owned[0], 1))
        .await
        .unwrap();

    join_raw(&client, "g", "fence").await;
    let (epoch2, kept) = heartbeat_raw(&client, &a, &owned).await;
    assert!(epoch2 > epoch1 && kept.len() == 1);
    let err = client
        .request(&commit(&a, epoch1, &kept[0], 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StaleGeneration), "{err}");

    // A member that stops heartbeating is expired; its commits are refused.
    tokio::time::sleep(SESSION + Duration::from_millis(300)).await;
    let err = client
        .request(&commit(&a, epoch2, &kept[0], 3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownMember), "{err}");
    let offsets = client
        .request(&Request::FetchOffsets { group: "g".into() })
        .await
        .unwrap();
    assert!(
        matches!(&offsets, Response::CommittedOffsets(o) if o.len() == 1 && o[0].offset == 1),
        "zombie commits changed progress: {offsets:?}"
    );
}

#[tokio::test]
async fn reset_offsets_is_refused_while_group_has_members() {
    let broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "reset", 2, 5).await;
    let member = GroupConsumer::join(client.clone(), config("g", "reset"))
        .await
        .unwrap();
    let reset = Request::ResetOffsets {
        group: "g".into(),
        topic: "reset".into(),
        to: Position::Latest,
    };
    let err = client.request(&reset).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupNotEmpty), "{err}");
    member.close().await.unwrap();
    match client.request(&reset).await.unwrap() {
        Response::CommittedOffsets(o) => {
            assert_eq!(o.len(), 2);
            assert!(o.iter().all(|o| o.offset == 5), "{o:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn group_offsets_survive_restart_and_go_with_their_topic() {
    let mut broker = TestBroker::start().await.unwrap();
    let client = broker.client().await.unwrap();
    topic_with_records(&client, "kept", 1, 3).await;
    topic_with_records(&client, "dropped", 1, 3).await;
    for topic in ["kept", "dropped"] {
        client
            .request(&Request::ResetOffsets {
                group: "g".into(),
                topic: topic.into(),
                to: Position::Offset(2),
            })
            .await
            .unwrap();
    }
    broker.restart().await.unwrap();
    let client = broker.client().await.unwrap();
    assert_eq!(
        client.request(&Request::ListGroups).await.unwrap(),
        Response::Groups(vec!["g".into()])
    );
    client.delete_topic("dropped").await.unwrap();
    match client
        .request(&Request::FetchOffsets { group: "g".into() })
        .await
        .unwrap()
    {
        Response::CommittedOffsets(o) => {
            assert_eq!(o.len(), 1);
            assert_eq!((o[0].topic.as_str(), o[0].offset), ("kept", 2));
        }
        other => panic!("{other:?}"),
    }
    match client
        .request(&Request::DescribeGroup { group: "g".into() })
        .await
        .unwrap()
    {
        Response::GroupDescription { members, lag, .. } => {
            assert!(members.is_empty());
            assert_eq!(lag.len(), 1);
            assert_eq!((lag[0].committed, lag[0].log_end), (Some(2), 3));
        }
        other => panic!("{other:?}"),
    }
}
