//! The layout of the named-roots directory, which the segment owns: the control
//! words and fixed entry table in the header region (at
//! [`ROOTS_OFFSET`](super::ROOTS_OFFSET)), and the overflow block the control words
//! may point to. The typed layer (`typed::roots`) reads and writes entries; the
//! allocator's raw `free` reads them to refuse a root's block ("roots are never
//! freed") without reaching up into the typed layer.

use super::ROOTS_LEN;

/// Words per directory entry: `[state, fingerprint, offset, epoch, name x6, type name x6]`.
pub(crate) const ENTRY_WORDS: usize = 16;
pub(crate) const ENTRY_BYTES: u64 = (ENTRY_WORDS * 8) as u64;
/// Bytes of control words at the start of the roots area (nonce counter, overflow
/// directory pointer, reserved).
pub(crate) const CONTROL_BYTES: u64 = 64;
/// Control word: the overflow directory's entries (0: none; odd: being grown).
pub(crate) const W_CTRL_OVERFLOW: usize = 1;
/// Roots whose entries live in the header region.
pub const FIXED_ROOTS: usize = ((ROOTS_LEN - CONTROL_BYTES) / ENTRY_BYTES) as usize;
/// Roots whose entries live in the overflow block.
pub const OVERFLOW_ROOTS: usize = 1024;
/// How many named roots one segment holds (removed names included).
pub const MAX_ROOTS: usize = FIXED_ROOTS + OVERFLOW_ROOTS;
/// Entry state word of an unused entry.
pub(crate) const EMPTY: u64 = 0;
/// Entry word: state.
pub(crate) const W_STATE: usize = 0;
/// Entry word: the root type's fingerprint.
pub(crate) const W_FP: usize = 1;
/// Entry word: the root object's offset.
pub(crate) const W_OFF: usize = 2;
/// Bytes between the overflow block's start (its header) and its entries.
pub(crate) const OVERFLOW_HEADER: u64 = 64;

/// Claim word of a block that no token can ever name: a vector's element buffer, a
/// named root's object, the root directory's overflow block. Its header exists so
/// that no block start of a typed segment is ever bytes that safe code writes.
pub const PINNED: u64 = 2;
