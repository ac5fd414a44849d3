//! A failed spawn leaves nothing behind: no child, no zombie, no
//! descriptor, no mapping.
//!
//! A binary of its own with a single test, so that "this process has no
//! children" and its descriptor and mapping counts mean something.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use cuprum_spawn::{spawn, SpawnRequest, SpawnStep};

fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read maps")
        .lines()
        .count()
}

#[test]
fn failed_and_finished_spawns_leave_nothing_behind() {
    let null = dev_null();
    let stdio = [null.as_raw_fd(); 3];
    let envp = env();
    let argv = cstrings(&["x"]);
    let missing = cstring("/nonexistent/cuprum-spawn-test");
    let true_ = cstring("/bin/true");
    let missing_dir = cstring("/nonexistent/cuprum-spawn-cwd");

    let fail = || {
        let err = spawn(&SpawnRequest::new(&missing, &argv, &envp, stdio)).unwrap_err();
        assert_eq!((err.step, err.errno), (SpawnStep::Exec, libc::ENOENT));
        let mut req = SpawnRequest::new(&true_, &argv, &envp, stdio);
        req.cwd = Some(&missing_dir);
        let err = spawn(&req).unwrap_err();
        assert_eq!((err.step, err.errno), (SpawnStep::Chdir, libc::ENOENT));
    };
    let succeed = || {
        let child = spawn(&SpawnRequest::new(&true_, &argv, &envp, stdio)).expect("spawn");
        assert_eq!(wait(&child), Exit::Code(0));
    };

    fail();
    succeed();
    let fds = open_fds(std::process::id() as i32);
    let mappings = mapping_count();
    for _ in 0..20 {
        fail();
        succeed();
    }
    assert_eq!(open_fds(std::process::id() as i32), fds);
    assert_eq!(mapping_count(), mappings);

    // No child left, not even a zombie.
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let rc = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    assert_eq!(rc, -1, "a child was left behind");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ECHILD)
    );
}
