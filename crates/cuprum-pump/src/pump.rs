use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::endpoint::{self, Kind, Role};
use crate::{check_buffer_size, sys, Progress, PumpError};

/// How the bytes travelled; reported so operators can see whether the
/// zero-copy path is actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Kernel-side moves with splice(2): the bytes never enter user space.
    Splice,
    /// read(2)/write(2) through a user-space buffer, for endpoint pairs that
    /// splice refuses (no pipe on either side, append-only files, ...).
    Copy,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Splice => "splice",
            Self::Copy => "copy",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a finished transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes accepted by the writer; bytes taken from the reader but refused
    /// by a consumer that went away are not counted.
    pub bytes: u64,
    pub method: Method,
    /// The consumer closed its end before EOF. The reader is left undrained
    /// so that, once the caller closes it, the producer gets SIGPIPE.
    pub downstream_closed: bool,
}

/// Whether the splice loop may pause to let data pile up (see [`pump_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pacing {
    /// Pause after a streak of short splices, on pipes large enough that
    /// the pause cannot stall the producer.
    #[default]
    Adaptive,
    /// Never pause: every splice follows the last at once.
    Off,
}

/// Move everything from `reader` to `writer` until EOF or until the consumer
/// goes away. Blocks; neither descriptor is closed.
///
/// `progress` is updated after every chunk the writer accepts, so other
/// threads can see how far the transfer got even if it never returns. When
/// the transfer succeeds it ends up agreeing with the returned [`Transfer`]
/// (given a fresh record); after an error it holds what moved before it.
pub fn pump(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    buffer_size: usize,
    progress: &Progress,
) -> Result<Transfer, PumpError> {
    pump_with(reader, writer, buffer_size, Pacing::Adaptive, progress)
}

/// [`pump`] with the pacing chosen by the caller; `Pacing::Off` exists so
/// the two can be measured side by side.
pub fn pump_with(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    buffer_size: usize,
    pacing: Pacing,
    progress: &Progress,
) -> Result<Transfer, PumpError> {
    check_buffer_size(buffer_size)?;
    endpoint::check(reader, Role::Reader)?;
    let writer_kind = endpoint::check(writer, Role::Writer)?;
    let pacer = match pacing {
        Pacing::Adaptive => Pacer::new(
            sys::pipe_capacity(reader),
            sys::pipe_capacity(writer),
            buffer_size,
        ),
        Pacing::Off => Pacer::off(),
    };
    match splice_all(reader, writer, writer_kind, buffer_size, pacer, progress)? {
        Some(done) => Ok(done),
        None => copy_all(reader, writer, writer_kind, buffer_size, progress),
    }
}

/// `Ok(None)` means splice refused this pair of descriptors before moving
/// anything, so the copy loop can start from the very beginning.
fn splice_all(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    writer_kind: Kind,
    len: usize,
    mut pacer: Pacer,
    progress: &Progress,
) -> Result<Option<Transfer>, PumpError> {
    let mut bytes = 0u64;
    loop {
        match sys::splice(reader, writer, len) {
            Ok(0) => return Ok(Some(finished(progress, bytes, Method::Splice, false))),
            Ok(moved) => {
                if bytes == 0 {
                    progress.set_method(Method::Splice);
                }
                progress.add(moved);
                bytes += moved as u64;
                if let Some(pause) = pacer.after(moved) {
                    std::thread::sleep(pause);
                }
            }
            Err(err) if bytes == 0 && splice_refused(&err) => return Ok(None),
            Err(err) if consumer_gone(&err, writer_kind) => {
                return Ok(Some(finished(progress, bytes, Method::Splice, true)))
            }
            Err(err) => return Err(PumpError::io("splice", err)),
        }
    }
}

/// Lets data pile up in the reader pipe when splices keep coming back short.
///
/// A blocking splice returns as soon as anything arrives, so a producer that
/// writes 8 KiB at a time would wake the pump once per write: five threads
/// trading two cores then spend their time switching rather than moving
/// bytes. After a streak of short splices the pump pauses briefly so the
/// next splice moves a batch.
///
/// Everything is judged against the pipes' real capacity (the smaller of
/// the two when both ends are pipes), not the buffer size asked for: a
/// splice can never move more than a pipe holds, so against a 1 MiB buffer
/// every splice through a 64 KiB pipe would look short. "Short" is under a
/// quarter of what one splice could move. The pause is the time the
/// producer needs to fill the pipe at 5 GB/s, at most 200 µs, so it never
/// throttles a stream. A sleep lasts at least the thread's timer slack
/// (50 µs by default) however short the pause asked for, so pipes that
/// fill faster than that (under 256 KiB) are never paced. Measured side by
/// side, pausing on 8 KiB and 64 KiB pipes made transfers 1.4 to 3.3 times
/// slower than no pacing, and pausing on 256 KiB to 1 MiB pipes made them
/// faster (docs/performance.md). A transfer that is one short chunk and
/// EOF never pauses at all.
#[derive(Debug)]
struct Pacer {
    pause: Option<Duration>,
    short_below: usize,
    streak: u32,
}

impl Pacer {
    const MAX_PAUSE: Duration = Duration::from_micros(200);
    const MIN_PAUSE: Duration = Duration::from_micros(50);
    const BYTES_PER_MICRO: usize = 5_000;
    const STREAK: u32 = 2;

    /// `None` capacities are descriptors that are not pipes. Without a
    /// reader pipe nothing can pile up, so nothing is paced.
    fn new(reader_capacity: Option<usize>, writer_capacity: Option<usize>, len: usize) -> Self {
        let Some(reader) = reader_capacity else {
            return Self::off();
        };
        let capacity = writer_capacity.map_or(reader, |writer| writer.min(reader));
        let pause = Duration::from_micros((capacity / Self::BYTES_PER_MICRO) as u64);
        Self {
            pause: (pause >= Self::MIN_PAUSE).then(|| pause.min(Self::MAX_PAUSE)),
            short_below: len.min(capacity) / 4,
            streak: 0,
        }
    }

    const fn off() -> Self {
        Self {
            pause: None,
            short_below: 0,
            streak: 0,
        }
    }

    /// How long to wait before the next splice, given what the last moved.
    fn after(&mut self, moved: usize) -> Option<Duration> {
        let pause = self.pause?;
        if moved >= self.short_below {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        (self.streak >= Self::STREAK).then_some(pause)
    }
}

fn copy_all(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    writer_kind: Kind,
    buffer_size: usize,
    progress: &Progress,
) -> Result<Transfer, PumpError> {
    // Splice refused the pair: the decision is made before any byte moves.
    progress.set_method(Method::Copy);
    let mut buf = vec![0u8; buffer_size];
    let mut bytes = 0u64;
    loop {
        let filled = sys::read(reader, &mut buf).map_err(|e| PumpError::io("read", e))?;
        if filled == 0 {
            return Ok(finished(progress, bytes, Method::Copy, false));
        }
        let mut rest = &buf[..filled];
        while !rest.is_empty() {
            match sys::write(writer, rest) {
                // Only a broken device accepts nothing; report it as such
                // so every I/O error carries an errno.
                Ok(0) => {
                    return Err(PumpError::io(
                        "write",
                        io::Error::from_raw_os_error(libc::EIO),
                    ))
                }
                Ok(written) => {
                    progress.add(written);
                    bytes += written as u64;
                    rest = &rest[written..];
                }
                Err(err) if consumer_gone(&err, writer_kind) => {
                    return Ok(finished(progress, bytes, Method::Copy, true))
                }
                Err(err) => return Err(PumpError::io("write", err)),
            }
        }
    }
}

/// Also records the method in `progress`, for transfers that end before a
/// single byte was counted (empty input, consumer gone at once).
fn finished(progress: &Progress, bytes: u64, method: Method, downstream_closed: bool) -> Transfer {
    progress.set_method(method);
    Transfer {
        bytes,
        method,
        downstream_closed,
    }
}

/// The errnos with which splice says "not for these descriptors" rather
/// than "something broke". EINVAL is the documented one (no pipe on either
/// side, O_APPEND target, ...); the others cover kernels and filesystems
/// without splice support.
fn splice_refused(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EXDEV)
    )
}

/// EPIPE can only come from the writing side. ECONNRESET is a vanished
/// consumer only when the writer is a socket; from a socket reader it is an
/// upstream failure and must surface as an error.
fn consumer_gone(err: &io::Error, writer_kind: Kind) -> bool {
    match err.raw_os_error() {
        Some(libc::EPIPE) => true,
        Some(libc::ECONNRESET) => writer_kind == Kind::Socket,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;

    fn pause(reader: usize, writer: Option<usize>) -> Option<Duration> {
        Pacer::new(Some(reader), writer, MIB).pause
    }

    #[test]
    fn pipes_that_fill_within_a_timer_slack_are_never_paced() {
        for capacity in [4 * KIB, 8 * KIB, 64 * KIB, 128 * KIB, 240 * KIB] {
            assert_eq!(pause(capacity, None), None, "{capacity}");
            assert_eq!(pause(capacity, Some(capacity)), None, "{capacity}");
        }
    }

    #[test]
    fn pause_scales_with_pipe_capacity_and_is_capped() {
        assert_eq!(pause(256 * KIB, None), Some(Duration::from_micros(52)));
        assert_eq!(pause(512 * KIB, None), Some(Duration::from_micros(104)));
        assert_eq!(pause(MIB, None), Some(Pacer::MAX_PAUSE));
        assert_eq!(pause(16 * MIB, None), Some(Pacer::MAX_PAUSE));
    }

    #[test]
    fn the_smaller_pipe_decides() {
        assert_eq!(pause(MIB, Some(64 * KIB)), None);
        assert_eq!(pause(64 * KIB, Some(MIB)), None);
        assert_eq!(pause(MIB, Some(256 * KIB)), pause(256 * KIB, None));
        assert_eq!(
            Pacer::new(Some(MIB), Some(256 * KIB), MIB).short_below,
            64 * KIB
        );
    }

    #[test]
    fn short_is_judged_against_what_one_splice_can_move() {
        // A full 256 KiB pipe is not short, whatever buffer was asked for.
        let mut pacer = Pacer::new(Some(256 * KIB), Some(256 * KIB), MIB);
        for _ in 0..4 {
            assert_eq!(pacer.after(256 * KIB), None);
        }
        // The buffer size still counts when it is the smaller.
        assert_eq!(Pacer::new(Some(MIB), None, 64 * KIB).short_below, 16 * KIB);
        assert_eq!(Pacer::new(Some(MIB), None, MIB).short_below, 256 * KIB);
    }

    #[test]
    fn a_single_short_splice_never_pauses() {
        let mut pacer = Pacer::new(Some(MIB), Some(MIB), MIB);
        assert_eq!(pacer.after(100), None);
    }

    #[test]
    fn a_streak_of_short_splices_pauses_and_a_full_one_resets_it() {
        let mut pacer = Pacer::new(Some(MIB), Some(MIB), MIB);
        assert_eq!(pacer.after(8192), None);
        assert_eq!(pacer.after(8192), Some(Pacer::MAX_PAUSE));
        assert_eq!(pacer.after(8192), Some(Pacer::MAX_PAUSE));
        assert_eq!(pacer.after(MIB / 2), None);
        assert_eq!(pacer.after(8192), None);
    }

    #[test]
    fn non_pipe_readers_and_pacing_off_never_pause() {
        for mut pacer in [Pacer::new(None, Some(MIB), MIB), Pacer::off()] {
            for _ in 0..4 {
                assert_eq!(pacer.after(1), None);
            }
        }
    }
}
