//! The OFD locks that say which slots are held.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use super::*;
use crate::error::SegmentError;

pub(super) fn lock_cmd(
    fd: BorrowedFd<'_>,
    slot: usize,
    kind: i16,
    cmd: LockCmd,
) -> Result<libc::flock, Errno> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: LOCK_BASE + slot as i64,
        l_len: 1,
        l_pid: 0,
    };
    let arg = match cmd {
        LockCmd::Set => FcntlArg::F_OFD_SETLK(&fl),
        LockCmd::Get => FcntlArg::F_OFD_GETLK(&mut fl),
    };
    fcntl(fd, arg)?;
    Ok(fl)
}

#[derive(Clone, Copy)]
pub(super) enum LockCmd {
    Set,
    Get,
}

/// Tries to take slot `i`'s lock. `Ok(true)`: taken (it was free or its holder is dead).
pub(super) fn try_lock(fd: BorrowedFd<'_>, i: usize) -> Result<bool, SegmentError> {
    match lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Set) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(errno) => Err(SegmentError::Os {
            op: "fcntl(F_OFD_SETLK)",
            errno,
        }),
    }
}

pub(super) fn unlock(fd: BorrowedFd<'_>, i: usize) {
    let _ = lock_cmd(fd, i, libc::F_UNLCK as i16, LockCmd::Set);
}

/// Whether another open file description holds slot `i`'s lock.
pub(super) fn locked_by_other(fd: BorrowedFd<'_>, i: usize) -> bool {
    match lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Get) {
        Ok(fl) => fl.l_type != libc::F_UNLCK as i16,
        Err(_) => true, // cannot tell: never treat a maybe-live holder as dead
    }
}

/// Whether some open file description other than `fd`'s holds slot `i`'s lock. An
/// error (a closed or foreign descriptor) reads as not held: for a handle asking
/// about its own lock, where "cannot tell" must mean "stop".
pub(super) fn locked_by_some_description(fd: BorrowedFd<'_>, i: usize) -> bool {
    matches!(
        lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Get),
        Ok(fl) if fl.l_type != libc::F_UNLCK as i16
    )
}
