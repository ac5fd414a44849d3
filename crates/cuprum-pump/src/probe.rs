use std::io;
use std::os::fd::AsFd;
use std::sync::OnceLock;

use crate::sys;

/// Whether splice(2) moves bytes between two pipes in this process.
///
/// The first call that gets an answer tries it once: a byte written into
/// one pipe is spliced (`SPLICE_F_NONBLOCK`) into a second and read back.
/// That answer is kept for the life of the process. A probe that could not
/// even set up (no descriptors left, say) reports `false` without keeping
/// it, so a later call asks again.
///
/// [`pump`](crate::pump) does not depend on this: it tries splice on every
/// transfer and copies when splice refuses. This is for reporting which
/// path transfers between pipes can take here.
pub fn splice_works() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    if let Some(&known) = ANSWER.get() {
        return known;
    }
    match probe() {
        Ok(answer) => *ANSWER.get_or_init(|| answer),
        Err(_) => false,
    }
}

/// `Err` when the probe could not be set up, `Ok(works)` otherwise.
fn probe() -> io::Result<bool> {
    const BYTE: u8 = b'c';
    let (from_r, from_w) = sys::pipe()?;
    let (to_r, to_w) = sys::pipe()?;
    if sys::write(from_w.as_fd(), &[BYTE])? != 1 {
        return Ok(false);
    }
    if !matches!(sys::splice(from_r.as_fd(), to_w.as_fd(), 1), Ok(1)) {
        return Ok(false);
    }
    let mut back = [0u8; 1];
    Ok(sys::read(to_r.as_fd(), &mut back)? == 1 && back[0] == BYTE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_itself_succeeds_where_splice_works() {
        // The integration tests splice between pipes, so it works here.
        assert!(probe().unwrap());
    }

    #[test]
    fn the_answer_is_stable() {
        let first = splice_works();
        assert!(first);
        assert_eq!(splice_works(), first);
    }
}
