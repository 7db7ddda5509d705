//! The suite every [`LogStore`] must pass.
//!
//! A store plugs in through a [`Harness`] that can make a fresh store,
//! "restart" one, and arm a fault that makes writes fail after N more
//! operations. [`run_all`] runs every check; each check is also a `pub fn`
//! so a failing one can be run alone. Checks panic with a message naming
//! what broke, like any test.
//!
//! ```
//! use edgebus_store::MemStore;
//! use edgebus_store::conformance::{self, Harness};
//!
//! struct Mem;
//!
//! impl Harness for Mem {
//!     type Store = MemStore;
//!     fn fresh(&mut self) -> MemStore {
//!         MemStore::new()
//!     }
//!     fn reopen(&mut self, store: MemStore) -> MemStore {
//!         store.reopen()
//!     }
//!     fn fail_after_writes(&mut self, store: &MemStore, n: u64) {
//!         store.fail_after_writes(n)
//!     }
//! }
//!
//! conformance::run_all(&mut Mem);
//! ```

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch::{self, BatchBuilder, ProducerStamp, Record};

use crate::topic::{DEFAULT_MAX_MESSAGE_BYTES, UNLIMITED};
use crate::{
    CommitError, CommittedOffset, ConfigKind, DELETE_STEP_BYTES, EpochEnd, EpochStart, LogStore,
    LogWrite, MetaStore, OffsetCommit, PartitionLog, PartitionOffsets, PipelineCommit, PluginInfo,
    ReadError, RetentionHold, StateWrite, TopicError, TopicSpec, WriteError,
};

/// How a store under test is made, restarted and broken.
pub trait Harness {
    /// The store under test.
    type Store: LogStore;

    /// A new, empty store with no faults armed.
    fn fresh(&mut self) -> Self::Store;

    /// Closes `store` as a crash or restart would and opens what is left:
    /// only what the store committed may survive.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;

    /// Arms a fault on `store`: after `n` more units of write work (the
    /// store's choice of unit, such as write operations or IO calls), every
    /// write fails and, from then on, nothing more reaches storage.
    fn fail_after_writes(&mut self, store: &Self::Store, n: u64);
}

/// Runs every check, each on fresh stores.
pub fn run_all<H: Harness>(h: &mut H) {
    topic_create_then_list_and_describe_returns_spec(h);
    topic_create_existing_returns_exists(h);
    topic_create_invalid_returns_invalid_and_stores_nothing(h);
    topic_delete_unknown_returns_not_found(h);
    topic_delete_then_recreate_starts_empty_without_producer_state(h);
    topic_delete_of_large_logs_is_whole_at_once_and_their_space_freed_in_steps(h);
    append_at_log_end_keeps_offsets_dense(h);
    append_at_group_across_topics_and_partitions_applies_in_order(h);
    append_at_wrong_offset_refuses_group_and_applies_nothing(h);
    append_at_unknown_target_or_invalid_batch_refuses_group(h);
    append_at_producer_state_only_takes_no_offsets(h);
    append_at_producer_state_commits_with_batch_and_survives_reopen(h);
    append_at_non_durable_is_readable_and_survives_clean_reopen(h);
    epoch_table_records_first_offset_of_each_epoch(h);
    append_at_older_epoch_refuses_group(h);
    truncate_from_removes_whole_batches_epochs_and_continues_at_new_end(h);
    truncate_from_at_batch_boundary_keeps_earlier_batches(h);
    mend_batch_takes_only_a_whole_copy_of_the_same_offsets(h);
    read_bounded_by_upper_returns_only_batches_below_it(h);
    read_from_middle_of_batch_returns_holding_batch(h);
    read_max_bytes_bounds_batches_but_returns_at_least_one(h);
    read_at_or_past_log_end_returns_nothing(h);
    read_unknown_topic_or_partition_returns_typed_error(h);
    reopen_keeps_offsets_and_identical_records(h);
    offset_for_timestamp_returns_first_batch_at_or_after(h);
    retention_by_time_deletes_only_expired_batches(h);
    retention_by_bytes_keeps_partition_at_limit(h);
    retention_of_everything_keeps_log_end_and_never_reuses_offsets(h);
    retention_keeps_timestamp_lookup_conservative(h);
    retention_hold_keeps_undelivered_batches_up_to_its_cap_and_counts_the_rest(h);
    retention_of_a_large_backlog_deletes_a_step_a_pass_and_says_more_is_due(h);
    skip_to_moves_the_log_end_over_offsets_that_never_hold_records(h);
    offsets_stop_at_the_largest_a_log_can_reach(h);
    read_below_log_start_reads_from_log_start(h);
    allocate_producer_id_is_unique_across_reopen(h);
    group_commit_then_read_back_returns_offsets_sorted_per_group(h);
    group_commit_later_entry_replaces_earlier(h);
    group_list_returns_groups_with_offsets_sorted(h);
    group_delete_removes_offsets_and_reports_whether_any(h);
    group_offsets_survive_reopen(h);
    topic_delete_removes_its_offsets_from_every_group(h);
    group_commit_unknown_target_or_invalid_group_applies_nothing(h);
    plugin_put_replace_get_list_and_remove_keep_versions(h);
    plugin_registry_survives_reopen(h);
    config_put_list_replace_and_delete_per_kind(h);
    topic_delete_removes_its_ingest_config_only(h);
    pipeline_commit_applies_outputs_state_and_position_and_survives_reopen(h);
    pipeline_commit_with_refused_write_applies_nothing(h);
    pipeline_delete_data_removes_only_that_pipeline(h);
    plugin_state_put_lists_by_prefix_and_after_and_survives_reopen(h);
    append_with_state_commits_state_with_the_writes_or_neither(h);
    delete_plugin_state_owners_removes_only_owners_under_the_prefix(h);
    crash_after_n_writes_keeps_exactly_the_acknowledged_batches(h);
    crash_after_n_writes_truncation_applies_whole_or_not_at_all(h);
    crash_after_n_writes_keeps_exactly_the_acknowledged_offset_commits(h);
    crash_after_n_writes_pipeline_position_implies_exactly_its_steps(h);
    topic_alter_adds_empty_partitions_keeps_records_and_survives_reopen(h);
    topic_alter_fewer_partitions_invalid_or_unknown_is_refused_and_changes_nothing(h);
    partition_bytes_follow_appends_retention_and_truncation(h);
}

// ---- helpers ---------------------------------------------------------------

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions,
        retention_ms: UNLIMITED,
        retention_bytes: UNLIMITED,
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        compression: edgebus_proto::batch::Compression::None,
    }
}

fn create(store: &impl LogStore, spec: &TopicSpec) {
    store
        .create_topic(spec)
        .unwrap_or_else(|e| panic!("create_topic({}) failed: {e}", spec.name));
}

/// A batch of `count` records stamped `timestamp_ms`, values `"{tag}-{i}"`.
fn batch_of(tag: &str, count: u32, timestamp_ms: i64, stamp: ProducerStamp) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        builder.push(&Record::new(format!("{tag}-{i}"), timestamp_ms));
    }
    builder.finish(stamp)
}

fn write_of(topic: &str, partition: u32, base_offset: u64, batch: Bytes) -> LogWrite {
    LogWrite {
        topic: topic.to_owned(),
        partition,
        base_offset,
        leader_epoch: 0,
        batch,
        producer: None,
    }
}

/// Writes each `(topic, partition, batch)` at its partition's log end, all
/// in one durable transaction, as a writer deciding offsets would; returns
/// the base offsets.
fn append_all(store: &impl LogStore, batches: &[(&str, u32, Bytes)]) -> Vec<u64> {
    let mut ends: Vec<((&str, u32), u64)> = Vec::new();
    let writes: Vec<LogWrite> = batches
        .iter()
        .map(|(topic, partition, batch)| {
            let key = (*topic, *partition);
            let index = ends.iter().position(|(k, _)| *k == key).unwrap_or_else(|| {
                ends.push((key, offsets(store, topic, *partition).log_end));
                ends.len() - 1
            });
            let base_offset = ends[index].1;
            ends[index].1 += batch_records(batch);
            write_of(topic, *partition, base_offset, batch.clone())
        })
        .collect();
    store
        .append_at(&writes, true)
        .unwrap_or_else(|e| panic!("append_at was refused: {e}"));
    writes.iter().map(|w| w.base_offset).collect()
}

fn append_one(store: &impl LogStore, topic: &str, partition: u32, batch: Bytes) -> u64 {
    append_all(store, &[(topic, partition, batch)])[0]
}

/// The batch as the store must hold it: with its base offset and leader
/// epoch written in.
fn stored(batch: &Bytes, base_offset: u64) -> Bytes {
    stored_in_epoch(batch, base_offset, 0)
}

fn stored_in_epoch(batch: &Bytes, base_offset: u64, epoch: i32) -> Bytes {
    let mut copy = BytesMut::from(&batch[..]);
    batch::set_base_offset(&mut copy, base_offset);
    batch::set_partition_leader_epoch(&mut copy, epoch);
    copy.freeze()
}

fn read_all(store: &impl LogStore, topic: &str, partition: u32) -> Vec<Bytes> {
    store
        .read(topic, partition, 0, usize::MAX, u64::MAX)
        .unwrap_or_else(|e| panic!("read {topic}/{partition} failed: {e}"))
        .batches
}

fn offsets(store: &impl LogStore, topic: &str, partition: u32) -> PartitionOffsets {
    store
        .offsets(topic, partition)
        .unwrap_or_else(|e| panic!("offsets {topic}/{partition} failed: {e}"))
}

fn base_offsets(batches: &[Bytes]) -> Vec<u64> {
    batches
        .iter()
        .map(|b| {
            batch::validate(b)
                .expect("stored batch is valid")
                .base_offset
        })
        .collect()
}

fn stamp(producer_id: i64, producer_epoch: i16, base_sequence: i32) -> ProducerStamp {
    ProducerStamp {
        producer_id,
        producer_epoch,
        base_sequence,
    }
}

// ---- topics ------------------------------------------------------------------

/// A created topic is listed, sorted by name, and described as created.
pub fn topic_create_then_list_and_describe_returns_spec<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let b = TopicSpec {
        retention_ms: 60_000,
        retention_bytes: 1 << 30,
        max_message_bytes: 512,
        compression: edgebus_proto::batch::Compression::None,
        ..spec("b-topic", 3)
    };
    let a = spec("a.topic", 1);
    create(&store, &b);
    create(&store, &a);
    assert_eq!(
        store.topics().expect("topics"),
        vec![a.clone(), b.clone()],
        "topics() lists every topic sorted by name"
    );
    assert_eq!(store.topic("b-topic").expect("topic"), Some(b));
    assert_eq!(store.topic("missing").expect("topic"), None);
    for partition in 0..3 {
        assert_eq!(
            offsets(&store, "b-topic", partition),
            PartitionOffsets::default(),
            "a new partition is empty at offset 0"
        );
    }
}

/// Creating a topic twice is refused and keeps the first spec.
pub fn topic_create_existing_returns_exists<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let again = store.create_topic(&spec("t", 4));
    assert!(
        matches!(again, Err(TopicError::Exists(ref n)) if n == "t"),
        "second create_topic should be Exists, got {again:?}"
    );
    assert_eq!(store.topic("t").expect("topic"), Some(spec("t", 1)));
}

/// An invalid spec is refused before anything is stored.
pub fn topic_create_invalid_returns_invalid_and_stores_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh();
    for bad in [spec("a/b", 1), spec("..", 1), spec("t", 0)] {
        let result = store.create_topic(&bad);
        assert!(
            matches!(result, Err(TopicError::Invalid(_))),
            "{bad:?} should be Invalid, got {result:?}"
        );
    }
    assert_eq!(store.topics().expect("topics"), vec![]);
}

/// Deleting a topic that does not exist is NotFound.
pub fn topic_delete_unknown_returns_not_found<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let result = store.delete_topic("ghost");
    assert!(
        matches!(result, Err(TopicError::NotFound(ref n)) if n == "ghost"),
        "delete of a missing topic should be NotFound, got {result:?}"
    );
}

/// A deleted topic is gone with its records, producer state and epoch
/// table: recreated, it starts at offset 0 and remembers no producer.
pub fn topic_delete_then_recreate_starts_empty_without_producer_state<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    create(&store, &spec("other", 1));
    let pid = store.allocate_producer_id().expect("producer id");
    let first = batch_of("x", 3, 10, stamp(pid, 0, 0));
    let with_state = |topic: &str, batch: Bytes| LogWrite {
        producer: Some((pid, Bytes::from_static(b"state"))),
        leader_epoch: 4,
        ..write_of(topic, if topic == "t" { 1 } else { 0 }, 0, batch)
    };
    store
        .append_at(
            &[
                with_state("t", first.clone()),
                with_state("other", batch_of("o", 1, 10, stamp(pid, 0, 0))),
            ],
            true,
        )
        .expect("append_at");
    store.delete_topic("t").expect("delete_topic");
    assert_eq!(store.topic("t").expect("topic"), None);
    assert!(
        matches!(store.offsets("t", 1), Err(ReadError::UnknownTopic(_))),
        "a deleted topic's partitions are gone"
    );
    create(&store, &spec("t", 2));
    assert_eq!(offsets(&store, "t", 1), PartitionOffsets::default());
    assert_eq!(read_all(&store, "t", 1), Vec::<Bytes>::new());
    assert_eq!(
        store.producer_states("t", 1).expect("producer_states"),
        vec![]
    );
    assert_eq!(store.epochs("t", 1).expect("epochs"), vec![]);
    assert_eq!(append_one(&store, "t", 1, first), 0);
    assert_eq!(
        store.producer_states("other", 0).expect("producer_states"),
        vec![(pid, Bytes::from_static(b"state"))],
        "other topics keep their producer state"
    );
    assert_eq!(
        store.epochs("other", 0).expect("epochs"),
        vec![EpochStart {
            epoch: 4,
            start_offset: 0
        }],
        "other topics keep their epoch table"
    );
}

/// Deleting topics whose logs are larger than a drain step: each is gone at
/// once, and [`MetaStore::drain_deleted`] frees what it left in steps that
/// carry on after a reopen and end. A topic created or grown under a
/// deleted name meanwhile starts empty, and other topics keep their
/// records throughout.
pub fn topic_delete_of_large_logs_is_whole_at_once_and_their_space_freed_in_steps<H: Harness>(
    h: &mut H,
) {
    let store = h.fresh();
    // 40 batches of one 256 KiB record: 10 MiB a partition.
    let large = |tag: &str, i: u32| {
        let mut builder = BatchBuilder::new();
        builder.push(&Record::new(format!("{tag}-{i}-").repeat(1 << 16), 1));
        builder.finish(ProducerStamp::NONE)
    };
    let fill = |store: &H::Store, topic: &str, partitions: u32| {
        create(store, &spec(topic, partitions));
        for partition in 0..partitions {
            for i in 0..40 {
                append_one(store, topic, partition, large(topic, i));
            }
        }
    };
    let drain = |store: &H::Store| {
        let mut steps = 0;
        while store.drain_deleted(1 << 20).expect("drain_deleted") {
            steps += 1;
            assert!(steps <= 200, "draining never ends");
        }
    };
    fill(&store, "t", 2);
    fill(&store, "u", 1);
    create(&store, &spec("other", 1));
    let kept = batch_of("o", 3, 10, ProducerStamp::NONE);
    append_one(&store, "other", 0, kept.clone());

    store.delete_topic("t").expect("delete_topic");
    store.delete_topic("u").expect("delete_topic");
    for topic in ["t", "u"] {
        assert_eq!(store.topic(topic).expect("topic"), None);
        assert!(
            matches!(store.offsets(topic, 0), Err(ReadError::UnknownTopic(_))),
            "{topic} is gone at once"
        );
    }
    let store = h.reopen(store);
    store.drain_deleted(1 << 20).expect("drain_deleted");
    // One partition, then a second: each takes over a log that may still be
    // draining.
    create(&store, &spec("t", 1));
    store.alter_topic(&spec("t", 2)).expect("alter_topic");
    for partition in 0..2 {
        assert_eq!(offsets(&store, "t", partition), PartitionOffsets::default());
        assert_eq!(read_all(&store, "t", partition), Vec::<Bytes>::new());
    }
    let fresh = batch_of("n", 2, 10, ProducerStamp::NONE);
    assert_eq!(append_one(&store, "t", 1, fresh.clone()), 0);
    drain(&store);
    assert!(!store.drain_deleted(1 << 20).expect("drain_deleted"));
    assert_eq!(read_all(&store, "t", 1), vec![stored(&fresh, 0)]);
    assert_eq!(read_all(&store, "other", 0), vec![stored(&kept, 0)]);
    create(&store, &spec("u", 1));
    assert_eq!(read_all(&store, "u", 0), Vec::<Bytes>::new());
    let store = h.reopen(store);
    assert!(!store.drain_deleted(1 << 20).expect("drain_deleted"));
    assert_eq!(read_all(&store, "t", 1), vec![stored(&fresh, 0)]);
}

/// Altering a topic replaces its settings and adds partitions that start
/// empty at offset 0 and take writes at once, leaving the existing
/// partitions' records as they were; all of it survives a restart.
pub fn topic_alter_adds_empty_partitions_keeps_records_and_survives_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let first = batch_of("a", 2, 10, ProducerStamp::NONE);
    append_one(&store, "t", 0, first.clone());
    let altered = TopicSpec {
        retention_ms: 60_000,
        retention_bytes: 1 << 20,
        max_message_bytes: 4096,
        ..spec("t", 3)
    };
    store.alter_topic(&altered).expect("alter_topic");
    assert_eq!(store.topic("t").expect("topic"), Some(altered.clone()));
    for partition in 1..3 {
        assert_eq!(
            offsets(&store, "t", partition),
            PartitionOffsets::default(),
            "an added partition is empty at offset 0"
        );
    }
    let second = batch_of("b", 1, 10, ProducerStamp::NONE);
    assert_eq!(append_one(&store, "t", 2, second.clone()), 0);
    let store = h.reopen(store);
    assert_eq!(store.topic("t").expect("topic"), Some(altered));
    assert_eq!(read_all(&store, "t", 0), vec![stored(&first, 0)]);
    assert_eq!(read_all(&store, "t", 1), Vec::<Bytes>::new());
    assert_eq!(read_all(&store, "t", 2), vec![stored(&second, 0)]);
}

/// Removing partitions, an invalid setting or an unknown topic is refused
/// and changes nothing.
pub fn topic_alter_fewer_partitions_invalid_or_unknown_is_refused_and_changes_nothing<
    H: Harness,
>(
    h: &mut H,
) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    let bad_retention = TopicSpec {
        retention_ms: 0,
        ..spec("t", 4)
    };
    for bad in [spec("t", 1), spec("t", 0), bad_retention] {
        let result = store.alter_topic(&bad);
        assert!(
            matches!(result, Err(TopicError::Invalid(_))),
            "{bad:?} should be Invalid, got {result:?}"
        );
    }
    let result = store.alter_topic(&spec("ghost", 1));
    assert!(
        matches!(result, Err(TopicError::NotFound(ref n)) if n == "ghost"),
        "alter of a missing topic should be NotFound, got {result:?}"
    );
    assert_eq!(store.topics().expect("topics"), vec![spec("t", 2)]);
    assert!(
        matches!(
            store.offsets("t", 2),
            Err(ReadError::UnknownPartition { .. })
        ),
        "a refused alter adds no partition"
    );
}

/// A partition's byte size is the sum of its stored batches: it grows with
/// appends and shrinks with retention and truncation.
pub fn partition_bytes_follow_appends_retention_and_truncation<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let b = batch_of("x", 3, 1, ProducerStamp::NONE);
    let size = b.len() as u64;
    create(
        &store,
        &TopicSpec {
            retention_bytes: 2 * size as i64,
            ..spec("t", 2)
        },
    );
    let bytes = |partition| {
        store
            .partition_bytes("t", partition)
            .unwrap_or_else(|e| panic!("partition_bytes t/{partition} failed: {e}"))
    };
    assert_eq!(bytes(0), 0);
    for _ in 0..4 {
        append_one(&store, "t", 0, b.clone());
    }
    assert_eq!(bytes(0), 4 * size);
    assert_eq!(bytes(1), 0, "other partitions are counted apart");
    store.enforce_retention(0).expect("retention");
    assert_eq!(bytes(0), 2 * size, "retention takes deleted batches off");
    store.truncate_from("t", 0, 9, &[]).expect("truncate");
    assert_eq!(bytes(0), size, "truncation takes removed batches off");
    assert!(matches!(
        store.partition_bytes("t", 2),
        Err(ReadError::UnknownPartition { .. })
    ));
    assert!(matches!(
        store.partition_bytes("ghost", 0),
        Err(ReadError::UnknownTopic(_))
    ));
}

// ---- append_at ---------------------------------------------------------------

/// Batches written at the log end get dense offsets, and are stored as the
/// written bytes with the base offset and leader epoch filled in.
pub fn append_at_log_end_keeps_offsets_dense<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let batches: Vec<Bytes> = [3, 1, 5, 2]
        .iter()
        .enumerate()
        .map(|(i, n)| batch_of(&format!("b{i}"), *n, 1_000, ProducerStamp::NONE))
        .collect();
    let mut expected_base = 0;
    for b in &batches {
        assert_eq!(append_one(&store, "t", 0, b.clone()), expected_base);
        expected_base += batch_records(b);
    }
    assert_eq!(
        offsets(&store, "t", 0),
        PartitionOffsets {
            log_start: 0,
            log_end: 11
        }
    );
    let expected: Vec<Bytes> = batches
        .iter()
        .zip([0, 3, 4, 9])
        .map(|(b, base)| stored(b, base))
        .collect();
    assert_eq!(
        read_all(&store, "t", 0),
        expected,
        "stored batches are the written bytes with base offsets written in"
    );
}

/// One group spanning topics and partitions: each write lands at its own
/// partition's log end, in slice order.
pub fn append_at_group_across_topics_and_partitions_applies_in_order<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("a", 2));
    create(&store, &spec("b", 1));
    let group = [
        ("a", 0, batch_of("a0-1", 2, 1, ProducerStamp::NONE)),
        ("b", 0, batch_of("b0-1", 4, 1, ProducerStamp::NONE)),
        ("a", 1, batch_of("a1-1", 1, 1, ProducerStamp::NONE)),
        ("a", 0, batch_of("a0-2", 3, 1, ProducerStamp::NONE)),
        ("b", 0, batch_of("b0-2", 1, 1, ProducerStamp::NONE)),
    ];
    assert_eq!(append_all(&store, &group), vec![0, 0, 0, 2, 4]);
    assert_eq!(offsets(&store, "a", 0).log_end, 5);
    assert_eq!(offsets(&store, "a", 1).log_end, 1);
    assert_eq!(offsets(&store, "b", 0).log_end, 5);
    assert_eq!(
        read_all(&store, "a", 0),
        vec![stored(&group[0].2, 0), stored(&group[3].2, 2)]
    );
}

/// Asserts that `writes` are refused with `expected` and leave the store
/// exactly as it was.
fn assert_refused(store: &impl LogStore, writes: &[LogWrite], expected: &WriteError) {
    let before: Vec<(PartitionOffsets, Vec<Bytes>)> = (0..2)
        .map(|p| (offsets(store, "t", p), read_all(store, "t", p)))
        .collect();
    let result = store.append_at(writes, true);
    assert_eq!(result.as_ref().err(), Some(expected), "{result:?}");
    let after: Vec<(PartitionOffsets, Vec<Bytes>)> = (0..2)
        .map(|p| (offsets(store, "t", p), read_all(store, "t", p)))
        .collect();
    assert_eq!(before, after, "a refused group applies nothing");
}

/// The store takes offsets, it does not choose them: a write anywhere but
/// the log end (a gap, an overwrite, or a clash with an earlier write of
/// the same group) refuses the whole group.
pub fn append_at_wrong_offset_refuses_group_and_applies_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    append_one(&store, "t", 0, batch_of("a", 3, 1, ProducerStamp::NONE));
    let b = || batch_of("b", 2, 1, ProducerStamp::NONE);
    let not_at_end = |base_offset, log_end| WriteError::NotAtLogEnd {
        topic: "t".to_owned(),
        partition: 0,
        base_offset,
        log_end,
    };
    let fine = write_of("t", 1, 0, b());
    assert_refused(
        &store,
        &[fine.clone(), write_of("t", 0, 4, b())],
        &not_at_end(4, 3),
    );
    assert_refused(
        &store,
        &[fine.clone(), write_of("t", 0, 1, b())],
        &not_at_end(1, 3),
    );
    assert_refused(
        &store,
        &[write_of("t", 0, 3, b()), write_of("t", 0, 3, b())],
        &not_at_end(3, 5),
    );
}

/// A write to an unknown topic or partition, or of bytes that are not a
/// whole batch, refuses its whole group.
pub fn append_at_unknown_target_or_invalid_batch_refuses_group<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    let good = || write_of("t", 0, 0, batch_of("ok", 2, 1, ProducerStamp::NONE));
    assert_refused(
        &store,
        &[
            good(),
            write_of("nope", 0, 0, batch_of("x", 1, 1, ProducerStamp::NONE)),
        ],
        &WriteError::UnknownTopic("nope".to_owned()),
    );
    assert_refused(
        &store,
        &[
            good(),
            write_of("t", 7, 0, batch_of("y", 1, 1, ProducerStamp::NONE)),
        ],
        &WriteError::UnknownPartition {
            topic: "t".to_owned(),
            partition: 7,
        },
    );
    let mut truncated = good();
    truncated.batch = truncated.batch.slice(..truncated.batch.len() - 1);
    let mut garbage = good();
    garbage.batch = Bytes::from_static(b"not a batch");
    for bad in [truncated, garbage] {
        let result = store.append_at(&[good(), bad], true);
        assert!(
            matches!(result, Err(WriteError::InvalidBatch(_))),
            "{result:?}"
        );
        assert_eq!(offsets(&store, "t", 0).log_end, 0);
    }
}

/// A write with no batch stores only its producer state and takes no
/// offsets: the producer's sequence advances past a batch an ingest chain
/// dropped whole.
pub fn append_at_producer_state_only_takes_no_offsets<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    append_one(&store, "t", 0, batch_of("a", 2, 1, ProducerStamp::NONE));
    let state_only = LogWrite {
        producer: Some((7, Bytes::from_static(b"v1"))),
        ..write_of("t", 0, 2, Bytes::new())
    };
    let after = write_of("t", 0, 2, batch_of("b", 1, 1, ProducerStamp::NONE));
    store
        .append_at(&[state_only, after], true)
        .expect("append_at");
    assert_eq!(offsets(&store, "t", 0).log_end, 3);
    assert_eq!(
        store.producer_states("t", 0).expect("producer_states"),
        vec![(7, Bytes::from_static(b"v1"))]
    );
}

/// Producer state commits with the batch it describes (invariant 4), the
/// latest write of a producer wins, and it survives a restart.
pub fn append_at_producer_state_commits_with_batch_and_survives_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    let with_state = |partition, base_offset, producer: i64, state: &'static [u8]| LogWrite {
        producer: Some((producer, Bytes::from_static(state))),
        ..write_of(
            "t",
            partition,
            base_offset,
            batch_of("s", 1, 1, stamp(producer, 0, 0)),
        )
    };
    store
        .append_at(
            &[
                with_state(0, 0, 1, b"one-a"),
                with_state(0, 1, 2, b"two"),
                with_state(0, 2, 1, b"one-b"),
                with_state(1, 0, 1, b"one-p1"),
            ],
            false,
        )
        .expect("append_at");
    let store = h.reopen(store);
    assert_eq!(
        store.producer_states("t", 0).expect("producer_states"),
        vec![
            (1, Bytes::from_static(b"one-b")),
            (2, Bytes::from_static(b"two"))
        ]
    );
    assert_eq!(
        store.producer_states("t", 1).expect("producer_states"),
        vec![(1, Bytes::from_static(b"one-p1"))]
    );
}

/// Plugin state changes ride in a group's transaction: applied in order
/// after the writes and kept across reopen, and a refused group applies
/// neither its writes nor its state.
pub fn append_with_state_commits_state_with_the_writes_or_neither<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let state = |owner: &str, changes: &[(&str, Option<&str>)]| StateWrite {
        owner: owner.to_owned(),
        changes: changes
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
    };
    store
        .put_plugin_state("ingest:t", &[(b"gone".to_vec(), Some(b"x".to_vec()))])
        .expect("put_plugin_state");
    store
        .append_with_state(
            &[write_of(
                "t",
                0,
                0,
                batch_of("a", 2, 1, ProducerStamp::NONE),
            )],
            &[
                state("ingest:t", &[("k", Some("1")), ("gone", None)]),
                state("ingest:t", &[("k", Some("2"))]),
                state("ingest:u", &[("j", Some("3"))]),
            ],
            true,
        )
        .expect("append_with_state");
    let refused = store.append_with_state(
        &[write_of(
            "t",
            0,
            7,
            batch_of("b", 1, 1, ProducerStamp::NONE),
        )],
        &[state("ingest:t", &[("k", Some("refused"))])],
        true,
    );
    assert!(
        matches!(refused, Err(WriteError::NotAtLogEnd { .. })),
        "{refused:?}"
    );
    let store = h.reopen(store);
    let list = |owner| {
        store
            .plugin_state_list(owner, b"", None, 10)
            .expect("plugin_state_list")
    };
    assert_eq!(list("ingest:t"), vec![(b"k".to_vec(), b"2".to_vec())]);
    assert_eq!(list("ingest:u"), vec![(b"j".to_vec(), b"3".to_vec())]);
    assert_eq!(offsets(&store, "t", 0).log_end, 2);
}

/// Deleting owners by prefix removes every owner under it, whatever its
/// keys, and no other owner (an owner sorting just before or after, or one
/// that is the prefix without its last character).
pub fn delete_plugin_state_owners_removes_only_owners_under_the_prefix<H: Harness>(h: &mut H) {
    let store = h.fresh();
    for owner in [
        "read:s/0/g",
        "read:t",
        "read:t/0/g",
        "read:t/1/h",
        "read:u/0/g",
    ] {
        store
            .put_plugin_state(
                owner,
                &[
                    (b"a".to_vec(), Some(b"1".to_vec())),
                    (b"b".to_vec(), Some(b"2".to_vec())),
                ],
            )
            .expect("put_plugin_state");
    }
    store
        .delete_plugin_state_owners("read:t/")
        .expect("delete_plugin_state_owners");
    let store = h.reopen(store);
    let count = |owner| {
        store
            .plugin_state_list(owner, b"", None, 10)
            .expect("plugin_state_list")
            .len()
    };
    for (owner, left) in [
        ("read:s/0/g", 2),
        ("read:t", 2),
        ("read:t/0/g", 0),
        ("read:t/1/h", 0),
        ("read:u/0/g", 2),
    ] {
        assert_eq!(count(owner), left, "{owner}");
    }
}

/// A non-durable write is visible at once and kept by a clean restart.
pub fn append_at_non_durable_is_readable_and_survives_clean_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let b = batch_of("fast", 2, 5, ProducerStamp::NONE);
    store
        .append_at(&[write_of("t", 0, 0, b.clone())], false)
        .expect("append_at");
    assert_eq!(read_all(&store, "t", 0), vec![stored(&b, 0)]);
    let store = h.reopen(store);
    assert_eq!(
        read_all(&store, "t", 0),
        vec![stored(&b, 0)],
        "a clean close keeps non-durable commits"
    );
}

// ---- leader epochs -----------------------------------------------------------

/// The first batch of each newer epoch starts an epoch-table entry; the
/// epoch is written into every stored batch; "end offset for epoch"
/// answers as Kafka's does; and the table survives a restart.
pub fn epoch_table_records_first_offset_of_each_epoch<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let in_epoch = |base_offset, epoch, tag: &str, n| LogWrite {
        leader_epoch: epoch,
        ..write_of(
            "t",
            0,
            base_offset,
            batch_of(tag, n, 1, ProducerStamp::NONE),
        )
    };
    let writes = [
        in_epoch(0, 1, "a", 2),
        in_epoch(2, 1, "b", 1),
        in_epoch(3, 3, "c", 4),
        in_epoch(7, 5, "d", 1),
    ];
    store.append_at(&writes, true).expect("append_at");
    let store = h.reopen(store);
    let starts = |pairs: &[(i32, u64)]| -> Vec<EpochStart> {
        pairs
            .iter()
            .map(|&(epoch, start_offset)| EpochStart {
                epoch,
                start_offset,
            })
            .collect()
    };
    assert_eq!(
        store.epochs("t", 0).expect("epochs"),
        starts(&[(1, 0), (3, 3), (5, 7)])
    );
    let stored_epochs: Vec<i32> = read_all(&store, "t", 0)
        .iter()
        .map(|b| batch::validate(b).expect("valid").partition_leader_epoch)
        .collect();
    assert_eq!(stored_epochs, vec![1, 1, 3, 5]);
    assert_eq!(
        read_all(&store, "t", 0)[2],
        stored_in_epoch(&writes[2].batch, 3, 3)
    );
    let end = |epoch| store.end_offset_for_epoch("t", 0, epoch).expect("lookup");
    assert_eq!(end(0), None, "no epoch at or below 0");
    assert_eq!(
        end(1),
        Some(EpochEnd {
            epoch: 1,
            end_offset: 3
        })
    );
    assert_eq!(
        end(2),
        Some(EpochEnd {
            epoch: 1,
            end_offset: 3
        }),
        "an epoch without writes answers for the epoch before it"
    );
    assert_eq!(
        end(3),
        Some(EpochEnd {
            epoch: 3,
            end_offset: 7
        })
    );
    assert_eq!(
        end(9),
        Some(EpochEnd {
            epoch: 5,
            end_offset: 8
        }),
        "the latest epoch ends at the log end"
    );
}

/// A batch stamped with an epoch older than the newest one is a deposed
/// leader's write; it is refused with its group.
pub fn append_at_older_epoch_refuses_group<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    let in_epoch = |base_offset, epoch| LogWrite {
        leader_epoch: epoch,
        ..write_of(
            "t",
            0,
            base_offset,
            batch_of("e", 1, 1, ProducerStamp::NONE),
        )
    };
    store.append_at(&[in_epoch(0, 4)], true).expect("append_at");
    assert_refused(
        &store,
        &[
            write_of("t", 1, 0, batch_of("f", 1, 1, ProducerStamp::NONE)),
            in_epoch(1, 3),
        ],
        &WriteError::EpochBehind {
            topic: "t".to_owned(),
            partition: 0,
            epoch: 3,
            latest: 4,
        },
    );
}

// ---- truncation ----------------------------------------------------------------

/// Truncation removes every batch holding an offset at or after the
/// point (whole batches), the epoch-table entries from the new end on and
/// their time-index entries; the log then continues at the new end, and all
/// of it survives a restart.
pub fn truncate_from_removes_whole_batches_epochs_and_continues_at_new_end<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let in_epoch = |base_offset, epoch, tag: &str, n, ts| LogWrite {
        leader_epoch: epoch,
        ..write_of(
            "t",
            0,
            base_offset,
            batch_of(tag, n, ts, ProducerStamp::NONE),
        )
    };
    let writes = [
        in_epoch(0, 1, "a", 3, 10),
        in_epoch(3, 2, "b", 3, 20),
        in_epoch(6, 3, "c", 2, 30),
    ];
    store.append_at(&writes, true).expect("append_at");
    assert_eq!(
        store.truncate_from("t", 0, 4, &[]).expect("truncate"),
        3,
        "the batch holding offset 4 starts at 3 and goes whole"
    );
    let store = h.reopen(store);
    assert_eq!(
        offsets(&store, "t", 0),
        PartitionOffsets {
            log_start: 0,
            log_end: 3
        }
    );
    assert_eq!(
        read_all(&store, "t", 0),
        vec![stored_in_epoch(&writes[0].batch, 0, 1)]
    );
    assert_eq!(
        store.epochs("t", 0).expect("epochs"),
        vec![EpochStart {
            epoch: 1,
            start_offset: 0
        }]
    );
    assert_eq!(
        store.offset_for_timestamp("t", 0, 15).expect("time lookup"),
        3,
        "no time-index entry points past the new end"
    );
    assert_eq!(
        store
            .truncate_from("t", 0, 3, &[])
            .expect("truncate at the end"),
        3,
        "truncating at the log end changes nothing"
    );
    let again = in_epoch(3, 4, "d", 1, 40);
    store
        .append_at(std::slice::from_ref(&again), true)
        .expect("append_at");
    assert_eq!(
        read_all(&store, "t", 0),
        vec![
            stored_in_epoch(&writes[0].batch, 0, 1),
            stored_in_epoch(&again.batch, 3, 4)
        ]
    );
    assert_eq!(
        store.end_offset_for_epoch("t", 0, 2).expect("lookup"),
        Some(EpochEnd {
            epoch: 1,
            end_offset: 3
        }),
        "the truncated epoch 2 is gone from the table"
    );
}

/// Truncation at a batch boundary keeps the batch before it; truncation of
/// an unknown partition is a typed error.
pub fn truncate_from_at_batch_boundary_keeps_earlier_batches<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let a = batch_of("a", 2, 1, ProducerStamp::NONE);
    let b = batch_of("b", 2, 1, ProducerStamp::NONE);
    append_all(&store, &[("t", 0, a.clone()), ("t", 0, b)]);
    assert_eq!(store.truncate_from("t", 0, 2, &[]).expect("truncate"), 2);
    assert_eq!(read_all(&store, "t", 0), vec![stored(&a, 0)]);
    assert!(matches!(
        store.truncate_from("t", 9, 0, &[]),
        Err(ReadError::UnknownPartition { .. })
    ));
    assert!(matches!(
        store.truncate_from("nope", 0, 0, &[]),
        Err(ReadError::UnknownTopic(_))
    ));
}

/// A mend replaces a batch with a copy of the same offsets, durably, and
/// refuses anything else with nothing changed: other offsets, a bad CRC,
/// trailing bytes, an offset no batch starts at.
pub fn mend_batch_takes_only_a_whole_copy_of_the_same_offsets<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let a = batch_of("a", 2, 1, ProducerStamp::NONE);
    let b = batch_of("b", 3, 1, ProducerStamp::NONE);
    append_all(&store, &[("t", 0, a.clone()), ("t", 0, b.clone())]);
    let before = read_all(&store, "t", 0);
    let bytes = store.partition_bytes("t", 0).expect("bytes");
    let invalid = |offset: u64, batch: &[u8]| {
        matches!(
            store.mend_batch("t", 0, offset, batch),
            Err(WriteError::InvalidBatch(_))
        )
    };
    assert!(invalid(2, &stored(&a, 2)), "a copy of other offsets");
    assert!(invalid(0, &stored(&b, 0)), "a copy with more records");
    assert!(invalid(1, &stored(&a, 1)), "no batch starts at 1");
    assert!(
        invalid(2, &stored_in_epoch(&b, 2, 7)),
        "a copy of another epoch"
    );
    let mut rotten = BytesMut::from(&stored(&b, 2)[..]);
    let last = rotten.len() - 1;
    rotten[last] ^= 0x01;
    assert!(invalid(2, &rotten), "a copy failing its CRC");
    let mut trailing = BytesMut::from(&stored(&b, 2)[..]);
    trailing.extend_from_slice(b"x");
    assert!(invalid(2, &trailing), "trailing bytes");
    assert_eq!(read_all(&store, "t", 0), before, "refusals change nothing");

    store
        .mend_batch("t", 0, 2, &stored(&b, 2))
        .expect("a whole copy of the same offsets");
    let store = h.reopen(store);
    assert_eq!(read_all(&store, "t", 0), before);
    assert_eq!(store.partition_bytes("t", 0).expect("bytes"), bytes);
    assert_eq!(offsets(&store, "t", 0).log_end, 5);
    assert!(matches!(
        store.mend_batch("nope", 0, 0, &stored(&a, 0)),
        Err(WriteError::UnknownTopic(_))
    ));
}

// ---- read ------------------------------------------------------------------

/// A read bounded by `upper` (the high watermark) returns only batches
/// that end at or below it, and reports the log as ending there.
pub fn read_bounded_by_upper_returns_only_batches_below_it<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    for (tag, n) in [("a", 3), ("b", 4), ("c", 2)] {
        append_one(&store, "t", 0, batch_of(tag, n, 1, ProducerStamp::NONE));
    }
    let read = |from, upper| {
        let read = store.read("t", 0, from, usize::MAX, upper).expect("read");
        (base_offsets(&read.batches), read.offsets.log_end)
    };
    assert_eq!(read(0, 9), (vec![0, 3, 7], 9));
    assert_eq!(read(0, 7), (vec![0, 3], 7));
    assert_eq!(
        read(0, 6),
        (vec![0], 6),
        "a batch reaching past the bound is not returned"
    );
    assert_eq!(read(3, 6), (vec![], 6));
    assert_eq!(read(0, 0), (vec![], 0));
    assert_eq!(
        read(0, u64::MAX),
        (vec![0, 3, 7], 9),
        "a bound past the log end is the log end"
    );
}

/// Reading from an offset inside a batch returns that whole batch first.
pub fn read_from_middle_of_batch_returns_holding_batch<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    for (tag, n) in [("a", 3), ("b", 4), ("c", 2)] {
        append_one(&store, "t", 0, batch_of(tag, n, 1, ProducerStamp::NONE));
    }
    for (from, first_base) in [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 3),
        (5, 3),
        (6, 3),
        (7, 7),
        (8, 7),
    ] {
        let read = store
            .read("t", 0, from, usize::MAX, u64::MAX)
            .expect("read");
        assert_eq!(
            base_offsets(&read.batches).first(),
            Some(&first_base),
            "read from {from} should start with the batch at {first_base}"
        );
        assert_eq!(
            read.offsets,
            PartitionOffsets {
                log_start: 0,
                log_end: 9
            }
        );
    }
}

/// `max_bytes` stops a read before it is exceeded, but one batch is always
/// returned, however large.
pub fn read_max_bytes_bounds_batches_but_returns_at_least_one<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let b = batch_of("same", 2, 1, ProducerStamp::NONE);
    for _ in 0..4 {
        append_one(&store, "t", 0, b.clone());
    }
    let size = b.len();
    for (max_bytes, expected) in [
        (0, 1),
        (1, 1),
        (size, 1),
        (2 * size - 1, 1),
        (2 * size, 2),
        (3 * size + 1, 3),
        (usize::MAX, 4),
    ] {
        let read = store.read("t", 0, 0, max_bytes, u64::MAX).expect("read");
        assert_eq!(
            read.batches.len(),
            expected,
            "max_bytes {max_bytes} with {size}-byte batches"
        );
    }
    let tail = store.read("t", 0, 6, 0, u64::MAX).expect("read");
    assert_eq!(base_offsets(&tail.batches), vec![6]);
}

/// Reading at or past the log end returns no batches and the offsets.
pub fn read_at_or_past_log_end_returns_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    let empty = store.read("t", 0, 0, usize::MAX, u64::MAX).expect("read");
    assert!(empty.batches.is_empty(), "an empty partition reads nothing");
    append_one(&store, "t", 0, batch_of("a", 2, 1, ProducerStamp::NONE));
    for from in [2, 3, u64::MAX] {
        let read = store
            .read("t", 0, from, usize::MAX, u64::MAX)
            .expect("read");
        assert!(read.batches.is_empty(), "read from {from} past log end 2");
        assert_eq!(read.offsets.log_end, 2);
    }
}

/// Reads of unknown topics and partitions are typed errors.
pub fn read_unknown_topic_or_partition_returns_typed_error<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    assert!(matches!(
        store.read("nope", 0, 0, 100, u64::MAX),
        Err(ReadError::UnknownTopic(ref t)) if t == "nope"
    ));
    assert!(matches!(
        store.read("t", 2, 0, 100, u64::MAX),
        Err(ReadError::UnknownPartition { partition: 2, .. })
    ));
    assert!(matches!(
        store.offsets("nope", 0),
        Err(ReadError::UnknownTopic(_))
    ));
    assert!(matches!(
        store.offset_for_timestamp("t", 9, 0),
        Err(ReadError::UnknownPartition { partition: 9, .. })
    ));
}

// ---- durability ----------------------------------------------------------------

/// After a restart, offsets and every record are exactly as committed, and
/// appends continue at the old log end.
pub fn reopen_keeps_offsets_and_identical_records<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    for round in 0..3 {
        let group: Vec<(&str, u32, Bytes)> = (0..4)
            .map(|i| {
                (
                    "t",
                    i % 2,
                    batch_of(
                        &format!("r{round}-{i}"),
                        1 + i,
                        100 * i64::from(round),
                        ProducerStamp::NONE,
                    ),
                )
            })
            .collect();
        append_all(&store, &group);
    }
    let before: Vec<(PartitionOffsets, Vec<Bytes>)> = (0..2)
        .map(|p| (offsets(&store, "t", p), read_all(&store, "t", p)))
        .collect();
    let store = h.reopen(store);
    for (p, (offsets_before, batches_before)) in (0..2).zip(&before) {
        assert_eq!(
            &offsets(&store, "t", p),
            offsets_before,
            "offsets of partition {p} changed across reopen"
        );
        let after = read_all(&store, "t", p);
        assert_eq!(
            &after, batches_before,
            "records of partition {p} changed across reopen"
        );
        for b in &after {
            batch::records(b).expect("a stored batch decodes after reopen");
        }
    }
    let next = append_one(&store, "t", 0, batch_of("next", 1, 1, ProducerStamp::NONE));
    assert_eq!(
        next, before[0].0.log_end,
        "appends continue at the old log end"
    );
}

// ---- time index ----------------------------------------------------------------

/// Seek by time returns the first batch that may hold a record at or after
/// the timestamp, or the log end.
pub fn offset_for_timestamp_returns_first_batch_at_or_after<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    assert_eq!(
        store.offset_for_timestamp("t", 0, 0).expect("lookup"),
        0,
        "an empty partition answers its log end"
    );
    // Bases 0, 2, 4, 6 with max timestamps 100, 300, 200, 400.
    for ts in [100, 300, 200, 400] {
        append_one(&store, "t", 0, batch_of("x", 2, ts, ProducerStamp::NONE));
    }
    for (ts, expected) in [
        (i64::MIN, 0),
        (100, 0),
        (101, 2),
        (150, 2),
        (300, 2),
        (301, 6),
        (400, 6),
        (401, 8),
        (i64::MAX, 8),
    ] {
        assert_eq!(
            store.offset_for_timestamp("t", 0, ts).expect("lookup"),
            expected,
            "offset_for_timestamp({ts})"
        );
    }
}

// ---- retention ----------------------------------------------------------------

/// Time retention deletes expired batches from the front and stops at the
/// first unexpired one, even if older-stamped batches follow it.
pub fn retention_by_time_deletes_only_expired_batches<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(
        &store,
        &TopicSpec {
            retention_ms: 1_000,
            ..spec("t", 1)
        },
    );
    create(&store, &spec("forever", 1));
    let batches: Vec<Bytes> = [100, 200, 300, 50]
        .iter()
        .map(|ts| batch_of("x", 2, *ts, ProducerStamp::NONE))
        .collect();
    for b in &batches {
        append_one(&store, "t", 0, b.clone());
        append_one(&store, "forever", 0, b.clone());
    }
    let nothing = store.enforce_retention(1_100).expect("retention");
    assert_eq!(nothing.batches, 0, "nothing is older than 1000 ms at 1100");
    let report = store.enforce_retention(1_250).expect("retention");
    assert_eq!(report.batches, 2, "batches stamped 100 and 200 expire");
    assert_eq!(
        report.bytes,
        (batches[0].len() + batches[1].len()) as u64,
        "reported bytes are the deleted batches' sizes"
    );
    assert_eq!(
        offsets(&store, "t", 0),
        PartitionOffsets {
            log_start: 4,
            log_end: 8
        }
    );
    assert_eq!(
        read_all(&store, "t", 0),
        vec![stored(&batches[2], 4), stored(&batches[3], 6)],
        "the unexpired batch and everything after it stay"
    );
    assert_eq!(
        read_all(&store, "forever", 0).len(),
        4,
        "topics without retention keep everything"
    );
}

/// Size retention deletes the oldest batches only while the partition stays
/// at or above `retention_bytes` without them.
pub fn retention_by_bytes_keeps_partition_at_limit<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let b = batch_of("same", 3, 1, ProducerStamp::NONE);
    let size = b.len() as i64;
    create(
        &store,
        &TopicSpec {
            retention_bytes: 2 * size,
            ..spec("exact", 1)
        },
    );
    create(
        &store,
        &TopicSpec {
            retention_bytes: 2 * size + 1,
            ..spec("over", 1)
        },
    );
    create(
        &store,
        &TopicSpec {
            retention_bytes: 1,
            ..spec("tiny", 1)
        },
    );
    for _ in 0..4 {
        append_one(&store, "exact", 0, b.clone());
        append_one(&store, "over", 0, b.clone());
    }
    append_one(&store, "tiny", 0, b.clone());
    let report = store.enforce_retention(0).expect("retention");
    assert_eq!(report.batches, 3, "2 from 'exact', 1 from 'over'");
    assert_eq!(report.bytes, 3 * size as u64);
    assert_eq!(base_offsets(&read_all(&store, "exact", 0)), vec![6, 9]);
    assert_eq!(base_offsets(&read_all(&store, "over", 0)), vec![3, 6, 9]);
    assert_eq!(
        read_all(&store, "tiny", 0).len(),
        1,
        "a lone batch larger than the limit stays"
    );
    assert_eq!(
        store.enforce_retention(0).expect("retention").batches,
        0,
        "retention is idempotent"
    );
}

/// A pass deletes about [`DELETE_STEP_BYTES`] at most, so the writer's
/// other work waits one step behind it, and says when more is due; passes
/// repeated until none is due delete what one unbounded pass would.
pub fn retention_of_a_large_backlog_deletes_a_step_a_pass_and_says_more_is_due<H: Harness>(
    h: &mut H,
) {
    let store = h.fresh();
    let batch = {
        let mut builder = BatchBuilder::new();
        builder.push(&Record::new(vec![b'x'; 256 << 10], 1));
        builder.finish(ProducerStamp::NONE)
    };
    let size = batch.len() as u64;
    create(
        &store,
        &TopicSpec {
            retention_bytes: 1,
            ..spec("big", 2)
        },
    );
    for partition in 0..2 {
        for _ in 0..40 {
            append_one(&store, "big", partition, batch.clone());
        }
    }
    let mut reports = Vec::new();
    loop {
        let report = store.enforce_retention(0).expect("retention");
        reports.push(report);
        assert!(reports.len() <= 10, "retention passes never end");
        if !report.more {
            break;
        }
        assert!(
            (DELETE_STEP_BYTES..DELETE_STEP_BYTES + size).contains(&report.bytes),
            "a pass with more due stops at its step: {report:?}"
        );
    }
    assert!(reports.len() >= 3, "20 MiB take several steps: {reports:?}");
    let batches: u64 = reports.iter().map(|r| r.batches).sum();
    assert_eq!(batches, 78, "all but each partition's last batch go");
    for partition in 0..2 {
        assert_eq!(
            offsets(&store, "big", partition),
            PartitionOffsets {
                log_start: 39,
                log_end: 40
            }
        );
    }
    let after = store.enforce_retention(0).expect("retention");
    assert_eq!((after.batches, after.more), (0, false));
}

/// A hold keeps the batches at or after its offset that retention would
/// delete, while the partition stays within the hold's bytes; past them the
/// oldest held batches go, and the hold is told how many records and bytes
/// it lost. Batches before the hold go as retention says.
pub fn retention_hold_keeps_undelivered_batches_up_to_its_cap_and_counts_the_rest<H: Harness>(
    h: &mut H,
) {
    let store = h.fresh();
    let b = batch_of("same", 3, 1, ProducerStamp::NONE);
    let size = b.len() as u64;
    create(
        &store,
        &TopicSpec {
            retention_bytes: size as i64,
            ..spec("t", 1)
        },
    );
    for _ in 0..6 {
        append_one(&store, "t", 0, b.clone());
    }
    // Offsets 0..18 in batches of 3; the holder has 0..4 (mid-batch).
    let hold = |max_bytes| RetentionHold {
        holder: "m".into(),
        topic: "t".into(),
        partition: 0,
        from: 4,
        max_bytes,
        dropped_records: 0,
        dropped_bytes: 0,
    };
    let mut holds = vec![hold(6 * size)];
    let report = store
        .enforce_retention_holding(0, &mut holds)
        .expect("retention");
    assert_eq!(report.batches, 1, "only the delivered batch 0..3 goes");
    assert_eq!(
        base_offsets(&read_all(&store, "t", 0)),
        vec![3, 6, 9, 12, 15]
    );
    assert_eq!((holds[0].dropped_records, holds[0].dropped_bytes), (0, 0));
    let mut holds = vec![hold(3 * size)];
    let report = store
        .enforce_retention_holding(0, &mut holds)
        .expect("retention");
    assert_eq!(report.batches, 2, "the oldest held batches go past the cap");
    assert_eq!(base_offsets(&read_all(&store, "t", 0)), vec![9, 12, 15]);
    assert_eq!(
        (holds[0].dropped_records, holds[0].dropped_bytes),
        (2 + 3, 2 * size),
        "records 4, 5 of batch 3..6 and all of 6..9"
    );
    let mut other = vec![RetentionHold {
        topic: "other".into(),
        ..hold(0)
    }];
    let report = store
        .enforce_retention_holding(0, &mut other)
        .expect("retention");
    assert_eq!(
        report.batches, 2,
        "a hold on another topic holds nothing here"
    );
    assert_eq!(other[0].dropped_records, 0);
}

/// `skip_to` moves the log end forward without records; appends continue
/// there, reads skip the gap, and it survives a reopen. Backwards is a
/// no-op.
pub fn skip_to_moves_the_log_end_over_offsets_that_never_hold_records<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    let b = batch_of("v", 2, 1, ProducerStamp::NONE);
    append_one(&store, "t", 0, b.clone());
    assert_eq!(store.skip_to("t", 0, 10).expect("skip"), 10);
    assert_eq!(store.skip_to("t", 0, 5).expect("skip back"), 10);
    assert_eq!(
        offsets(&store, "t", 0),
        PartitionOffsets {
            log_start: 0,
            log_end: 10
        }
    );
    assert_eq!(store.skip_to("t", 1, 7).expect("skip empty"), 7);
    assert_eq!(
        offsets(&store, "t", 1),
        PartitionOffsets {
            log_start: 7,
            log_end: 7
        },
        "an empty partition starts where it now ends"
    );
    let store = h.reopen(store);
    assert_eq!(append_one(&store, "t", 0, b.clone()), 10);
    assert_eq!(base_offsets(&read_all(&store, "t", 0)), vec![0, 10]);
    assert!(matches!(
        store.skip_to("nope", 0, 1),
        Err(ReadError::UnknownTopic(_))
    ));
}

/// No log reaches past [`crate::MAX_OFFSET`] (Kafka's offsets are `i64`):
/// a skip or a batch that would is refused with a typed error and changes
/// nothing, a batch ending exactly there is stored, and dedup state of a
/// producer that is not idempotent (a negative id) is refused.
pub fn offsets_stop_at_the_largest_a_log_can_reach<H: Harness>(h: &mut H) {
    let max = crate::MAX_OFFSET;
    let store = h.fresh();
    create(&store, &spec("t", 1));
    assert!(matches!(
        store.skip_to("t", 0, max + 1),
        Err(ReadError::OffsetTooLarge(offset)) if offset == max + 1
    ));
    assert_eq!(store.skip_to("t", 0, max - 1).expect("skip"), max - 1);
    let two = write_of("t", 0, max - 1, batch_of("v", 2, 1, ProducerStamp::NONE));
    assert!(matches!(
        store.append_at(&[two], true),
        Err(WriteError::InvalidBatch(_))
    ));
    let mut not_idempotent = write_of("t", 0, max - 1, batch_of("v", 1, 1, ProducerStamp::NONE));
    not_idempotent.producer = Some((-1, Bytes::from_static(b"state")));
    assert!(matches!(
        store.append_at(&[not_idempotent], true),
        Err(WriteError::InvalidBatch(_))
    ));
    assert_eq!(offsets(&store, "t", 0).log_end, max - 1, "nothing applied");
    let one = batch_of("v", 1, 1, ProducerStamp::NONE);
    assert_eq!(append_one(&store, "t", 0, one.clone()), max - 1);
    let store = h.reopen(store);
    assert_eq!(offsets(&store, "t", 0).log_end, max);
    assert_eq!(read_all(&store, "t", 0), vec![stored(&one, max - 1)]);
}

/// Deleting every batch keeps the log end; the next append continues there
/// (offsets are never reused), also after a restart.
pub fn retention_of_everything_keeps_log_end_and_never_reuses_offsets<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(
        &store,
        &TopicSpec {
            retention_ms: 10,
            ..spec("t", 1)
        },
    );
    for ts in [1, 2, 3] {
        append_one(&store, "t", 0, batch_of("old", 2, ts, ProducerStamp::NONE));
    }
    assert_eq!(
        store.enforce_retention(1_000).expect("retention").batches,
        3
    );
    let empty = PartitionOffsets {
        log_start: 6,
        log_end: 6,
    };
    assert_eq!(offsets(&store, "t", 0), empty);
    assert!(read_all(&store, "t", 0).is_empty());
    assert_eq!(store.offset_for_timestamp("t", 0, 0).expect("lookup"), 6);
    let store = h.reopen(store);
    assert_eq!(
        offsets(&store, "t", 0),
        empty,
        "log end survives reopen when empty"
    );
    let b = batch_of("new", 1, 2_000, ProducerStamp::NONE);
    assert_eq!(
        append_one(&store, "t", 0, b.clone()),
        6,
        "offsets are never reused"
    );
    assert_eq!(read_all(&store, "t", 0), vec![stored(&b, 6)]);
    assert_eq!(store.offset_for_timestamp("t", 0, 0).expect("lookup"), 6);
}

/// After retention, a seek by time for a timestamp the remaining batches may
/// hold still lands on them, even when the deleted batch carried the
/// largest timestamp so far.
pub fn retention_keeps_timestamp_lookup_conservative<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let late = batch_of("late", 2, 100, ProducerStamp::NONE);
    let early = batch_of("erly", 2, 50, ProducerStamp::NONE);
    assert_eq!(late.len(), early.len(), "the suite needs equal sizes here");
    create(
        &store,
        &TopicSpec {
            retention_bytes: late.len() as i64,
            ..spec("t", 1)
        },
    );
    append_one(&store, "t", 0, late);
    append_one(&store, "t", 0, early);
    assert_eq!(store.enforce_retention(0).expect("retention").batches, 1);
    assert_eq!(offsets(&store, "t", 0).log_start, 2);
    for (ts, expected) in [(40, 2), (50, 2), (100, 2), (101, 4)] {
        assert_eq!(
            store.offset_for_timestamp("t", 0, ts).expect("lookup"),
            expected,
            "offset_for_timestamp({ts}) after retention"
        );
    }
    append_one(&store, "t", 0, batch_of("mid", 1, 80, ProducerStamp::NONE));
    append_one(&store, "t", 0, batch_of("new", 1, 200, ProducerStamp::NONE));
    for (ts, expected) in [(60, 2), (150, 5), (201, 6)] {
        assert_eq!(
            store.offset_for_timestamp("t", 0, ts).expect("lookup"),
            expected,
            "offset_for_timestamp({ts}) after more appends"
        );
    }
}

/// A read from below the log start starts at the log start.
pub fn read_below_log_start_reads_from_log_start<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(
        &store,
        &TopicSpec {
            retention_ms: 100,
            ..spec("t", 1)
        },
    );
    for ts in [1, 2, 500] {
        append_one(&store, "t", 0, batch_of("x", 3, ts, ProducerStamp::NONE));
    }
    store.enforce_retention(300).expect("retention");
    for from in [0, 1, 5, 6] {
        let read = store
            .read("t", 0, from, usize::MAX, u64::MAX)
            .expect("read");
        assert_eq!(
            base_offsets(&read.batches),
            vec![6],
            "read from {from} below log start 6"
        );
        assert_eq!(read.offsets.log_start, 6);
    }
}

// ---- producer ids ----------------------------------------------------------------

/// Producer ids are never handed out twice, across restarts.
pub fn allocate_producer_id_is_unique_across_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let mut seen: Vec<i64> = (0..3)
        .map(|_| store.allocate_producer_id().expect("producer id"))
        .collect();
    let store = h.reopen(store);
    seen.extend((0..3).map(|_| store.allocate_producer_id().expect("producer id")));
    assert!(
        seen.iter().all(|id| *id >= 0),
        "ids are non-negative: {seen:?}"
    );
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "duplicate producer id in {seen:?}"
    );
}

// ---- consumer-group offsets ------------------------------------------------------

fn offset_commit(group: &str, topic: &str, partition: u32, offset: u64) -> OffsetCommit {
    OffsetCommit {
        group: group.to_owned(),
        topic: topic.to_owned(),
        partition,
        offset,
    }
}

fn committed_offset(topic: &str, partition: u32, offset: u64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.to_owned(),
        partition,
        offset,
    }
}

fn commit_all(store: &impl LogStore, commits: &[OffsetCommit]) {
    store
        .commit_offsets(commits)
        .unwrap_or_else(|e| panic!("commit_offsets({commits:?}) failed: {e}"));
}

fn committed(store: &impl LogStore, group: &str) -> Vec<CommittedOffset> {
    store
        .committed_offsets(group)
        .unwrap_or_else(|e| panic!("committed_offsets({group}) failed: {e}"))
}

fn groups(store: &impl LogStore) -> Vec<String> {
    store.groups().expect("groups")
}

/// A group reads back what it committed, sorted by topic and partition
/// whatever the commit order, and never another group's offsets, even one
/// whose name it prefixes.
pub fn group_commit_then_read_back_returns_offsets_sorted_per_group<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("b", 2));
    create(&store, &spec("a", 1));
    commit_all(
        &store,
        &[
            offset_commit("g1", "b", 1, 7),
            offset_commit("g1", "a", 0, 3),
            offset_commit("g", "b", 0, 1),
            offset_commit("g1", "b", 0, 5),
        ],
    );
    assert_eq!(
        committed(&store, "g1"),
        vec![
            committed_offset("a", 0, 3),
            committed_offset("b", 0, 5),
            committed_offset("b", 1, 7),
        ]
    );
    assert_eq!(committed(&store, "g"), vec![committed_offset("b", 0, 1)]);
    assert_eq!(committed(&store, "nobody"), vec![], "an unknown group");
    assert_eq!(committed(&store, "not/a group"), vec![], "an invalid name");
    commit_all(&store, &[]);
    assert_eq!(
        committed(&store, "g1").len(),
        3,
        "an empty commit is a no-op"
    );
}

/// A later commit for the same group, topic and partition replaces the
/// earlier one: in slice order within a call, and across calls, backwards
/// too (a reset to an earlier offset is a commit like any other).
pub fn group_commit_later_entry_replaces_earlier<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    commit_all(
        &store,
        &[
            offset_commit("g", "t", 0, 10),
            offset_commit("g", "t", 1, 4),
            offset_commit("g", "t", 0, 12),
        ],
    );
    assert_eq!(
        committed(&store, "g"),
        vec![committed_offset("t", 0, 12), committed_offset("t", 1, 4)],
        "the later entry of one call wins"
    );
    commit_all(&store, &[offset_commit("g", "t", 0, 2)]);
    assert_eq!(
        committed(&store, "g"),
        vec![committed_offset("t", 0, 2), committed_offset("t", 1, 4)],
        "a later call replaces, even with a smaller offset"
    );
}

/// `groups()` lists each group that has an offset once, sorted.
pub fn group_list_returns_groups_with_offsets_sorted<H: Harness>(h: &mut H) {
    let store = h.fresh();
    assert_eq!(groups(&store), Vec::<String>::new());
    create(&store, &spec("t", 2));
    commit_all(
        &store,
        &[
            offset_commit("zeta", "t", 0, 1),
            offset_commit("alpha", "t", 1, 1),
            offset_commit("mid", "t", 0, 1),
            offset_commit("mid", "t", 1, 1),
        ],
    );
    assert_eq!(groups(&store), vec!["alpha", "mid", "zeta"]);
}

/// `delete_group` removes every offset of the group and says it had some;
/// other groups keep theirs; a group without offsets reports false.
pub fn group_delete_removes_offsets_and_reports_whether_any<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    commit_all(
        &store,
        &[
            offset_commit("gone", "t", 0, 5),
            offset_commit("gone", "t", 1, 6),
            offset_commit("kept", "t", 0, 7),
        ],
    );
    assert!(store.delete_group("gone").expect("delete_group"));
    assert_eq!(committed(&store, "gone"), vec![]);
    assert_eq!(committed(&store, "kept"), vec![committed_offset("t", 0, 7)]);
    assert_eq!(groups(&store), vec!["kept"]);
    assert!(
        !store.delete_group("gone").expect("delete_group"),
        "a second delete finds nothing"
    );
    assert!(
        !store.delete_group("never").expect("delete_group"),
        "a group never committed has nothing to delete"
    );
}

/// Committed offsets and group deletions are durable: a restart keeps them.
pub fn group_offsets_survive_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 3));
    commit_all(
        &store,
        &[
            offset_commit("g", "t", 2, 30),
            offset_commit("g", "t", 0, 10),
            offset_commit("old", "t", 0, 1),
        ],
    );
    assert!(store.delete_group("old").expect("delete_group"));
    let store = h.reopen(store);
    assert_eq!(
        committed(&store, "g"),
        vec![committed_offset("t", 0, 10), committed_offset("t", 2, 30)]
    );
    assert_eq!(groups(&store), vec!["g"], "the deleted group stays deleted");
}

/// Deleting a topic removes its offsets from every group, keeps other
/// topics' offsets, drops a group left with none from `groups()`, and a
/// topic recreated under the name starts with no committed offsets, so no
/// group is pointed into a log that no longer exists.
pub fn topic_delete_removes_its_offsets_from_every_group<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("doomed", 2));
    create(&store, &spec("other", 1));
    commit_all(
        &store,
        &[
            offset_commit("both", "doomed", 1, 9),
            offset_commit("both", "other", 0, 4),
            offset_commit("only", "doomed", 0, 3),
        ],
    );
    store.delete_topic("doomed").expect("delete_topic");
    assert_eq!(
        committed(&store, "both"),
        vec![committed_offset("other", 0, 4)]
    );
    assert_eq!(committed(&store, "only"), vec![]);
    assert_eq!(groups(&store), vec!["both"]);
    create(&store, &spec("doomed", 2));
    assert_eq!(
        committed(&store, "both"),
        vec![committed_offset("other", 0, 4)]
    );
}

/// A commit with an invalid group name or an unknown topic or partition in
/// any entry is refused with that entry's typed error, and none of its
/// entries are stored, not even the valid ones before it.
pub fn group_commit_unknown_target_or_invalid_group_applies_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 2));
    commit_all(&store, &[offset_commit("g", "t", 0, 1)]);
    let good = offset_commit("g", "t", 0, 50);
    let unknown_topic = store.commit_offsets(&[good.clone(), offset_commit("g", "nope", 0, 1)]);
    assert!(
        matches!(unknown_topic, Err(CommitError::UnknownTopic(ref t)) if t == "nope"),
        "expected UnknownTopic, got {unknown_topic:?}"
    );
    let unknown_partition = store.commit_offsets(&[good.clone(), offset_commit("g", "t", 2, 1)]);
    assert!(
        matches!(
            unknown_partition,
            Err(CommitError::UnknownPartition { ref topic, partition: 2 }) if topic == "t"
        ),
        "expected UnknownPartition, got {unknown_partition:?}"
    );
    for bad in ["", "a/b", ".."] {
        let invalid = store.commit_offsets(&[good.clone(), offset_commit(bad, "t", 1, 1)]);
        assert!(
            matches!(invalid, Err(CommitError::InvalidGroup(_))),
            "group {bad:?}: expected InvalidGroup, got {invalid:?}"
        );
    }
    assert_eq!(
        committed(&store, "g"),
        vec![committed_offset("t", 0, 1)],
        "a refused commit applies none of its entries"
    );
    assert_eq!(groups(&store), vec!["g"]);
}

// ---- plugin registry -------------------------------------------------------------

fn put_plugin(
    store: &impl LogStore,
    name: &str,
    kind: &str,
    hash: &str,
    wasm: &[u8],
    now_ms: i64,
) -> PluginInfo {
    store
        .put_plugin(name, kind, hash, wasm, now_ms)
        .unwrap_or_else(|e| panic!("put_plugin({name}) failed: {e}"))
}

fn plugin_info(
    name: &str,
    version: u32,
    kind: &str,
    hash: &str,
    wasm: &[u8],
    ms: i64,
) -> PluginInfo {
    PluginInfo {
        name: name.to_owned(),
        version,
        hash: hash.to_owned(),
        kind: kind.to_owned(),
        size_bytes: wasm.len() as u64,
        added_ms: ms,
    }
}

/// A new plugin is version 1; each replacement bumps the version and keeps
/// only the new bytes; the list is sorted and carries no bytes; a removed
/// plugin is gone, and its name starts again at version 1.
pub fn plugin_put_replace_get_list_and_remove_keep_versions<H: Harness>(h: &mut H) {
    let store = h.fresh();
    assert_eq!(store.plugins().expect("plugins"), vec![]);
    assert_eq!(store.plugin("redact").expect("plugin"), None);
    let first = put_plugin(&store, "redact", "transform", "aa", b"wasm-v1", 1_000);
    assert_eq!(
        first,
        plugin_info("redact", 1, "transform", "aa", b"wasm-v1", 1_000)
    );
    let filter = put_plugin(&store, "drop-nulls", "filter", "bb", b"filter", 1_001);
    assert_eq!(
        store.plugins().expect("plugins"),
        vec![filter.clone(), first.clone()],
        "plugins() lists every plugin sorted by name"
    );
    assert_eq!(
        store.plugin("redact").expect("plugin"),
        Some((first, b"wasm-v1".to_vec()))
    );
    let second = put_plugin(&store, "redact", "filter", "cc", b"wasm-version-2", 2_000);
    assert_eq!(
        second,
        plugin_info("redact", 2, "filter", "cc", b"wasm-version-2", 2_000),
        "a replacement bumps the version and describes the new bytes"
    );
    assert_eq!(
        store.plugin("redact").expect("plugin"),
        Some((second, b"wasm-version-2".to_vec())),
        "only the new bytes are kept"
    );
    assert_eq!(
        put_plugin(&store, "redact", "filter", "dd", b"v3", 3_000).version,
        3
    );
    assert!(store.remove_plugin("redact").expect("remove_plugin"));
    assert_eq!(store.plugin("redact").expect("plugin"), None);
    assert!(
        !store.remove_plugin("redact").expect("remove_plugin"),
        "a second remove finds nothing"
    );
    assert_eq!(store.plugins().expect("plugins"), vec![filter]);
    assert_eq!(
        put_plugin(&store, "redact", "filter", "ee", b"again", 4_000).version,
        1,
        "a removed name is new again"
    );
}

/// Uploads, replacements and removals are durable.
pub fn plugin_registry_survives_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    put_plugin(&store, "a", "filter", "h1", b"one", 1);
    put_plugin(&store, "b", "transform", "h2", b"two", 2);
    let replaced = put_plugin(&store, "a", "transform", "h3", b"three", 3);
    assert!(store.remove_plugin("b").expect("remove_plugin"));
    let store = h.reopen(store);
    assert_eq!(store.plugins().expect("plugins"), vec![replaced.clone()]);
    assert_eq!(
        store.plugin("a").expect("plugin"),
        Some((replaced, b"three".to_vec()))
    );
    assert_eq!(store.plugin("b").expect("plugin"), None);
    assert_eq!(
        put_plugin(&store, "a", "filter", "h4", b"four", 4).version,
        3,
        "versions continue after a restart"
    );
}

// ---- configuration blobs ---------------------------------------------------------

fn put_config(store: &impl LogStore, kind: ConfigKind, key: &str, value: Option<&[u8]>) {
    store
        .put_config(kind, key, value)
        .unwrap_or_else(|e| panic!("put_config({kind:?}, {key}) failed: {e}"));
}

fn configs(store: &impl LogStore, kind: ConfigKind) -> Vec<(String, Vec<u8>)> {
    store
        .configs(kind)
        .unwrap_or_else(|e| panic!("configs({kind:?}) failed: {e}"))
}

fn blob(key: &str, value: &[u8]) -> (String, Vec<u8>) {
    (key.to_owned(), value.to_vec())
}

/// Blobs are listed per kind, sorted by key; a put replaces, `None`
/// deletes (a missing key is no error), one kind never shows another's
/// blob under the same key, and all of it survives a restart.
pub fn config_put_list_replace_and_delete_per_kind<H: Harness>(h: &mut H) {
    let store = h.fresh();
    assert_eq!(configs(&store, ConfigKind::Ingest), vec![]);
    put_config(&store, ConfigKind::Ingest, "t", Some(b"chain-t"));
    put_config(&store, ConfigKind::Pipeline, "p2", Some(b"def-2"));
    put_config(&store, ConfigKind::Pipeline, "t", Some(b"def-t"));
    put_config(&store, ConfigKind::Ingest, "a", Some(b"chain-a"));
    assert_eq!(
        configs(&store, ConfigKind::Ingest),
        vec![blob("a", b"chain-a"), blob("t", b"chain-t")]
    );
    assert_eq!(
        configs(&store, ConfigKind::Pipeline),
        vec![blob("p2", b"def-2"), blob("t", b"def-t")]
    );
    put_config(&store, ConfigKind::Pipeline, "p2", Some(b"def-2-new"));
    put_config(&store, ConfigKind::Ingest, "t", None);
    put_config(&store, ConfigKind::Ingest, "missing", None);
    let store = h.reopen(store);
    assert_eq!(
        configs(&store, ConfigKind::Ingest),
        vec![blob("a", b"chain-a")]
    );
    assert_eq!(
        configs(&store, ConfigKind::Pipeline),
        vec![blob("p2", b"def-2-new"), blob("t", b"def-t")],
        "deleting an ingest blob keeps the pipeline blob of the same key"
    );
}

/// Deleting a topic deletes its ingest chain and its mirror binding in
/// the same transaction, and nothing else: not another topic's, not a
/// pipeline or an edge mirror that shares its name. A topic recreated
/// under the name starts without a chain and unbound.
pub fn topic_delete_removes_its_ingest_config_only<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("t", 1));
    create(&store, &spec("t2", 1));
    put_config(&store, ConfigKind::Ingest, "t", Some(b"chain-t"));
    put_config(&store, ConfigKind::Ingest, "t2", Some(b"chain-t2"));
    put_config(&store, ConfigKind::Pipeline, "t", Some(b"def-t"));
    put_config(&store, ConfigKind::MirrorDestination, "t", Some(b"m"));
    put_config(&store, ConfigKind::MirrorDestination, "t2", Some(b"m2"));
    put_config(&store, ConfigKind::Mirror, "t", Some(b"edge-def"));
    store.delete_topic("t").expect("delete_topic");
    assert_eq!(
        configs(&store, ConfigKind::Ingest),
        vec![blob("t2", b"chain-t2")]
    );
    assert_eq!(
        configs(&store, ConfigKind::MirrorDestination),
        vec![blob("t2", b"m2")]
    );
    assert_eq!(
        configs(&store, ConfigKind::Mirror),
        vec![blob("t", b"edge-def")]
    );
    assert_eq!(
        configs(&store, ConfigKind::Pipeline),
        vec![blob("t", b"def-t")]
    );
    create(&store, &spec("t", 1));
    assert_eq!(
        configs(&store, ConfigKind::Ingest),
        vec![blob("t2", b"chain-t2")]
    );
}

// ---- pipelines -------------------------------------------------------------------

/// Source offsets one scripted pipeline step consumes.
const SOURCE_OFFSETS_PER_STEP: u64 = 10;

/// Step `i` of the scripted pipeline the pipeline checks run, reading
/// source partition 0 and writing topic `out` (2 partitions) at `log_ends`,
/// which it advances: one batch of `1 + i % 3` records to partition 0, and
/// on odd steps 2 records to partition 1; state `steps` becomes `i + 1`,
/// and `even` is set to `i` on even steps and deleted on odd ones; the
/// position moves to `SOURCE_OFFSETS_PER_STEP * (i + 1)`.
fn pipeline_step(pipeline: &str, i: u32, log_ends: &mut [u64; 2]) -> PipelineCommit {
    let ts = i64::from(i);
    let mut output = |partition: u32, tag: &str, count: u32| {
        let end = &mut log_ends[partition as usize];
        let base_offset = *end;
        *end += u64::from(count);
        let batch = batch_of(
            &format!("{pipeline}-{i}-{tag}"),
            count,
            ts,
            ProducerStamp::NONE,
        );
        write_of("out", partition, base_offset, batch)
    };
    let mut writes = vec![output(0, "a", 1 + i % 3)];
    if i % 2 == 1 {
        writes.push(output(1, "b", 2));
    }
    PipelineCommit {
        pipeline: pipeline.to_owned(),
        writes,
        state: vec![
            (b"steps".to_vec(), Some((i + 1).to_be_bytes().to_vec())),
            (
                b"even".to_vec(),
                i.is_multiple_of(2).then(|| i.to_be_bytes().to_vec()),
            ),
        ],
        source_partition: 0,
        source_next_offset: SOURCE_OFFSETS_PER_STEP * u64::from(i + 1),
    }
}

/// The first `steps` steps of the scripted pipeline, each writing where the
/// steps before it left the logs.
fn pipeline_script(pipeline: &str, steps: u32) -> Vec<PipelineCommit> {
    let mut log_ends = [0u64; 2];
    (0..steps)
        .map(|i| pipeline_step(pipeline, i, &mut log_ends))
        .collect()
}

/// Commits one step, checking it is accepted.
fn commit_step(store: &impl LogStore, step: &PipelineCommit) {
    store
        .commit_pipeline(step)
        .unwrap_or_else(|e| panic!("commit_pipeline({}) failed: {e}", step.source_next_offset));
}

/// Asserts that the store holds exactly the first `steps` steps of the
/// scripted pipeline: every output of those steps and nothing else, their
/// plugin state, and their position.
fn assert_pipeline_steps(store: &impl LogStore, pipeline: &str, steps: u32, context: &str) {
    let mut outputs: [Vec<Bytes>; 2] = Default::default();
    for step in pipeline_script(pipeline, steps) {
        for write in &step.writes {
            outputs[write.partition as usize].push(stored(&write.batch, write.base_offset));
        }
    }
    for (partition, expected) in (0..).zip(&outputs) {
        assert_eq!(
            &read_all(store, "out", partition),
            expected,
            "{context}: outputs in out/{partition}"
        );
        let log_end: u64 = expected.iter().map(batch_records).sum();
        assert_eq!(
            offsets(store, "out", partition).log_end,
            log_end,
            "{context}: log end of out/{partition}"
        );
    }
    let positions: Vec<(u32, u64)> = if steps == 0 {
        vec![]
    } else {
        vec![(0, SOURCE_OFFSETS_PER_STEP * u64::from(steps))]
    };
    assert_eq!(
        store.pipeline_positions(pipeline).expect("positions"),
        positions,
        "{context}: position"
    );
    let state = |key: &[u8]| store.pipeline_state(pipeline, key).expect("state");
    let last = steps.checked_sub(1);
    assert_eq!(
        state(b"steps"),
        last.map(|_| steps.to_be_bytes().to_vec()),
        "{context}: state 'steps'"
    );
    assert_eq!(
        state(b"even"),
        last.filter(|i| i.is_multiple_of(2))
            .map(|i| i.to_be_bytes().to_vec()),
        "{context}: state 'even'"
    );
}

/// A step's outputs, state changes (sets and deletes, in order) and
/// position are all applied, each step's outputs get dense offsets after
/// the previous step's, one pipeline's data is invisible to another's, and
/// all of it survives a restart.
pub fn pipeline_commit_applies_outputs_state_and_position_and_survives_reopen<H: Harness>(
    h: &mut H,
) {
    let store = h.fresh();
    create(&store, &spec("out", 2));
    let script = pipeline_script("p", 4);
    for (i, step) in (1..).zip(&script[..3]) {
        commit_step(&store, step);
        assert_pipeline_steps(&store, "p", i, &format!("after step {i}"));
    }
    assert_eq!(store.pipeline_positions("p2").expect("positions"), vec![]);
    assert_eq!(store.pipeline_state("p2", b"steps").expect("state"), None);
    let store = h.reopen(store);
    assert_pipeline_steps(&store, "p", 3, "after a restart");
    commit_step(&store, &script[3]);
    assert_pipeline_steps(&store, "p", 4, "after a step past the restart");
}

/// A step with any refused output (unknown topic or partition, invalid
/// batch, a wrong offset, wherever it stands in the step) is refused and
/// applies nothing: no output before or after it, no state, no position,
/// not even a time index entry, epoch entry or producer state; the same
/// step without the bad output then commits where it would have.
pub fn pipeline_commit_with_refused_write_applies_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh();
    create(&store, &spec("out", 2));
    create(&store, &spec("side", 1));
    let script = pipeline_script("p", 2);
    commit_step(&store, &script[0]);
    let good = &script[1];
    let next = offsets(&store, "out", 0).log_end;
    // Stamped far in the future, so an index entry it left would show.
    let late = batch_of("late", 1, 1_000_000, ProducerStamp::NONE);
    let mut truncated = write_of("out", 0, next, late.clone());
    truncated.batch = truncated.batch.slice(..truncated.batch.len() - 1);
    // A side output in a new epoch with producer state: both must roll back.
    let side = LogWrite {
        leader_epoch: 9,
        producer: Some((3, Bytes::from_static(b"state"))),
        ..write_of("side", 0, 0, batch_of("side", 2, 1, ProducerStamp::NONE))
    };
    type Expected = fn(&WriteError) -> bool;
    let cases: Vec<(&str, Vec<LogWrite>, Expected)> = vec![
        (
            "unknown topic last",
            [
                good.writes.clone(),
                vec![write_of("nope", 0, 0, late.clone())],
            ]
            .concat(),
            |e| matches!(e, WriteError::UnknownTopic(t) if t == "nope"),
        ),
        (
            "unknown partition first",
            [
                vec![write_of("out", 5, 0, late.clone())],
                good.writes.clone(),
            ]
            .concat(),
            |e| matches!(e, WriteError::UnknownPartition { partition: 5, .. }),
        ),
        (
            "invalid batch between valid ones",
            vec![
                write_of("out", 1, offsets(&store, "out", 1).log_end, late.clone()),
                truncated,
                good.writes[0].clone(),
            ],
            |e| matches!(e, WriteError::InvalidBatch(_)),
        ),
        (
            "side output before a write past the log end",
            vec![side.clone(), write_of("out", 0, next + 1, late.clone())],
            |e| matches!(e, WriteError::NotAtLogEnd { .. }),
        ),
    ];
    for (case, writes, expected) in cases {
        let refused = store.commit_pipeline(&PipelineCommit {
            writes,
            ..good.clone()
        });
        assert!(
            refused.as_ref().is_err_and(expected),
            "{case}: expected a refusal, got {refused:?}"
        );
        assert_pipeline_steps(&store, "p", 1, &format!("after the refused step ({case})"));
    }
    commit_step(&store, good);
    assert_pipeline_steps(&store, "p", 2, "after the good step");
    assert_eq!(
        store
            .offset_for_timestamp("out", 0, 500_000)
            .expect("lookup"),
        offsets(&store, "out", 0).log_end,
        "a refused step leaves no time index entry behind"
    );
    assert_eq!(read_all(&store, "side", 0), Vec::<Bytes>::new());
    assert_eq!(store.epochs("side", 0).expect("epochs"), vec![]);
    assert_eq!(
        store.producer_states("side", 0).expect("producer_states"),
        vec![],
        "a refused step leaves no producer state behind"
    );
}

/// A step without outputs still moves state and position; positions list
/// every source partition, sorted; and deleting one pipeline's data removes
/// its positions and state only, not another pipeline's (even one whose
/// name it prefixes), durably.
pub fn pipeline_delete_data_removes_only_that_pipeline<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let step = |pipeline: &str, partition: u32, next: u64, value: &[u8]| PipelineCommit {
        pipeline: pipeline.to_owned(),
        writes: vec![],
        state: vec![(b"k".to_vec(), Some(value.to_vec()))],
        source_partition: partition,
        source_next_offset: next,
    };
    for commit in [
        step("p", 1, 7, b"v1"),
        step("p", 0, 5, b"v2"),
        step("p2", 0, 9, b"w"),
    ] {
        store.commit_pipeline(&commit).expect("commit_pipeline");
    }
    assert_eq!(
        store.pipeline_positions("p").expect("positions"),
        vec![(0, 5), (1, 7)]
    );
    assert_eq!(
        store.pipeline_state("p", b"k").expect("state"),
        Some(b"v2".to_vec()),
        "the later step's state wins"
    );
    store
        .delete_pipeline_data("p")
        .expect("delete_pipeline_data");
    let store = h.reopen(store);
    assert_eq!(store.pipeline_positions("p").expect("positions"), vec![]);
    assert_eq!(store.pipeline_state("p", b"k").expect("state"), None);
    assert_eq!(
        store.pipeline_positions("p2").expect("positions"),
        vec![(0, 9)]
    );
    assert_eq!(
        store.pipeline_state("p2", b"k").expect("state"),
        Some(b"w".to_vec())
    );
}

/// An owner's plugin state written with `put_plugin_state` is applied in
/// order, listed by prefix in key order after a key, up to a limit, apart
/// from other owners (even one whose name it prefixes), durably; deleting
/// the owner's data removes it.
pub fn plugin_state_put_lists_by_prefix_and_after_and_survives_reopen<H: Harness>(h: &mut H) {
    let store = h.fresh();
    let set = |key: &str| (key.as_bytes().to_vec(), Some(b"v".to_vec()));
    store
        .put_plugin_state(
            "ingest:t",
            &[
                set("0/a"),
                set("0/b"),
                set("0/c"),
                set("1/a"),
                (b"0/b".to_vec(), None),
            ],
        )
        .expect("put_plugin_state");
    store
        .put_plugin_state("ingest:t2", &[set("0/z")])
        .expect("put_plugin_state");
    let store = h.reopen(store);
    let keys = |prefix: &[u8], after: Option<&[u8]>, limit| -> Vec<String> {
        store
            .plugin_state_list("ingest:t", prefix, after, limit)
            .expect("plugin_state_list")
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
            .collect()
    };
    assert_eq!(
        keys(b"0/", None, 10),
        ["0/a", "0/c"],
        "the delete applied after the set"
    );
    assert_eq!(keys(b"0/", Some(b"0/a"), 10), ["0/c"]);
    assert_eq!(keys(b"", None, 2), ["0/a", "0/c"], "the limit");
    assert_eq!(keys(b"", Some(b"0/c"), 10), ["1/a"], "not another owner's");
    assert_eq!(
        store.pipeline_state("ingest:t", b"1/a").expect("state"),
        Some(b"v".to_vec())
    );
    store
        .delete_pipeline_data("ingest:t")
        .expect("delete_pipeline_data");
    assert_eq!(keys(b"", None, 10), Vec::<String>::new());
    assert_eq!(
        store
            .plugin_state_list("ingest:t2", b"", None, 10)
            .expect("plugin_state_list")
            .len(),
        1
    );
}

// ---- crashes -------------------------------------------------------------------

/// Fault points tried by the crash check.
const CRASH_POINTS: u64 = 40;
/// Appends attempted per fault point.
const CRASH_APPENDS: u32 = 8;

/// Invariants 1, 2 and 4 under crashes: with writes failing after N units
/// of work, for many N, a restart finds every acknowledged batch exactly
/// once, in order, byte for byte, with the log end right after the last;
/// and the dedup state committed with them, so a retry of the last
/// acknowledged batch is a duplicate and a retry of the failed one is new.
pub fn crash_after_n_writes_keeps_exactly_the_acknowledged_batches<H: Harness>(h: &mut H) {
    for n in 0..CRASH_POINTS {
        let store = h.fresh();
        create(&store, &spec("crash", 1));
        let pid = store.allocate_producer_id().expect("producer id");
        h.fail_after_writes(&store, n);
        let mut acked: Vec<(Bytes, u64)> = Vec::new();
        let mut failed = None;
        let mut log_end = 0;
        for i in 0..CRASH_APPENDS {
            let count = 1 + i % 3;
            let b = batch_of(
                &format!("n{n}-{i}"),
                count,
                i64::from(i),
                ProducerStamp::NONE,
            );
            let write = LogWrite {
                leader_epoch: i32::try_from(i / 3).expect("a few appends"),
                producer: Some((pid, Bytes::from(format!("after {i}")))),
                ..write_of("crash", 0, log_end, b)
            };
            match store.append_at(std::slice::from_ref(&write), true) {
                Ok(()) => {
                    acked.push((write.batch.clone(), write.base_offset));
                    log_end += u64::from(count);
                }
                Err(_) => {
                    failed = Some(write);
                    break;
                }
            }
        }
        let store = h.reopen(store);
        let expected: Vec<Bytes> = (0..)
            .zip(&acked)
            .map(|(i, (b, base))| stored_in_epoch(b, *base, i / 3))
            .collect();
        assert_eq!(
            read_all(&store, "crash", 0),
            expected,
            "fault point {n}: the log after reopen must be exactly the {} acknowledged batches",
            acked.len()
        );
        assert_eq!(
            offsets(&store, "crash", 0),
            PartitionOffsets {
                log_start: 0,
                log_end
            },
            "fault point {n}: log end after reopen"
        );
        let state = acked
            .len()
            .checked_sub(1)
            .map(|last| (pid, Bytes::from(format!("after {last}"))));
        assert_eq!(
            store.producer_states("crash", 0).expect("producer_states"),
            state.into_iter().collect::<Vec<_>>(),
            "fault point {n}: producer state is that of the last acknowledged batch"
        );
        if let Some(write) = failed {
            store
                .append_at(&[write], true)
                .unwrap_or_else(|e| panic!("fault point {n}: retry of the failed write: {e}"));
        }
    }
}

/// A truncation interrupted by a fault applies whole or not at all: after
/// a restart the log, its end, its epoch table, its time index and the
/// producer states given with the truncation are either all as before or
/// all as after.
pub fn crash_after_n_writes_truncation_applies_whole_or_not_at_all<H: Harness>(h: &mut H) {
    for n in 0..4 {
        let store = h.fresh();
        create(&store, &spec("t", 1));
        let in_epoch = |base_offset, epoch, tag: &str, n, ts| LogWrite {
            leader_epoch: epoch,
            ..write_of(
                "t",
                0,
                base_offset,
                batch_of(tag, n, ts, ProducerStamp::NONE),
            )
        };
        // Producer 7's dedup state, as stored with its batch "b" and as
        // the engine has it once "b" is cut.
        let (with_b, without_b) = (Bytes::from_static(b"ab"), Bytes::from_static(b"a"));
        let writes = [
            in_epoch(0, 1, "a", 2, 10),
            LogWrite {
                producer: Some((7, with_b.clone())),
                ..in_epoch(2, 2, "b", 2, 20)
            },
        ];
        store.append_at(&writes, true).expect("append_at");
        h.fail_after_writes(&store, n);
        let truncated = store
            .truncate_from("t", 0, 2, &[(7, without_b.clone())])
            .is_ok();
        let store = h.reopen(store);
        let (log_end, batches, epochs, state) = if truncated || offsets(&store, "t", 0).log_end == 2
        {
            (2, 1, vec![(1, 0)], without_b.clone())
        } else {
            (4, 2, vec![(1, 0), (2, 2)], with_b.clone())
        };
        assert_eq!(
            store.producer_states("t", 0).expect("producer states"),
            vec![(7, state)],
            "fault point {n}: the producer state goes with the truncation"
        );
        assert_eq!(offsets(&store, "t", 0).log_end, log_end, "fault point {n}");
        assert_eq!(read_all(&store, "t", 0).len(), batches, "fault point {n}");
        let epochs: Vec<EpochStart> = epochs
            .into_iter()
            .map(|(epoch, start_offset)| EpochStart {
                epoch,
                start_offset,
            })
            .collect();
        assert_eq!(
            store.epochs("t", 0).expect("epochs"),
            epochs,
            "fault point {n}"
        );
    }
}

/// Offset commits attempted per fault point.
const CRASH_COMMITS: u64 = 8;

/// Committed offsets under crashes: with writes failing after N units of
/// work, for many N, a restart finds exactly the acknowledged commits (the
/// last acknowledged offset of every key, across groups), nothing of the
/// failed one, and takes commits again.
pub fn crash_after_n_writes_keeps_exactly_the_acknowledged_offset_commits<H: Harness>(h: &mut H) {
    for n in 0..CRASH_POINTS {
        let store = h.fresh();
        create(&store, &spec("crash", 2));
        h.fail_after_writes(&store, n);
        let mut acked: Vec<OffsetCommit> = Vec::new();
        for i in 0..CRASH_COMMITS {
            let partition = u32::try_from(i % 2).expect("0 or 1");
            let commits = [
                offset_commit("g1", "crash", partition, 100 + i),
                offset_commit("g2", "crash", 0, i),
            ];
            if store.commit_offsets(&commits).is_err() {
                break;
            }
            acked.extend(commits);
        }
        let store = h.reopen(store);
        let last_of = |group: &str, partition: u32| {
            acked
                .iter()
                .rev()
                .find(|c| c.group == group && c.partition == partition)
                .map(|c| committed_offset("crash", partition, c.offset))
        };
        let g1: Vec<CommittedOffset> = [last_of("g1", 0), last_of("g1", 1)]
            .into_iter()
            .flatten()
            .collect();
        let g2: Vec<CommittedOffset> = last_of("g2", 0).into_iter().collect();
        assert_eq!(committed(&store, "g1"), g1, "fault point {n}: group g1");
        assert_eq!(committed(&store, "g2"), g2, "fault point {n}: group g2");
        let expected_groups: Vec<&str> = if acked.is_empty() {
            vec![]
        } else {
            vec!["g1", "g2"]
        };
        assert_eq!(groups(&store), expected_groups, "fault point {n}: groups");
        commit_all(&store, &[offset_commit("g1", "crash", 1, 999)]);
        assert_eq!(
            committed(&store, "g1").last(),
            Some(&committed_offset("crash", 1, 999)),
            "fault point {n}: commits work after the restart"
        );
    }
}

/// Pipeline steps attempted per fault point.
const CRASH_STEPS: u32 = 8;

/// Pipelines are exactly-once under crashes: with writes failing after N
/// units of work, for many N, the position found after a restart names
/// some number of steps P, and the store holds exactly the outputs and
/// state of those P steps: every acknowledged step (so P is at least their
/// count), nothing of a later one, and no step in part. P may count the
/// one failed step only when its failure came after its commit reached
/// disk. The pipeline then goes on from P.
pub fn crash_after_n_writes_pipeline_position_implies_exactly_its_steps<H: Harness>(h: &mut H) {
    let script = pipeline_script("p", CRASH_STEPS + 1);
    for n in 0..CRASH_POINTS {
        let store = h.fresh();
        create(&store, &spec("out", 2));
        h.fail_after_writes(&store, n);
        let mut acked = 0u32;
        let mut failed = false;
        for step in &script[..CRASH_STEPS as usize] {
            match store.commit_pipeline(step) {
                Ok(()) => acked += 1,
                Err(WriteError::Store(_)) => {
                    failed = true;
                    break;
                }
                Err(refused) => panic!("fault point {n}: step {acked} refused: {refused}"),
            }
        }
        let store = h.reopen(store);
        let steps = match store.pipeline_positions("p").expect("positions")[..] {
            [] => 0,
            [(0, next)] if next % SOURCE_OFFSETS_PER_STEP == 0 => {
                u32::try_from(next / SOURCE_OFFSETS_PER_STEP).expect("a few steps")
            }
            ref other => panic!("fault point {n}: positions {other:?}"),
        };
        assert!(
            steps >= acked,
            "fault point {n}: the position names {steps} steps, {acked} were acknowledged"
        );
        assert!(
            steps <= acked + u32::from(failed),
            "fault point {n}: the position names {steps} steps, only {} were attempted",
            acked + u32::from(failed)
        );
        assert_pipeline_steps(
            &store,
            "p",
            steps,
            &format!("fault point {n}, position after {steps} steps"),
        );
        commit_step(&store, &script[steps as usize]);
        assert_pipeline_steps(
            &store,
            "p",
            steps + 1,
            &format!("fault point {n}, the step after the restart"),
        );
    }
}

fn batch_records(b: &Bytes) -> u64 {
    u64::from(batch::validate(b).expect("valid batch").record_count)
}
