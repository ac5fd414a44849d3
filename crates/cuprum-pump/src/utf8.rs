use std::char::REPLACEMENT_CHARACTER;
use std::str;

/// Incremental UTF-8 decoding with U+FFFD replacement.
///
/// Output does not depend on where the input was split: feeding any split
/// of some bytes through [`decode`](Self::decode) and then calling
/// [`finish`](Self::finish) yields exactly `String::from_utf8_lossy` of the
/// whole. A pipe hands out arbitrary chunks, so a multi-byte character cut
/// in two must not turn into two replacement characters.
#[derive(Clone, Debug, Default)]
pub struct Utf8Decoder {
    /// The start of a character still waiting for its continuation bytes.
    /// Never more than 3 bytes between calls (a 4th would complete it);
    /// the 4th slot is only used while testing whether it does.
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the text of `chunk` to `out`, holding back a trailing
    /// incomplete character until the next call.
    pub fn decode(&mut self, chunk: &[u8], out: &mut String) {
        let rest = self.complete_pending(chunk, out);
        if self.pending_len == 0 {
            self.decode_fresh(rest, out);
        }
    }

    /// End of input: an unfinished character becomes one U+FFFD, as it would
    /// at the end of the whole input.
    pub fn finish(&mut self, out: &mut String) {
        if self.pending_len > 0 {
            out.push(REPLACEMENT_CHARACTER);
            self.pending_len = 0;
        }
    }

    /// Feed bytes to the held-back character one at a time until it either
    /// completes or turns out invalid; returns the part of `chunk` still to
    /// decode.
    fn complete_pending<'a>(&mut self, chunk: &'a [u8], out: &mut String) -> &'a [u8] {
        let mut used = 0;
        while self.pending_len > 0 && used < chunk.len() {
            self.pending[self.pending_len] = chunk[used];
            self.pending_len += 1;
            used += 1;
            match str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending_len = 0;
                }
                Err(err) => {
                    if let Some(invalid) = err.error_len() {
                        // The held bytes were a valid prefix, so only the byte
                        // just added can be the offender; it is decoded
                        // afresh, as from_utf8_lossy would.
                        out.push(REPLACEMENT_CHARACTER);
                        let reread = self.pending_len - invalid;
                        debug_assert!(err.valid_up_to() == 0 && reread <= used);
                        used -= reread;
                        self.pending_len = 0;
                    }
                }
            }
        }
        &chunk[used..]
    }

    fn decode_fresh(&mut self, bytes: &[u8], out: &mut String) {
        let mut chunks = bytes.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            if chunks.peek().is_none() && is_incomplete(invalid) {
                self.pending[..invalid.len()].copy_from_slice(invalid);
                self.pending_len = invalid.len();
            } else {
                out.push(REPLACEMENT_CHARACTER);
            }
        }
    }
}

/// Whether `bytes` could still become a character with more input (as
/// opposed to being invalid whatever follows).
fn is_incomplete(bytes: &[u8]) -> bool {
    matches!(str::from_utf8(bytes), Err(err) if err.error_len().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(parts: &[&[u8]]) -> String {
        let mut decoder = Utf8Decoder::new();
        let mut out = String::new();
        for part in parts {
            decoder.decode(part, &mut out);
            assert!(decoder.pending_len <= 3);
        }
        decoder.finish(&mut out);
        out
    }

    #[test]
    fn character_split_across_chunks() {
        let euro = "€".as_bytes();
        assert_eq!(decode_split(&[&euro[..1], &euro[1..2], &euro[2..]]), "€");
        let emoji = "a😀b".as_bytes();
        assert_eq!(
            decode_split(&[&emoji[..2], &emoji[2..4], &emoji[4..]]),
            "a😀b"
        );
    }

    #[test]
    fn broken_sequence_across_chunks_rereads_the_offender() {
        // E2 82 starts a 3-byte character; 'A' breaks it and must survive.
        assert_eq!(decode_split(&[b"\xe2", b"\x82A"]), "\u{fffd}A");
        // A new lead byte breaking the sequence starts its own character.
        assert_eq!(decode_split(&[b"\xe2\x82", "é".as_bytes()]), "\u{fffd}é");
    }

    #[test]
    fn unfinished_tail_is_one_replacement() {
        assert_eq!(decode_split(&[b"ok\xf0\x9f", b"\x98"]), "ok\u{fffd}");
        assert_eq!(decode_split(&[b"ok\xf0\x9f\x98"]), "ok\u{fffd}");
    }

    #[test]
    fn garbage_matches_lossy() {
        let bytes = b"\xff\xfe\xc0\x80\xed\xa0\x80\xf4\x90\x80\x80x";
        let expected = String::from_utf8_lossy(bytes);
        assert_eq!(decode_split(&[bytes]), expected);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_split(&singles), expected);
    }

    #[test]
    fn empty_chunks_are_harmless() {
        assert_eq!(decode_split(&[b"", b"\xc3", b"", b"\xa9", b""]), "é");
    }
}
