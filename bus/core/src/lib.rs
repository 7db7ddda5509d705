//! # edgebus-core
//!
//! State machines with no IO, driven by the broker and by tests alike:
//! inputs are `handle`-style calls that take the current time as an
//! argument, and outputs are polled. Nothing here touches a socket, a file
//! or a clock.
//!
//! ## Layout
//!
//! - [`group`]: the consumer-group coordinator: membership, session
//!   timeouts, generations, assignment strategies and commit fencing.
#![warn(missing_docs)]

pub mod group;
