//! The atomic word the lock-free structures are written against.
//!
//! In the library it is `std::sync::atomic::AtomicU64` (a view of shared memory).
//! Under `--cfg loom` the same algorithms also run over `loom`'s `AtomicU64`, so
//! loom can model-check them (with threads standing in for processes: the
//! multi-process tests cover real processes).

use std::sync::atomic::Ordering;

/// The operations the bitmap uses on a 64-bit atomic.
pub trait Word {
    /// `AtomicU64::load`.
    fn load(&self, order: Ordering) -> u64;
    /// `AtomicU64::store`.
    fn store(&self, value: u64, order: Ordering);
    /// `AtomicU64::fetch_or`.
    fn fetch_or(&self, value: u64, order: Ordering) -> u64;
    /// `AtomicU64::fetch_and`.
    fn fetch_and(&self, value: u64, order: Ordering) -> u64;
    /// `AtomicU64::compare_exchange`.
    ///
    /// # Errors
    /// The current value, when it was not `current`.
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// `AtomicU64::compare_exchange_weak`.
    ///
    /// # Errors
    /// The current value, when it was not `current` (or spuriously).
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

macro_rules! impl_word {
    ($t:ty) => {
        impl Word for $t {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                <$t>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                <$t>::store(self, value, order)
            }
            #[inline]
            fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
                <$t>::fetch_or(self, value, order)
            }
            #[inline]
            fn fetch_and(&self, value: u64, order: Ordering) -> u64 {
                <$t>::fetch_and(self, value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$t>::compare_exchange(self, current, new, success, failure)
            }
            #[inline]
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$t>::compare_exchange_weak(self, current, new, success, failure)
            }
        }
    };
}

impl_word!(std::sync::atomic::AtomicU64);
#[cfg(loom)]
impl_word!(loom::sync::atomic::AtomicU64);
