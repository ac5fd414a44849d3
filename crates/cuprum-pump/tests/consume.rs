mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::thread;

use common::*;
use cuprum_pump::{consume, PumpError};

#[test]
fn reads_text_to_eof() {
    let text = "héllo wörld €😀\n".repeat(10_000);
    let (reader, writer) = pipe();
    let feeder = feed(writer, text.clone().into_bytes());
    // A tiny odd buffer splits nearly every multi-byte character.
    assert_eq!(consume(reader.as_fd(), 7).unwrap(), text);
    feeder.join().unwrap();
}

#[test]
fn invalid_bytes_become_replacement_characters() {
    let bytes = b"ok \xff\xfe then \xe2\x82 cut \xf0\x9f\x98".to_vec();
    let (reader, writer) = pipe();
    let feeder = thread::spawn(move || {
        let mut out = File::from(writer);
        for byte in &bytes {
            out.write_all(std::slice::from_ref(byte)).unwrap();
        }
    });
    let expected = String::from_utf8_lossy(b"ok \xff\xfe then \xe2\x82 cut \xf0\x9f\x98");
    assert_eq!(consume(reader.as_fd(), 2).unwrap(), expected);
    feeder.join().unwrap();
}

#[test]
fn reads_sockets_and_files() {
    let (mut src, reader) = socket_pair_streams();
    src.write_all(b"from a socket").unwrap();
    drop(src);
    assert_eq!(consume(reader.as_fd(), 4096).unwrap(), "from a socket");

    let file = temp_file(b"from a file", OpenOptions::new().read(true));
    assert_eq!(consume(file.as_fd(), 4096).unwrap(), "from a file");
}

fn socket_pair_streams() -> (File, File) {
    let (a, b) = socket_pair();
    (File::from(a), File::from(b))
}

#[test]
fn same_checks_as_pump() {
    let (reader, writer) = pipe();
    assert!(matches!(
        consume(reader.as_fd(), 0),
        Err(PumpError::InvalidBufferSize(0))
    ));
    let err = consume(writer.as_fd(), 4096).unwrap_err();
    assert!(matches!(&err, PumpError::Unsupported(r) if r.ends_with("not open for reading")));
    let dir = File::open(std::env::temp_dir()).unwrap();
    assert!(matches!(
        consume(dir.as_fd(), 4096),
        Err(PumpError::Unsupported(_))
    ));
    // SAFETY: a plain number far above any open fd; every use fails with EBADF.
    let closed = unsafe { BorrowedFd::borrow_raw(987_655) };
    assert_eq!(
        consume(closed, 4096).unwrap_err().errno(),
        Some(libc::EBADF)
    );
}
