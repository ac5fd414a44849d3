use std::os::fd::BorrowedFd;

use crate::endpoint::{self, Role};
use crate::{check_buffer_size, sys, PumpError, Utf8Decoder};

/// Read `reader` to EOF and return it as text, invalid UTF-8 replaced with
/// U+FFFD. Used for the last stage of a pipeline, whose output goes back to
/// the client rather than to another process.
pub fn consume(reader: BorrowedFd<'_>, buffer_size: usize) -> Result<String, PumpError> {
    check_buffer_size(buffer_size)?;
    endpoint::check(reader, Role::Reader)?;
    let mut buf = vec![0u8; buffer_size];
    let mut decoder = Utf8Decoder::new();
    let mut text = String::new();
    loop {
        let filled = sys::read(reader, &mut buf).map_err(|e| PumpError::io("read", e))?;
        if filled == 0 {
            decoder.finish(&mut text);
            return Ok(text);
        }
        decoder.decode(&buf[..filled], &mut text);
    }
}
