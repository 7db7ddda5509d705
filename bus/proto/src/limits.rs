//! Default sizes both ends of a connection apply unless configured
//! otherwise.

/// The default cap on a frame's length prefix (see [`crate::framing`]).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// Default size of a record batch a producer builds, and of the batches the
/// broker builds itself (dead letters, pipeline output): a little under
/// 256 KiB, because redb stores a value in a power-of-two run of pages and
/// a batch just over 256 KiB would take 512 KiB of file.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 250_000;

/// The most batches per partition an idempotent producer may have in
/// flight. The broker remembers this many recent batches per producer and
/// partition, so a retry of any batch that was in flight when an ack was
/// lost is recognised as a duplicate (Kafka's limit, for the same reason,
/// is 5).
pub const MAX_IDEMPOTENT_IN_FLIGHT: usize = 32;
