mod common;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use cuprum_pump::{
    pump, pump_with, Method, Pacing, Progress, PumpError, Transfer, DEFAULT_BUFFER_SIZE,
    MAX_BUFFER_SIZE,
};

const MIB: usize = 1 << 20;

#[test]
fn sixty_four_mib_pipe_to_pipe_splices_byte_exact() {
    let data = random_bytes(64 * MIB, 0x5eed);
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let feeder = feed(in_w, data.clone());
    let drainer = drain(out_r);

    let transfer = pump_closing(in_r, out_w, DEFAULT_BUFFER_SIZE).unwrap();

    feeder.join().unwrap();
    let received = drainer.join().unwrap();
    assert_eq!(transfer.bytes, data.len() as u64);
    assert_eq!(transfer.method, Method::Splice);
    assert!(!transfer.downstream_closed);
    assert!(received == data, "payload corrupted");
}

#[test]
fn socket_to_socket_falls_back_to_copy() {
    let data = random_bytes(8 * MIB + 123, 7);
    let (src, in_r) = socket_pair();
    let (out_w, dst) = socket_pair();
    let feeder = feed(src, data.clone());
    let drainer = drain(dst);

    let transfer = pump_closing(in_r, out_w, 4096).unwrap();

    feeder.join().unwrap();
    assert_eq!(transfer.method, Method::Copy);
    assert_eq!(transfer.bytes, data.len() as u64);
    assert!(drainer.join().unwrap() == data);
}

#[test]
fn pipe_and_socket_mixes_splice() {
    let data = random_bytes(3 * MIB, 11);
    let (in_r, in_w) = pipe();
    let (out_w, mid_r) = socket_pair();
    let (back_r, back_w) = pipe();
    let feeder = feed(in_w, data.clone());
    let drainer = drain(back_r);
    // pipe -> socket and socket -> pipe at the same time, chained.
    let relay = thread::spawn(move || pump_closing(mid_r, back_w, 1000));

    let first = pump_closing(in_r, out_w, 65536).unwrap();
    let second = relay.join().unwrap().unwrap();

    feeder.join().unwrap();
    assert_eq!(
        (first.method, second.method),
        (Method::Splice, Method::Splice)
    );
    assert_eq!(
        (first.bytes, second.bytes),
        (data.len() as u64, data.len() as u64)
    );
    assert!(drainer.join().unwrap() == data);
}

#[test]
fn regular_file_to_pipe_splices_and_append_target_copies() {
    let data = random_bytes(MIB + 5, 3);
    let source = temp_file(&data, OpenOptions::new().read(true));
    let (out_r, out_w) = pipe();
    let drainer = drain(out_r);
    let transfer = pump_closing(source, out_w, 65536).unwrap();
    assert_eq!(transfer.method, Method::Splice);
    assert!(drainer.join().unwrap() == data);

    // splice refuses O_APPEND targets with EINVAL before moving anything.
    let (in_r, in_w) = pipe();
    let feeder = feed(in_w, data.clone());
    let mut target = temp_file(b"head:", OpenOptions::new().read(true).append(true));
    let progress = Progress::new();
    let transfer = pump(in_r.as_fd(), target.as_fd(), 65536, &progress).unwrap();
    feeder.join().unwrap();
    assert_eq!(transfer.method, Method::Copy);
    assert_eq!(transfer.bytes, data.len() as u64);
    assert_eq!(
        (progress.bytes(), progress.method()),
        (transfer.bytes, Some(Method::Copy))
    );
    let mut written = Vec::new();
    target.rewind().unwrap();
    target.read_to_end(&mut written).unwrap();
    assert!(written[..5] == *b"head:" && written[5..] == data[..]);
}

#[test]
fn character_device_target() {
    let data = random_bytes(MIB, 9);
    let (in_r, in_w) = pipe();
    let feeder = feed(in_w, data.clone());
    let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
    let transfer = pump_closing(in_r, null, 65536).unwrap();
    feeder.join().unwrap();
    assert_eq!(transfer.bytes, data.len() as u64);
}

#[test]
fn empty_stream_moves_nothing() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    drop(in_w);
    let drainer = drain(out_r);
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();
    assert_eq!((transfer.bytes, transfer.downstream_closed), (0, false));
    assert!(drainer.join().unwrap().is_empty());

    let (src, in_r) = socket_pair();
    let (out_w, _dst) = socket_pair();
    drop(src);
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();
    assert_eq!((transfer.bytes, transfer.method), (0, Method::Copy));
}

/// An endless producer that stops only when its consumer hangs up, like
/// `yes`. A socket closed with unread data resets instead of EPIPE.
fn endless(fd: OwnedFd) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut out = File::from(fd);
        let block = [b'y'; 8192];
        loop {
            if let Err(err) = out.write_all(&block) {
                assert!(
                    matches!(
                        err.kind(),
                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                    ),
                    "{err}"
                );
                return;
            }
        }
    })
}

/// Reads `limit` bytes, then hangs up, like `head -c`.
fn head(fd: OwnedFd, limit: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0; limit];
        File::from(fd).read_exact(&mut buf).unwrap();
    })
}

#[test]
fn closed_downstream_ends_the_transfer_promptly() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let producer = endless(in_w);
    let consumer = head(out_r, MIB);

    let started = Instant::now();
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();

    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(transfer.downstream_closed);
    assert_eq!(transfer.method, Method::Splice);
    assert!(transfer.bytes >= MIB as u64);
    consumer.join().unwrap();
    // Closing the reader (done by pump_closing) is what stops the producer.
    producer.join().unwrap();
}

#[test]
fn closed_downstream_in_copy_mode_and_on_a_socket() {
    let (src, in_r) = socket_pair();
    let (out_w, dst) = socket_pair();
    let producer = endless(src);
    let consumer = head(dst, MIB);
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();
    assert!(transfer.downstream_closed);
    assert_eq!(transfer.method, Method::Copy);
    consumer.join().unwrap();
    producer.join().unwrap();

    let (in_r, in_w) = pipe();
    let (out_w, dst) = socket_pair();
    let producer = endless(in_w);
    let consumer = head(dst, MIB);
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();
    assert!(transfer.downstream_closed);
    consumer.join().unwrap();
    producer.join().unwrap();
}

#[test]
fn downstream_closed_before_the_first_byte() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    drop(out_r);
    let producer = endless(in_w);
    let transfer = pump_closing(in_r, out_w, 65536).unwrap();
    assert_eq!((transfer.bytes, transfer.downstream_closed), (0, true));
    producer.join().unwrap();
}

/// A producer that trickles, so the pump keeps finding its reader empty.
fn trickle(fd: OwnedFd, data: Vec<u8>, pieces: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut out = File::from(fd);
        for part in data.chunks(data.len().div_ceil(pieces)) {
            out.write_all(part).unwrap();
            thread::sleep(Duration::from_millis(25));
        }
    })
}

#[test]
fn nonblocking_descriptors_wait_instead_of_spinning() {
    let data = random_bytes(2 * MIB, 21);
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    set_nonblocking(in_r.as_fd());
    set_nonblocking(out_w.as_fd());
    let feeder = trickle(in_w, data.clone(), 12);
    let drainer = drain(out_r);

    let (transfer, cpu) = pump_closing_timed(in_r, out_w, 65536);

    feeder.join().unwrap();
    assert_eq!(transfer.unwrap().bytes, data.len() as u64);
    assert!(drainer.join().unwrap() == data);
    // ~300 ms of waiting; a busy loop would burn most of it.
    assert!(cpu < Duration::from_millis(150), "pump used {cpu:?} of CPU");
}

#[test]
fn nonblocking_sockets_in_copy_mode() {
    let data = random_bytes(2 * MIB, 22);
    let (src, in_r) = socket_pair();
    let (out_w, dst) = socket_pair();
    set_nonblocking(in_r.as_fd());
    set_nonblocking(out_w.as_fd());
    let feeder = trickle(src, data.clone(), 12);
    let drainer = drain(dst);

    let (transfer, cpu) = pump_closing_timed(in_r, out_w, 65536);

    feeder.join().unwrap();
    let transfer = transfer.unwrap();
    assert_eq!(
        (transfer.bytes, transfer.method),
        (data.len() as u64, Method::Copy)
    );
    assert!(drainer.join().unwrap() == data);
    assert!(cpu < Duration::from_millis(150), "pump used {cpu:?} of CPU");
}

#[test]
fn buffer_size_is_validated_first() {
    let (in_r, out_w) = (pipe().0, pipe().1);
    for size in [0, MAX_BUFFER_SIZE + 1] {
        let err = pump(in_r.as_fd(), out_w.as_fd(), size, &Progress::new()).unwrap_err();
        assert!(
            matches!(err, PumpError::InvalidBufferSize(s) if s == size),
            "{err:?}"
        );
        assert_eq!(err.errno(), None);
    }
    // Even before the descriptors are looked at.
    let dir = File::open(std::env::temp_dir()).unwrap();
    let err = pump(dir.as_fd(), dir.as_fd(), 0, &Progress::new()).unwrap_err();
    assert!(matches!(err, PumpError::InvalidBufferSize(0)));
}

#[test]
fn largest_buffer_size_is_accepted() {
    let (in_r, in_w) = pipe();
    let (_out_r, out_w) = pipe();
    drop(in_w);
    let transfer = pump(
        in_r.as_fd(),
        out_w.as_fd(),
        MAX_BUFFER_SIZE,
        &Progress::new(),
    )
    .unwrap();
    assert_eq!(transfer.bytes, 0);
}

fn unsupported_reason(err: PumpError) -> String {
    assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
    match err {
        PumpError::Unsupported(reason) => reason,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn directories_and_anonymous_inodes_are_unsupported() {
    let dir = File::open(std::env::temp_dir()).unwrap();
    let (_out_r, out_w) = pipe();
    let reason =
        unsupported_reason(pump(dir.as_fd(), out_w.as_fd(), 4096, &Progress::new()).unwrap_err());
    assert!(
        reason.starts_with("reader fd ") && reason.ends_with(" is a directory"),
        "{reason}"
    );

    // SAFETY: eventfd returns a fresh descriptor (checked below) we own.
    let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(event >= 0);
    // SAFETY: as above.
    let event = unsafe { OwnedFd::from_raw_fd(event) };
    let (in_r, _in_w) = pipe();
    let reason =
        unsupported_reason(pump(in_r.as_fd(), event.as_fd(), 4096, &Progress::new()).unwrap_err());
    assert!(
        reason.contains("writer fd") && reason.contains("anonymous inode"),
        "{reason}"
    );
}

#[test]
fn wrong_direction_is_unsupported_and_moves_nothing() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    File::from(in_w.try_clone().unwrap())
        .write_all(b"kept")
        .unwrap();

    let reason =
        unsupported_reason(pump(out_w.as_fd(), in_w.as_fd(), 4096, &Progress::new()).unwrap_err());
    assert!(reason.contains("reader fd") && reason.ends_with("is not open for reading"));
    let progress = Progress::new();
    let reason =
        unsupported_reason(pump(in_r.as_fd(), out_r.as_fd(), 4096, &progress).unwrap_err());
    assert!(reason.contains("writer fd") && reason.ends_with("is not open for writing"));
    // Refused before deciding anything: no method, no bytes.
    assert_eq!((progress.bytes(), progress.method()), (0, None));

    drop(in_w);
    let mut left = Vec::new();
    File::from(in_r).read_to_end(&mut left).unwrap();
    assert_eq!(left, b"kept");
}

#[test]
fn path_only_descriptors_are_unsupported() {
    use std::os::unix::fs::OpenOptionsExt;
    let path_only = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open("/dev/null")
        .unwrap();
    let (_out_r, out_w) = pipe();
    let reason = unsupported_reason(
        pump(path_only.as_fd(), out_w.as_fd(), 4096, &Progress::new()).unwrap_err(),
    );
    assert!(reason.contains("O_PATH"), "{reason}");
}

#[test]
fn closed_descriptor_is_an_io_error_with_its_errno() {
    // An fd number far above anything this process opens, so it is closed
    // for sure even while other tests run in parallel.
    // SAFETY: BorrowedFd is a plain number; every use of it fails with EBADF.
    let closed = unsafe { BorrowedFd::borrow_raw(987_654) };
    let (in_r, _in_w) = pipe();
    for (reader, writer, side) in [
        (closed, in_r.as_fd(), "reader"),
        (in_r.as_fd(), closed, "writer"),
    ] {
        let err = pump(reader, writer, 4096, &Progress::new()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBADF));
        assert!(
            matches!(&err, PumpError::Io { op, .. } if op.contains(side)),
            "{err:?}"
        );
    }
}

/// Polls `progress` until it reports `bytes`, failing after a few seconds.
fn wait_for_bytes(progress: &Progress, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.bytes() < bytes {
        assert!(Instant::now() < deadline, "stuck at {}", progress.bytes());
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(progress.bytes(), bytes);
}

/// Runs a pump that will block after the bytes written so far, sharing its
/// progress record with the test.
fn pump_in_background(
    reader: OwnedFd,
    writer: OwnedFd,
) -> (
    Arc<Progress>,
    thread::JoinHandle<Result<Transfer, PumpError>>,
) {
    let progress = Arc::new(Progress::new());
    let shared = Arc::clone(&progress);
    let handle = thread::spawn(move || pump(reader.as_fd(), writer.as_fd(), 65536, &shared));
    (progress, handle)
}

#[test]
fn progress_is_visible_while_a_splice_transfer_blocks() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (progress, pumping) = pump_in_background(in_r, out_w);
    assert_eq!((progress.bytes(), progress.method()), (0, None));

    let mut producer = File::from(in_w);
    producer.write_all(&[b'a'; 1000]).unwrap();
    wait_for_bytes(&progress, 1000);
    assert_eq!(progress.method(), Some(Method::Splice));
    producer.write_all(&[b'b'; 234]).unwrap();
    wait_for_bytes(&progress, 1234);
    assert!(!pumping.is_finished(), "the pump waits for more input");

    drop(producer);
    let transfer = pumping.join().unwrap().unwrap();
    assert_eq!(transfer.bytes, 1234);
    assert_eq!(progress.bytes(), 1234);
    let mut received = Vec::new();
    File::from(out_r).read_to_end(&mut received).unwrap();
    assert_eq!(received.len(), 1234);
}

#[test]
fn progress_is_visible_while_a_copy_transfer_blocks() {
    let (src, in_r) = socket_pair();
    let (out_w, dst) = socket_pair();
    let (progress, pumping) = pump_in_background(in_r, out_w);

    let mut producer = File::from(src);
    producer.write_all(&[b'c'; 777]).unwrap();
    wait_for_bytes(&progress, 777);
    assert_eq!(progress.method(), Some(Method::Copy));

    drop(producer);
    let transfer = pumping.join().unwrap().unwrap();
    assert_eq!((transfer.bytes, transfer.method), (777, Method::Copy));
    drop(dst);
}

#[test]
fn progress_keeps_what_moved_before_the_consumer_left() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (progress, pumping) = pump_in_background(in_r, out_w);
    let mut producer = File::from(in_w);
    producer.write_all(&[b'd'; 4096]).unwrap();
    wait_for_bytes(&progress, 4096);

    drop(out_r);
    producer.write_all(b"more").unwrap();
    let transfer = pumping.join().unwrap().unwrap();
    assert!(transfer.downstream_closed);
    assert_eq!((transfer.bytes, progress.bytes()), (4096, 4096));
    assert_eq!(progress.method(), Some(Method::Splice));
}

/// The pacer only engages on large pipes fed in small writes: both ways
/// through such pipes must still deliver every byte in order.
#[test]
fn paced_and_unpaced_transfers_through_grown_pipes_are_byte_exact() {
    let data = random_bytes(4 * MIB + 17, 0xface);
    for pacing in [Pacing::Adaptive, Pacing::Off] {
        let (in_r, in_w) = pipe();
        let (out_r, out_w) = pipe();
        for fd in [in_r.as_fd(), out_r.as_fd()] {
            // SAFETY: F_SETPIPE_SZ only resizes the pipe; 1 MiB is within
            // the default pipe-max-size.
            assert!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, MIB) } >= 0);
        }
        let chunks = data.clone();
        let feeder = thread::spawn(move || {
            let mut producer = File::from(in_w);
            for chunk in chunks.chunks(8192) {
                producer.write_all(chunk).unwrap();
            }
        });
        let drainer = drain(out_r);
        let transfer = pump_with(in_r.as_fd(), out_w.as_fd(), MIB, pacing, &Progress::new());
        drop((in_r, out_w));
        feeder.join().unwrap();
        let transfer = transfer.unwrap();
        assert_eq!(
            (transfer.bytes, transfer.method),
            (data.len() as u64, Method::Splice)
        );
        assert!(
            drainer.join().unwrap() == data,
            "{pacing:?}: payload corrupted"
        );
    }
}
