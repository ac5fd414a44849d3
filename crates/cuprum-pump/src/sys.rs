//! Thin system-call wrappers that absorb the two "try again" errnos.
//!
//! EINTR is retried at once. EAGAIN only happens when the caller handed us
//! O_NONBLOCK descriptors; we then block in poll(2) until the descriptor is
//! ready, which keeps the pump a plain blocking call without busy-looping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

const SPLICE_FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;

pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(
        // SAFETY: the pointer and length describe `buf`, which is writable.
        || unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) },
        || wait_for(fd, libc::POLLIN),
    )
}

pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(
        // SAFETY: the pointer and length describe `buf`, which is readable.
        || unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) },
        || wait_for(fd, libc::POLLOUT),
    )
}

/// One splice(2) of at most `len` bytes, using (and advancing) the files'
/// own offsets.
pub(crate) fn splice(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    retry(
        // SAFETY: null offsets tell the kernel to use the file positions;
        // no memory of ours is touched.
        || unsafe {
            libc::splice(
                reader.as_raw_fd(),
                ptr::null_mut(),
                writer.as_raw_fd(),
                ptr::null_mut(),
                len,
                SPLICE_FLAGS,
            )
        },
        || wait_for_both(reader, writer),
    )
}

/// A new non-blocking, close-on-exec pipe as `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The capacity of the pipe behind `fd`, or `None` when it is not a pipe.
pub(crate) fn pipe_capacity(fd: BorrowedFd<'_>) -> Option<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument and only reads kernel state.
    let size = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(size).ok()
}

fn retry(
    mut call: impl FnMut() -> isize,
    mut wait: impl FnMut() -> io::Result<()>,
) -> io::Result<usize> {
    loop {
        if let Ok(done) = usize::try_from(call()) {
            return Ok(done);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            // EWOULDBLOCK is the same number on Linux.
            Some(libc::EAGAIN) => wait()?,
            _ => return Err(err),
        }
    }
}

/// Any event, including an error or hang-up, ends the wait: the retried
/// call then reports the condition itself (EOF, EPIPE, ...).
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
    poll(&mut [pollfd(fd.as_raw_fd(), events)])
}

/// splice needs data on one side *and* room on the other, so waiting for
/// either alone could spin on the one that is always ready. Each descriptor
/// leaves the poll set once it has been ready (poll skips negative fds).
///
/// Trouble on the writer (the consumer went away) or a broken reader ends
/// the wait at once so the retry can report it; a reader hang-up only means
/// EOF is readable and still needs the writer to be ready.
fn wait_for_both(reader: BorrowedFd<'_>, writer: BorrowedFd<'_>) -> io::Result<()> {
    const BROKEN: libc::c_short = libc::POLLERR | libc::POLLNVAL;
    let mut fds = [
        pollfd(reader.as_raw_fd(), libc::POLLIN),
        pollfd(writer.as_raw_fd(), libc::POLLOUT),
    ];
    while fds.iter().any(|p| p.fd >= 0) {
        poll(&mut fds)?;
        let [from, to] = &fds;
        if from.revents & BROKEN != 0 || to.revents & (BROKEN | libc::POLLHUP) != 0 {
            return Ok(());
        }
        for p in &mut fds {
            if p.revents != 0 {
                p.fd = -1;
            }
        }
    }
    Ok(())
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd]) -> io::Result<()> {
    let count = libc::nfds_t::try_from(fds.len()).expect("a handful of fds");
    loop {
        // SAFETY: the pointer and count describe `fds`; -1 waits forever.
        if unsafe { libc::poll(fds.as_mut_ptr(), count, -1) } >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
