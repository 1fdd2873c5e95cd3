//! The mark merge function on arbitrary inputs: never panics, always yields
//! a value that decodes, and is independent of how operands are grouped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use readmark::merge_marks;

fuzz_target!(|data: &[u8]| {
    // Split the input into operands at 0xFF bytes; the first may be the base.
    let parts: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let (base, ops) = match parts.split_first() {
        Some((b, rest)) if !b.is_empty() => (Some(*b), rest),
        _ => (None, &parts[..]),
    };
    let all = merge_marks(base, ops.iter().copied());
    assert!(readmark::fuzzing::mark_roundtrip(&all.value).is_some());
    let mid = ops.len() / 2;
    let left = merge_marks(base, ops[..mid].iter().copied());
    let right = merge_marks(None, ops[mid..].iter().copied());
    let grouped = merge_marks(Some(&left.value), [right.value.as_slice()]);
    assert_eq!(all.value, grouped.value);
});
