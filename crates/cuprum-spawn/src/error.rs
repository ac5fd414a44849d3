//! What went wrong while starting a stage, and how to say it.

use std::ffi::CStr;
use std::fmt;

/// The point of the start-up sequence that failed.
///
/// `Clone` and the parent's half of `Signals` fail in the daemon before any
/// child exists; every other step fails in the child, which reports it
/// through shared memory and exits with status 127 (the parent reaps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpawnStep {
    /// `setpgid(0, process_group)`.
    Setpgid,
    /// Writing `"0"` to the job cgroup's `cgroup.procs`.
    Cgroup,
    /// Dropping supplementary groups and switching gid and uid.
    Credentials,
    /// `PR_SET_PDEATHSIG`, or the daemon was already gone (`ESRCH`).
    Pdeathsig,
    /// Moving the stage's descriptors to 0, 1 and 2, or closing the rest.
    Stdio,
    /// `setrlimit`.
    Rlimit,
    /// `chdir`.
    Chdir,
    /// `PR_SET_NO_NEW_PRIVS` or `landlock_restrict_self`.
    Landlock,
    /// `execve`.
    Exec,
    /// Creating the child: its stack or `clone` itself.
    Clone,
    /// Blocking signals around `clone`, or unblocking them in the child.
    Signals,
}

impl SpawnStep {
    /// A short stable name, for machines (`"exec"`, `"chdir"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Setpgid => "setpgid",
            Self::Cgroup => "cgroup",
            Self::Credentials => "credentials",
            Self::Pdeathsig => "pdeathsig",
            Self::Stdio => "stdio",
            Self::Rlimit => "rlimit",
            Self::Chdir => "chdir",
            Self::Landlock => "landlock",
            Self::Exec => "exec",
            Self::Clone => "clone",
            Self::Signals => "signals",
        }
    }

    /// What could not be done, for people (`"cannot execute"`, ...).
    pub const fn description(self) -> &'static str {
        match self {
            Self::Setpgid => "cannot set the process group",
            Self::Cgroup => "cannot join the job cgroup",
            Self::Credentials => "cannot switch to the job user",
            Self::Pdeathsig => "cannot set the parent-death signal",
            Self::Stdio => "cannot set up the file descriptors",
            Self::Rlimit => "cannot set rlimit",
            Self::Chdir => "cannot change directory",
            Self::Landlock => "cannot apply the sandbox",
            Self::Exec => "cannot execute",
            Self::Clone => "cannot create the process",
            Self::Signals => "cannot set up signals",
        }
    }
}

impl fmt::Display for SpawnStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed spawn: the step and the `errno` it failed with.
///
/// Displays as e.g. `cannot execute: Permission denied (EACCES)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpawnError {
    pub step: SpawnStep,
    pub errno: i32,
}

impl SpawnError {
    /// The system's text for `errno` (`strerror`), e.g. `Permission denied`.
    pub fn strerror(&self) -> String {
        let mut buf = [0 as libc::c_char; 256];
        // SAFETY: the buffer is writable for its whole length; the XSI
        // strerror_r NUL-terminates what it writes and never writes more.
        let rc = unsafe { libc::strerror_r(self.errno, buf.as_mut_ptr(), buf.len()) };
        if rc != 0 {
            return format!("Unknown error {}", self.errno);
        }
        // SAFETY: on success the buffer holds a NUL-terminated string.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step.description(), self.strerror())?;
        match errno_name(self.errno) {
            Some(name) => write!(f, " ({name})"),
            None => write!(f, " (errno {})", self.errno),
        }
    }
}

impl std::error::Error for SpawnError {}

/// The symbolic name of the errno values a spawn can plausibly meet.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EBADFD => "EBADFD",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::ELIBBAD => "ELIBBAD",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EUCLEAN => "EUCLEAN",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_step_the_reason_and_the_errno() {
        let err = SpawnError {
            step: SpawnStep::Exec,
            errno: libc::EACCES,
        };
        assert_eq!(
            err.to_string(),
            "cannot execute: Permission denied (EACCES)"
        );
        let err = SpawnError {
            step: SpawnStep::Chdir,
            errno: libc::ENOENT,
        };
        assert_eq!(
            err.to_string(),
            "cannot change directory: No such file or directory (ENOENT)"
        );
    }

    #[test]
    fn display_survives_an_errno_without_a_name() {
        let err = SpawnError {
            step: SpawnStep::Cgroup,
            errno: 4242,
        };
        assert_eq!(
            err.to_string(),
            "cannot join the job cgroup: Unknown error 4242 (errno 4242)"
        );
    }

    #[test]
    fn step_names_are_distinct() {
        let steps = [
            SpawnStep::Setpgid,
            SpawnStep::Cgroup,
            SpawnStep::Credentials,
            SpawnStep::Pdeathsig,
            SpawnStep::Stdio,
            SpawnStep::Rlimit,
            SpawnStep::Chdir,
            SpawnStep::Landlock,
            SpawnStep::Exec,
            SpawnStep::Clone,
            SpawnStep::Signals,
        ];
        let names: std::collections::HashSet<_> = steps.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), steps.len());
    }
}
