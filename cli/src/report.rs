//! What the commands print: one serialisable struct per command (the `--json`
//! form) and its human table.

use serde::Serialize;
use shared_allocator::alloc::Consistency;
use shared_allocator::process::{IntentInfo, RegistryInfo};
use shared_allocator::Stats;

/// Bytes for people: `12.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// One line of `list`.
#[derive(Serialize, Default)]
pub struct ListRow {
    pub name: String,
    pub kind: Option<String>,
    pub version: Option<u32>,
    pub status: String,
    pub uid: u32,
    pub mode: String,
    pub size: u64,
    pub capacity: Option<u64>,
    /// Bytes of the data region committed in the file so far (growth commits more,
    /// up to `capacity`, the maximum).
    pub committed: Option<u64>,
    pub used_bytes: Option<u64>,
    pub live: Option<usize>,
    pub dead: Option<usize>,
    pub remove_on_last_close: Option<bool>,
}

pub fn print_list(rows: &[ListRow]) {
    println!(
        "{:<32} {:<9} {:>5} {:>6} {:>11} {:>11} {:>11} {:>4} {:>4} STATUS",
        "NAME", "KIND", "MODE", "UID", "MAXIMUM", "COMMITTED", "USED", "LIVE", "DEAD"
    );
    for r in rows {
        println!(
            "{:<32} {:<9} {:>5} {:>6} {:>11} {:>11} {:>11} {:>4} {:>4} {}",
            r.name,
            opt(&r.kind),
            r.mode,
            r.uid,
            r.capacity.map_or("-".into(), bytes),
            r.committed.map_or("-".into(), bytes),
            r.used_bytes.map_or("-".into(), bytes),
            opt(&r.live),
            opt(&r.dead),
            r.status
        );
    }
}

#[derive(Serialize)]
pub struct ClassOut {
    pub block_size: u64,
    pub spans: u64,
    pub live_blocks: u64,
    pub free_blocks: u64,
}

#[derive(Serialize)]
pub struct StatsOut {
    pub capacity: u64,
    pub committed_bytes: u64,
    pub live_blocks: Option<u64>,
    pub live_bytes: u64,
    pub free_bytes: u64,
    pub cached_bytes: u64,
    pub classes: Vec<ClassOut>,
}

impl From<&Stats> for StatsOut {
    fn from(s: &Stats) -> Self {
        StatsOut {
            capacity: s.capacity,
            committed_bytes: s.committed_bytes,
            live_blocks: s.live_blocks,
            live_bytes: s.live_bytes,
            free_bytes: s.free_bytes,
            cached_bytes: s.cached_bytes,
            classes: s
                .classes
                .iter()
                .map(|c| ClassOut {
                    block_size: c.block_size,
                    spans: c.spans,
                    live_blocks: c.live_blocks,
                    free_blocks: c.free_blocks,
                })
                .collect(),
        }
    }
}

/// `info`.
#[derive(Serialize)]
pub struct Info {
    pub name: String,
    pub kind: String,
    pub layout_version: u32,
    pub uid: u32,
    pub file_mode: String,
    pub creator_pid: u64,
    pub total_size: u64,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub params: [u64; 4],
    pub segment_mode: String,
    pub remove_on_last_close: bool,
    pub epoch: u64,
    pub stats: StatsOut,
    pub largest_free_block: u64,
    pub live_processes: usize,
    pub dead_slots: usize,
}

pub fn print_info(i: &Info) {
    println!("name                 {}", i.name);
    println!("kind                 {}", i.kind);
    println!("layout version       {}", i.layout_version);
    println!("owner uid / mode     {} / {}", i.uid, i.file_mode);
    println!("creator pid          {}", i.creator_pid);
    println!(
        "total size           {} ({})",
        i.total_size,
        bytes(i.total_size)
    );
    println!(
        "metadata             {:#x} + {}",
        i.meta_offset,
        bytes(i.meta_len)
    );
    println!(
        "data                 {:#x} + {}",
        i.data_offset,
        bytes(i.data_len)
    );
    println!("parameters           {:?}", i.params);
    println!("segment mode         {}", i.segment_mode);
    println!("remove on last close {}", i.remove_on_last_close);
    println!("epoch                {}", i.epoch);
    println!("live processes       {}", i.live_processes);
    println!("dead slots           {}", i.dead_slots);
    let s = &i.stats;
    println!("capacity (maximum)   {}", bytes(s.capacity));
    println!("committed            {}", bytes(s.committed_bytes));
    println!(
        "live                 {} in {} blocks",
        bytes(s.live_bytes),
        opt(&s.live_blocks)
    );
    println!("free                 {}", bytes(s.free_bytes));
    println!("cached               {}", bytes(s.cached_bytes));
    println!("largest free block   {}", bytes(i.largest_free_block));
    if s.classes.iter().any(|c| c.spans > 0) {
        println!(
            "\n{:>10} {:>8} {:>12} {:>12}",
            "CLASS", "SPANS", "LIVE", "FREE"
        );
        for c in s.classes.iter().filter(|c| c.spans > 0) {
            println!(
                "{:>10} {:>8} {:>12} {:>12}",
                c.block_size, c.spans, c.live_blocks, c.free_blocks
            );
        }
    }
}

#[derive(Serialize)]
pub struct IntentOut {
    pub kind: u8,
    pub page: u32,
    pub pages: u32,
}

impl From<&IntentInfo> for IntentOut {
    fn from(i: &IntentInfo) -> Self {
        IntentOut {
            kind: i.kind,
            page: i.page,
            pages: i.pages,
        }
    }
}

#[derive(Serialize)]
pub struct SlotOut {
    pub slot: usize,
    pub pid: u32,
    pub start_time_ns: u64,
    pub alive: bool,
    pub generation: u32,
    pub intents: Vec<IntentOut>,
    pub pins: u64,
    /// This tool's own handle.
    pub is_self: bool,
    pub observer: bool,
}

/// `ps`.
#[derive(Serialize)]
pub struct Registry {
    pub slots: Vec<SlotOut>,
    pub orphan_intents: Vec<IntentOut>,
}

impl From<&RegistryInfo> for Registry {
    fn from(r: &RegistryInfo) -> Self {
        Registry {
            slots: r
                .slots
                .iter()
                .map(|s| SlotOut {
                    slot: s.slot,
                    pid: s.pid,
                    start_time_ns: s.start_time_ns,
                    alive: s.alive,
                    generation: s.generation,
                    intents: s.intents.iter().map(IntentOut::from).collect(),
                    pins: s.pins,
                    is_self: s.is_self,
                    observer: s.observer,
                })
                .collect(),
            orphan_intents: r.orphan_intents.iter().map(IntentOut::from).collect(),
        }
    }
}

pub fn print_ps(r: &Registry) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    println!(
        "{:>4} {:>8} {:>12} {:<6} {:>6} {:>7} {:>5} NOTE",
        "SLOT", "PID", "STARTED", "STATE", "GEN", "INTENTS", "PINS"
    );
    for s in &r.slots {
        let ago = now.saturating_sub(s.start_time_ns) as f64 / 1e9;
        println!(
            "{:>4} {:>8} {:>10.1}s {:<6} {:>6} {:>7} {:>5} {}",
            s.slot,
            s.pid,
            ago,
            if s.alive { "alive" } else { "dead" },
            s.generation,
            s.intents.len(),
            s.pins,
            if s.is_self {
                "this tool"
            } else if s.observer {
                "observer"
            } else {
                ""
            }
        );
    }
    if !r.orphan_intents.is_empty() {
        println!(
            "{} parked intent(s) of dead handles await a repair",
            r.orphan_intents.len()
        );
    }
}

/// One line of `roots`.
#[derive(Serialize)]
pub struct RootOut {
    pub name: String,
    pub type_name: String,
    pub fingerprint: String,
    pub offset: u64,
    /// Bytes of the block as the allocator rounded it.
    pub size: Option<u64>,
}

pub fn print_roots(rows: &[RootOut]) {
    println!(
        "{:<24} {:<18} {:>10} {:>10} TYPE",
        "NAME", "FINGERPRINT", "OFFSET", "SIZE"
    );
    for r in rows {
        println!(
            "{:<24} {:<18} {:>#10x} {:>10} {}",
            r.name,
            r.fingerprint,
            r.offset,
            opt(&r.size),
            r.type_name
        );
    }
}

/// `check`.
#[derive(Serialize)]
pub struct Check {
    pub consistent: bool,
    pub problems: Vec<String>,
    pub checked: u64,
    pub in_flight: u64,
    pub cached_blocks: u64,
    pub counter_drift: Option<String>,
}

impl From<&Consistency> for Check {
    fn from(c: &Consistency) -> Self {
        Check {
            consistent: c.is_consistent(),
            problems: c.problems.clone(),
            checked: c.checked,
            in_flight: c.in_flight,
            cached_blocks: c.cached_blocks,
            counter_drift: c.counter_drift.clone(),
        }
    }
}

pub fn print_check(c: &Check) {
    for p in &c.problems {
        println!("problem: {p}");
    }
    if let Some(d) = &c.counter_drift {
        println!("note: {d} (counters left off by a killed process; audit() is exact)");
    }
    println!(
        "{}: {} unit(s) checked, {} in flight (skipped), {} cached block(s) checked, {} problem(s)",
        if c.consistent {
            "consistent"
        } else {
            "INCONSISTENT"
        },
        c.checked,
        c.in_flight,
        c.cached_blocks,
        c.problems.len()
    );
}

/// `reclaim`.
#[derive(Serialize, Default)]
pub struct ReclaimReport {
    pub dead_before: usize,
    pub dead_after: usize,
    pub dead_slots: usize,
    pub intents: usize,
    pub pages: usize,
    pub cached_blocks: usize,
}

pub fn print_reclaim(r: &ReclaimReport) {
    println!(
        "dead slots reclaimed  {} ({} before, {} left)",
        r.dead_slots, r.dead_before, r.dead_after
    );
    println!("intents finished      {}", r.intents);
    println!("pages returned        {}", r.pages);
    println!("cached blocks back    {}", r.cached_blocks);
}

/// One line of `gc`.
#[derive(Serialize)]
pub struct GcRow {
    pub name: String,
    pub action: String,
    pub reason: String,
}

pub fn print_gc(rows: &[GcRow]) {
    for r in rows {
        println!("{:<13} {:<32} {}", r.action, r.name, r.reason);
    }
}
