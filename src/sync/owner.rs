//! Who holds a lock or an endpoint, and whether that holder is still alive.
//!
//! The mutex and the channel build *only* on these two functions: the mutex stores
//! [`current_owner`] in its lock word and asks [`owner_alive`] when the holder is
//! slow; the channel records the owner of every endpoint and in-flight slot and asks
//! [`owner_alive`] before it counts an endpoint as gone or repairs a slot.
//!
//! PROVISIONAL: this implementation uses pid numbers (the cached
//! `crate::segment::current_pid` and `kill(pid, 0)`), which lie across pid
//! namespaces and are reused. It is to be re-implemented on top of the process
//! registry (an owner is the process's registry slot identity in the segment that
//! contains `addr`, alive while the kernel holds that slot's lock). The contract the
//! callers rely on:
//!
//! - [`current_owner`] is nonzero and below [`OWNER_LIMIT`] (the mutex keeps flag
//!   bits above it), stable for the life of this process's attachment to the
//!   segment, different in a `fork` child, and cheap: it runs on every uncontended
//!   lock, so cache it (one load of a cached value, as here; a registry version
//!   keeps a per-thread cache keyed by the segment's address range).
//! - [`owner_alive`] is `true` while that registration may still act on the
//!   segment, and `false` only once it never will again. It may be slow (a system
//!   call): callers ask it only after waiting.

/// Every owner value is below this (30 bits): the mutex keeps two flag bits above.
pub(crate) const OWNER_LIMIT: u32 = 1 << 30;

/// Nonzero identity of this process's registration in the segment that contains `addr`.
pub(crate) fn current_owner(addr: *const u8) -> u32 {
    let _ = addr; // provisional: one identity per process, whatever the segment
    let pid = crate::segment::current_pid();
    debug_assert!(
        pid != 0 && pid < OWNER_LIMIT,
        "pid {pid} out of owner range"
    );
    pid
}

/// Whether `owner` (a value current_owner returned in some process, for the segment
/// containing `addr`) is still alive.
pub(crate) fn owner_alive(addr: *const u8, owner: u32) -> bool {
    let _ = addr;
    crate::segment::pid_alive(owner)
}
