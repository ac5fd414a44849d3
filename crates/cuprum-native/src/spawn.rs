//! `spawn_stage`: the Python face of the `cuprum-spawn` crate.
//!
//! Conversions only: bytes to C strings, Python ints to limits, and
//! `SpawnError` to `OSError`. All behaviour lives (and is tested) in
//! `cuprum-spawn`.

use std::ffi::CString;
use std::os::fd::{IntoRawFd, RawFd};

use cuprum_spawn::{SpawnError, SpawnRequest};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// Start one pipeline stage and return ``(pid, pidfd)`` once it has exec'd.
///
/// ``program`` is the absolute path to execute (no PATH search); ``argv``
/// (``argv[0]`` included), ``envp`` (``b"K=V"``) and ``cwd`` are bytes.
/// ``stdio`` are the caller's descriptors that become the child's 0, 1 and
/// 2 (any numbers, repeats allowed); every other descriptor is closed in the
/// child, and the caller's stay open. Before exec the child resets all signal
/// dispositions, leads (``process_group=0``) or joins a process group, is
/// in the cgroup whose directory is ``cgroup_fd`` (created there, or moved
/// there where the kernel cannot create it inside), switches to ``user`` (``(uid, gid)``,
/// supplementary groups dropped), sets a SIGKILL parent-death signal tied to
/// the *calling thread*, applies ``rlimits`` (``(resource, soft, hard)``,
/// -1 meaning ``RLIM_INFINITY``), changes directory, and restricts itself
/// with ``landlock_ruleset_fd``. The caller owns the returned pidfd
/// (close-on-exec) and must reap the child.
///
/// A failure raises ``OSError(errno, message, step)``, the subclass picked
/// from errno; ``filename`` holds the failed step (``"exec"``, ``"chdir"``,
/// ...), and the child, if any, has been reaped. The GIL is released while
/// the child starts.
#[pyfunction]
#[pyo3(
    signature = (
        program,
        argv,
        envp,
        stdio,
        *,
        process_group = 0,
        cwd = None,
        cgroup_fd = None,
        user = None,
        landlock_ruleset_fd = None,
        rlimits = Vec::new(),
        parent_death_signal = true,
    ),
    text_signature = "(program, argv, envp, stdio, *, process_group=0, cwd=None, \
        cgroup_fd=None, user=None, landlock_ruleset_fd=None, rlimits=(), \
        parent_death_signal=True)"
)]
#[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
pub(crate) fn spawn_stage(
    py: Python<'_>,
    program: &[u8],
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    stdio: (RawFd, RawFd, RawFd),
    process_group: i32,
    cwd: Option<Vec<u8>>,
    cgroup_fd: Option<RawFd>,
    user: Option<(u32, u32)>,
    landlock_ruleset_fd: Option<RawFd>,
    rlimits: Vec<(i32, Rlim, Rlim)>,
    parent_death_signal: bool,
) -> PyResult<(i32, RawFd)> {
    let program = c_string(program.to_vec(), || "program".to_owned())?;
    let argv = c_strings(argv, "argv")?;
    let envp = c_strings(envp, "envp")?;
    let cwd = cwd
        .map(|cwd| c_string(cwd, || "cwd".to_owned()))
        .transpose()?;
    let rlimits: Vec<_> = rlimits
        .into_iter()
        .map(|(resource, soft, hard)| (resource, soft.0, hard.0))
        .collect();
    let req = SpawnRequest {
        program: &program,
        argv: &argv,
        envp: &envp,
        stdio: [stdio.0, stdio.1, stdio.2],
        process_group,
        cwd: cwd.as_deref(),
        cgroup_fd,
        credentials: user,
        landlock_ruleset_fd,
        rlimits: &rlimits,
        parent_death_signal,
    };
    let spawned = py
        .detach(|| cuprum_spawn::spawn(&req))
        .map_err(into_py_err)?;
    Ok((spawned.pid, spawned.pidfd.into_raw_fd()))
}

/// `OSError(errno, message, step)`: Python picks the subclass from errno
/// (PermissionError, FileNotFoundError, ...) and keeps the step in
/// `filename`.
fn into_py_err(err: SpawnError) -> PyErr {
    PyOSError::new_err((err.errno, err.to_string(), err.step.name()))
}

fn c_string(bytes: Vec<u8>, name: impl FnOnce() -> String) -> PyResult<CString> {
    CString::new(bytes)
        .map_err(|_| PyValueError::new_err(format!("{} must not contain NUL bytes", name())))
}

fn c_strings(items: Vec<Vec<u8>>, name: &str) -> PyResult<Vec<CString>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| c_string(item, || format!("{name}[{i}]")))
        .collect()
}

/// A resource limit value: 0..=2**64-1, or -1 for `RLIM_INFINITY` as in
/// Python's `resource` module.
pub(crate) struct Rlim(libc::rlim_t);

impl<'py> FromPyObject<'_, 'py> for Rlim {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(value) = obj.extract::<libc::rlim_t>() {
            return Ok(Self(value));
        }
        match obj.extract::<i64>() {
            Ok(-1) => Ok(Self(libc::RLIM_INFINITY)),
            Ok(value) => Err(PyValueError::new_err(format!(
                "rlimit values must be between 0 and 2**64-1, or -1 for RLIM_INFINITY, got {value}"
            ))),
            Err(err) => Err(err),
        }
    }
}
