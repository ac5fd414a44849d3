use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::Method;

/// What a running transfer has done so far, readable from other threads.
///
/// [`pump`](crate::pump) only reports at the end, and a transfer that is
/// abandoned (its job cancelled while the pump still blocks) never gets to
/// the end. Whoever gave up on it can still read here which pump ran and
/// how many bytes the writer accepted up to that moment.
///
/// Counts add up: use a fresh record for each transfer.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    method: AtomicU8,
}

const UNDECIDED: u8 = 0;
const SPLICE: u8 = 1;
const COPY: u8 = 2;

impl Progress {
    pub const fn new() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            method: AtomicU8::new(UNDECIDED),
        }
    }

    /// Bytes accepted by the writer so far.
    ///
    /// Once this is non-zero, [`method`](Self::method) read afterwards on the
    /// same thread is already set: the method is recorded before the first
    /// byte is counted, and counting publishes it.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// How the bytes travel, or `None` while the pump has not yet found out
    /// whether splice takes this pair of descriptors.
    pub fn method(&self) -> Option<Method> {
        match self.method.load(Ordering::Relaxed) {
            SPLICE => Some(Method::Splice),
            COPY => Some(Method::Copy),
            _ => None,
        }
    }

    pub(crate) fn set_method(&self, method: Method) {
        let code = match method {
            Method::Splice => SPLICE,
            Method::Copy => COPY,
        };
        self.method.store(code, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_and_undecided() {
        let progress = Progress::new();
        assert_eq!((progress.bytes(), progress.method()), (0, None));
    }

    #[test]
    fn counts_add_up_and_the_method_round_trips() {
        let progress = Progress::default();
        progress.set_method(Method::Copy);
        progress.add(5);
        progress.add(7);
        assert_eq!(
            (progress.bytes(), progress.method()),
            (12, Some(Method::Copy))
        );
        progress.set_method(Method::Splice);
        assert_eq!(progress.method(), Some(Method::Splice));
    }
}
