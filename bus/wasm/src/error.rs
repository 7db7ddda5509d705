//! The one error type every plugin operation returns.

use std::time::Duration;

use crate::budget::Breach;

/// Why loading, instantiating or calling a plugin failed.
///
/// The variants split along what the caller does next: [`Invalid`] and
/// [`Init`] are shown to the operator and the plugin is not attached;
/// [`Rejected`] refuses one batch but the instance is healthy; [`Trap`],
/// [`Deadline`] and [`MemoryLimit`] poison the instance, which must be
/// replaced (the [`Chain`](crate::chain::Chain) does that itself) and feed
/// the topic's failure policy (skip, dead-letter or halt).
///
/// [`Invalid`]: PluginError::Invalid
/// [`Init`]: PluginError::Init
/// [`Rejected`]: PluginError::Rejected
/// [`Trap`]: PluginError::Trap
/// [`Deadline`]: PluginError::Deadline
/// [`MemoryLimit`]: PluginError::MemoryLimit
///
/// [`Budget`](PluginError::Budget) also feeds the failure policy, but the
/// chain does not retry the records one by one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The bytes are not a component for the `filter` or `transform` world
    /// of `edgebus:plugin@0.2.0` or `@0.1.0`: malformed Wasm, a core
    /// module, another world, or an import the broker does not provide.
    #[error("invalid plugin: {0}")]
    Invalid(String),
    /// The guest's `init` returned an error; the message is the guest's.
    #[error("plugin init failed: {0}")]
    Init(String),
    /// The guest returned `err(message)` for a batch: the whole batch is
    /// refused (on ingest, the producer sees the message).
    #[error("plugin rejected the batch: {0}")]
    Rejected(String),
    /// The guest trapped (a panic, an out-of-bounds access, a broken
    /// contract such as a filter mask of the wrong length). The message
    /// includes the tail of the guest's stderr, where Rust panics print.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline and was interrupted.
    #[error("plugin exceeded its {0:?} deadline")]
    Deadline(Duration),
    /// The guest tried to grow its memory past the per-instance cap (bytes).
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The plugin went over one of its attachment's budgets (state, output
    /// per batch) or its output broke the destination's limits. It is the
    /// plugin's fault, not the batch's: the records are not retried one by
    /// one, and they go to the failure policy.
    #[error("plugin exceeded its budget: {0}")]
    Budget(Breach),
    /// The host could not do its part: engine setup, an exhausted instance
    /// pool, or a call on an instance that an earlier failure poisoned.
    #[error("plugin runtime error: {0}")]
    Internal(String),
}

impl PluginError {
    /// Whether this error poisons the instance that returned it, so that it
    /// must be replaced before the next call.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Trap(_) | PluginError::Deadline(_) | PluginError::MemoryLimit(_)
        )
    }
}
