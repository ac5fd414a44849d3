//! Real descriptors for the integration tests: pipes, socket pairs and
//! unlinked temp files, plus threads that feed and drain them.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cuprum_pump::{pump, Method, Progress, PumpError, Transfer};

/// `(read end, write end)`.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn socket_pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (a.into(), b.into())
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) {
    // SAFETY: F_GETFL/F_SETFL only change descriptor flags.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0);
        assert_eq!(
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
            0
        );
    }
}

/// A file with `contents`, positioned at its start and already unlinked, so
/// nothing is left behind whatever the test does.
pub fn temp_file(contents: &[u8], options: &mut OpenOptions) -> File {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "cuprum-pump-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write temp file");
    let mut file = options.open(&path).expect("open temp file");
    std::fs::remove_file(&path).expect("unlink temp file");
    file.rewind().expect("rewind");
    file
}

/// Deterministic, incompressible test data (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` then closes `fd`, signalling EOF downstream.
pub fn feed(fd: OwnedFd, data: Vec<u8>) -> JoinHandle<()> {
    thread::spawn(move || File::from(fd).write_all(&data).expect("feed"))
}

/// Reads `fd` to EOF.
pub fn drain(fd: OwnedFd) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        File::from(fd).read_to_end(&mut out).expect("drain");
        out
    })
}

/// What a progress record said once the pump had returned.
type Seen = (u64, Option<Method>);

/// Every finished transfer must leave its progress record saying what the
/// result says: same bytes, same method.
fn check_progress(outcome: &Result<Transfer, PumpError>, seen: Seen) {
    if let Ok(done) = outcome {
        assert_eq!(
            seen,
            (done.bytes, Some(done.method)),
            "progress vs {done:?}"
        );
    }
}

/// Runs the pump on its own thread, closing both ends when it returns (as
/// the daemon does), and fails the test if it hangs. Also checks that the
/// progress record agrees with the result.
pub fn pump_closing(
    reader: impl AsFd + Send + 'static,
    writer: impl AsFd + Send + 'static,
    buffer_size: usize,
) -> Result<Transfer, PumpError> {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let progress = Progress::new();
        let outcome = pump(reader.as_fd(), writer.as_fd(), buffer_size, &progress);
        drop((reader, writer));
        let _ = done.send((outcome, (progress.bytes(), progress.method())));
    });
    let (outcome, seen) = result
        .recv_timeout(Duration::from_secs(20))
        .expect("pump did not finish in time");
    check_progress(&outcome, seen);
    outcome
}

/// Same as [`pump_closing`], also returning the CPU time the pumping thread
/// used, to tell blocking waits from busy loops.
pub fn pump_closing_timed(
    reader: impl AsFd + Send + 'static,
    writer: impl AsFd + Send + 'static,
    buffer_size: usize,
) -> (Result<Transfer, PumpError>, Duration) {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let progress = Progress::new();
        let outcome = pump(reader.as_fd(), writer.as_fd(), buffer_size, &progress);
        let cpu = thread_cpu_time();
        drop((reader, writer));
        let _ = done.send((outcome, cpu, (progress.bytes(), progress.method())));
    });
    let (outcome, cpu, seen) = result
        .recv_timeout(Duration::from_secs(20))
        .expect("pump did not finish in time");
    check_progress(&outcome, seen);
    (outcome, cpu)
}

fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct on success.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}
