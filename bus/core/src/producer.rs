//! Idempotent-producer state: the sequence check that turns producer
//! retries into no-ops (invariant 4).
//!
//! Each `(producer_id, topic, partition)` keeps a [`ProducerState`]: the
//! producer's epoch and the sequence ranges of its last [`DEDUP_WINDOW`]
//! batches with their base offsets. The partition engine asks [`check`]
//! what to do with a batch and, when it is stored, hands the shell
//! [`record`]'s result to persist in the same transaction as the batch, so
//! the records and the state that deduplicates them can never disagree.
//!
//! The rules are Kafka's:
//!
//! | situation                                     | decision |
//! |-----------------------------------------------|----------|
//! | not idempotent                                | append |
//! | idempotent, but the span holds no sequences   | [`AppendRefused::EmptySequenceSpan`] |
//! | no state yet                                  | append |
//! | epoch older than the stored one               | [`AppendRefused::ProducerFenced`] |
//! | epoch newer than the stored one               | append, the new epoch starts fresh |
//! | same sequence range as a recent batch         | duplicate of that batch |
//! | `base_sequence` = last stored sequence + 1    | append |
//! | `base_sequence` behind that                   | [`AppendRefused::StaleDuplicate`] |
//! | anything else (a gap)                         | [`AppendRefused::OutOfOrderSequence`] |
//!
//! Sequences wrap from `i32::MAX` to 0, as in Kafka.

use edgebus_proto::batch::ProducerStamp;

/// How many recent batches per producer and partition are remembered for
/// duplicate detection; a producer has at most this many batches in flight.
pub const DEDUP_WINDOW: usize = edgebus_proto::limits::MAX_IDEMPOTENT_IN_FLIGHT;

/// Number of distinct sequence values: sequences run 0..=i32::MAX.
const SEQUENCE_SPACE: i64 = i32::MAX as i64 + 1;

/// The idempotent-producer sequence range one append accounts for: the
/// producer's batch as it was sent, which may hold more records than are
/// stored when an ingest plugin dropped some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceSpan {
    /// Producer id, epoch and first sequence, as the producer sent them.
    pub producer: ProducerStamp,
    /// How many sequence numbers the producer's batch used.
    pub record_count: u32,
}

/// The stored dedup state of one producer on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    /// The newest epoch seen; older epochs are fenced.
    pub epoch: i16,
    /// Sequence ranges of the last batches, oldest first, at most
    /// [`DEDUP_WINDOW`].
    recent: Vec<BatchSequence>,
}

/// The sequence range of one stored batch and where it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSequence {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

/// What to do with a batch that passed the sequence check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store it.
    Append,
    /// A retry of a recent batch: store nothing and answer with the original
    /// batch's base offset.
    Duplicate {
        /// Base offset of the original batch.
        base_offset: u64,
    },
}

/// Why a producer's batch was refused. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendRefused {
    /// The producer's epoch is older than the one stored.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// Producer id.
        producer_id: i64,
        /// Epoch of the batch.
        epoch: i16,
        /// Epoch the partition knows.
        current: i16,
    },
    /// The batch's sequence is not the next one expected, and is not a
    /// retry of a recent batch.
    #[error("out-of-order sequence {got} for producer {producer_id}, expected {expected}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// Sequence expected next.
        expected: i32,
        /// Sequence received.
        got: i32,
    },
    /// A retry of a batch too old to still be in the dedup window.
    #[error("duplicate of an old batch of producer {producer_id} (sequence {sequence})")]
    StaleDuplicate {
        /// Producer id.
        producer_id: i64,
        /// Sequence received.
        sequence: i32,
    },
    /// An idempotent span covering no sequence numbers: its last sequence
    /// would precede its first.
    #[error("sequence span of producer {producer_id} holds no records")]
    EmptySequenceSpan {
        /// Producer id.
        producer_id: i64,
    },
}

/// Why stored producer-state bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed part.
    #[error("producer state is {len} bytes, too short")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// A version this code does not know.
    #[error("unknown producer state encoding version {0}")]
    UnknownVersion(u8),
    /// The entry count is above [`DEDUP_WINDOW`] or disagrees with the
    /// number of entry bytes.
    #[error("{count} producer state entries in {bytes} bytes")]
    EntryCount {
        /// Entry count from the header.
        count: usize,
        /// Entry bytes present.
        bytes: usize,
    },
}

/// Decides what to do with a batch stamped `stamp` holding `record_count`
/// records, given the producer's stored state on the partition.
pub fn check(
    state: Option<&ProducerState>,
    stamp: ProducerStamp,
    record_count: u32,
) -> Result<Decision, AppendRefused> {
    if !stamp.is_idempotent() {
        return Ok(Decision::Append);
    }
    if record_count == 0 {
        return Err(AppendRefused::EmptySequenceSpan {
            producer_id: stamp.producer_id,
        });
    }
    let got = stamp.base_sequence;
    let out_of_order = |expected: i32| AppendRefused::OutOfOrderSequence {
        producer_id: stamp.producer_id,
        expected,
        got,
    };
    let state = match state {
        Some(state) if stamp.producer_epoch < state.epoch => {
            return Err(AppendRefused::ProducerFenced {
                producer_id: stamp.producer_id,
                epoch: stamp.producer_epoch,
                current: state.epoch,
            });
        }
        Some(state) if stamp.producer_epoch == state.epoch => state,
        _ if got < 0 => return Err(out_of_order(0)),
        _ => return Ok(Decision::Append),
    };
    let last = last_sequence(got, record_count);
    if let Some(original) = state
        .recent
        .iter()
        .find(|b| b.first_seq == got && b.last_seq == last)
    {
        return Ok(Decision::Duplicate {
            base_offset: original.base_offset,
        });
    }
    let Some(newest) = state.recent.last() else {
        return Ok(Decision::Append);
    };
    let expected = next_sequence(newest.last_seq);
    if got == expected {
        Ok(Decision::Append)
    } else if got >= 0 && is_behind(got, expected) {
        Err(AppendRefused::StaleDuplicate {
            producer_id: stamp.producer_id,
            sequence: got,
        })
    } else {
        Err(out_of_order(expected))
    }
}

/// The state after appending a batch that [`check`] allowed, stored at
/// `base_offset`.
pub fn record(
    state: Option<ProducerState>,
    stamp: ProducerStamp,
    record_count: u32,
    base_offset: u64,
) -> ProducerState {
    let entry = BatchSequence {
        first_seq: stamp.base_sequence,
        last_seq: last_sequence(stamp.base_sequence, record_count),
        base_offset,
    };
    match state {
        Some(mut state) if state.epoch == stamp.producer_epoch => {
            if state.recent.len() == DEDUP_WINDOW {
                state.recent.remove(0);
            }
            state.recent.push(entry);
            state
        }
        _ => ProducerState {
            epoch: stamp.producer_epoch,
            recent: vec![entry],
        },
    }
}

/// The base offset of an exact retry of a recent batch, else `None` (new,
/// out of order, fenced or not idempotent: [`check`] tells those apart).
pub fn stored_offset(
    state: Option<&ProducerState>,
    stamp: ProducerStamp,
    record_count: u32,
) -> Option<u64> {
    match check(state, stamp, record_count) {
        Ok(Decision::Duplicate { base_offset }) => Some(base_offset),
        _ => None,
    }
}

/// Sequence of the last record of a batch, wrapping past `i32::MAX` to 0.
fn last_sequence(base_sequence: i32, record_count: u32) -> i32 {
    let last = (i64::from(base_sequence) + i64::from(record_count) - 1).rem_euclid(SEQUENCE_SPACE);
    // `rem_euclid` keeps it in 0..=i32::MAX.
    last as i32
}

/// The sequence after `seq`, wrapping `i32::MAX` to 0.
fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Whether `seq` lies behind `expected` on the sequence circle, that is
/// within half the sequence space before it; this reads "lower" correctly
/// across the wrap to 0.
fn is_behind(seq: i32, expected: i32) -> bool {
    let distance = (i64::from(expected) - i64::from(seq)).rem_euclid(SEQUENCE_SPACE);
    distance > 0 && distance <= SEQUENCE_SPACE / 2
}

/// Encoding version, so a later layout can be told apart.
const ENCODING_VERSION: u8 = 1;
const FIXED_LEN: usize = 4;
const ENTRY_LEN: usize = 16;

impl ProducerState {
    /// Forgets the batches stored at or after `offset`, for a log truncated
    /// there. The epoch stays, so older epochs remain fenced; with no batch
    /// left the producer's next sequence is accepted whatever it is.
    ///
    /// A sequence-only append is remembered at the log end of its time, so
    /// one made exactly at `offset` is forgotten too: the producer then sees
    /// an out-of-order error rather than a retry answered with an offset
    /// that no longer holds its batch.
    pub fn truncate(&mut self, offset: u64) {
        self.recent.retain(|b| b.base_offset < offset);
    }

    /// The base offset of the newest remembered batch stored in
    /// `from..to`: a leader sends a follower a producer's state with the
    /// last batch of that producer it sends.
    pub fn last_batch_in(&self, from: u64, to: u64) -> Option<u64> {
        self.recent
            .iter()
            .rev()
            .map(|b| b.base_offset)
            .find(|base| (from..to).contains(base))
    }

    /// The last sequence of the newest remembered batch.
    pub fn newest_last_sequence(&self) -> Option<i32> {
        self.recent.last().map(|b| b.last_seq)
    }

    /// Encodes the state for the `producers` table. Big-endian throughout:
    ///
    /// ```text
    /// offset   size field
    ///      0      1 version        1
    ///      1      2 epoch          i16
    ///      3      1 count          u8, 0..=DEDUP_WINDOW
    ///      4  16*count entries, oldest first:
    ///               first_seq i32, last_seq i32, base_offset u64
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + ENTRY_LEN * self.recent.len());
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        // `recent` never exceeds DEDUP_WINDOW (32), which fits a u8.
        out.push(self.recent.len() as u8);
        for b in &self.recent {
            out.extend_from_slice(&b.first_seq.to_be_bytes());
            out.extend_from_slice(&b.last_seq.to_be_bytes());
            out.extend_from_slice(&b.base_offset.to_be_bytes());
        }
        out
    }

    /// Decodes what [`ProducerState::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let [version, e0, e1, count, entries @ ..] = bytes else {
            return Err(DecodeError::TooShort { len: bytes.len() });
        };
        if *version != ENCODING_VERSION {
            return Err(DecodeError::UnknownVersion(*version));
        }
        let count = usize::from(*count);
        if count > DEDUP_WINDOW || entries.len() != count * ENTRY_LEN {
            return Err(DecodeError::EntryCount {
                count,
                bytes: entries.len(),
            });
        }
        let recent = entries
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&e[8..16]);
                BatchSequence {
                    first_seq: i32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                    last_seq: i32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                    base_offset: u64::from_be_bytes(offset),
                }
            })
            .collect();
        Ok(ProducerState {
            epoch: i16::from_be_bytes([*e0, *e1]),
            recent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 42;

    fn stamp(epoch: i16, seq: i32) -> ProducerStamp {
        ProducerStamp {
            producer_id: PID,
            producer_epoch: epoch,
            base_sequence: seq,
        }
    }

    /// State after batches of `count` records at the given sequences, each
    /// stored at `10 * seq`.
    fn state_after(epoch: i16, batches: &[(i32, u32)]) -> ProducerState {
        let mut state = None;
        for &(seq, count) in batches {
            state = Some(record(state, stamp(epoch, seq), count, 10 * seq as u64));
        }
        state.unwrap()
    }

    #[test]
    fn check_non_idempotent_batch_appends() {
        let state = state_after(0, &[(0, 1)]);
        assert_eq!(
            check(Some(&state), ProducerStamp::NONE, 1),
            Ok(Decision::Append)
        );
    }

    #[test]
    fn check_without_state_appends() {
        assert_eq!(check(None, stamp(0, 17), 3), Ok(Decision::Append));
    }

    #[test]
    fn check_empty_span_is_refused() {
        let state = state_after(0, &[(0, 1)]);
        assert_eq!(
            check(Some(&state), stamp(0, 1), 0),
            Err(AppendRefused::EmptySequenceSpan { producer_id: PID })
        );
        assert_eq!(
            check(None, stamp(0, 0), 0),
            Err(AppendRefused::EmptySequenceSpan { producer_id: PID })
        );
    }

    #[test]
    fn check_negative_sequence_is_out_of_order() {
        assert_eq!(
            check(None, stamp(0, -5), 1),
            Err(AppendRefused::OutOfOrderSequence {
                producer_id: PID,
                expected: 0,
                got: -5
            })
        );
    }

    #[test]
    fn check_older_epoch_is_fenced() {
        let state = state_after(3, &[(0, 1)]);
        assert_eq!(
            check(Some(&state), stamp(2, 1), 1),
            Err(AppendRefused::ProducerFenced {
                producer_id: PID,
                epoch: 2,
                current: 3
            })
        );
    }

    #[test]
    fn check_newer_epoch_appends_and_starts_fresh() {
        let state = state_after(3, &[(0, 5), (5, 5)]);
        assert_eq!(check(Some(&state), stamp(4, 0), 1), Ok(Decision::Append));
        let next = record(Some(state), stamp(4, 0), 1, 100);
        assert_eq!(next.epoch, 4);
        assert_eq!(
            next.recent.len(),
            1,
            "the old epoch's batches are forgotten"
        );
    }

    #[test]
    fn check_next_sequence_appends() {
        let state = state_after(0, &[(0, 5)]);
        assert_eq!(check(Some(&state), stamp(0, 5), 2), Ok(Decision::Append));
    }

    #[test]
    fn check_retry_of_recent_batch_is_duplicate_with_original_offset() {
        let state = state_after(0, &[(0, 2), (2, 2), (4, 2)]);
        assert_eq!(
            check(Some(&state), stamp(0, 2), 2),
            Ok(Decision::Duplicate { base_offset: 20 })
        );
        assert_eq!(
            check(Some(&state), stamp(0, 4), 2),
            Ok(Decision::Duplicate { base_offset: 40 })
        );
    }

    #[test]
    fn check_same_first_sequence_with_other_length_is_not_duplicate() {
        let state = state_after(0, &[(0, 2), (2, 2)]);
        assert_eq!(
            check(Some(&state), stamp(0, 2), 3),
            Err(AppendRefused::StaleDuplicate {
                producer_id: PID,
                sequence: 2
            })
        );
    }

    #[test]
    fn check_retry_older_than_window_is_stale() {
        let batches: Vec<(i32, u32)> = (0..=DEDUP_WINDOW as i32).map(|s| (s, 1)).collect();
        let state = state_after(0, &batches);
        assert_eq!(
            check(Some(&state), stamp(0, 0), 1),
            Err(AppendRefused::StaleDuplicate {
                producer_id: PID,
                sequence: 0
            })
        );
        assert_eq!(
            check(Some(&state), stamp(0, 1), 1),
            Ok(Decision::Duplicate { base_offset: 10 }),
            "the last DEDUP_WINDOW batches are still remembered"
        );
    }

    /// Guards the bug where the broker remembered 5 batches per producer
    /// while the SDK kept 8 in flight: after a crash lost the acks of all
    /// 8, the retry of the oldest was refused as a stale duplicate and the
    /// producer gave up on records that were stored.
    #[test]
    fn check_retry_of_oldest_of_a_full_sdk_window_is_duplicate() {
        let batches: Vec<(i32, u32)> = (0..8).map(|b| (b * 10, 10)).collect();
        let state = state_after(0, &batches);
        assert_eq!(
            check(Some(&state), stamp(0, 0), 10),
            Ok(Decision::Duplicate { base_offset: 0 })
        );
    }

    #[test]
    fn check_sequence_gap_is_out_of_order() {
        let state = state_after(0, &[(0, 3)]);
        assert_eq!(
            check(Some(&state), stamp(0, 5), 1),
            Err(AppendRefused::OutOfOrderSequence {
                producer_id: PID,
                expected: 3,
                got: 5
            })
        );
    }

    #[test]
    fn check_sequence_wraps_from_max_to_zero() {
        let state = state_after(0, &[(i32::MAX - 1, 2)]);
        assert_eq!(check(Some(&state), stamp(0, 0), 1), Ok(Decision::Append));
        let wrapped = state_after(0, &[(i32::MAX - 1, 4)]);
        assert_eq!(
            check(Some(&wrapped), stamp(0, 2), 1),
            Ok(Decision::Append),
            "a batch spanning the wrap ends at sequence 1"
        );
        assert_eq!(
            check(Some(&wrapped), stamp(0, i32::MAX - 1), 4),
            Ok(Decision::Duplicate {
                base_offset: 10 * (i32::MAX - 1) as u64
            })
        );
        assert!(matches!(
            check(Some(&wrapped), stamp(0, i32::MAX), 1),
            Err(AppendRefused::StaleDuplicate { .. })
        ));
    }

    #[test]
    fn record_keeps_only_the_window() {
        let total = DEDUP_WINDOW as i32 + 5;
        let batches: Vec<(i32, u32)> = (0..total).map(|s| (s, 1)).collect();
        let state = state_after(0, &batches);
        assert_eq!(state.recent.len(), DEDUP_WINDOW);
        assert_eq!(state.recent[0].first_seq, total - DEDUP_WINDOW as i32);
        assert_eq!(state.recent[DEDUP_WINDOW - 1].first_seq, total - 1);
    }

    #[test]
    fn stored_offset_names_only_exact_retries() {
        let state = state_after(0, &[(0, 2), (2, 2)]);
        assert_eq!(stored_offset(Some(&state), stamp(0, 2), 2), Some(20));
        assert_eq!(stored_offset(Some(&state), stamp(0, 4), 2), None);
        assert_eq!(stored_offset(Some(&state), stamp(0, 2), 3), None);
        assert_eq!(stored_offset(None, stamp(0, 0), 2), None);
    }

    #[test]
    fn truncate_forgets_batches_at_or_after_offset() {
        // Batches stored at 0, 10 and 20.
        let mut state = state_after(2, &[(0, 1), (1, 1), (2, 1)]);
        state.truncate(10);
        assert_eq!(state.epoch, 2);
        assert_eq!(check(Some(&state), stamp(2, 1), 1), Ok(Decision::Append));
        assert_eq!(
            check(Some(&state), stamp(2, 0), 1),
            Ok(Decision::Duplicate { base_offset: 0 })
        );
    }

    #[test]
    fn truncate_everything_keeps_epoch_fencing() {
        let mut state = state_after(2, &[(0, 1), (1, 1)]);
        state.truncate(0);
        assert!(state.recent.is_empty());
        assert_eq!(check(Some(&state), stamp(2, 7), 1), Ok(Decision::Append));
        assert!(matches!(
            check(Some(&state), stamp(1, 0), 1),
            Err(AppendRefused::ProducerFenced { .. })
        ));
    }

    #[test]
    fn producer_state_encoding_roundtrips() {
        let state = state_after(-7, &[(0, 3), (3, 1), (i32::MAX, 2)]);
        assert_eq!(ProducerState::decode(&state.encode()).unwrap(), state);
    }

    /// Data written by the store before the dedup rules moved here must
    /// still decode: these bytes are the store's version-1 layout.
    #[test]
    fn producer_state_decoding_version_one_bytes_reads_existing_data() {
        let bytes = [
            1, 0, 3, 1, // version 1, epoch 3, one entry
            0, 0, 0, 4, 0, 0, 0, 6, // sequences 4..=6
            0, 0, 0, 0, 0, 0, 0, 9, // base offset 9
        ];
        let state = ProducerState::decode(&bytes).unwrap();
        assert_eq!(state, record(None, stamp(3, 4), 3, 9));
        assert_eq!(state.encode(), bytes);
    }

    #[test]
    fn producer_state_decoding_bad_bytes_is_an_error() {
        let good = state_after(1, &[(0, 1), (1, 1)]).encode();
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        let mut too_many = good.clone();
        too_many[3] = DEDUP_WINDOW as u8 + 1;
        assert_eq!(
            ProducerState::decode(&good[..3]),
            Err(DecodeError::TooShort { len: 3 })
        );
        assert_eq!(
            ProducerState::decode(&good[..good.len() - 1]),
            Err(DecodeError::EntryCount {
                count: 2,
                bytes: 31
            })
        );
        assert_eq!(
            ProducerState::decode(&wrong_version),
            Err(DecodeError::UnknownVersion(2))
        );
        assert_eq!(
            ProducerState::decode(&too_many),
            Err(DecodeError::EntryCount {
                count: DEDUP_WINDOW + 1,
                bytes: 32
            })
        );
    }

    proptest::proptest! {
        /// Decoding arbitrary bytes returns a value or an error, never panics.
        #[test]
        fn producer_state_decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = ProducerState::decode(&bytes);
        }
    }
}
