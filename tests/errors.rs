//! One error type: `?` from every public fallible call converts into
//! `shared_allocator::Error`, `Box<dyn Error>` (and `+ Send + Sync`) and
//! `anyhow::Error`. The same program body is compiled once per target error type
//! (a macro), and run, so every call both type-checks with `?` and succeeds.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ShmName;
use shared_allocator::archive::{
    ArchiveToken, ArenaArchiveReader, Delivery, PipelineOptions, Publisher, ShmArchive, Subscriber,
};
use shared_allocator::prelude::*;
use shared_allocator::{ShmPtr, ShmVecReader};

#[derive(ShmSafe)]
#[shm(shared)]
#[repr(C)]
struct Locked {
    m: ShmMutex<[u64; 2]>,
    changed: ShmCondvar,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Order {
    id: u64,
    item: String,
}

macro_rules! program {
    ($name:ident, $err:ty) => {
        fn $name(tag: &str) -> Result<u64, $err> {
            let (raw_name, typed_name, bump_name, slab_name, pipe_name) = (
                ShmName::new(&format!("{tag}-raw")),
                ShmName::new(&format!("{tag}-typed")),
                ShmName::new(&format!("{tag}-bump")),
                ShmName::new(&format!("{tag}-slab")),
                ShmName::new(&format!("{tag}-pipe")),
            );
            // Segments, raw allocation (a raw segment).
            let raw = FreeListAllocator::create(raw_name.as_str(), 1 << 20)?;
            let again = FreeListAllocator::open(raw_name.as_str())?;
            let off = raw.allocate(64)?;
            let off2 = raw.allocate_aligned(64, 64)?;
            raw.write(off, &[1u8; 8])?;
            let mut buf = [0u8; 8];
            again.read_into(off, &mut buf)?;
            let _ = again.read(off, 8)?;
            raw.free(off2)?;
            let p = RelPtr::<AtomicU64>::from_offset(off);
            p.get(&raw)?.fetch_add(1, Ordering::Relaxed);
            let _ = p.get_checked(&raw)?;
            let _ = RelPtr::<u64>::from_offset(off).read(&raw)?;
            raw.free(off)?;
            let hits = raw.root::<AtomicU64>("hits")?;
            hits.fetch_add(1, Ordering::Relaxed);
            let _ = raw.root_with::<AtomicU64>("init", || AtomicU64::new(1))?;
            let _ = raw.roots()?;
            let _ = raw.remove_root("init")?;
            drop(again);

            // Typed handles (a typed segment), owning an Arc.
            let alloc = Arc::new(FreeListAllocator::create(typed_name.as_str(), 1 << 20)?);
            let b = ShmBox::new_in(alloc.clone(), 5u64)?;
            let ptr: ShmPtr<u64> = b.shm_ptr();
            let _ = ptr.read(&*alloc)?;
            let _ = b.rel_ptr().read(&*alloc)?;
            let b = ShmBox::<u64, _>::from_token(alloc.clone(), b.into_token())?;
            let mut v = ShmVec::<u64, _>::with_capacity_in(alloc.clone(), 2)?;
            v.push(1)?;
            v.extend_from_slice(&[2, 3])?;
            v.reserve(4)?;
            let reader = ShmVecReader::open(alloc.clone(), v.rel_ptr())?;
            let _ = reader.to_vec()?;
            let _ = reader.get(0)?;
            let mut out = Vec::new();
            let _ = reader.read_from(0, &mut out)?;
            let v = ShmVec::from_token(alloc.clone(), v.into_token())?;
            let _ = ShmVec::<u32, _>::new_in(&*alloc)?;
            let archive = ShmArchive::new_in(
                alloc.clone(),
                &Order {
                    id: 1,
                    item: "x".into(),
                },
            )?;
            let _ = archive.access()?;
            let raw_token = archive.into_token().to_raw();
            let archive = ShmArchive::<Order, _>::from_token(
                alloc.clone(),
                ArchiveToken::from_raw(raw_token),
            )?;
            let _ = archive.deserialize()?;
            let _ = archive.deserialize_copied()?;
            let _ = ShmArchive::new_in_with_capacity(
                &*alloc,
                &Order {
                    id: 2,
                    item: "y".into(),
                },
                64,
            )?;

            // Coordination: channel endpoints and calls, mutex, condvar.
            let jobs: Root<ShmChannel<u64, 8>, _> = Root::new_in(alloc.clone(), "jobs")?;
            let tx = jobs.sender()?;
            let rx = jobs.receiver()?;
            tx.send_timeout(1, Duration::from_secs(5))?;
            tx.try_send(2)?;
            let got = rx.recv_timeout(Duration::from_secs(5))? + rx.try_recv()?;
            let l = alloc.root::<Locked>("locked")?;
            l.m.lock()?[0] += 1;
            l.m.try_lock()?[1] += 1;
            let g = l.m.lock_timeout(Duration::from_secs(5))?;
            let (g, _) = l.changed.wait_timeout(g, Duration::from_millis(1))?;
            let (g, _) = l
                .changed
                .wait_timeout_while(g, Duration::from_millis(1), |d| d[0] == 0)?;
            drop(g);
            // `lock_robust` hands a guard-holding error; the Send value goes on.
            let g = match l.m.lock_robust() {
                Ok(g) => g,
                Err(died) => {
                    let (_guard, e) = died.into_parts();
                    return Err(e.into());
                }
            };
            drop(g);

            // Bump, arenas and their archives.
            let mut bump = BumpAllocator::create(bump_name.as_str(), 1 << 20)?;
            let _ = BumpAllocator::open(bump_name.as_str())?;
            {
                let arena = bump.arena();
                let a = arena.alloc(7u64)?;
                let _ = a.get()?;
                let s = arena.alloc_slice(&[1u32, 2])?;
                let _ = s.get_slice()?;
                let h = a.arena_ptr();
                let _ = h.read(arena.allocator())?;
                let t = arena.archive(&vec![1u32, 2])?.into_token();
                let r = ArenaArchiveReader::<Vec<u32>, _>::from_token(arena.allocator(), t)?;
                let _ = r.access()?;
                let _ = r.deserialize()?;
            }
            let _ = bump.reset()?;
            let _ = bump.try_reset()?;
            let _ = bump.reset_timeout(Duration::from_secs(1))?;
            let slab = SlabAllocator::create(slab_name.as_str(), 64, 16)?;
            let s = slab.allocate(64)?;
            slab.free(s)?;
            let _ = SlabAllocator::open(slab_name.as_str())?;

            // Pipelines.
            let mut publisher = Publisher::<Vec<u64>>::create(
                pipe_name.as_str(),
                PipelineOptions::new(Delivery::Every),
            )?;
            let mut sub = Subscriber::<Vec<u64>>::open(pipe_name.as_str())?;
            publisher.publish(&vec![4, 5])?;
            let got_batch = sub
                .recv_timeout(Duration::from_secs(5))?
                .map_or(0, |b| b.len() as u64);
            publisher.flush()?;
            publisher.close()?;
            assert!(sub.recv_timeout(Duration::from_secs(5))?.is_none());
            assert!(got_batch > 0);

            slab.unlink()?;
            bump.unlink()?;
            raw.unlink()?;
            shared_allocator::unlink(typed_name.as_str())?;
            Ok(got + *b + v.len() as u64)
        }
    };
}

program!(into_crate_error, shared_allocator::Error);
program!(into_box_dyn_error, Box<dyn std::error::Error>);
program!(into_box_send_sync, Box<dyn std::error::Error + Send + Sync>);
program!(into_anyhow, anyhow::Error);

fn send_sync_static<E: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn every_fallible_call_converts_with_question_mark() {
    send_sync_static::<shared_allocator::Error>();
    assert_eq!(into_crate_error("err-crate").unwrap(), 3 + 5 + 3);
    assert_eq!(into_box_dyn_error("err-box").unwrap(), 11);
    assert_eq!(into_box_send_sync("err-boxss").unwrap(), 11);
    assert_eq!(into_anyhow("err-anyhow").unwrap(), 11);
}

#[test]
fn specific_errors_stay_matchable_through_error() {
    use shared_allocator::channel::TryRecvError;
    use shared_allocator::{ChannelError, Error, LockError};
    let name = ShmName::new("err-match");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let jobs = alloc.root::<ShmChannel<u64, 8>>("jobs").unwrap();
    let rx = jobs.receiver().unwrap();
    let e = rx.try_recv().unwrap_err();
    assert_eq!(e, TryRecvError::Empty);
    assert_eq!(Error::from(e), Error::Channel(ChannelError::Empty));
    let l = alloc.root::<Locked>("locked").unwrap();
    let _held = l.m.lock().unwrap();
    let e: Error = l.m.try_lock().unwrap_err().into();
    assert_eq!(e, Error::Lock(LockError::WouldBlock));
    assert!(e.to_string().contains("held by a live owner"), "{e}");

    // Pipeline errors: the pipeline's own ones under `Error::Pipeline`, the
    // segment, allocator and archive errors it carries under their own variants.
    use shared_allocator::archive::PipelineError;
    let e = Error::from(PipelineError::Timeout(Duration::from_secs(1)));
    assert_eq!(
        e,
        Error::Pipeline(Box::new(PipelineError::Timeout(Duration::from_secs(1))))
    );
    assert!(e.to_string().contains("did not release a batch"), "{e}");
    let missing = ShmName::new("err-match-nopipe");
    let e: Error = Subscriber::<Vec<u64>>::open(missing.as_str())
        .unwrap_err()
        .into();
    assert!(matches!(e, Error::Segment(_)), "{e:?}");
}
