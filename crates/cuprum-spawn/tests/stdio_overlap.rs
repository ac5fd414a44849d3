//! Stage descriptors that are themselves 0, 1 or 2 in the daemon.
//!
//! This replaces the test process's own descriptors 0..=2 for a moment, so
//! it lives in a binary of its own, as a single test: the harness writes to
//! fd 1 whenever a test ends, and would write into the pipes.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use common::*;
use cuprum_spawn::Spawned;

/// This process's descriptors 0..=2, saved on creation and put back on drop
/// (also when a test fails).
struct SavedStdio([RawFd; 3]);

impl SavedStdio {
    fn save() -> Self {
        Self([0, 1, 2].map(|fd| {
            // SAFETY: plain fcntl; the copy is ours until drop.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
            assert!(
                copy >= 10,
                "save fd {fd}: {}",
                std::io::Error::last_os_error()
            );
            copy
        }))
    }
}

impl Drop for SavedStdio {
    fn drop(&mut self) {
        for (fd, saved) in [0, 1, 2].into_iter().zip(self.0) {
            // SAFETY: puts the saved descriptor back and closes the copy.
            unsafe {
                libc::dup2(saved, fd);
                libc::close(saved);
            }
        }
    }
}

/// Spawn `sh -c script` with `stdio` while this process's descriptors
/// 0..=2 are `own` (with FD_CLOEXEC if `cloexec`); restore them after.
fn spawn_with_own_stdio(
    own: [&OwnedFd; 3],
    cloexec: bool,
    script: &str,
    stdio: [RawFd; 3],
) -> Spawned {
    let _saved = SavedStdio::save();
    for (fd, source) in [0, 1, 2].into_iter().zip(own) {
        // SAFETY: replaces one of our own standard descriptors (restored
        // by _saved).
        unsafe {
            assert_eq!(libc::dup2(source.as_raw_fd(), fd), fd);
            libc::fcntl(
                fd,
                libc::F_SETFD,
                if cloexec { libc::FD_CLOEXEC } else { 0 },
            );
        }
    }
    spawn_simple(&["/bin/sh", "-c", script], stdio)
}

#[test]
fn standard_descriptors_as_stage_descriptors() {
    every_permutation_of_the_standard_descriptors();
    one_standard_descriptor_three_times();
}

fn every_permutation_of_the_standard_descriptors() {
    let permutations = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for stdio in permutations {
        for cloexec in [false, true] {
            let (in_reader, mut in_writer) = {
                let (r, w) = pipe();
                (r, std::fs::File::from(w))
            };
            let (out_reader, out_writer) = pipe();
            let (err_reader, err_writer) = pipe();
            // The child's fd i is our fd stdio[i]; make that the right pipe.
            let mut own = [&in_reader; 3];
            own[stdio[1] as usize] = &out_writer;
            own[stdio[2] as usize] = &err_writer;
            own[stdio[0] as usize] = &in_reader;
            let child = spawn_with_own_stdio(own, cloexec, "cat; echo err >&2", stdio);
            drop((in_reader, out_writer, err_writer));
            in_writer.write_all(b"hello\n").expect("write stdin");
            drop(in_writer);
            let context = format!("stdio {stdio:?}, cloexec {cloexec}");
            assert_eq!(read_to_string(out_reader), "hello\n", "{context}");
            assert_eq!(read_to_string(err_reader), "err\n", "{context}");
            assert_eq!(wait(&child), Exit::Code(0), "{context}");
        }
    }
}

fn one_standard_descriptor_three_times() {
    for fd in [0, 1, 2] {
        let (reader, writer) = pipe();
        let null = dev_null().into();
        let mut own = [&null; 3];
        own[fd as usize] = &writer;
        let child = spawn_with_own_stdio(own, true, "echo out; echo err >&2", [fd; 3]);
        drop(writer);
        assert_eq!(read_to_string(reader), "out\nerr\n", "fd {fd}");
        assert_eq!(wait(&child), Exit::Code(0), "fd {fd}");
    }
}
