//! Every on-disk decoder on arbitrary bytes: never panics, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use readmark::fuzzing;

fuzz_target!(|data: &[u8]| {
    for roundtrip in [
        fuzzing::mark_roundtrip,
        fuzzing::conversation_roundtrip,
        fuzzing::member_roundtrip,
        fuzzing::message_roundtrip,
    ] {
        if let Some(again) = roundtrip(data) {
            assert_eq!(again, data);
        }
    }
    if let Some((a, b)) = fuzzing::pair_key(data) {
        let mut k = a.to_be_bytes().to_vec();
        k.extend_from_slice(&b.to_be_bytes());
        assert_eq!(k, data);
    }
});
