//! Segment lifecycle and introspection for Python: ``stats()``, ``processes()``,
//! ``largest_free_block()``, ``open_or_create`` and the exit-time default.
//!
//! **Default (the seed's behaviour, made safe).** The seed package relied on the
//! standard library's resource tracker, which removed a segment when the process
//! that created it exited, even while other processes still used it. Here, a
//! segment that this process created (``create=True``, or ``open_or_create`` that
//! created) gets the *remove on last close* policy when the interpreter exits
//! normally: its name is removed at once if no other process is attached, else by
//! the last attached process when it closes. It is never removed under a live
//! user's feet. A forked child using an inherited handle counts as attached from
//! the fork on: if, at the parent's exit, a process maps the segment without a
//! registry slot of its own (such a child), the parent sets no policy and leaves
//! the name (``shm-alloc gc`` removes it once unused). ``close()`` of the last
//! handle removes the name as dropping it would (not in a fork child, which cannot
//! tell its parent's handle from its own). ``set_remove_on_last_close(False)`` opts
//! a segment out (and
//! ``True`` opts in now, for every handle in every process). A process killed by a
//! signal or leaving through ``os._exit`` runs no exit handler: ``shm-alloc gc``
//! removes what it leaves.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use shared_allocator::process::RegistryInfo;
use shared_allocator::segment::{AllocatorKind, OpenOptions, Segment};
use shared_allocator::{BumpAllocator, FreeListAllocator, ShmAllocator, SlabAllocator, Stats};

/// A segment this process created, to be given the policy at exit.
struct Created {
    name: String,
    pid: u32,
    ino: u64,
    kind: AllocatorKind,
}

static CREATED: Mutex<Vec<Created>> = Mutex::new(Vec::new());

/// Records that this process created `seg` (see the module docs).
pub(crate) fn note_created(seg: &Segment) {
    let Some(ino) = seg.inode() else { return };
    let mut c = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    c.push(Created {
        name: seg.name().to_owned(),
        pid: std::process::id(),
        ino,
        kind: seg.layout().kind,
    });
}

/// Registry slots of handles of this process that `close()` closed but that are
/// not dropped yet (they still hold their slots): (inode, slot).
static CLOSED: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());

/// Records a closed handle's slot; returns the closed slots of inode `ino`.
pub(crate) fn note_closed(entry: Option<(u64, usize)>, ino: u64) -> Vec<usize> {
    let mut c = CLOSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = entry {
        c.push(e);
    }
    c.iter().filter(|e| e.0 == ino).map(|e| e.1).collect()
}

/// Forgets a closed handle's slot (the handle is going, and its slot with it).
pub(crate) fn forget_closed(entry: (u64, usize)) {
    let mut c = CLOSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = c.iter().position(|e| *e == entry) {
        c.swap_remove(i);
    }
}

/// Takes `seg` out of the exit-time list.
pub(crate) fn forget(seg: &Segment) {
    let ino = seg.inode();
    let mut c = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    c.retain(|e| !(e.name == seg.name() && Some(e.ino) == ino));
}

/// Gives `seg`'s object the policy if it is still the one recorded, then closes.
fn flag<A: ShmAllocator + shared_allocator::alloc::Inspect>(a: A, ino: u64) {
    if a.segment().inode() == Some(ino) {
        // This process's own handles (still open at exit) do not count: they go
        // with the process. Other processes' do: the last of them removes it. A
        // fork child that inherited a handle maps the object but may have no
        // registry slot of its own yet: a process that maps it without one counts.
        let registered: Vec<u32> = a.registry().slots.iter().map(|s| s.pid).collect();
        if mapped_by_unregistered_process(ino, &registered) {
            // Cannot tell a fork child's inherited handle from ours: no policy (it
            // would let this process's own last close remove the name under the
            // child); `shm-alloc gc` removes it once nobody uses it.
            return;
        }
        a.segment().set_remove_on_last_close(true);
        let _ = a.segment().remove_unless_others_attached();
    }
}

/// Whether a process other than this one, and not among the `registered` pids
/// (the registry's slots), maps a `/dev/shm` object with inode `ino` (from
/// `/proc/PID/maps`, as far as this process can read them): a fork child using an
/// inherited handle it has not re-joined with. A process whose maps cannot be read
/// (another user's) is not counted: it cannot have inherited our handle, and it
/// attaches through the registry when it opens.
fn mapped_by_unregistered_process(ino: u64, registered: &[u32]) -> bool {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true; // cannot tell: keep the name
    };
    let ino = ino.to_string();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && !registered.contains(&pid))
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
                maps.lines().any(|l| {
                    let mut f = l.split_whitespace().skip(4);
                    f.next() == Some(ino.as_str())
                        && f.next().is_some_and(|p| p.starts_with("/dev/shm/"))
                })
            })
        })
}

/// Registered with ``atexit``: every segment this process created gets the
/// remove-on-last-close policy (see the module docs).
#[pyfunction]
pub(crate) fn _remove_created_at_exit(py: Python<'_>) {
    let me = std::process::id();
    let created = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    py.detach(|| {
        let o = OpenOptions {
            timeout: std::time::Duration::from_millis(200),
            ..OpenOptions::default()
        };
        for c in created.into_iter().filter(|c| c.pid == me) {
            match c.kind {
                AllocatorKind::FreeList => {
                    if let Ok(a) = FreeListAllocator::open_with(&c.name, &o) {
                        flag(a, c.ino);
                    }
                }
                AllocatorKind::Slab => {
                    if let Ok(a) = SlabAllocator::open_with(&c.name, &o) {
                        flag(a, c.ino);
                    }
                }
                AllocatorKind::Bump => {
                    if let Ok(a) = BumpAllocator::open_with(&c.name, &o) {
                        flag(a, c.ino);
                    }
                }
            }
        }
    });
}

/// ``stats()`` as a dict.
pub(crate) fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("capacity", s.capacity)?;
    d.set_item("live_blocks", s.live_blocks)?;
    d.set_item("live_bytes", s.live_bytes)?;
    d.set_item("free_bytes", s.free_bytes)?;
    d.set_item("cached_bytes", s.cached_bytes)?;
    let classes = PyList::empty(py);
    for c in &s.classes {
        let cd = PyDict::new(py);
        cd.set_item("block_size", c.block_size)?;
        cd.set_item("spans", c.spans)?;
        cd.set_item("live_blocks", c.live_blocks)?;
        cd.set_item("free_blocks", c.free_blocks)?;
        classes.append(cd)?;
    }
    d.set_item("classes", classes)?;
    Ok(d)
}

/// ``processes()`` as a list of dicts.
pub(crate) fn processes_list<'py>(
    py: Python<'py>,
    r: &RegistryInfo,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for s in &r.slots {
        let d = PyDict::new(py);
        d.set_item("slot", s.slot)?;
        d.set_item("pid", s.pid)?;
        d.set_item("start_time_ns", s.start_time_ns)?;
        d.set_item("alive", s.alive)?;
        d.set_item("generation", s.generation)?;
        d.set_item("is_self", s.is_self)?;
        d.set_item("intents", s.intents.len())?;
        d.set_item("pins", s.pins)?;
        out.append(d)?;
    }
    Ok(out)
}
