use std::ffi::CStr;
use std::fmt;
use std::io;

use crate::MAX_BUFFER_SIZE;

/// Everything that can stop a transfer.
///
/// A consumer closing its end is deliberately *not* here: it is an ordinary
/// way for a pipeline to finish (`yes | head`), reported through
/// [`Transfer::downstream_closed`](crate::Transfer::downstream_closed).
#[derive(Debug)]
pub enum PumpError {
    /// The requested buffer size is outside `1..=MAX_BUFFER_SIZE`.
    InvalidBufferSize(usize),
    /// An endpoint the pump cannot move bytes through; always detected
    /// before a single byte moves, so the caller may retry another way.
    Unsupported(String),
    /// A system call failed; the original errno is kept in `source`.
    Io { op: &'static str, source: io::Error },
}

impl PumpError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        Self::Io { op, source }
    }

    /// The errno a caller should report, so that bindings can raise the
    /// matching OS-level exception (`BrokenPipeError`, `EBADF`, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::InvalidBufferSize(_) => None,
            Self::Unsupported(_) => Some(libc::EOPNOTSUPP),
            Self::Io { source, .. } => source.raw_os_error(),
        }
    }
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBufferSize(size) => write!(
                f,
                "buffer_size must be between 1 and {MAX_BUFFER_SIZE} bytes (1 GiB), got {size}"
            ),
            Self::Unsupported(reason) => f.write_str(reason),
            // The bare strerror text, without std's "(os error N)" suffix:
            // bindings put the errno next to it already.
            Self::Io { op, source } => match source.raw_os_error() {
                Some(code) => write!(f, "{op}: {}", strerror(code)),
                None => write!(f, "{op}: {source}"),
            },
        }
    }
}

impl std::error::Error for PumpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn strerror(code: i32) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length, and the XSI
    // strerror_r (which libc binds on Linux) NUL-terminates on success.
    let rc = unsafe { libc::strerror_r(code, buf.as_mut_ptr().cast(), buf.len()) };
    match CStr::from_bytes_until_nul(&buf) {
        Ok(text) if rc == 0 => text.to_string_lossy().into_owned(),
        _ => format!("Unknown error {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errno_follows_the_variant() {
        assert_eq!(PumpError::InvalidBufferSize(0).errno(), None);
        assert_eq!(
            PumpError::Unsupported("x".into()).errno(),
            Some(libc::EOPNOTSUPP)
        );
        let io = PumpError::io("write", io::Error::from_raw_os_error(libc::EPIPE));
        assert_eq!(io.errno(), Some(libc::EPIPE));
        assert!(io.source().is_some());
    }

    #[test]
    fn messages_are_plain() {
        let io = PumpError::io("fstat(reader)", io::Error::from_raw_os_error(libc::EBADF));
        assert_eq!(io.to_string(), "fstat(reader): Bad file descriptor");
        let size = PumpError::InvalidBufferSize(0).to_string();
        assert!(size.contains("between 1 and 1073741824"), "{size}");
        assert_eq!(
            PumpError::Unsupported("reader fd 5 is a directory".into()).to_string(),
            "reader fd 5 is a directory"
        );
    }
}
