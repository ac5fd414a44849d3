//! Helpers shared by the integration tests: real processes, real pipes.

#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use cuprum_spawn::{spawn, SpawnRequest, Spawned};

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

pub fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL in test strings")
}

pub fn cstrings(items: &[&str]) -> Vec<CString> {
    items.iter().map(|s| cstring(s)).collect()
}

/// A small, fixed environment.
pub fn env() -> Vec<CString> {
    cstrings(&["PATH=/usr/bin:/bin", "LC_ALL=C"])
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: fds is a valid out-array of two ints.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 returned two new descriptors that we now own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn dev_null() -> File {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
}

/// Read `fd` to EOF.
pub fn read_to_string(fd: OwnedFd) -> String {
    let mut text = String::new();
    File::from(fd).read_to_string(&mut text).expect("read");
    text
}

/// Spawn `argv` (argv[0] is the absolute program) with the given stdio and
/// otherwise default options.
pub fn spawn_simple(argv: &[&str], stdio: [RawFd; 3]) -> Spawned {
    let program = cstring(argv[0]);
    let argv = cstrings(argv);
    let envp = env();
    spawn(&SpawnRequest::new(&program, &argv, &envp, stdio)).expect("spawn")
}

/// Spawn `sh -c script` with stdout into a pipe; return its output and exit.
pub fn sh_output(script: &str, stdio_in: RawFd) -> (String, Exit) {
    let (reader, writer) = pipe();
    let child = spawn_simple(
        &["/bin/sh", "-c", script],
        [stdio_in, writer.as_raw_fd(), 2],
    );
    drop(writer);
    let out = read_to_string(reader);
    (out, wait(&child))
}

/// Wait for the child through its pidfd and reap it.
pub fn wait(child: &Spawned) -> Exit {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: info is a valid out-pointer; the pidfd is ours.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                child.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "waitid: {err}");
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => Exit::Code(status),
        _ => Exit::Signal(status),
    }
}

/// Whether the child ends within `timeout_ms` (its pidfd becomes readable).
pub fn ends_within(child: &Spawned, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: child.pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    rc == 1
}

/// SIGKILL the child (through its pidfd) and reap it.
pub fn kill(child: &Spawned) -> Exit {
    // SAFETY: plain system call on our own pidfd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            child.pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "pidfd_send_signal: {}",
        std::io::Error::last_os_error()
    );
    wait(child)
}

/// The descriptor numbers a process has open.
pub fn open_fds(pid: libc::pid_t) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/<pid>/fd")
        .map(|entry| {
            entry
                .expect("fd entry")
                .file_name()
                .to_str()
                .expect("numeric name")
                .parse()
                .expect("numeric name")
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// One `Name:\tvalue` line of /proc/<pid>/status.
pub fn status_field(pid: libc::pid_t, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}
