//! The spawner against real processes.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use common::*;
use cuprum_spawn::{spawn, SpawnError, SpawnRequest, SpawnStep, Spawned};

/// A fresh directory under Cargo's per-target scratch space (not /tmp,
/// which may be mounted noexec).
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cuprum-spawn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn path_cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in path")
}

fn spawn_err(req: &SpawnRequest<'_>) -> SpawnError {
    match spawn(req) {
        Ok(child) => panic!(
            "spawn succeeded: pid {} exited {:?}",
            child.pid,
            wait(&child)
        ),
        Err(err) => err,
    }
}

/// Spawn `sleep 30` on /dev/null, after `edit` has adjusted the request.
fn sleeper<'a>(edit: impl FnOnce(&mut SpawnRequest<'a>)) -> Spawned {
    static ARGV: LazyLock<Vec<CString>> = LazyLock::new(|| cstrings(&["sleep", "30"]));
    static ENVP: LazyLock<Vec<CString>> = LazyLock::new(env);
    let null = dev_null();
    let fd = null.as_raw_fd();
    let mut req = SpawnRequest::new(c"/bin/sleep", &ARGV, &ENVP, [fd, fd, fd]);
    edit(&mut req);
    spawn(&req).expect("spawn sleep")
}

#[test]
fn echo_output_arrives_through_a_pipe() {
    let (reader, writer) = pipe();
    let null = dev_null();
    let child = spawn_simple(
        &["/bin/echo", "hello", "world"],
        [null.as_raw_fd(), writer.as_raw_fd(), 2],
    );
    drop(writer);
    assert_eq!(read_to_string(reader), "hello world\n");
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn exit_status_is_read_through_the_pidfd() {
    let null = dev_null();
    let child = spawn_simple(&["/bin/sh", "-c", "exit 7"], [null.as_raw_fd(); 3]);
    assert!(child.pid > 0);
    assert_eq!(wait(&child), Exit::Code(7));
}

#[test]
fn pidfd_is_close_on_exec() {
    let null = dev_null();
    let child = spawn_simple(&["/bin/true"], [null.as_raw_fd(); 3]);
    // SAFETY: plain fcntl on our own descriptor.
    let flags = unsafe { libc::fcntl(child.pidfd.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn environment_is_exactly_envp() {
    let (reader, writer) = pipe();
    let null = dev_null();
    let program = cstring("/usr/bin/env");
    let argv = cstrings(&["env"]);
    let envp = cstrings(&["FOO=bar", "EMPTY="]);
    let req = SpawnRequest::new(
        &program,
        &argv,
        &envp,
        [null.as_raw_fd(), writer.as_raw_fd(), 2],
    );
    let child = spawn(&req).expect("spawn env");
    drop(writer);
    assert_eq!(read_to_string(reader), "FOO=bar\nEMPTY=\n");
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn missing_program_fails_at_exec_with_enoent() {
    let program = cstring("/nonexistent/cuprum-spawn-test");
    let argv = cstrings(&["x"]);
    let envp = env();
    let err = spawn_err(&SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]));
    assert_eq!(
        err,
        SpawnError {
            step: SpawnStep::Exec,
            errno: libc::ENOENT
        }
    );
    assert_eq!(
        err.to_string(),
        "cannot execute: No such file or directory (ENOENT)"
    );
}

#[test]
fn file_without_execute_permission_fails_at_exec_with_eacces() {
    let dir = scratch_dir("noexec");
    let script = dir.join("script");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let program = path_cstring(&script);
    let argv = cstrings(&["script"]);
    let envp = env();
    let err = spawn_err(&SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]));
    assert_eq!((err.step, err.errno), (SpawnStep::Exec, libc::EACCES));
    assert_eq!(
        err.to_string(),
        "cannot execute: Permission denied (EACCES)"
    );
}

#[test]
fn cwd_is_applied() {
    let dir = scratch_dir("cwd");
    let (reader, writer) = pipe();
    let null = dev_null();
    let program = cstring("/bin/sh");
    let argv = cstrings(&["sh", "-c", "pwd -P"]);
    let envp = env();
    let cwd = path_cstring(&dir);
    let mut req = SpawnRequest::new(
        &program,
        &argv,
        &envp,
        [null.as_raw_fd(), writer.as_raw_fd(), 2],
    );
    req.cwd = Some(&cwd);
    let child = spawn(&req).expect("spawn pwd");
    drop(writer);
    let expected = dir.canonicalize().expect("canonical dir");
    assert_eq!(
        read_to_string(reader).trim_end(),
        expected.to_str().unwrap()
    );
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn missing_cwd_fails_at_chdir_with_enoent() {
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    let cwd = cstring("/nonexistent/cuprum-spawn-cwd");
    let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
    req.cwd = Some(&cwd);
    let err = spawn_err(&req);
    assert_eq!((err.step, err.errno), (SpawnStep::Chdir, libc::ENOENT));
    assert!(err.to_string().starts_with("cannot change directory: "));
}

#[test]
fn process_group_zero_leads_a_new_group_and_others_can_join_it() {
    let leader = sleeper(|_| {});
    // SAFETY: plain system call.
    assert_eq!(unsafe { libc::getpgid(leader.pid) }, leader.pid);
    let member = sleeper(|req| req.process_group = leader.pid);
    // SAFETY: plain system call.
    assert_eq!(unsafe { libc::getpgid(member.pid) }, leader.pid);
    assert_ne!(member.pid, leader.pid);
    assert_eq!(kill(&member), Exit::Signal(libc::SIGKILL));
    assert_eq!(kill(&leader), Exit::Signal(libc::SIGKILL));
}

#[test]
fn joining_a_missing_process_group_fails_at_setpgid() {
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
    // No process group has this id (pid_max is at most 2^22).
    req.process_group = i32::MAX;
    let err = spawn_err(&req);
    assert_eq!((err.step, err.errno), (SpawnStep::Setpgid, libc::EPERM));
}

#[test]
fn ignored_sigpipe_is_not_inherited() {
    // SAFETY: setting a disposition to SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let null = dev_null();
    let child = spawn_simple(
        &["/bin/sh", "-c", "kill -PIPE $$; exit 3"],
        [null.as_raw_fd(); 3],
    );
    assert_eq!(wait(&child), Exit::Signal(libc::SIGPIPE));
}

extern "C" fn ignore_usr1(_: libc::c_int) {}

#[test]
fn handled_ignored_and_blocked_signals_are_all_reset() {
    // SAFETY: a handler that does nothing is async-signal-safe; SIGHUP and
    // SIGUSR1 are not used by the test harness.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            ignore_usr1 as *const () as libc::sighandler_t,
        );
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Blocked in this (test) thread only.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut blocked: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
    }
    assert_ne!(
        status_field(std::process::id() as i32, "SigCgt"),
        "0000000000000000"
    );

    let child = sleeper(|_| {});
    let fields = ["SigBlk", "SigIgn", "SigCgt"].map(|name| status_field(child.pid, name));
    assert_eq!(fields, ["0000000000000000"; 3]);
    assert_eq!(kill(&child), Exit::Signal(libc::SIGKILL));

    // SAFETY: undoes the block above.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &blocked, std::ptr::null_mut()) };
}

#[test]
fn only_the_three_standard_descriptors_are_inherited() {
    let null = dev_null();
    // SAFETY: dup returns a new descriptor, without FD_CLOEXEC, that we own.
    let leaky = unsafe { OwnedFd::from_raw_fd(libc::dup(null.as_raw_fd())) };
    assert!(leaky.as_raw_fd() > 2);
    // SAFETY: plain fcntl on our own descriptor.
    assert_eq!(unsafe { libc::fcntl(leaky.as_raw_fd(), libc::F_GETFD) }, 0);

    let child = sleeper(|_| {});
    assert_eq!(open_fds(child.pid), vec![0, 1, 2]);
    assert_eq!(kill(&child), Exit::Signal(libc::SIGKILL));
    assert!(open_fds(std::process::id() as i32).contains(&leaky.as_raw_fd()));
}

#[test]
fn the_same_descriptor_can_serve_all_three() {
    let (reader, writer) = pipe();
    let fd = writer.as_raw_fd();
    let child = spawn_simple(&["/bin/sh", "-c", "echo out; echo err >&2"], [fd, fd, fd]);
    drop(writer);
    assert_eq!(read_to_string(reader), "out\nerr\n");
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn a_bad_stdio_descriptor_fails_at_stdio() {
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    for stdio in [[0, 1, -1], [0, 1_000_000, 2], [-5, 1, 2]] {
        let err = spawn_err(&SpawnRequest::new(&program, &argv, &envp, stdio));
        assert_eq!(
            (err.step, err.errno),
            (SpawnStep::Stdio, libc::EBADF),
            "{stdio:?}"
        );
    }
}

#[test]
fn rlimits_are_applied() {
    let limits = [
        (libc::RLIMIT_NOFILE as libc::c_int, 64, 128),
        (libc::RLIMIT_CORE as libc::c_int, 0, 0),
    ];
    let child = sleeper(|req| req.rlimits = &limits);
    let table = std::fs::read_to_string(format!("/proc/{}/limits", child.pid)).expect("limits");
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in limits"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("Max open files"), ["64", "128"]);
    assert_eq!(row("Max core file size"), ["0", "0"]);
    assert_eq!(kill(&child), Exit::Signal(libc::SIGKILL));
}

#[test]
fn an_impossible_rlimit_fails_at_rlimit() {
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    let limits = [(libc::RLIMIT_NOFILE as libc::c_int, 128, 64)];
    let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
    req.rlimits = &limits;
    let err = spawn_err(&req);
    assert_eq!((err.step, err.errno), (SpawnStep::Rlimit, libc::EINVAL));
    assert!(err.to_string().starts_with("cannot set rlimit: "));
}

fn status_words(pid: libc::pid_t, name: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in status"));
    line[name.len()..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn credentials_switch_every_id_and_drop_the_groups() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root may switch; what an unprivileged caller gets is below.
        let program = cstring("/bin/true");
        let argv = cstrings(&["true"]);
        let envp = env();
        let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
        req.credentials = Some((65534, 65534));
        let err = spawn_err(&req);
        assert_eq!((err.step, err.errno), (SpawnStep::Credentials, libc::EPERM));
        return;
    }
    let child = sleeper(|req| req.credentials = Some((65534, 65533)));
    assert_eq!(status_words(child.pid, "Uid:"), ["65534"; 4]);
    assert_eq!(status_words(child.pid, "Gid:"), ["65533"; 4]);
    assert!(status_words(child.pid, "Groups:").is_empty());
    assert_eq!(status_words(child.pid, "CapEff:"), ["0000000000000000"]);
    assert_eq!(kill(&child), Exit::Signal(libc::SIGKILL));
}

#[test]
fn the_parent_death_signal_survives_the_switch_of_credentials() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // the switch itself needs root; covered by the test above
    }
    let child = std::thread::spawn(|| {
        sleeper(|req| {
            req.credentials = Some((65534, 65534));
            req.parent_death_signal = true;
        })
    })
    .join()
    .expect("spawning thread");
    let died = ends_within(&child, 5000);
    if !died {
        kill(&child);
    }
    assert!(
        died,
        "the switch of credentials cleared the parent-death signal"
    );
    assert_eq!(wait(&child), Exit::Signal(libc::SIGKILL));
}

#[test]
fn parent_death_signal_kills_the_child_when_the_spawning_thread_ends() {
    let child = std::thread::spawn(|| sleeper(|req| req.parent_death_signal = true))
        .join()
        .expect("spawning thread");
    assert!(
        ends_within(&child, 10_000),
        "child survived its spawning thread"
    );
    assert_eq!(wait(&child), Exit::Signal(libc::SIGKILL));
}

#[test]
fn without_parent_death_signal_the_child_outlives_the_spawning_thread() {
    let child = std::thread::spawn(|| sleeper(|req| req.parent_death_signal = false))
        .join()
        .expect("spawning thread");
    assert!(
        !ends_within(&child, 300),
        "child died with its spawning thread"
    );
    assert_eq!(kill(&child), Exit::Signal(libc::SIGKILL));
}

/// The cgroup v2 mount, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

fn open_dir(path: &Path) -> OwnedFd {
    let c = path_cstring(path);
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open {}", path.display());
    // SAFETY: fd is a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn a_child_is_created_inside_its_cgroup_or_the_spawn_fails_at_cgroup() {
    let program = cstring("/bin/cat");
    let argv = cstrings(&["cat", "/proc/self/cgroup"]);
    let envp = env();
    let null = dev_null();
    let name = format!("cuprum-spawn-test-{}", std::process::id());
    match cgroup2_mount().map(|mount| mount.join(&name)) {
        Some(dir) if std::fs::create_dir(&dir).is_ok() => {
            let (reader, writer) = pipe();
            let dir_fd = open_dir(&dir);
            let mut req = SpawnRequest::new(
                &program,
                &argv,
                &envp,
                [null.as_raw_fd(), writer.as_raw_fd(), 2],
            );
            req.cgroup_fd = Some(dir_fd.as_raw_fd());
            let child = spawn(&req).expect("spawn into the cgroup");
            drop(writer);
            let seen = read_to_string(reader);
            assert_eq!(wait(&child), Exit::Code(0));
            std::fs::remove_dir(&dir).expect("the cgroup is empty again");
            assert!(
                seen.lines()
                    .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{name}"))),
                "{seen}"
            );
        }
        // No cgroup we may create (not root): a directory we own is no
        // cgroup, and the child is never started outside one.
        _ => {
            let dir = scratch_dir("not-a-cgroup");
            let dir_fd = open_dir(&dir);
            let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
            req.cgroup_fd = Some(dir_fd.as_raw_fd());
            assert_eq!(spawn_err(&req).step, SpawnStep::Cgroup);
        }
    }
}

#[test]
fn a_directory_that_is_no_cgroup_fails_at_cgroup() {
    let dir = scratch_dir("plain-dir");
    let dir_fd = open_dir(&dir);
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    let mut req = SpawnRequest::new(&program, &argv, &envp, [0, 1, 2]);
    req.cgroup_fd = Some(dir_fd.as_raw_fd());
    let err = spawn_err(&req);
    assert_eq!(err.step, SpawnStep::Cgroup);
    assert!(err.to_string().starts_with("cannot join the job cgroup: "));
}

#[test]
fn many_threads_spawn_at_once() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for i in 0..50 {
                    let (reader, writer) = pipe();
                    let null = dev_null();
                    let text = i.to_string();
                    let child = spawn_simple(
                        &["/bin/echo", &text],
                        [null.as_raw_fd(), writer.as_raw_fd(), 2],
                    );
                    drop(writer);
                    assert_eq!(read_to_string(reader), format!("{i}\n"));
                    assert_eq!(wait(&child), Exit::Code(0));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("spawning thread");
    }
}

// --- Landlock -------------------------------------------------------------

const LANDLOCK_ACCESS_FS_EXECUTE: u64 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_long = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// A ruleset that handles only execution and allows it beneath `dirs`;
/// `None` if this kernel has no Landlock.
fn execute_only_beneath(dirs: &[&str]) -> Option<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: LANDLOCK_ACCESS_FS_EXECUTE,
    };
    // SAFETY: attr is a valid ruleset attribute of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0_u32,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EOPNOTSUPP) => return None,
            _ => panic!("landlock_create_ruleset: {err}"),
        }
    }
    // SAFETY: a new descriptor that we own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for dir in dirs {
        let Ok(dir) = std::fs::File::open(dir) else {
            continue;
        };
        let rule = PathBeneathAttr {
            allowed_access: LANDLOCK_ACCESS_FS_EXECUTE,
            parent_fd: dir.as_raw_fd(),
        };
        // SAFETY: rule is a valid path-beneath attribute.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0_u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "landlock_add_rule: {}",
            std::io::Error::last_os_error()
        );
    }
    Some(ruleset)
}

#[test]
fn landlock_ruleset_decides_what_may_be_executed() {
    let Some(ruleset) = execute_only_beneath(&["/usr", "/lib", "/lib64", "/bin"]) else {
        eprintln!("skipped: no Landlock in this kernel");
        return;
    };
    let dir = scratch_dir("landlock");
    let copy = dir.join("true");
    std::fs::copy("/usr/bin/true", &copy).expect("copy true");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let null = dev_null();
    let stdio = [null.as_raw_fd(); 3];
    let argv = cstrings(&["true"]);
    let envp = env();
    let outside = path_cstring(&copy);
    let inside = cstring("/usr/bin/true");

    // The copy itself is executable: without the sandbox it runs.
    let child = spawn(&SpawnRequest::new(&outside, &argv, &envp, stdio)).expect("spawn copy");
    assert_eq!(wait(&child), Exit::Code(0));

    // With the sandbox, what lies beneath /usr still runs...
    let mut req = SpawnRequest::new(&inside, &argv, &envp, stdio);
    req.landlock_ruleset_fd = Some(ruleset.as_raw_fd());
    let child = spawn(&req).expect("spawn sandboxed /usr/bin/true");
    assert_eq!(wait(&child), Exit::Code(0));

    // ...and the copy outside does not.
    req.program = &outside;
    let err = spawn_err(&req);
    assert_eq!((err.step, err.errno), (SpawnStep::Exec, libc::EACCES));

    // The sandbox stays in the child: the caller can still run the copy.
    let child = spawn(&SpawnRequest::new(&outside, &argv, &envp, stdio)).expect("spawn copy");
    assert_eq!(wait(&child), Exit::Code(0));
}

#[test]
fn a_bad_landlock_descriptor_fails_at_landlock() {
    let null = dev_null();
    let program = cstring("/bin/true");
    let argv = cstrings(&["true"]);
    let envp = env();
    let mut req = SpawnRequest::new(&program, &argv, &envp, [null.as_raw_fd(); 3]);
    // Not a ruleset.
    req.landlock_ruleset_fd = Some(null.as_raw_fd());
    let err = spawn_err(&req);
    assert_eq!(err.step, SpawnStep::Landlock);
    assert!(err.to_string().starts_with("cannot apply the sandbox: "));
}
