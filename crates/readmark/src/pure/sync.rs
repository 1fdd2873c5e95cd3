//! The atomics of the lock-free parts (`grace`, `newest`): from `loom` when
//! the crate is built with `--cfg loom`, so `pure/loom_tests.rs` can check
//! every interleaving of them, from `std` otherwise (no cost).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
