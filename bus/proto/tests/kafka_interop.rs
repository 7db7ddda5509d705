//! Interoperability with Kafka's RecordBatch v2 as the `kafka-protocol`
//! crate writes and reads it: batches cross between the two codecs with
//! every field intact, and an uncompressed batch is the same bytes whichever
//! side encodes it.

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch::{
    self, BatchBuilder, Compression, Header, ProducerStamp, Record, StoredRecord,
};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KafkaCompression, NO_PARTITION_LEADER_EPOCH, Record as KafkaRecord,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;

const CODECS: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];
const BASE_OFFSET: u64 = 500;
const LEADER_EPOCH: i32 = 5;
const STAMP: ProducerStamp = ProducerStamp {
    producer_id: 42,
    producer_epoch: 3,
    base_sequence: 10,
};

fn kafka_codec(codec: Compression) -> KafkaCompression {
    match codec {
        Compression::None => KafkaCompression::None,
        Compression::Gzip => KafkaCompression::Gzip,
        Compression::Snappy => KafkaCompression::Snappy,
        Compression::Lz4 => KafkaCompression::Lz4,
        Compression::Zstd => KafkaCompression::Zstd,
    }
}

/// A Kafka record at `index` of a batch starting at `base_offset`, stamped
/// as a producer with `stamp` and a leader at `leader_epoch` would.
fn kafka_record(
    index: i64,
    base_offset: u64,
    stamp: ProducerStamp,
    leader_epoch: i32,
    timestamp_ms: i64,
) -> KafkaRecord {
    KafkaRecord {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: leader_epoch,
        producer_id: stamp.producer_id,
        producer_epoch: stamp.producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: base_offset as i64 + index,
        sequence: stamp.base_sequence.wrapping_add(index as i32),
        timestamp: timestamp_ms,
        key: None,
        value: None,
        headers: IndexMap::new(),
    }
}

/// Records of every shape Kafka allows: keyed and unkeyed, a tombstone,
/// headers with and without values, timestamps out of order.
fn varied_kafka_records() -> Vec<KafkaRecord> {
    let timestamps = [
        1_700_000_000_000,
        1_700_000_000_250,
        1_699_999_999_900,
        1_700_000_000_250,
    ];
    timestamps
        .into_iter()
        .enumerate()
        .map(|(i, ts)| {
            let mut r = kafka_record(i as i64, BASE_OFFSET, STAMP, LEADER_EPOCH, ts);
            r.key = (i % 2 == 0).then(|| Bytes::from(format!("key-{i}")));
            r.value = (i != 2).then(|| Bytes::from(format!("value {i} ").repeat(20)));
            if i != 1 {
                r.headers.insert(
                    StrBytes::from_static_str("trace"),
                    Some(Bytes::from(vec![i as u8; 3])),
                );
                r.headers.insert(StrBytes::from_static_str("empty"), None);
            }
            r
        })
        .collect()
}

fn kafka_encode(records: &[KafkaRecord], codec: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: kafka_codec(codec),
        },
    )
    .expect("kafka-protocol encodes the batch");
    buf.freeze()
}

fn kafka_decode(batch: &Bytes) -> (KafkaCompression, Vec<KafkaRecord>) {
    let mut buf = batch.clone();
    let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes the batch");
    assert!(buf.is_empty(), "one batch, read whole");
    assert_eq!(set.version, 2);
    (set.compression, set.records)
}

fn build(records: &[Record], stamp: ProducerStamp, codec: Compression) -> Bytes {
    let mut builder = BatchBuilder::new();
    for r in records {
        builder.push(r);
    }
    builder
        .finish_compressed(stamp, codec)
        .expect("lz4 and zstd are supported")
}

/// What our decoder should make of a Kafka record: a null value or null
/// header value is empty.
fn as_stored(r: &KafkaRecord) -> StoredRecord {
    StoredRecord {
        offset: r.offset as u64,
        timestamp_ms: r.timestamp,
        key: r.key.clone(),
        value: r.value.clone().unwrap_or_default(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| Header {
                key: k.to_string(),
                value: v.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

#[test]
fn kafka_protocol_batches_decode_with_every_field_intact() {
    let records = varied_kafka_records();
    for codec in CODECS {
        let batch = kafka_encode(&records, codec);
        let info = batch::inspect(&batch).expect("a Kafka batch is valid");
        let header = info.header;
        assert_eq!(header.attributes.compression(), codec);
        assert!(!header.attributes.is_transactional());
        assert!(!header.attributes.is_control());
        assert_eq!(header.base_offset, BASE_OFFSET);
        assert_eq!(header.partition_leader_epoch, LEADER_EPOCH);
        assert_eq!(header.producer, STAMP);
        assert_eq!(header.record_count, 4);
        assert_eq!(header.last_offset(), BASE_OFFSET + 3);
        assert_eq!(header.max_timestamp_ms, 1_700_000_000_250);
        let expected: Vec<StoredRecord> = records.iter().map(as_stored).collect();
        assert_eq!(batch::records(&batch).unwrap(), expected, "{codec}");
        let plain = kafka_encode(&records, Compression::None);
        assert_eq!(info.records_bytes, plain.len() - batch::HEADER_LEN);
    }
}

#[test]
fn our_batches_decode_with_kafka_protocol_with_every_field_intact() {
    let records: Vec<Record> = (0..5)
        .map(|i| {
            let r = Record::new(
                format!("reading {i} ").repeat(10),
                1_700_000_000_000 + i * 3,
            );
            match i % 3 {
                0 => r.with_key(format!("sensor-{i}")),
                1 => r
                    .with_header("unit", "celsius")
                    .with_header("site", "north"),
                _ => r,
            }
        })
        .collect();
    for codec in CODECS {
        let mut batch = BytesMut::from(&build(&records, STAMP, codec)[..]);
        batch::set_base_offset(&mut batch, BASE_OFFSET);
        batch::set_partition_leader_epoch(&mut batch, LEADER_EPOCH);
        let (compression, decoded) = kafka_decode(&batch.freeze());
        assert_eq!(compression, kafka_codec(codec));
        let expected: Vec<KafkaRecord> = records
            .iter()
            .enumerate()
            .map(|(i, r)| KafkaRecord {
                key: r.key.clone(),
                value: Some(r.value.clone()),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (StrBytes::from_string(h.key.clone()), Some(h.value.clone())))
                    .collect(),
                ..kafka_record(i as i64, BASE_OFFSET, STAMP, LEADER_EPOCH, r.timestamp_ms)
            })
            .collect();
        assert_eq!(decoded, expected, "{codec}");
    }
}

#[test]
fn gzip_batch_from_kafka_is_refused_with_the_typed_error() {
    // kafka-protocol is built without gzip here, so the batch is made by
    // flipping the codec bits of an uncompressed one and resealing it.
    let records = [kafka_record(
        0,
        0,
        ProducerStamp::NONE,
        NO_PARTITION_LEADER_EPOCH,
        1,
    )];
    let mut batch = BytesMut::from(&kafka_encode(&records, Compression::None)[..]);
    batch[22] |= Compression::Gzip.codec();
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(batch::verify_crc(&batch).is_ok());
    assert_eq!(
        batch::validate(&batch),
        Err(edgebus_proto::DecodeError::UnsupportedCompression(
            Compression::Gzip
        ))
    );
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::collection::vec(any::<u8>(), 0..300),
        // Distinct header keys: kafka-protocol keeps headers in a map.
        proptest::collection::btree_map(
            "[a-z]{0,8}",
            proptest::collection::vec(any::<u8>(), 0..20),
            0..4,
        ),
        0i64..100_000,
    )
        .prop_map(|(key, value, headers, ts_step)| Record {
            key: key.map(Bytes::from),
            value: Bytes::from(value),
            headers: headers
                .into_iter()
                .map(|(k, v)| Header {
                    key: k,
                    value: Bytes::from(v),
                })
                .collect(),
            timestamp_ms: ts_step,
        })
}

fn arb_stamp() -> impl Strategy<Value = ProducerStamp> {
    prop_oneof![
        Just(ProducerStamp::NONE),
        (0i64..i64::MAX, 0i16..i16::MAX, 0i32..i32::MAX).prop_map(|(id, epoch, seq)| {
            ProducerStamp {
                producer_id: id,
                producer_epoch: epoch,
                base_sequence: seq,
            }
        }),
    ]
}

proptest! {
    /// The same records, encoded uncompressed by kafka-protocol and by us,
    /// are the same bytes. kafka-protocol takes the smallest timestamp as
    /// `baseTimestamp` where Kafka's Java producer (and we) take the first,
    /// so timestamps here never decrease and the two agree.
    #[test]
    fn uncompressed_batch_is_byte_identical_to_kafka_protocol(
        mut records in proptest::collection::vec(arb_record(), 1..20),
        start_ms in 0i64..2_000_000_000_000,
        stamp in arb_stamp(),
    ) {
        let mut ts = start_ms;
        for r in &mut records {
            ts += r.timestamp_ms;
            r.timestamp_ms = ts;
        }
        let kafka_records: Vec<KafkaRecord> = records
            .iter()
            .enumerate()
            .map(|(i, r)| KafkaRecord {
                key: r.key.clone(),
                value: Some(r.value.clone()),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (StrBytes::from_string(h.key.clone()), Some(h.value.clone())))
                    .collect(),
                ..kafka_record(i as i64, 0, stamp, NO_PARTITION_LEADER_EPOCH, r.timestamp_ms)
            })
            .collect();
        let ours = build(&records, stamp, Compression::None);
        let theirs = kafka_encode(&kafka_records, Compression::None);
        prop_assert_eq!(ours, theirs);
    }
}
