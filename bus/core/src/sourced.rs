//! Producer stamps of a cluster pipeline's outputs: sequence numbers that
//! are source offsets, so that the destination's replicated dedup state
//! names how far the outputs on a copy got.
//!
//! A pipeline on a cluster writes its outputs as an idempotent producer of
//! its own, with one producer id per source partition ([`producer_id`]).
//! The sequences of an output batch are the source offsets whose outputs
//! it holds: the batches of one source partition tile its offsets, each
//! covering from where the one before ended to one past the last input
//! whose outputs it carries ([`span`]). Every replica of the destination
//! stores each batch with its producer's dedup state
//! ([`ProducerState`]), so the replica that takes over knows from its own
//! copy the source offset after the last output it holds
//! ([`resume_point`]). A new runner resumes there, and the partition
//! engine's sequence check refuses a span that would write outputs twice.
//!
//! Offsets are 64-bit and sequences 31-bit: the producer epoch carries an
//! offset's high bits (`offset >> 30`) and the sequence its low 30 bits. A
//! span starts where the previous one ended when both lie in one epoch
//! (the engine checks that they join up) and at its own first input
//! otherwise (a newer epoch starts afresh), so it covers less than 2^30
//! offsets plus one step's inputs, and its sequences never wrap.

use edgebus_proto::batch::ProducerStamp;

use crate::producer::{ProducerState, SequenceSpan};

/// Offset bits a sequence carries; the epoch carries the rest.
const LOW_BITS: u32 = 30;
const LOW_MASK: u64 = (1 << LOW_BITS) - 1;
/// Bits of a pipeline producer id that name the source partition: a topic
/// has at most 1,024 partitions.
const PARTITION_BITS: u32 = 10;
/// Set in every pipeline producer id. Producer ids a cluster node hands
/// to clients carry its node id from bit 40 up, so they stay below this
/// bit for node ids below 2^22.
const PIPELINE_BIT: i64 = 1 << 62;
/// Pipeline serials a producer id can carry.
pub const MAX_SERIAL: u64 = (1 << (62 - PARTITION_BITS)) - 1;

/// Why a span of source offsets cannot be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpanError {
    /// `end` is not past `start`.
    #[error("source offsets {start}..{end} hold no sequence")]
    Empty {
        /// First offset.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// The offset is beyond what a producer epoch can carry (2^45).
    #[error("source offset {0} is beyond what a producer epoch can carry")]
    TooFar(u64),
    /// More offsets than one batch's sequences can count without wrapping.
    #[error("source offsets {start}..{end} are too many for one batch's sequences")]
    TooLong {
        /// First offset.
        start: u64,
        /// One past the last.
        end: u64,
    },
}

/// The producer id of the outputs pipeline `serial` makes from source
/// partition `source_partition` (below 1,024). `serial` is at most
/// [`MAX_SERIAL`].
pub fn producer_id(serial: u64, source_partition: u32) -> i64 {
    debug_assert!(serial <= MAX_SERIAL && source_partition < 1 << PARTITION_BITS);
    PIPELINE_BIT | ((serial as i64) << PARTITION_BITS) | i64::from(source_partition)
}

/// The source partition whose outputs of pipeline `serial` are stamped
/// with `producer_id`, if it is one of that pipeline's.
pub fn source_partition(serial: u64, producer_id: i64) -> Option<u32> {
    let partition = producer_id & ((1 << PARTITION_BITS) - 1);
    (producer_id - partition == self::producer_id(serial, 0)).then_some(partition as u32)
}

/// Where the span of a batch whose first input is at `first` starts, when
/// the last span stored ended at `emitted`: there, if it joins up in the
/// same epoch; else at `first`, in a newer epoch.
pub fn span_start(emitted: Option<u64>, first: u64) -> u64 {
    match emitted {
        Some(e) if e <= first && e >> LOW_BITS == first >> LOW_BITS => e,
        _ => first,
    }
}

/// The sequence span of a batch of `producer_id` holding the outputs of
/// source offsets `start..end`.
pub fn span(producer_id: i64, start: u64, end: u64) -> Result<SequenceSpan, SpanError> {
    if end <= start {
        return Err(SpanError::Empty { start, end });
    }
    let producer_epoch = i16::try_from(start >> LOW_BITS).map_err(|_| SpanError::TooFar(start))?;
    let base_sequence = start & LOW_MASK;
    let record_count = u32::try_from(end - start)
        .ok()
        .filter(|count| base_sequence + u64::from(*count) - 1 <= i32::MAX as u64)
        .ok_or(SpanError::TooLong { start, end })?;
    Ok(SequenceSpan {
        producer: ProducerStamp {
            producer_id,
            producer_epoch,
            // Below 2^30.
            base_sequence: base_sequence as i32,
        },
        record_count,
    })
}

/// The source offset after the last one whose outputs the copy holding
/// `state` has stored, if it holds any.
pub fn resume_point(state: &ProducerState) -> Option<u64> {
    let last = state.newest_last_sequence()?;
    let epoch = u64::try_from(state.epoch).ok()?;
    Some((epoch << LOW_BITS) + u64::try_from(last).ok()? + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::{self, Decision};

    const PID: i64 = PIPELINE_BIT | 7 << PARTITION_BITS;

    /// Stores spans as the partition engine would, checking each first.
    fn store(spans: &[(u64, u64)]) -> Result<ProducerState, producer::AppendRefused> {
        let mut state: Option<ProducerState> = None;
        for (n, (start, end)) in spans.iter().enumerate() {
            let s = span(PID, *start, *end).unwrap();
            assert_eq!(
                producer::check(state.as_ref(), s.producer, s.record_count)?,
                Decision::Append
            );
            state = Some(producer::record(
                state,
                s.producer,
                s.record_count,
                n as u64,
            ));
        }
        Ok(state.unwrap())
    }

    #[test]
    fn producer_ids_differ_by_serial_and_partition_and_stay_above_client_ids() {
        let ids = [
            producer_id(1, 0),
            producer_id(1, 1),
            producer_id(2, 0),
            producer_id(MAX_SERIAL, 1023),
        ];
        for (i, a) in ids.iter().enumerate() {
            assert!(*a >= PIPELINE_BIT);
            assert!(ids[i + 1..].iter().all(|b| a != b));
        }
        assert_eq!(source_partition(2, producer_id(2, 5)), Some(5));
        assert_eq!(source_partition(1, producer_id(2, 5)), None);
        assert_eq!(source_partition(2, 5 << 40), None);
        // The largest id node 2^22 - 1 hands out.
        let client = ((1i64 << 22) - 1) << 40 | ((1 << 40) - 1);
        assert!(client < PIPELINE_BIT);
    }

    #[test]
    fn spans_that_join_up_pass_the_sequence_check_and_name_where_to_resume() {
        let state = store(&[(0, 5), (5, 6), (6, 100)]).unwrap();
        assert_eq!(resume_point(&state), Some(100));
    }

    #[test]
    fn a_span_that_does_not_join_up_in_its_epoch_is_refused() {
        assert!(matches!(
            store(&[(0, 5), (7, 9)]),
            Err(producer::AppendRefused::OutOfOrderSequence { .. })
        ));
        // Outputs of offsets already covered: what a runner resuming too
        // early would send.
        let state = store(&[(0, 5), (5, 9)]).unwrap();
        let again = span(PID, 3, 9).unwrap();
        assert!(producer::check(Some(&state), again.producer, again.record_count).is_err());
    }

    #[test]
    fn a_span_past_an_epoch_boundary_starts_a_newer_epoch() {
        let boundary = 1u64 << LOW_BITS;
        // A long filtered stretch: the next output is in the next epoch.
        let first = boundary + 10;
        let start = span_start(Some(40), first);
        assert_eq!(start, first);
        let state = store(&[(30, 40), (start, first + 3)]).unwrap();
        assert_eq!(state.epoch, 1);
        assert_eq!(resume_point(&state), Some(first + 3));
        // In one epoch, a span starts where the last ended.
        assert_eq!(span_start(Some(40), 90), 40);
        assert_eq!(span_start(None, 90), 90);
        // A span may run past the boundary; it keeps its start's epoch.
        let state = store(&[(boundary - 2, boundary + 5)]).unwrap();
        assert_eq!(state.epoch, 0);
        assert_eq!(resume_point(&state), Some(boundary + 5));
        let state = store(&[(boundary - 2, boundary + 5), (boundary + 5, boundary + 6)]).unwrap();
        assert_eq!(state.epoch, 1);
        assert_eq!(resume_point(&state), Some(boundary + 6));
    }

    #[test]
    fn spans_that_cannot_be_stamped_are_refused() {
        assert!(matches!(span(PID, 5, 5), Err(SpanError::Empty { .. })));
        assert!(matches!(
            span(PID, 1 << 45, (1 << 45) + 1),
            Err(SpanError::TooFar(_))
        ));
        let start = LOW_MASK;
        assert!(matches!(
            span(PID, start, start + (1 << 31)),
            Err(SpanError::TooLong { .. })
        ));
        let far = (i16::MAX as u64) << LOW_BITS;
        assert_eq!(
            span(PID, far, far + 1).unwrap().producer.producer_epoch,
            i16::MAX
        );
    }
}
