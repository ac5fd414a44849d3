//! Checks run before the first byte moves, so that a descriptor the pump
//! cannot serve is refused cleanly instead of failing halfway through.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::PumpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Reader,
    Writer,
}

impl Role {
    // Error ops are static strings; naming the side tells which fd was bad.
    fn fstat_op(self) -> &'static str {
        match self {
            Self::Reader => "fstat(reader)",
            Self::Writer => "fstat(writer)",
        }
    }

    fn fcntl_op(self) -> &'static str {
        match self {
            Self::Reader => "fcntl(reader)",
            Self::Writer => "fcntl(writer)",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
        })
    }
}

/// The kinds of descriptor the pump accepts. Which side is a socket matters
/// later: only a socket writer can report ECONNRESET for a gone consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Fifo,
    Socket,
    File,
    CharDevice,
}

pub(crate) fn check(fd: BorrowedFd<'_>, role: Role) -> Result<Kind, PumpError> {
    let raw = fd.as_raw_fd();
    let mode = file_mode(fd).map_err(|e| PumpError::io(role.fstat_op(), e))?;
    let kind = match mode & libc::S_IFMT {
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFREG => Kind::File,
        libc::S_IFCHR => Kind::CharDevice,
        other => {
            return Err(PumpError::Unsupported(format!(
                "{role} fd {raw} is {}",
                describe_type(other)
            )))
        }
    };

    // SAFETY: F_GETFL takes no argument and only reads descriptor state.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags == -1 {
        return Err(PumpError::io(role.fcntl_op(), io::Error::last_os_error()));
    }
    if flags & libc::O_PATH != 0 {
        return Err(PumpError::Unsupported(format!(
            "{role} fd {raw} is an O_PATH descriptor, which cannot transfer data"
        )));
    }
    let access = flags & libc::O_ACCMODE;
    let (allowed, direction) = match role {
        Role::Reader => (access != libc::O_WRONLY, "reading"),
        Role::Writer => (access != libc::O_RDONLY, "writing"),
    };
    if !allowed {
        return Err(PumpError::Unsupported(format!(
            "{role} fd {raw} is not open for {direction}"
        )));
    }
    Ok(kind)
}

fn file_mode(fd: BorrowedFd<'_>) -> io::Result<libc::mode_t> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the whole struct when it returns 0.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful fstat above.
    Ok(unsafe { stat.assume_init() }.st_mode)
}

fn describe_type(file_type: libc::mode_t) -> &'static str {
    match file_type {
        libc::S_IFDIR => "a directory",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        // eventfd, epoll, signalfd, timerfd, pidfd...: no data stream.
        0 => "an anonymous inode (eventfd, epoll, timerfd or similar)",
        _ => "of an unknown file type",
    }
}
