mod common;

use common::*;
use cuprum_pump::{Method, Utf8Decoder};
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Copy, Debug)]
enum Route {
    PipeToPipe,
    SocketToSocket,
    PipeToSocket,
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        Just(Route::PipeToPipe),
        Just(Route::SocketToSocket),
        Just(Route::PipeToSocket),
    ]
}

proptest! {
    // Every case moves real bytes through the kernel; a few dozen cover the
    // buffer-size space without slowing the suite down.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn pump_preserves_any_payload(
        payload in prop::collection::vec(any::<u8>(), 0..256 * 1024),
        buffer_size in 1usize..70_000,
        route in route(),
    ) {
        let ((in_r, in_w), (out_r, out_w)) = match route {
            Route::PipeToPipe => (pipe(), pipe()),
            Route::SocketToSocket => (swap(socket_pair()), socket_pair()),
            Route::PipeToSocket => (pipe(), socket_pair()),
        };
        let feeder = feed(in_w, payload.clone());
        let drainer = drain(out_r);
        let transfer = pump_closing(in_r, out_w, buffer_size).unwrap();
        feeder.join().unwrap();
        prop_assert_eq!(transfer.bytes, payload.len() as u64);
        let expected = match route {
            Route::SocketToSocket => Method::Copy,
            _ => Method::Splice,
        };
        prop_assert_eq!(transfer.method, expected);
        prop_assert!(drainer.join().unwrap() == payload);
    }
}

/// Socket pairs are symmetric; this only keeps the `(read, write)` naming.
fn swap<T>((a, b): (T, T)) -> (T, T) {
    (b, a)
}

/// Valid text of every width, interleaved with stray continuation bytes,
/// impossible bytes, overlong forms, surrogates and truncated sequences.
fn mixed_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        2 => any::<u8>().prop_map(|b| vec![b]),
        1 => (0x80u8..=0xbf).prop_map(|b| vec![b]),
        1 => prop::sample::select(vec![
            b"\xe2\x82".to_vec(),
            b"\xf0\x9f\x98".to_vec(),
            b"\xc0\xaf".to_vec(),
            b"\xed\xa0\x80".to_vec(),
            b"\xf4\x90\x80\x80".to_vec(),
            b"\xf8\x88\x80\x80\x80".to_vec(),
        ]),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decoder_ignores_chunk_boundaries(
        bytes in mixed_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut decoder = Utf8Decoder::new();
        let mut out = String::new();
        let mut start = 0;
        for end in points.into_iter().chain([bytes.len()]) {
            decoder.decode(&bytes[start..end], &mut out);
            start = end;
        }
        decoder.finish(&mut out);
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decoder_byte_by_byte(bytes in mixed_bytes()) {
        let mut decoder = Utf8Decoder::new();
        let mut out = String::new();
        for byte in &bytes {
            decoder.decode(std::slice::from_ref(byte), &mut out);
        }
        decoder.finish(&mut out);
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes));
    }
}
