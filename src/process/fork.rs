//! Fork handling: the atfork handlers and the table of lock descriptors.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nix::libc;

/// Bumped in every forked child: a handle whose recorded epoch differs is in a child
/// of the process that joined, and must join a slot of its own.
pub(super) static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);
/// Registered lock descriptors (+1; 0 = empty), for the atfork child handler.
pub(super) static LOCK_FDS: [AtomicI32; 256] = [const { AtomicI32::new(0) }; 256];

/// How many forks this process's lineage went through: state recorded with one
/// value is stale in a child, which sees a larger one.
#[inline]
pub(crate) fn fork_epoch() -> u64 {
    FORK_EPOCH.load(Ordering::Relaxed)
}

pub(super) extern "C" fn after_fork_in_child() {
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
    for entry in &LOCK_FDS {
        let fd = entry.load(Ordering::Relaxed) - 1;
        if fd < 0 {
            continue;
        }
        // "/proc/self/fd/" + decimal fd + NUL, built without allocating (this runs
        // between fork and exec, where only async-signal-safe calls are allowed).
        let mut path = [0u8; 40];
        let prefix = b"/proc/self/fd/";
        path[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let (mut n, mut k) = (fd as u32, 0);
        loop {
            digits[k] = b'0' + (n % 10) as u8;
            k += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (j, d) in digits[..k].iter().rev().enumerate() {
            path[prefix.len() + j] = *d;
        }
        // SAFETY:
        // - `path` is NUL-terminated (zero-initialised, at most 14 + 10 bytes written);
        // - open is async-signal-safe, as calls after fork in a child must be.
        let fresh = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fresh < 0 {
            continue; // no /proc: the child keeps sharing the parent's description
        }
        // SAFETY:
        // - `fresh` and `fd` are open descriptors of this process; dup3 atomically
        //   replaces `fd` (dropping the child's reference to the parent's description,
        //   not the description itself) and is async-signal-safe.
        unsafe { libc::dup3(fresh, fd, libc::O_CLOEXEC) };
        // SAFETY: `fresh` is a descriptor this handler opened and owns; close is
        // async-signal-safe.
        unsafe { libc::close(fresh) };
    }
}

pub(super) fn install_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY:
        // - pthread_atfork only records the handler pointers;
        // - `after_fork_in_child` is an `extern "C" fn()` that makes only
        //   async-signal-safe calls, as a child handler must.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        debug_assert_eq!(rc, 0);
    });
}

pub(super) fn register_fd(fd: RawFd) -> Option<usize> {
    install_fork_handler();
    LOCK_FDS.iter().position(|e| {
        e.compare_exchange(0, fd + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}
