//! The stage spawner of cuprumd.
//!
//! [`spawn`] starts one pipeline stage the way glibc's `posix_spawn` does —
//! `clone(CLONE_VM | CLONE_VFORK)` on a dedicated stack, so nothing of the
//! daemon's memory is copied — and adds the daemon's containment steps in
//! the child before `execve`: process group, job cgroup, parent-death
//! signal, resource limits, working directory and a Landlock sandbox. It
//! returns only once the child has exec'd, so every step has taken effect
//! (the child is in its process group and cgroup) before the caller can
//! signal or count it; and it reports a failure of any step, `execve`
//! included, as an error naming the step, with the failed child already
//! reaped. The child comes with a pidfd (`CLONE_PIDFD`), so the caller can
//! wait for it and signal it without pid reuse races.
//!
//! Linux only (5.9 or later, for `close_range`).

mod child;
mod error;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

use child::{child_main, errno, set_signal_mask_saving, ChildContext, FULL_SIGSET};

pub use error::{errno_name, SpawnError, SpawnStep};

/// Usable stack of the child between `clone` and `execve` (it needs a few
/// KiB); below it lies one inaccessible guard page.
const CHILD_STACK_SIZE: usize = 128 * 1024;

/// How to start one stage.
#[derive(Clone, Copy, Debug)]
pub struct SpawnRequest<'a> {
    /// The program to execute. Not searched in `PATH`: give an absolute
    /// path (a relative one is resolved against `cwd`).
    pub program: &'a CStr,
    /// The arguments, `argv[0]` included.
    pub argv: &'a [CString],
    /// The whole environment, as `KEY=VALUE` strings.
    pub envp: &'a [CString],
    /// The descriptors that become the child's 0, 1 and 2. Any descriptors
    /// of the caller, in any order, repeated or not; they stay open in the
    /// caller. Every other descriptor is closed in the child.
    pub stdio: [RawFd; 3],
    /// 0: the child leads a new process group (its pgid is its pid);
    /// otherwise the pgid of the group to join.
    pub process_group: libc::pid_t,
    /// The child's working directory; the caller's if `None`.
    pub cwd: Option<&'a CStr>,
    /// A descriptor of a cgroup v2 directory: the child is created inside
    /// it (`clone3` with `CLONE_INTO_CGROUP`, no migration), or, where the
    /// kernel or architecture cannot, joins it by writing `"0"` to its
    /// `cgroup.procs` before `execve`. Migrating costs the kernel an RCU
    /// grace period, milliseconds when the machine was idle; creating
    /// inside costs nothing.
    pub cgroup_fd: Option<RawFd>,
    /// `(uid, gid)` to run as: the child drops its supplementary groups and
    /// sets all three gids, then all three uids (after joining the cgroup,
    /// which needs the caller's rights, and before the parent-death signal,
    /// which a change of credentials clears).
    pub credentials: Option<(libc::uid_t, libc::gid_t)>,
    /// A Landlock ruleset: the child sets `PR_SET_NO_NEW_PRIVS` and
    /// restricts itself with it before `execve` (so the ruleset also decides
    /// whether `program` may be executed).
    pub landlock_ruleset_fd: Option<RawFd>,
    /// `(resource, soft, hard)` for `setrlimit`, applied in order.
    pub rlimits: &'a [(libc::c_int, libc::rlim_t, libc::rlim_t)],
    /// Have the kernel SIGKILL the child when the *thread* that called
    /// [`spawn`] exits (`PR_SET_PDEATHSIG`; the kernel tracks the spawning
    /// thread, not the process). Spawn from a long-lived thread.
    pub parent_death_signal: bool,
}

impl<'a> SpawnRequest<'a> {
    /// A request with the defaults: a new process group, the caller's
    /// working directory, no cgroup, no sandbox, no limits and a
    /// parent-death signal.
    pub fn new(
        program: &'a CStr,
        argv: &'a [CString],
        envp: &'a [CString],
        stdio: [RawFd; 3],
    ) -> Self {
        Self {
            program,
            argv,
            envp,
            stdio,
            process_group: 0,
            cwd: None,
            cgroup_fd: None,
            credentials: None,
            landlock_ruleset_fd: None,
            rlimits: &[],
            parent_death_signal: true,
        }
    }
}

/// A running child that has exec'd the program.
///
/// The caller must reap it (`waitid(P_PIDFD, ...)` or `waitpid`); the pidfd
/// is close-on-exec.
#[derive(Debug)]
pub struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
}

/// Start a stage; see the crate documentation.
///
/// Blocks the calling thread until the child has exec'd or failed (the
/// latter reaped before returning), typically a fraction of a millisecond.
/// Safe to call from several threads at once.
pub fn spawn(req: &SpawnRequest<'_>) -> Result<Spawned, SpawnError> {
    if let Some(dir) = req.cgroup_fd {
        match spawn_with(req, Some(dir)) {
            Err(SpawnError {
                step: SpawnStep::Clone,
                errno: libc::ENOSYS | libc::E2BIG | libc::EINVAL,
            }) => {} // no clone3, or no CLONE_INTO_CGROUP: migrate instead
            other => return other,
        }
    }
    spawn_with(req, None)
}

/// Start the child created inside `into_cgroup`, or (None) joining the
/// request's cgroup, if any, by writing.
fn spawn_with(req: &SpawnRequest<'_>, into_cgroup: Option<RawFd>) -> Result<Spawned, SpawnError> {
    // Everything the child touches is built here, before clone.
    let argv = null_terminated(req.argv);
    let envp = null_terminated(req.envp);
    let stack = ChildStack::new()?;
    let ctx = ChildContext {
        program: req.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: req.stdio,
        process_group: req.process_group,
        cwd: req.cwd.map(CStr::as_ptr),
        join_cgroup_fd: if into_cgroup.is_some() {
            None
        } else {
            req.cgroup_fd
        },
        credentials: req.credentials,
        landlock_ruleset_fd: req.landlock_ruleset_fd,
        rlimits: req.rlimits,
        parent_death_signal: req.parent_death_signal,
        // SAFETY: getpid has no preconditions.
        parent_pid: unsafe { libc::getpid() },
        failure: std::cell::Cell::new(None),
    };

    let mut pidfd: c_int = -1;
    let cloned = {
        let _blocked = SignalsBlocked::new()?;
        let arg = ptr::from_ref(&ctx).cast_mut().cast::<c_void>();
        match into_cgroup {
            // SAFETY: as below; clone3 takes the same steps, the child being
            // created inside the cgroup.
            Some(dir) => unsafe { clone3_into(dir, &stack, arg, &mut pidfd) },
            None => {
                let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
                // SAFETY: the child runs child_main on its own mapped stack
                // and reads ctx, argv, envp and the request's strings, all
                // alive until after this call returns, which is not before
                // the child has exec'd or exited (CLONE_VFORK). With
                // CLONE_PIDFD the kernel stores the pidfd through the
                // parent_tid argument.
                let pid = unsafe {
                    libc::clone(
                        child_main,
                        stack.top(),
                        flags,
                        arg,
                        ptr::from_mut(&mut pidfd),
                    )
                };
                if pid < 0 {
                    Err(errno())
                } else {
                    Ok(pid)
                }
            }
        }
        // Signals are unblocked here, after the child has left the shared
        // memory.
    };
    // The child no longer runs on the stack (it exec'd or exited).
    drop(stack);

    let pid = cloned.map_err(|errno| SpawnError {
        // Not a cgroup v2 directory, or one we may not create processes in.
        step: if into_cgroup.is_some()
            && matches!(
                errno,
                libc::EBADF | libc::EACCES | libc::EPERM | libc::EOPNOTSUPP
            ) {
            SpawnStep::Cgroup
        } else {
            SpawnStep::Clone
        },
        errno,
    })?;
    // SAFETY: clone succeeded with CLONE_PIDFD, so pidfd is a new descriptor
    // that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Some(failure) = ctx.failure.get() {
        reap(pid);
        drop(pidfd);
        return Err(failure);
    }
    Ok(Spawned { pid, pidfd })
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (version 2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP)`: the
/// child starts on `stack` inside the cgroup `dir` and runs `child_main(arg)`;
/// returns its pid once it has exec'd or exited, or the errno.
///
/// # Safety
///
/// As for `clone` with `child_main`: `arg` and everything it points to stay
/// valid until this returns, and every signal is blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into(
    dir: RawFd,
    stack: &ChildStack,
    arg: *mut c_void,
    pidfd: &mut c_int,
) -> Result<libc::pid_t, c_int> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD;
    let args = CloneArgs {
        flags: flags as u64 | CLONE_INTO_CGROUP,
        pidfd: ptr::from_mut(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: stack.len as u64,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // The child returns from the system call on its own stack, with no
    // frame to return to: it calls child_main straight away (which execs or
    // exits) and never leaves this block. The parent continues after it.
    core::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "mov rdi, r12",
        "and rsp, -16",
        "call {entry}",
        "mov edi, eax",
        "mov eax, {exit}",
        "syscall",
        "ud2",
        "2:",
        entry = sym child_main,
        exit = const libc::SYS_exit,
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") ptr::from_ref(&args),
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        lateout("rcx") _,
        lateout("r11") _,
    );
    if ret < 0 {
        Err(-ret as c_int)
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// Elsewhere there is no trampoline for `clone3`: report it as missing, and
/// the caller migrates the child instead.
///
/// # Safety
///
/// Trivially safe; `unsafe` to match the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_into(
    _dir: RawFd,
    _stack: &ChildStack,
    _arg: *mut c_void,
    _pidfd: &mut c_int,
) -> Result<libc::pid_t, c_int> {
    Err(libc::ENOSYS)
}

/// A NULL-terminated array of pointers to `strings`, for execve.
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Reap a child that failed before exec (it has exited or is about to).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        // ECHILD: someone else reaped it (waitpid(-1) in another thread).
        if rc >= 0 || errno() != libc::EINTR {
            return;
        }
    }
}

/// The child's stack: an anonymous mapping with an inaccessible guard page
/// at its low end (the stack grows down), unmapped on drop.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> Result<Self, SpawnError> {
        let clone_error = |errno| SpawnError {
            step: SpawnStep::Clone,
            errno,
        };
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => 4096,
        };
        let len = CHILD_STACK_SIZE + page;
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(clone_error(errno()));
        }
        let stack = Self { base, len };
        // SAFETY: the first page lies within the mapping we own.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(clone_error(errno()));
        }
        Ok(stack)
    }

    /// The initial stack pointer: the end of the mapping (page-aligned, so
    /// aligned as every ABI requires).
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: base and len describe exactly the mapping made in new,
        // which nothing uses any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in the calling thread (glibc's internal ones too),
/// the previous mask restored on drop.
///
/// The child inherits the blocked mask, so no signal handler of the daemon
/// can run in the child, on the shared memory, before it has reset them.
struct SignalsBlocked {
    previous: [u64; 2],
}

impl SignalsBlocked {
    fn new() -> Result<Self, SpawnError> {
        let mut previous = [0; 2];
        // SAFETY: previous is writable and large enough for a kernel sigset.
        if unsafe { set_signal_mask_saving(&FULL_SIGSET, Some(&mut previous)) } != 0 {
            return Err(SpawnError {
                step: SpawnStep::Signals,
                errno: errno(),
            });
        }
        Ok(Self { previous })
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new; cannot fail with a valid
        // set and size.
        unsafe { set_signal_mask_saving(&self.previous, None) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: c is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a new descriptor we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Where clone3 cannot create the child in its cgroup, the child joins
    /// by writing "0" to the directory's cgroup.procs.
    #[test]
    fn without_clone3_the_child_writes_zero_to_cgroup_procs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/tmp")
            .join(format!("cuprum-spawn-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let fd = dir_fd(&dir);
        let program = c"/bin/true";
        let argv = vec![CString::new("true").expect("argv")];
        let envp: Vec<CString> = Vec::new();
        let mut req = SpawnRequest::new(program, &argv, &envp, [0, 1, 2]);
        req.cgroup_fd = Some(fd.as_raw_fd());

        let missing = spawn_with(&req, None).expect_err("no cgroup.procs");
        assert_eq!(
            (missing.step, missing.errno),
            (SpawnStep::Cgroup, libc::ENOENT)
        );

        std::fs::write(dir.join("cgroup.procs"), "").expect("procs file");
        let child = spawn_with(&req, None).expect("spawn");
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; the child is ours.
        assert_eq!(
            unsafe { libc::waitpid(child.pid, &mut status, 0) },
            child.pid
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).expect("read"),
            "0"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
