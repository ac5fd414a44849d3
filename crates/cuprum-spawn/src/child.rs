//! The code the child runs between `clone` and `execve`.
//!
//! The child shares the daemon's memory (`CLONE_VM`) and runs on a stack of
//! its own while the spawning thread is suspended (`CLONE_VFORK`). Other
//! daemon threads keep running and may hold any lock, so this code only makes
//! raw, async-signal-safe system calls on data the parent prepared: it never
//! allocates, locks, formats or panics, and it never returns. It ends in
//! `execve` or, after recording the failed step in [`ChildContext::failure`],
//! in `_exit(127)`.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_long, c_uint, c_void};
use std::ptr;

use crate::error::{SpawnError, SpawnStep};

/// The exit status of a child that failed before `execve`, as in the shell.
const FAILED_STATUS: c_int = 127;

/// The first descriptor the child does not keep.
const FIRST_CLOSED_FD: c_uint = 3;

/// Size of the kernel's `sigset_t` (not glibc's 1024-bit one): `_NSIG / 8`.
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6"
))]
const KERNEL_SIGSET_SIZE: usize = 16;
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6"
)))]
const KERNEL_SIGSET_SIZE: usize = 8;

/// A kernel `sigset_t` with no signal in it.
pub(crate) const EMPTY_SIGSET: [u64; 2] = [0; 2];

/// A kernel `sigset_t` with every signal in it (the kernel itself leaves
/// `SIGKILL` and `SIGSTOP` out).
pub(crate) const FULL_SIGSET: [u64; 2] = [u64::MAX; 2];

/// A kernel `struct sigaction` for `SIG_DFL`: every field is zero (handler
/// `SIG_DFL`, no flags, no restorer, empty mask) whatever their order on the
/// architecture, so a zeroed buffer larger than the struct serves everywhere.
const DEFAULT_ACTION: [u64; 8] = [0; 8];

/// Everything the child needs, prepared by the parent before `clone`.
///
/// Pointers point into the parent's allocations, which outlive the child's
/// use of them: the parent thread stays suspended until the child has
/// exec'd or exited.
pub(crate) struct ChildContext<'a> {
    pub program: *const c_char,
    /// NULL-terminated.
    pub argv: *const *const c_char,
    /// NULL-terminated.
    pub envp: *const *const c_char,
    pub stdio: [c_int; 3],
    pub process_group: libc::pid_t,
    pub cwd: Option<*const c_char>,
    /// A job cgroup's directory to join by writing `"0"` to its
    /// `cgroup.procs` (when the child was not created inside it).
    pub join_cgroup_fd: Option<c_int>,
    pub credentials: Option<(libc::uid_t, libc::gid_t)>,
    pub landlock_ruleset_fd: Option<c_int>,
    pub rlimits: &'a [(c_int, libc::rlim_t, libc::rlim_t)],
    pub parent_death_signal: bool,
    /// The daemon's pid, taken with `getpid()` before `clone`.
    pub parent_pid: libc::pid_t,
    /// Written by the child just before `_exit`; read by the parent once it
    /// resumes. `None` after a successful `execve`.
    pub failure: Cell<Option<SpawnError>>,
}

/// Entry point of the cloned child; see the module documentation.
pub(crate) extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildContext` the parent passed to clone; it
    // lives on the suspended parent's stack for as long as the child runs.
    let ctx = unsafe { &*arg.cast::<ChildContext<'_>>() };
    // SAFETY: called once, in the child, with a fully prepared context.
    let (step, errno) = unsafe { prepare_and_exec(ctx) };
    ctx.failure.set(Some(SpawnError { step, errno }));
    // SAFETY: _exit is async-signal-safe and ends only this child (its own
    // thread group: the clone had no CLONE_THREAD).
    unsafe { libc::_exit(FAILED_STATUS) }
}

/// Run the start-up steps in order and exec; return only on failure.
///
/// # Safety
///
/// Only in the cloned child, with all signals blocked on entry.
unsafe fn prepare_and_exec(ctx: &ChildContext<'_>) -> (SpawnStep, c_int) {
    // (1) With every signal blocked, no parent handler can run here (where
    // it would corrupt the shared memory). Reset them all, and ignored
    // signals too: the daemon ignores SIGPIPE, its stages must not.
    reset_signal_dispositions();

    // (2) Join or lead the process group before the parent can signal it.
    if libc::setpgid(0, ctx.process_group) != 0 {
        return failed(SpawnStep::Setpgid);
    }

    // (3) Join the job cgroup before running any of the stage's code (when
    // clone3 could not create the child in it).
    if let Some(dir) = ctx.join_cgroup_fd {
        let procs = libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if procs < 0 {
            return failed(SpawnStep::Cgroup);
        }
        let written = libc::write(procs, b"0".as_ptr().cast(), 1);
        let outcome = match written {
            1 => None,
            -1 => Some(failed(SpawnStep::Cgroup)),
            _ => Some((SpawnStep::Cgroup, libc::EIO)),
        };
        libc::close(procs);
        if let Some(failure) = outcome {
            return failure;
        }
    }

    // (3b) Become the job user: groups first, then gid, then uid (after the
    // uid change the rights to change the others are gone). Raw system
    // calls: glibc's wrappers would broadcast the change to every thread of
    // the "process" they believe they are in, which here is the daemon.
    if let Some((uid, gid)) = ctx.credentials {
        if libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return failed(SpawnStep::Credentials);
        }
    }

    // (4) Die with the spawning thread; and if the daemon is already gone,
    // the signal was missed, so do not start at all.
    if ctx.parent_death_signal {
        let signal = libc::SIGKILL as libc::c_ulong;
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0_u64, 0_u64, 0_u64) != 0 {
            return failed(SpawnStep::Pdeathsig);
        }
        if libc::getppid() != ctx.parent_pid {
            return (SpawnStep::Pdeathsig, libc::ESRCH);
        }
    }

    // (5) Standard descriptors.
    if let Err(errno) = install_stdio(ctx.stdio) {
        return (SpawnStep::Stdio, errno);
    }

    // (6) Resource limits.
    for &(resource, soft, hard) in ctx.rlimits {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // The resource type is c_uint on glibc and c_int on musl.
        if libc::setrlimit(resource as _, &limit) != 0 {
            return failed(SpawnStep::Rlimit);
        }
    }

    // (7) Working directory.
    if let Some(cwd) = ctx.cwd {
        if libc::chdir(cwd) != 0 {
            return failed(SpawnStep::Chdir);
        }
    }

    // (8) Sandbox. After chdir (which it may forbid) and before closing the
    // ruleset descriptor.
    if let Some(ruleset) = ctx.landlock_ruleset_fd {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1_u64, 0_u64, 0_u64, 0_u64) != 0 {
            return failed(SpawnStep::Landlock);
        }
        let restricted = libc::syscall(
            libc::SYS_landlock_restrict_self,
            c_long::from(ruleset),
            0 as c_long,
        );
        if restricted != 0 {
            return failed(SpawnStep::Landlock);
        }
    }

    // (9) Close everything but 0, 1 and 2, including the descriptors the
    // daemon has open without O_CLOEXEC and the ruleset (needs Linux 5.9).
    let closed = libc::syscall(
        libc::SYS_close_range,
        c_long::from(FIRST_CLOSED_FD),
        c_long::from(c_uint::MAX),
        0 as c_long,
    );
    if closed != 0 {
        return failed(SpawnStep::Stdio);
    }

    // (10) Start the stage with no signal blocked.
    if set_signal_mask(&EMPTY_SIGSET) != 0 {
        return failed(SpawnStep::Signals);
    }

    // (11) Run the stage.
    libc::execve(ctx.program, ctx.argv, ctx.envp);
    failed(SpawnStep::Exec)
}

/// Make `stdio[i]` the child's descriptor `i`, without `FD_CLOEXEC`.
///
/// Sources may be any descriptors, including 0..=2 in any order and the
/// same one several times. A source below 3 could be overwritten by an
/// earlier target, so it is first copied above 2; then every `dup2` copies
/// from a descriptor above 2 onto 0..=2, never onto itself (where `dup2`
/// would do nothing and leave `FD_CLOEXEC` set). The copies above 2 are
/// closed with everything else in step (9).
///
/// # Safety
///
/// Only in the cloned child.
unsafe fn install_stdio(stdio: [c_int; 3]) -> Result<(), c_int> {
    let mut sources = stdio;
    for source in &mut sources {
        if *source < FIRST_CLOSED_FD as c_int {
            let copy = libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, FIRST_CLOSED_FD as c_int);
            if copy < 0 {
                return Err(errno());
            }
            *source = copy;
        }
    }
    for (target, source) in [0, 1, 2].into_iter().zip(sources) {
        if libc::dup2(source, target) < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Set every catchable signal to `SIG_DFL`, ignoring errors.
///
/// The raw system call, because glibc's `sigaction` refuses its two internal
/// signals (32 and 33), whose handlers must not survive either.
///
/// # Safety
///
/// Only in the cloned child, with all signals blocked.
unsafe fn reset_signal_dispositions() {
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        libc::syscall(
            libc::SYS_rt_sigaction,
            c_long::from(signal),
            DEFAULT_ACTION.as_ptr(),
            ptr::null_mut::<c_void>(),
            KERNEL_SIGSET_SIZE,
        );
    }
}

/// Replace the calling thread's signal mask with `set` (a kernel sigset),
/// storing the previous one in `old` if given. Returns 0 or -1 (errno set).
///
/// The raw system call, because glibc's wrappers silently keep its internal
/// signals unblocked.
///
/// # Safety
///
/// `old`, if given, must be writable for [`KERNEL_SIGSET_SIZE`] bytes.
pub(crate) unsafe fn set_signal_mask_saving(set: &[u64; 2], old: Option<&mut [u64; 2]>) -> c_long {
    let old = match old {
        Some(old) => old.as_mut_ptr(),
        None => ptr::null_mut(),
    };
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        c_long::from(libc::SIG_SETMASK),
        set.as_ptr(),
        old,
        KERNEL_SIGSET_SIZE,
    )
}

/// [`set_signal_mask_saving`] without keeping the previous mask.
///
/// # Safety
///
/// As for [`set_signal_mask_saving`].
unsafe fn set_signal_mask(set: &[u64; 2]) -> c_long {
    set_signal_mask_saving(set, None)
}

/// The failed step with the current `errno`.
fn failed(step: SpawnStep) -> (SpawnStep, c_int) {
    (step, errno())
}

/// The calling thread's `errno`. In the child this is the parent thread's
/// (shared, like all memory), which is harmless: that thread is suspended
/// and the parent reads errno only after clone itself failed.
pub(crate) fn errno() -> c_int {
    // SAFETY: __errno_location always returns the valid per-thread slot.
    unsafe { *libc::__errno_location() }
}
