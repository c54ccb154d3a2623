//! `shm-alloc`: see what is in `/dev/shm`, who is attached, and remove dead
//! segments of the `shared_allocator` crate.
//!
//! ```text
//! shm-alloc list [--prefix P] [--json]     every segment of ours (others ignored)
//! shm-alloc info NAME [--json]             header, parameters, stats, largest free block
//! shm-alloc ps NAME [--json]               the process registry
//! shm-alloc roots NAME [--json]            named roots: type, fingerprint, size
//! shm-alloc check NAME [--json]            read-only consistency walk (exit 0: consistent)
//! shm-alloc reclaim NAME [--json]          reclaim dead handles' slots and caches
//! shm-alloc rm NAME [--force]              remove (refused while live processes attach)
//! shm-alloc gc [--prefix P] [--dry-run]    remove every segment with no live process
//! ```
//!
//! The tool opens segments only through the crate's own checks (owner uid, mode,
//! layout version): an object owned by another user or writable by everyone is
//! reported, never opened or removed. It attaches as an *observer*
//! (`shared_allocator::segment::set_observer_mode`): its own handle never keeps a
//! segment's name alive nor removes it under the remove-on-last-close policy.
//!
//! Exit status: 0 success; 1 `check` found problems or `rm` was refused; 2 an
//! error (one line on stderr).

mod report;

use shared_allocator::__layout::LAYOUT_VERSION;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared_allocator::alloc::Inspect;
use shared_allocator::segment::peek::{self, PeekKind};
use shared_allocator::segment::{AllocatorKind, OpenOptions, Staleness, STALE_GRACE};
use shared_allocator::{BumpAllocator, FreeListAllocator, ShmAllocator, SlabAllocator};

use report::*;

#[derive(Parser)]
#[command(
    name = "shm-alloc",
    version,
    about = "Inspect, check, reclaim and garbage-collect shared_allocator segments in /dev/shm"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every segment of ours in /dev/shm (other objects are ignored; objects owned
    /// by another user or writable by everyone are reported, not opened).
    List {
        /// Only names starting with this (without the leading '/').
        #[arg(long, default_value = "")]
        prefix: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Header, layout version, allocator parameters, per-class stats, cached bytes,
    /// largest free block.
    Info {
        /// Segment name (with or without the leading '/').
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The process registry: slot, pid, start time, alive or dead, generation,
    /// intents and pins.
    Ps {
        /// Segment name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Named roots with their type, fingerprint and size.
    Roots {
        /// Segment name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A full read-only consistency walk; exit status 0 only if consistent.
    Check {
        /// Segment name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Runs the reclaimer for dead handles and prints what came back.
    Reclaim {
        /// Segment name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Removes a segment's name; refused while live processes are attached.
    Rm {
        /// Segment name.
        name: String,
        /// Remove even while live processes are attached (their mappings stay valid).
        #[arg(long)]
        force: bool,
    },
    /// Removes every segment of ours with no live process attached (and crashed
    /// creators' half-initialised objects).
    Gc {
        /// Only names starting with this (without the leading '/').
        #[arg(long, default_value = "")]
        prefix: String,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// An opened segment of any kind.
// One handle per run of the tool: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Handle {
    FreeList(FreeListAllocator),
    Slab(SlabAllocator),
    Bump(BumpAllocator),
}

macro_rules! with {
    ($h:expr, $a:ident => $e:expr) => {
        match $h {
            Handle::FreeList($a) => $e,
            Handle::Slab($a) => $e,
            Handle::Bump($a) => $e,
        }
    };
}

/// A failure: one line for stderr.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

fn open_opts() -> OpenOptions {
    OpenOptions {
        timeout: Duration::from_millis(500),
        ..OpenOptions::default()
    }
}

/// Opens `name` through the crate's checks, after a look that refuses foreign,
/// world-writable, unknown and half-initialised objects with a clear reason.
fn open(name: &str) -> Result<Handle, Fail> {
    let p = peek::peek(name)?;
    let h = match p.kind {
        PeekKind::ForeignOwner => {
            return Err(Fail(format!(
                "{}: owned by uid {}, not by this user: not opened",
                p.name, p.uid
            )))
        }
        PeekKind::WorldWritable => {
            return Err(Fail(format!(
                "{}: mode {:#o} is writable by every user: not opened",
                p.name, p.mode
            )))
        }
        PeekKind::NotOurs => {
            return Err(Fail(format!("{}: not a shared_allocator segment", p.name)))
        }
        PeekKind::Ours(h) => h,
    };
    if !h.ready {
        return Err(Fail(format!(
            "{}: not initialised (being created, or its creator died; `gc` removes it once stale)",
            p.name
        )));
    }
    if h.version != LAYOUT_VERSION {
        return Err(Fail(format!(
            "{}: layout version {}, this tool reads version {LAYOUT_VERSION}",
            p.name, h.version
        )));
    }
    let o = open_opts();
    Ok(match h.kind {
        Some(AllocatorKind::FreeList) => Handle::FreeList(FreeListAllocator::open_with(name, &o)?),
        Some(AllocatorKind::Slab) => Handle::Slab(SlabAllocator::open_with(name, &o)?),
        Some(AllocatorKind::Bump) => Handle::Bump(BumpAllocator::open_with(name, &o)?),
        None => return Err(Fail(format!("{}: unknown allocator kind", p.name))),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared_allocator::segment::set_observer_mode(true);
    match run(cli.cmd) {
        Ok(code) => code,
        Err(Fail(msg)) => {
            eprintln!("shm-alloc: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn emit<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> Result<(), Fail> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human(value);
    }
    Ok(())
}

fn run(cmd: Cmd) -> Result<ExitCode, Fail> {
    match cmd {
        Cmd::List { prefix, json } => {
            let rows = list(&prefix)?;
            emit(json, &rows, |r| print_list(r))?;
        }
        Cmd::Info { name, json } => {
            let h = open(&name)?;
            let info = with!(&h, a => info_of(a, &name))?;
            emit(json, &info, print_info)?;
        }
        Cmd::Ps { name, json } => {
            let h = open(&name)?;
            let reg = Registry::from(&with!(&h, a => a.registry()));
            emit(json, &reg, print_ps)?;
        }
        Cmd::Roots { name, json } => {
            let h = open(&name)?;
            let roots = match &h {
                Handle::FreeList(a) => roots_of(a)?,
                Handle::Slab(a) => roots_of(a)?,
                Handle::Bump(_) => Vec::new(), // bump allocators have no roots
            };
            emit(json, &roots, |r| print_roots(r))?;
        }
        Cmd::Check { name, json } => {
            let h = open(&name)?;
            let c = Check::from(&with!(&h, a => a.check()));
            emit(json, &c, print_check)?;
            if !c.consistent {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Reclaim { name, json } => {
            let h = open(&name)?;
            let dead_before = with!(&h, a => a.registry().dead());
            let mut r = match &h {
                Handle::FreeList(a) => {
                    let r = a.reclaim();
                    ReclaimReport {
                        dead_slots: r.dead_slots,
                        intents: r.intents,
                        pages: r.pages,
                        cached_blocks: r.cached_blocks,
                        ..ReclaimReport::default()
                    }
                }
                Handle::Slab(a) => ReclaimReport {
                    cached_blocks: a.reclaim(),
                    ..ReclaimReport::default()
                },
                Handle::Bump(a) => ReclaimReport {
                    dead_slots: a.reclaim(),
                    ..ReclaimReport::default()
                },
            };
            r.dead_before = dead_before;
            r.dead_after = with!(&h, a => a.registry().dead());
            r.dead_slots = r.dead_slots.max(dead_before.saturating_sub(r.dead_after));
            emit(json, &r, print_reclaim)?;
        }
        Cmd::Rm { name, force } => return rm(&name, force),
        Cmd::Gc {
            prefix,
            dry_run,
            json,
        } => {
            let rows = gc(&prefix, dry_run)?;
            emit(json, &rows, |r| print_gc(r))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info_of<A: ShmAllocator + Inspect>(a: &A, name: &str) -> Result<Info, Fail> {
    let seg = a.segment();
    let l = seg.layout();
    let p = peek::peek(name)?;
    let reg = a.registry();
    Ok(Info {
        name: seg.name().to_owned(),
        kind: l.kind.name().to_owned(),
        layout_version: LAYOUT_VERSION,
        uid: p.uid,
        file_mode: format!("{:o}", p.mode),
        creator_pid: match p.kind {
            PeekKind::Ours(h) => h.creator_pid,
            _ => 0,
        },
        total_size: l.total_size,
        meta_offset: shared_allocator::__layout::meta_region(l).0,
        meta_len: shared_allocator::__layout::meta_region(l).1,
        data_offset: l.data_offset,
        data_len: l.data_len,
        params: shared_allocator::__layout::params(l),
        segment_mode: seg.mode().to_string(),
        remove_on_last_close: seg.removes_on_last_close(),
        epoch: a.epoch(),
        stats: StatsOut::from(&a.stats()),
        largest_free_block: a.largest_free_block(),
        live_processes: reg.live_others(),
        dead_slots: reg.dead(),
    })
}

fn roots_of<A: ShmAllocator + Inspect>(a: &A) -> Result<Vec<RootOut>, Fail> {
    use shared_allocator::Roots;
    Ok(a.roots()?
        .into_iter()
        .map(|r| RootOut {
            // The block the root lives in (it starts with the crate's header).
            size: a
                .block_start_of(r.offset, 1)
                .ok()
                .flatten()
                .and_then(|start| a.block_size(start)),
            name: r.name,
            type_name: r.type_name,
            fingerprint: format!("{:#018x}", r.fingerprint),
            offset: r.offset.get(),
        })
        .collect())
}

fn list(prefix: &str) -> Result<Vec<ListRow>, Fail> {
    let mut rows = Vec::new();
    for p in peek::list(prefix)? {
        let mut row = ListRow {
            name: p.name.clone(),
            uid: p.uid,
            mode: format!("{:o}", p.mode),
            size: p.size,
            ..ListRow::default()
        };
        match &p.kind {
            PeekKind::NotOurs => continue,
            PeekKind::ForeignOwner => row.status = "foreign-owner (not opened)".into(),
            PeekKind::WorldWritable => row.status = "world-writable (not opened)".into(),
            PeekKind::Ours(h) => {
                row.kind = h.kind.map(|k| k.name().to_owned());
                row.version = Some(h.version);
                if !h.ready {
                    row.status = if p.age >= STALE_GRACE {
                        "uninitialised (creator dead or stalled)".into()
                    } else {
                        "initialising".into()
                    };
                } else if h.version != LAYOUT_VERSION {
                    row.status = format!("layout version {} (not opened)", h.version);
                } else {
                    match open(&p.name) {
                        Ok(handle) => with!(&handle, a => {
                            let st = a.stats();
                            let reg = a.registry();
                            row.capacity = Some(st.capacity);
                            row.committed = Some(st.committed_bytes);
                            row.used_bytes = Some(st.live_bytes);
                            row.live = Some(reg.live_others());
                            row.dead = Some(reg.dead());
                            row.remove_on_last_close = Some(a.segment().removes_on_last_close());
                            row.status = "ok".into();
                        }),
                        Err(Fail(e)) => row.status = format!("error: {e}"),
                    }
                }
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn rm(name: &str, force: bool) -> Result<ExitCode, Fail> {
    let p = peek::peek(name)?;
    match &p.kind {
        PeekKind::Ours(h) if !h.ready => match shared_allocator::segment::remove_if_stale(name)? {
            Staleness::Removed | Staleness::Changed => {}
            _ if force => shared_allocator::unlink(name)?,
            _ => {
                eprintln!(
                    "shm-alloc: {} is being initialised; not removed (use --force)",
                    p.name
                );
                return Ok(ExitCode::from(1));
            }
        },
        PeekKind::Ours(h) if h.version != LAYOUT_VERSION => {
            if !force {
                eprintln!(
                    "shm-alloc: {}: layout version {}: liveness unknown to this tool; not removed (use --force)",
                    p.name, h.version
                );
                return Ok(ExitCode::from(1));
            }
            shared_allocator::unlink(name)?;
        }
        _ => {
            let h = open(name)?;
            let removed = with!(&h, a => a.remove_if_unattached())?;
            if !removed {
                let live = with!(&h, a => a.registry().live_others());
                if !force {
                    eprintln!(
                        "shm-alloc: {}: {live} live process(es) attached; not removed (use --force)",
                        p.name
                    );
                    return Ok(ExitCode::from(1));
                }
                with!(&h, a => a.segment().unlink())?;
            }
        }
    }
    println!("removed {}", p.name);
    Ok(ExitCode::SUCCESS)
}

fn gc(prefix: &str, dry_run: bool) -> Result<Vec<GcRow>, Fail> {
    let mut rows = Vec::new();
    for p in peek::list(prefix)? {
        let (action, reason) = match &p.kind {
            PeekKind::NotOurs => continue,
            PeekKind::ForeignOwner => ("skipped", format!("owned by uid {}", p.uid)),
            PeekKind::WorldWritable => ("skipped", "writable by every user".to_owned()),
            PeekKind::Ours(h) if h.ready && h.version != LAYOUT_VERSION => {
                ("skipped", format!("layout version {}", h.version))
            }
            PeekKind::Ours(h) if !h.ready => {
                if p.age < STALE_GRACE {
                    ("kept", "initialising".to_owned())
                } else {
                    // The dry run asks the same question under the same lock, so it
                    // reports exactly what the real run would do.
                    let decide = if dry_run {
                        shared_allocator::segment::would_remove_if_stale
                    } else {
                        shared_allocator::segment::remove_if_stale
                    };
                    match decide(&p.name) {
                        Ok(Staleness::Removed) if dry_run => {
                            ("would remove", "uninitialised, creator dead".to_owned())
                        }
                        Ok(Staleness::Removed) => {
                            ("removed", "uninitialised, creator dead".to_owned())
                        }
                        Ok(_) => ("kept", "initialising".to_owned()),
                        Err(e) => ("error", e.to_string()),
                    }
                }
            }
            PeekKind::Ours(_) => match open(&p.name) {
                Err(Fail(e)) => ("error", e),
                Ok(h) => {
                    let live = with!(&h, a => a.registry().live_others());
                    if live > 0 {
                        ("kept", format!("{live} live process(es) attached"))
                    } else if dry_run {
                        ("would remove", "no live process attached".to_owned())
                    } else {
                        match with!(&h, a => a.remove_if_unattached()) {
                            Ok(true) => ("removed", "no live process attached".to_owned()),
                            Ok(false) => ("kept", "a process attached meanwhile".to_owned()),
                            Err(e) => ("error", e.to_string()),
                        }
                    }
                }
            },
        };
        rows.push(GcRow {
            name: p.name,
            action: action.to_owned(),
            reason,
        });
    }
    Ok(rows)
}
