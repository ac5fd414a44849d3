use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use crate::endpoint::{self, Kind, Role};
use crate::{check_buffer_size, sys, PumpError};

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

/// Move everything from `reader` to `writer` until EOF or until the consumer
/// goes away. Blocks; neither descriptor is closed.
pub fn pump(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    buffer_size: usize,
) -> Result<Transfer, PumpError> {
    check_buffer_size(buffer_size)?;
    endpoint::check(reader, Role::Reader)?;
    let writer_kind = endpoint::check(writer, Role::Writer)?;
    match splice_all(reader, writer, writer_kind, buffer_size)? {
        Some(done) => Ok(done),
        None => copy_all(reader, writer, writer_kind, buffer_size),
    }
}

/// `Ok(None)` means splice refused this pair of descriptors before moving
/// anything, so the copy loop can start from the very beginning.
fn splice_all(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    writer_kind: Kind,
    len: usize,
) -> Result<Option<Transfer>, PumpError> {
    let mut bytes = 0u64;
    loop {
        match sys::splice(reader, writer, len) {
            Ok(0) => return Ok(Some(finished(bytes, Method::Splice, false))),
            Ok(moved) => bytes += moved as u64,
            Err(err) if bytes == 0 && splice_refused(&err) => return Ok(None),
            Err(err) if consumer_gone(&err, writer_kind) => {
                return Ok(Some(finished(bytes, Method::Splice, true)))
            }
            Err(err) => return Err(PumpError::io("splice", err)),
        }
    }
}

fn copy_all(
    reader: BorrowedFd<'_>,
    writer: BorrowedFd<'_>,
    writer_kind: Kind,
    buffer_size: usize,
) -> Result<Transfer, PumpError> {
    let mut buf = vec![0u8; buffer_size];
    let mut bytes = 0u64;
    loop {
        let filled = sys::read(reader, &mut buf).map_err(|e| PumpError::io("read", e))?;
        if filled == 0 {
            return Ok(finished(bytes, Method::Copy, false));
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
                    bytes += written as u64;
                    rest = &rest[written..];
                }
                Err(err) if consumer_gone(&err, writer_kind) => {
                    return Ok(finished(bytes, Method::Copy, true))
                }
                Err(err) => return Err(PumpError::io("write", err)),
            }
        }
    }
}

fn finished(bytes: u64, method: Method, downstream_closed: bool) -> Transfer {
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
