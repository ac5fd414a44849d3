//! The stream pump between two pipeline stages of cuprumd.
//!
//! Each pipeline stage writes into its own pipe; the daemon moves those bytes
//! to the next stage itself (instead of handing the child the next stage's
//! pipe) so it can count them, notice a consumer that went away, and choose
//! how the bytes travel. This crate is that mover, kept free of Python so it
//! can be tested and reasoned about on its own; `cuprum-native` only binds it.
//!
//! Descriptors are always borrowed: the caller decides when to close them,
//! because closing the upstream reader is how a producer learns (via
//! `SIGPIPE`) that its consumer is gone.

mod endpoint;
mod error;
mod probe;
mod progress;
mod pump;
mod sys;

pub use error::PumpError;
pub use probe::splice_works;
pub use progress::Progress;
pub use pump::{pump, pump_with, Method, Pacing, Transfer};

/// The buffer size the Python side uses unless told otherwise: the default
/// pipe capacity on Linux, so one call moves at most one full pipe.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// The largest accepted buffer size (1 GiB). The copy fallback allocates the
/// whole buffer up front, so an absurd size would be an allocation failure
/// rather than a clean error.
pub const MAX_BUFFER_SIZE: usize = 1 << 30;

fn check_buffer_size(buffer_size: usize) -> Result<(), PumpError> {
    if (1..=MAX_BUFFER_SIZE).contains(&buffer_size) {
        Ok(())
    } else {
        Err(PumpError::InvalidBufferSize(buffer_size))
    }
}
