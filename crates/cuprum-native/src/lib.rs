//! Native stream pump for cuprumd pipelines.
//!
//! This is only the Python face of the `cuprum-pump` crate: it converts
//! arguments, results and errors, and releases the GIL while bytes move.
//! All behaviour lives (and is tested) in `cuprum-pump`. It exports exactly
//! what the `cuprumd` package calls.

mod spawn;

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use cuprum_pump::{Pacing, Progress, PumpError, DEFAULT_BUFFER_SIZE, MAX_BUFFER_SIZE};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{is_available, rust_pump_transfer, spawn::spawn_stage, TransferProgress};
}

/// Move bytes from reader_fd to writer_fd until EOF or until the consumer
/// closes its end; return (bytes, method, downstream_closed) where method is
/// "splice" or "copy". The descriptors are not closed. The GIL is released
/// for the whole transfer. A TransferProgress given as progress is updated
/// as bytes move, so other threads can see how far the transfer got.
/// pacing=False turns off the pauses that batch short splices on large
/// pipes (for measuring the two side by side).
#[pyfunction]
#[pyo3(
    signature = (reader_fd, writer_fd, *, buffer_size = BufferSize::DEFAULT, progress = None, pacing = true),
    text_signature = "(reader_fd, writer_fd, *, buffer_size=65536, progress=None, pacing=True)"
)]
fn rust_pump_transfer(
    py: Python<'_>,
    reader_fd: RawFd,
    writer_fd: RawFd,
    buffer_size: BufferSize,
    progress: Option<&Bound<'_, TransferProgress>>,
    pacing: bool,
) -> PyResult<(u64, &'static str, bool)> {
    let reader = LentFd::new(reader_fd, "reader_fd")?;
    let writer = LentFd::new(writer_fd, "writer_fd")?;
    // Without a caller's record the pump still needs one; nobody reads it.
    let progress = progress.map_or_else(|| Arc::new(Progress::new()), |p| Arc::clone(&p.get().0));
    let pacing = if pacing {
        Pacing::Adaptive
    } else {
        Pacing::Off
    };
    let done = py
        .detach(|| {
            cuprum_pump::pump_with(
                reader.borrow(),
                writer.borrow(),
                buffer_size.0,
                pacing,
                &progress,
            )
        })
        .map_err(into_py_err)?;
    Ok((done.bytes, done.method.as_str(), done.downstream_closed))
}

/// The live counters of one rust_pump_transfer call: bytes the writer has
/// accepted so far, and the method once the pump has chosen it (None
/// before). Readable from any thread while the transfer runs, and after it
/// was abandoned. Use a fresh one per transfer: counts add up.
#[pyclass(frozen, module = "cuprumd._native")]
struct TransferProgress(Arc<Progress>);

#[pymethods]
impl TransferProgress {
    #[new]
    fn new() -> Self {
        Self(Arc::new(Progress::new()))
    }

    /// Bytes accepted by the writer so far.
    #[getter]
    fn bytes(&self) -> u64 {
        self.0.bytes()
    }

    /// "splice" or "copy", or None while the pump has not chosen yet.
    #[getter]
    fn method(&self) -> Option<&'static str> {
        self.0.method().map(|method| method.as_str())
    }

    fn __repr__(&self) -> String {
        let bytes = self.0.bytes();
        match self.0.method() {
            Some(method) => format!("TransferProgress(bytes={bytes}, method='{method}')"),
            None => format!("TransferProgress(bytes={bytes}, method=None)"),
        }
    }
}

/// Whether splice(2) moves bytes between pipes in this process: probed once
/// (a byte spliced from one pipe into another and read back) and cached.
/// The pump works either way; without splice it copies through a buffer.
#[pyfunction]
fn is_available() -> bool {
    cuprum_pump::splice_works()
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
