//! The attacks of the "ownership that safe code cannot forge" issue (#15), one per
//! class, each written as a safe-code attacker and each ending in a typed error (the
//! compile-time ones are trybuild cases in `tests/ui_typed/`). Where the class
//! crosses processes, the forger and the victim are different processes.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{results as finish, role, say, spawn_child, ShmName};
use shared_allocator::prelude::*;
use shared_allocator::typed::{fingerprint, layout_checked, ShmPtr};
use shared_allocator::{AccessError, Error, FreeError, ShmMutex, TokenError};

const LIMIT: Duration = Duration::from_secs(120);

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs {k}"))
}

fn env_u64(k: &str) -> u64 {
    env(k).parse().unwrap()
}

/// The claim word a token's nonce has (top bit set), as an attacker picks it.
const FORGED_NONCE: u64 = (1 << 63) | 0x5eed;

/// Entry point of every child process; a no-op in the parent's test run.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let name = env("SA_NAME");
    let alloc = FreeListAllocator::open(&name).unwrap();
    let raw = [env_u64("SA_OFF"), env_u64("SA_NONCE")];
    match role.as_str() {
        // Redeems a BoxToken the parent forged: must be refused with a typed error.
        "redeem-box" => match ShmBox::<[u64; 4], _>::from_token(&alloc, BoxToken::from_raw(raw)) {
            Ok(b) => say(format!("redeemed {:?}", *b)),
            Err(e) => say(format!("refused {e:?}")),
        },
        "redeem-vec" => match ShmVec::<u64, _>::from_token(&alloc, VecToken::from_raw(raw)) {
            Ok(v) => say(format!("redeemed len {}", v.len())),
            Err(e) => say(format!("refused {e:?}")),
        },
        #[cfg(feature = "rkyv")]
        "redeem-archive" => {
            use shared_allocator::archive::{ArchiveToken, ShmArchive};
            match ShmArchive::<Vec<u64>, _>::from_token(&alloc, ArchiveToken::from_raw(raw)) {
                Ok(a) => {
                    say(format!("redeemed {}", a.len()));
                    std::mem::forget(a);
                }
                Err(e) => say(format!("refused {e:?}")),
            }
        }
        // Reads a generation-checked pointer the parent sent after dropping its box
        // and reusing the block.
        "read-shm-ptr" => match ShmPtr::<u64>::from_raw(raw).read(&alloc) {
            Ok(v) => say(format!("read {v}")),
            Err(e) => say(format!("refused {e:?}")),
        },
        other => panic!("unknown role {other}"),
    }
}

fn root_offset<A: Roots>(alloc: &A, name: &str) -> u64 {
    let info = alloc.roots().unwrap();
    info.iter().find(|r| r.name == name).unwrap().offset.get()
}

fn redeem_in_child(role: &str, name: &ShmName, raw: [u64; 2]) -> String {
    let child = spawn_child(
        "child",
        role,
        &[
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_OFF", raw[0].to_string()),
            ("SA_NONCE", raw[1].to_string()),
        ],
    );
    let out = finish(child, LIMIT, role);
    out.into_iter()
        .find(|l| l.starts_with("redeemed") || l.starts_with("refused") || l.starts_with("read"))
        .unwrap_or_else(|| panic!("{role}: no verdict"))
}

/// Class 1: a BoxToken over the middle of another live box. The attacker writes a
/// plausible header (nonce, fingerprint) into its own box's payload and sends a
/// token naming it; before this issue the other process redeemed it and got a
/// second `&mut` to the attacker's live value.
#[test]
fn forged_box_token_inside_a_payload_is_refused_in_another_process() {
    let name = ShmName::new("forge-box");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 16]).unwrap();
    carrier[0] = FORGED_NONCE;
    carrier[1] = layout_checked::<[u64; 4]>();
    let at = carrier.rel_ptr().to_raw();
    let verdict = redeem_in_child("redeem-box", &name, [at, FORGED_NONCE]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    assert_eq!(carrier[0], FORGED_NONCE, "nothing changed in the carrier");
    // Every word of the payload, as a token offset: none is a block start.
    for i in 0..16u64 {
        let e = ShmBox::<[u64; 4], _>::from_token(
            &alloc,
            BoxToken::from_raw([at + 8 * i, FORGED_NONCE]),
        )
        .unwrap_err();
        assert!(
            matches!(e, TokenError::Access(AccessError::NotBlockStart { .. })),
            "{e}"
        );
    }
}

/// Class 1: a VecToken whose forged header (in a box payload) names another live
/// box as its buffer. Before: pushes overwrote the box, the drop freed it.
#[test]
fn forged_vec_header_naming_a_live_box_is_refused_in_another_process() {
    let name = ShmName::new("forge-vec");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let victim = ShmBox::new_in(&alloc, [7u64; 8]).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 8]).unwrap();
    let vec_fp = fingerprint::str(layout_checked::<u64>(), "ShmVec");
    // [claim, fingerprint, len, cap, data, seq]
    carrier[..6].copy_from_slice(&[FORGED_NONCE, vec_fp, 0, 8, victim.rel_ptr().to_raw(), 0]);
    let verdict = redeem_in_child(
        "redeem-vec",
        &name,
        [carrier.rel_ptr().to_raw(), FORGED_NONCE],
    );
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    assert_eq!(*victim, [7; 8]);
    // A genuine vector's header cannot be pointed at a box either: its data word is
    // written only by the vector, and a forged one at a block start needs a block
    // whose start safe code writes: there is none.
    let v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    let t = v.into_token();
    let v = ShmVec::from_token(&alloc, t).unwrap();
    drop(v);
}

/// Class 1: a token over a named root's object (all atomics, so any process may
/// write a header-shaped pair into it). Before: the root was freed and reused
/// while every process held `&` to it.
#[test]
fn forged_token_over_a_root_is_refused_and_the_root_stays() {
    let name = ShmName::new("forge-root");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let _typed = ShmBox::new_in(&alloc, 1u64).unwrap(); // a typed segment
    let root = alloc.root::<[AtomicU64; 4]>("words").unwrap();
    root[0].store(FORGED_NONCE, Ordering::Relaxed);
    root[1].store(layout_checked::<[u64; 4]>(), Ordering::Relaxed);
    let at = root_offset(&alloc, "words");
    let verdict = redeem_in_child("redeem-box", &name, [at, FORGED_NONCE]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    // The root's block start holds a PINNED header no token can claim.
    let block = at - 16;
    let verdict = redeem_in_child("redeem-box", &name, [block, FORGED_NONCE]);
    assert!(verdict.starts_with("refused"), "{verdict}");
    root[2].store(5, Ordering::Relaxed);
    let again = alloc.root::<[AtomicU64; 4]>("words").unwrap();
    assert_eq!(
        again[2].load(Ordering::Relaxed),
        5,
        "the root is still there"
    );
}

/// Class 1: an ArchiveToken over a byte-exact copy of a genuine archive (header,
/// nonce and all) placed in a box payload. Before: validated, then rewritten
/// through the box under the reader's `&Archived`, and the next access faulted.
#[cfg(feature = "rkyv")]
#[test]
fn archive_token_over_a_copy_is_refused_in_another_process() {
    use shared_allocator::archive::ShmArchive;
    let name = ShmName::new("forge-arc");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<u64> = (0..32).collect();
    let a = ShmArchive::new_in(&alloc, &value).unwrap();
    let block_len = shared_allocator::__layout::HEADER_LEN as usize + a.len();
    let token = a.into_token();
    let bytes = alloc.read(token.offset(), block_len).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 64]).unwrap();
    // A 16-aligned place inside the payload, as the archive format wants.
    let base = carrier.rel_ptr().to_raw();
    let skip = ((16 - base % 16) % 16) as usize / 8;
    for (i, w) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        carrier[skip + i] = u64::from_ne_bytes(b);
    }
    let at = base + 8 * skip as u64;
    let verdict = redeem_in_child("redeem-archive", &name, [at, token.nonce()]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    // The genuine token still works, once.
    let a = ShmArchive::<Vec<u64>, _>::from_token(&alloc, token).unwrap();
    assert_eq!(a.access().unwrap().len(), 32);
}

/// Class 3: a lock in a root needs a typed segment (the raw API could write its
/// bytes under a held guard), and a raw free of a root's block is refused in a raw
/// segment ("roots are never freed").
#[test]
fn locks_need_typed_segments_and_roots_are_never_freed() {
    let name = ShmName::new("forge-lock");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let counter = alloc.root::<AtomicU64>("hits").unwrap(); // fine in raw mode
    let off = alloc.allocate(8).unwrap();
    alloc.write(off, &[1; 8]).unwrap(); // the segment is raw now
    let e = alloc.root::<ShmMutex<u64>>("lock").unwrap_err();
    assert!(
        matches!(e, Error::Access(AccessError::WrongMode { .. })),
        "{e}"
    );
    let at = root_offset(&alloc, "hits");
    // Its block starts 16 bytes before the object: a raw free there is refused.
    assert!(matches!(
        alloc.free(Offset::new(at - 16)),
        Err(FreeError::Root { .. })
    ));
    assert!(alloc.free(Offset::new(at)).is_err());
    counter.fetch_add(1, Ordering::Relaxed);
    let again = alloc.root::<AtomicU64>("hits").unwrap();
    assert_eq!(again.load(Ordering::Relaxed), 1);
    alloc.free(off).unwrap(); // ordinary raw blocks still free

    // In a typed segment the lock root works, and nothing raw reaches it.
    let tname = ShmName::new("forge-lock-t");
    let t = FreeListAllocator::create(tname.as_str(), 1 << 20).unwrap();
    let m = t.root::<ShmMutex<u64>>("lock").unwrap();
    let g = m.lock().unwrap();
    let lock_at = root_offset(&t, "lock");
    assert!(t.write(Offset::new(lock_at), &[0; 8]).is_err());
    assert!(t.free(Offset::new(lock_at - 16)).is_err());
    drop(g);
}

/// Class 4: an arena handle rebuilt from numbers that name the reserved but not
/// yet written tail of a chunk. Before: a `&u64` there changed when the arena
/// later allocated. Now such a handle gives copies only.
#[test]
fn arena_handles_from_numbers_give_copies_not_views() {
    let name = ShmName::new("forge-arena");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let arena = bump.arena();
    let first = arena.alloc(1u64).unwrap();
    let h = first.arena_ptr();
    // The next 8 bytes are reserved by the arena but not written yet.
    let forged = ArenaPtr::<u64>::from_parts(h.offset().get() + 8, h.epoch(), 1);
    let e = forged.get(arena.allocator()).unwrap_err();
    assert!(matches!(e, AccessError::Unverified { .. }), "{e}");
    assert!(forged.get_slice(arena.allocator()).is_err());
    // Copies are sound for any numbers (checked, atomic).
    let _ = forged.read(arena.allocator());
    let second = arena.alloc(2u64).unwrap();
    assert_eq!(*second.get().unwrap(), 2);
    // The genuine handle views fine.
    assert_eq!(*h.get(arena.allocator()).unwrap(), 1);
}

/// Class 5: owning handles copied by fork. The child's copy is no owner: its drop
/// frees nothing (the parent's next allocation does not get the block twice),
/// access is refused, and an arena value's view in the child takes its own pin.
#[test]
fn fork_children_do_not_own_their_parents_handles() {
    if role().is_some() {
        return;
    }
    let child = spawn_child("fork_entry", "fork", &[]);
    let out = finish(child, LIMIT, "fork");
    assert!(out.iter().any(|l| l == "fork ok"), "{out:?}");
}

/// The forking role (single-threaded: run through `--test-threads=1`).
#[test]
fn fork_entry() {
    if role().as_deref() != Some("fork") {
        return;
    }
    let name = ShmName::new("forge-fork");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let b = ShmBox::new_in(&alloc, [3u64; 4]).unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    v.push(1).unwrap();
    let live = alloc.stats().live_blocks.unwrap();
    // SAFETY: this process is single-threaded (a test binary run with
    // --test-threads=1, in a role that spawns no threads).
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = !b.is_owner()
                && !v.is_owner()
                && matches!(v.push(2), Err(Error::Access(AccessError::Forked { .. })))
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b[0])).is_err();
            drop(b); // must not free the parent's block
            drop(v);
            std::process::exit(if ok { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert!(
                matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                "{st:?}"
            );
            assert_eq!(
                alloc.stats().live_blocks.unwrap(),
                live,
                "child freed nothing"
            );
            assert_eq!(*b, [3; 4]);
            assert_eq!(v.as_slice(), &[1]);
            say("fork ok");
        }
    }
}

/// Class 7: a stale pointer. The message-0 pointer must not read message 256's
/// value after the block is reused: a `ShmPtr` is an error, in another process.
#[test]
fn stale_shm_ptr_is_an_error_in_another_process() {
    let name = ShmName::new("forge-gen");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let first = ShmBox::new_in(&alloc, 0u64).unwrap();
    let p = first.shm_ptr();
    let rel = first.rel_ptr();
    let verdict = redeem_in_child("read-shm-ptr", &name, p.to_raw());
    assert_eq!(verdict, "read 0");
    drop(first);
    let second = ShmBox::new_in(&alloc, 256u64).unwrap();
    assert_eq!(second.rel_ptr(), rel, "the block was reused");
    assert_eq!(rel.read(&alloc).unwrap(), 256, "a bare RelPtr cannot tell");
    let verdict = redeem_in_child("read-shm-ptr", &name, p.to_raw());
    assert!(verdict.contains("StaleGeneration"), "{verdict}");
    // The new box's own pointer reads it; a forged generation does not.
    assert_eq!(second.shm_ptr().read(&alloc).unwrap(), 256);
    let [b, g] = second.shm_ptr().to_raw();
    assert!(ShmPtr::<u64>::from_raw([b, g + 1]).read(&alloc).is_err());
    // Ownership moves keep the generation (same object).
    let q = second.shm_ptr();
    let t = second.into_token();
    let back = ShmBox::<u64, _>::from_token(&alloc, t).unwrap();
    assert_eq!(q.read(&alloc).unwrap(), 256);
    drop(back);
    assert!(q.read(&alloc).is_err());
}
