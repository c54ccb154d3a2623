//! Who holds a lock or an endpoint, and whether that holder is still alive.
//!
//! The mutex and the channel build *only* on these two functions: the mutex stores
//! [`current_owner`] in its lock word and asks [`owner_alive`] when the holder is
//! slow; the channel records the owner of every endpoint and in-flight slot and asks
//! [`owner_alive`] before it counts an endpoint as gone or repairs a slot.
//!
//! An owner is a **process-registry token** (`crate::process`): the slot and
//! generation of this process's handle on the segment whose mapping contains the
//! lock, alive exactly while the kernel holds that slot's open-file-description
//! lock. Never a pid: pids lie across pid namespaces and get reused. The contract
//! the callers rely on:
//!
//! - [`current_owner`] is nonzero and below [`OWNER_LIMIT`] (the mutex keeps flag
//!   bits above it), stable while this process keeps that handle, different in a
//!   `fork` child (whose handle joins a slot of its own), and cheap: a per-thread
//!   cache keyed by the mapping's address range and the attachment table's
//!   generation answers without a lock.
//! - [`owner_alive`] is `true` while that registration may still act on the
//!   segment, and `false` only once it never will again. It may be slow (a system
//!   call): callers ask it only after waiting.
//!
//! A lock that lives in memory no handle of this process maps (a `ShmMutex` on the
//! heap, in a test) gets a process-local token with bit 29 set, which is always
//! alive: in-process, a holder cannot die without the process.

use std::cell::Cell;

use crate::process;

/// Every owner value is below this (30 bits): the mutex keeps two flag bits above.
pub(crate) const OWNER_LIMIT: u32 = 1 << 30;
/// Tokens of locks outside any mapped segment (registry tokens stay below 2^29).
const LOCAL: u32 = 1 << 29;

#[derive(Clone, Copy)]
struct Cached {
    base: usize,
    end: usize,
    token: u32,
    epoch: (u64, u64),
}

thread_local! {
    static CACHE: Cell<Option<Cached>> = const { Cell::new(None) };
}

/// Nonzero identity of this process's registration in the segment that contains `addr`.
pub(crate) fn current_owner(addr: *const u8) -> u32 {
    let a = addr as usize;
    let epoch = process::attachment_epoch();
    if let Some(c) = CACHE.with(Cell::get) {
        if c.epoch == epoch && (c.base..c.end).contains(&a) {
            return c.token;
        }
    }
    match process::token_at(a) {
        Some((token, base, len)) => {
            CACHE.with(|c| {
                c.set(Some(Cached {
                    base,
                    end: base + len,
                    token,
                    epoch,
                }))
            });
            debug_assert!(token != 0 && token < LOCAL);
            token
        }
        None => LOCAL | (std::process::id() & (LOCAL - 1)).max(1),
    }
}

/// Whether `owner` (a value current_owner returned in some process, for the segment
/// containing `addr`) is still alive.
pub(crate) fn owner_alive(addr: *const u8, owner: u32) -> bool {
    if owner & LOCAL != 0 {
        return true;
    }
    process::token_alive_at(addr as usize, owner)
}
