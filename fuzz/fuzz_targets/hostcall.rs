//! Fuzzes the guest→host service framing (`attestation::hostcall`), both directions: the host
//! decodes requests, the guest decodes responses. What decodes re-encodes to a frame that
//! decodes to the same message; a frame whose body is over the limit is refused by its prefix.
#![no_main]

use chrysalis_attestation::hostcall::{self, MAX_MESSAGE, Request, Response};
use libfuzzer_sys::fuzz_target;

fn check<T>(frame: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Some(prefix) = frame.get(..4) {
        let prefix: [u8; 4] = prefix.try_into().expect("four bytes");
        match hostcall::body_len(prefix) {
            Ok(len) => {
                assert!(len <= MAX_MESSAGE);
                let _ = hostcall::decode_body::<T>(&frame[4..frame.len().min(4 + len)]);
            }
            Err(_) => assert!(hostcall::decode::<T>(frame).is_err()),
        }
    }
    if let Ok(msg) = hostcall::decode::<T>(frame) {
        assert!(frame.len() >= 4 && frame.len() - 4 <= MAX_MESSAGE);
        let again = hostcall::encode(&msg).expect("a decoded message encodes");
        assert_eq!(
            hostcall::decode::<T>(&again).expect("re-encoded decodes"),
            msg
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check::<Request>(frame);
    } else {
        check::<Response>(frame);
    }
});
