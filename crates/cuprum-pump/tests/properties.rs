mod common;

use common::*;
use cuprum_pump::Method;
use proptest::prelude::*;

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
