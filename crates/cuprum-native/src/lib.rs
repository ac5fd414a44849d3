//! Native stream pump for cuprumd pipelines.
//!
//! This is only the Python face of the `cuprum-pump` crate: it converts
//! arguments, results and errors, and releases the GIL while bytes move.
//! All behaviour lives (and is tested) in `cuprum-pump`.

use std::os::fd::{BorrowedFd, RawFd};

use cuprum_pump::{PumpError, Transfer, DEFAULT_BUFFER_SIZE, MAX_BUFFER_SIZE};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{is_available, rust_consume_stream, rust_pump_stream, rust_pump_transfer};
}

/// Move bytes from reader_fd to writer_fd until EOF or until the consumer
/// closes its end; return the number of bytes written. The descriptors are
/// not closed. The GIL is released for the whole transfer.
#[pyfunction]
#[pyo3(
    signature = (reader_fd, writer_fd, *, buffer_size = BufferSize::DEFAULT),
    text_signature = "(reader_fd, writer_fd, *, buffer_size=65536)"
)]
fn rust_pump_stream(
    py: Python<'_>,
    reader_fd: RawFd,
    writer_fd: RawFd,
    buffer_size: BufferSize,
) -> PyResult<u64> {
    transfer(py, reader_fd, writer_fd, buffer_size).map(|done| done.bytes)
}

/// Like rust_pump_stream, returning (bytes, method, downstream_closed) where
/// method is "splice" or "copy".
#[pyfunction]
#[pyo3(
    signature = (reader_fd, writer_fd, *, buffer_size = BufferSize::DEFAULT),
    text_signature = "(reader_fd, writer_fd, *, buffer_size=65536)"
)]
fn rust_pump_transfer(
    py: Python<'_>,
    reader_fd: RawFd,
    writer_fd: RawFd,
    buffer_size: BufferSize,
) -> PyResult<(u64, &'static str, bool)> {
    let done = transfer(py, reader_fd, writer_fd, buffer_size)?;
    Ok((done.bytes, done.method.as_str(), done.downstream_closed))
}

/// Read reader_fd to EOF and return its text, invalid UTF-8 replaced with
/// U+FFFD. The descriptor is not closed. The GIL is released while reading.
#[pyfunction]
#[pyo3(
    signature = (reader_fd, *, buffer_size = BufferSize::DEFAULT),
    text_signature = "(reader_fd, *, buffer_size=65536)"
)]
fn rust_consume_stream(
    py: Python<'_>,
    reader_fd: RawFd,
    buffer_size: BufferSize,
) -> PyResult<String> {
    let reader = LentFd::new(reader_fd, "reader_fd")?;
    py.detach(|| cuprum_pump::consume(reader.borrow(), buffer_size.0))
        .map_err(into_py_err)
}

/// Always True: importing this module is the real availability check.
#[pyfunction]
fn is_available() -> bool {
    true
}

fn transfer(
    py: Python<'_>,
    reader_fd: RawFd,
    writer_fd: RawFd,
    buffer_size: BufferSize,
) -> PyResult<Transfer> {
    let reader = LentFd::new(reader_fd, "reader_fd")?;
    let writer = LentFd::new(writer_fd, "writer_fd")?;
    py.detach(|| cuprum_pump::pump(reader.borrow(), writer.borrow(), buffer_size.0))
        .map_err(into_py_err)
}

/// The single mapping from pump errors to Python exceptions. OSError is
/// built from `(errno, message)` so Python picks the matching subclass
/// (BrokenPipeError, ...) exactly as for its own os functions.
fn into_py_err(err: PumpError) -> PyErr {
    match (&err, err.errno()) {
        (PumpError::InvalidBufferSize(_), _) => PyValueError::new_err(err.to_string()),
        (_, Some(errno)) => PyOSError::new_err((errno, err.to_string())),
        (_, None) => PyOSError::new_err(err.to_string()),
    }
}

/// A descriptor number lent by the Python caller for one call.
struct LentFd(RawFd);

impl LentFd {
    fn new(fd: RawFd, name: &str) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "{name} must be a non-negative file descriptor, got {fd}"
            )));
        }
        Ok(Self(fd))
    }

    fn borrow(&self) -> BorrowedFd<'_> {
        // SAFETY: the number is non-negative, so never BorrowedFd's -1
        // niche, and the caller keeps the descriptor open for the call, as
        // with os.read. A descriptor closed anyway only makes the system
        // calls fail with EBADF, which surfaces as OSError.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

/// `buffer_size` as given: any Python int, so that negative or huge values
/// get the same ValueError as other out-of-range sizes instead of the
/// OverflowError of a plain integer conversion.
struct BufferSize(usize);

impl BufferSize {
    const DEFAULT: Self = Self(DEFAULT_BUFFER_SIZE);
}

impl<'py> FromPyObject<'_, 'py> for BufferSize {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        let value = obj.cast::<PyInt>()?.to_owned();
        match value.extract::<usize>() {
            Ok(size) => Ok(Self(size)),
            Err(_) => Err(PyValueError::new_err(format!(
                "buffer_size must be between 1 and {MAX_BUFFER_SIZE} bytes (1 GiB), got {value}"
            ))),
        }
    }
}
