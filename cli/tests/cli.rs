//! The real `shm-alloc` binary on real segments: every subcommand, `--json` parsed
//! back, a crashed creator's segment found by `list` and removed by `gc` while a
//! live one is kept, `rm` refused while a process is attached, and objects owned by
//! another user or writable by everyone reported, never opened or removed.
//!
//! Every `list` and `gc` here is scoped with `--prefix` to this test process's own
//! names (`/dev/shm` is shared with other tests and programs).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use assert_cmd::Command;
use common::*;
use serde_json::Value;
use shared_allocator::alloc::Inspect;
use shared_allocator::alloc::SIZE_CLASSES;
use shared_allocator::prelude::*;
use shared_allocator::segment::CreateOptions;

const LIMIT: Duration = Duration::from_secs(60);

fn shm_alloc() -> Command {
    let mut c = Command::cargo_bin("shm-alloc").unwrap();
    c.timeout(LIMIT);
    c
}

/// Runs `shm-alloc args...`, expects exit status `code`, returns stdout and stderr.
fn run(args: &[&str], code: i32) -> (String, String) {
    let out = shm_alloc().args(args).output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "shm-alloc {args:?}: {:?}\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    (so, se)
}

fn json(args: &[&str]) -> Value {
    let (so, _) = run(args, 0);
    serde_json::from_str(&so)
        .unwrap_or_else(|e| panic!("shm-alloc {args:?}: bad JSON ({e}):\n{so}"))
}

/// The prefix that scopes `list` and `gc` to the names `ShmName::new(tag)` makes
/// in this process.
fn prefix(tag: &str) -> String {
    format!("sa-test-{tag}-{}-", std::process::id())
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == format!("/{name}"))
        .unwrap_or_else(|| panic!("{name} not in {rows:#}"))
}

/// Child roles: "holder" opens a free-list segment, says "ready" and waits (it
/// is killed or its stdin closed); "creator" creates one, allocates, says "ready"
/// and waits to be SIGKILLed.
fn child_role() -> bool {
    let Some(r) = role() else { return false };
    let name = env_req("SA_NAME");
    if r == "bump-holder" {
        let b = BumpAllocator::open(&name).unwrap();
        b.allocate(10).unwrap();
        println!("ready");
        let mut s = String::new();
        let _ = std::io::stdin().read_to_string(&mut s);
        return true;
    }
    let a = match r.as_str() {
        "holder" => FreeListAllocator::open(&name).unwrap(),
        "creator" => FreeListAllocator::create(&name, 1 << 20).unwrap(),
        other => panic!("unknown role {other}"),
    };
    for _ in 0..10 {
        a.allocate(300).unwrap();
    }
    println!("ready");
    let mut s = String::new();
    let _ = std::io::stdin().read_to_string(&mut s);
    true
}

fn spawn_ready(entry: &str, role: &str, name: &str) -> KillOnDrop {
    let mut c = child_command(&[], entry, role, &[("SA_NAME", name.to_owned())])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    // Reads until the child's "ready" line (past the test harness's own lines),
    // in a thread: the watchdog below fails the test if it never comes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(());
                break;
            }
        }
    });
    let mut k = KillOnDrop::new(c);
    let got = rx.recv_timeout(LIMIT);
    assert!(
        got.is_ok(),
        "watchdog: child {role} did not get ready (status {:?})",
        k.child().try_wait()
    );
    k
}

#[test]
fn every_subcommand_with_json() {
    let name = ShmName::new("c19-all");
    let n = name.as_str();
    let a = FreeListAllocator::create(n, 4 << 20).unwrap();
    let hits = a.root::<AtomicU64>("hits").unwrap();
    hits.store(5, std::sync::atomic::Ordering::Relaxed);
    let small = a.allocate(100).unwrap();
    let _large = a.allocate(3 * 4096).unwrap();

    // list: our segment with its numbers; we are the one live process.
    let rows = json(&["list", "--prefix", &prefix("c19-all"), "--json"]);
    let r = row(&rows, n);
    assert_eq!(r["kind"], "free-list");
    assert_eq!(r["status"], "ok");
    assert_eq!(r["live"], 1);
    assert_eq!(r["dead"], 0);
    assert_eq!(r["uid"], nix::unistd::geteuid().as_raw());
    assert_eq!(r["mode"], "600");
    assert_eq!(r["capacity"], 4 << 20);
    // Growth commits on demand: some of the maximum, never more.
    let committed = r["committed"].as_u64().expect("committed bytes");
    assert!(committed > 0 && committed <= 4 << 20, "{r:#}");
    assert!(r["used_bytes"].as_u64().unwrap() >= 3 * 4096 + 112);
    let (human, _) = run(&["list", "--prefix", &prefix("c19-all")], 0);
    assert!(human.contains(n) && human.contains("free-list"), "{human}");

    // info
    let i = json(&["info", n, "--json"]);
    assert_eq!(i["kind"], "free-list");
    assert_eq!(
        i["layout_version"],
        shared_allocator::__layout::LAYOUT_VERSION
    );
    assert_eq!(i["name"], format!("/{n}"));
    assert_eq!(i["creator_pid"], std::process::id());
    assert_eq!(i["stats"]["capacity"], 4 << 20);
    assert_eq!(i["stats"]["committed_bytes"], r["committed"], "{i:#}");
    assert_eq!(i["stats"]["live_blocks"], a.stats().live_blocks.unwrap());
    assert_eq!(
        i["stats"]["classes"].as_array().unwrap().len(),
        SIZE_CLASSES.len()
    );
    assert_eq!(i["largest_free_block"], a.largest_free_block());
    let largest = i["largest_free_block"].as_u64().unwrap();
    assert!(largest >= 4096 && largest <= i["stats"]["free_bytes"].as_u64().unwrap());
    assert_eq!(largest % 4096, 0);
    assert_eq!(i["live_processes"], 1);
    // The raw allocations above decided the mode.
    assert_eq!(i["segment_mode"], "raw");
    let (human, _) = run(&["info", n], 0);
    assert!(human.contains("largest free block"), "{human}");

    // ps: this process alive, and the tool's own (observer) slot marked.
    let p = json(&["ps", n, "--json"]);
    let slots = p["slots"].as_array().unwrap();
    let me = slots
        .iter()
        .find(|s| s["pid"] == std::process::id())
        .expect("our slot");
    assert_eq!(me["alive"], true);
    assert_eq!(me["observer"], false);
    assert!(me["start_time_ns"].as_u64().unwrap() > 0);
    assert!(me["intents"].as_array().unwrap().is_empty());
    assert!(slots
        .iter()
        .any(|s| s["is_self"] == true && s["observer"] == true));
    run(&["ps", n], 0);

    // roots: name, type, fingerprint, size
    let roots = json(&["roots", n, "--json"]);
    let h = &roots.as_array().unwrap()[0];
    assert_eq!(h["name"], "hits");
    assert!(h["type_name"].as_str().unwrap().contains("AtomicU64"));
    assert!(h["fingerprint"].as_str().unwrap().starts_with("0x"));
    // The root's block: the crate's 16-byte header, then the 8-byte atomic, in the
    // next size class up.
    assert_eq!(h["size"], 32, "{h:#}");
    run(&["roots", n], 0);

    // check: consistent, exit 0
    let c = json(&["check", n, "--json"]);
    assert_eq!(c["consistent"], true, "{c:#}");
    // Nobody was killed: the O(1) counters agree exactly with the metadata.
    assert!(c["counter_drift"].is_null(), "{c:#}");
    // Every committed page is walked (pages past them have no metadata yet).
    assert!(c["checked"].as_u64().unwrap() >= a.stats().committed_bytes / 4096);
    let (human, _) = run(&["check", n], 0);
    assert!(human.starts_with("consistent"), "{human}");

    // reclaim: nothing dead
    let r = json(&["reclaim", n, "--json"]);
    assert_eq!(r["dead_before"], 0);
    assert_eq!(r["dead_slots"], 0);
    run(&["reclaim", n], 0);

    // rm refuses while we are attached, and leaves everything as it was.
    let (_, err) = run(&["rm", n], 1);
    assert!(err.contains("1 live process"), "{err}");
    assert!(shm_path(n).exists());
    assert_eq!(a.read(Offset::new(small.get()), 1).unwrap().len(), 1);

    // The other kinds.
    let slab = ShmName::new("c19-all");
    let s = SlabAllocator::create(slab.as_str(), 48, 1000).unwrap();
    s.allocate(48).unwrap();
    let i = json(&["info", slab.as_str(), "--json"]);
    assert_eq!(i["kind"], "slab");
    assert_eq!(i["stats"]["live_blocks"], 1);
    assert_eq!(i["largest_free_block"], 48);
    assert_eq!(
        json(&["check", slab.as_str(), "--json"])["consistent"],
        true
    );
    let bump = ShmName::new("c19-all");
    let b = BumpAllocator::create(bump.as_str(), 1 << 16).unwrap();
    b.allocate(1000).unwrap();
    let i = json(&["info", bump.as_str(), "--json"]);
    assert_eq!(i["kind"], "bump");
    assert_eq!(i["largest_free_block"], (1 << 16) - 1000);
    assert_eq!(
        json(&["roots", bump.as_str(), "--json"]),
        Value::Array(vec![])
    );
    assert_eq!(
        json(&["check", bump.as_str(), "--json"])["consistent"],
        true
    );
    let rows = json(&["list", "--prefix", &prefix("c19-all"), "--json"]);
    assert_eq!(rows.as_array().unwrap().len(), 3);

    // rm after the last handle closed.
    drop(b);
    let (out, _) = run(&["rm", bump.as_str()], 0);
    assert!(out.contains("removed"));
    assert!(!shm_path(bump.as_str()).exists());

    // Errors: one line, exit 2.
    let (_, err) = run(&["info", "sa-test-c19-no-such-segment"], 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let (_, err) = run(&["info", "bad/name"], 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    drop((a, s));
}

#[test]
fn gc_removes_a_crashed_creators_segment_and_keeps_a_live_one() {
    if child_role() {
        return;
    }
    let entry = "gc_removes_a_crashed_creators_segment_and_keeps_a_live_one";
    let pre = prefix("c19-gc");
    let dead = ShmName::new("c19-gc");
    let live = ShmName::new("c19-gc");
    // A creator that is SIGKILLed while it uses its segment.
    let mut creator = spawn_ready(entry, "creator", dead.as_str());
    creator.child().kill().unwrap();
    creator.child().wait().unwrap();
    // A segment with a live process attached (not this one).
    let keep = FreeListAllocator::create(live.as_str(), 1 << 20).unwrap();
    let _holder = spawn_ready(entry, "holder", live.as_str());
    drop(keep);
    // A creator that died before it published its header.
    let half = ShmName::new("c19-gc");
    {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let fd = nix::sys::mman::shm_open(
            format!("/{}", half.as_str()).as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"SHMALLOC", 0).unwrap();
    }

    let rows = json(&["list", "--prefix", &pre, "--json"]);
    let d = row(&rows, dead.as_str());
    assert_eq!(d["live"], 0, "{d:#}");
    assert_eq!(d["dead"], 1, "{d:#}");
    let l = row(&rows, live.as_str());
    assert_eq!(l["live"], 1, "{l:#}");
    assert!(row(&rows, half.as_str())["status"]
        .as_str()
        .unwrap()
        .contains("init"));

    // ps shows the dead creator; check says its segment is consistent.
    let p = json(&["ps", dead.as_str(), "--json"]);
    assert!(p["slots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["alive"] == false));
    assert_eq!(
        json(&["check", dead.as_str(), "--json"])["consistent"],
        true
    );

    std::thread::sleep(shared_allocator::segment::STALE_GRACE);
    // Dry run: says, removes nothing.
    let g = json(&["gc", "--prefix", &pre, "--dry-run", "--json"]);
    assert_eq!(row(&g, dead.as_str())["action"], "would remove");
    assert_eq!(row(&g, half.as_str())["action"], "would remove");
    assert_eq!(row(&g, live.as_str())["action"], "kept");
    assert!(shm_path(dead.as_str()).exists() && shm_path(half.as_str()).exists());

    let g = json(&["gc", "--prefix", &pre, "--json"]);
    assert_eq!(row(&g, dead.as_str())["action"], "removed", "{g:#}");
    assert_eq!(row(&g, half.as_str())["action"], "removed", "{g:#}");
    assert_eq!(row(&g, live.as_str())["action"], "kept", "{g:#}");
    assert!(!shm_path(dead.as_str()).exists());
    assert!(!shm_path(half.as_str()).exists());
    assert!(shm_path(live.as_str()).exists());
    let (human, _) = run(&["gc", "--prefix", &pre], 0);
    assert!(human.contains("kept"), "{human}");
}

#[test]
fn rm_refuses_while_a_process_is_attached() {
    if child_role() {
        return;
    }
    let entry = "rm_refuses_while_a_process_is_attached";
    let name = ShmName::new("c19-rm");
    drop(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
    let mut holder = spawn_ready(entry, "holder", name.as_str());
    let (_, err) = run(&["rm", name.as_str()], 1);
    assert!(err.contains("live process"), "{err}");
    assert!(shm_path(name.as_str()).exists());
    // The reclaim of a live holder returns nothing of it.
    assert_eq!(json(&["reclaim", name.as_str(), "--json"])["dead_slots"], 0);
    // Once the holder is gone (SIGKILL: it is dead, not attached), rm removes it.
    holder.child().kill().unwrap();
    holder.child().wait().unwrap();
    let r = json(&["reclaim", name.as_str(), "--json"]);
    assert_eq!(r["dead_slots"], 1, "{r:#}");
    assert!(r["cached_blocks"].as_u64().unwrap() > 0, "{r:#}");
    run(&["rm", name.as_str()], 0);
    assert!(!shm_path(name.as_str()).exists());

    // A bump allocator's dead slots come back too.
    let bump = ShmName::new("c19-rm");
    drop(BumpAllocator::create(bump.as_str(), 1 << 16).unwrap());
    let mut holder = spawn_ready(entry, "bump-holder", bump.as_str());
    holder.child().kill().unwrap();
    holder.child().wait().unwrap();
    let r = json(&["reclaim", bump.as_str(), "--json"]);
    assert_eq!(
        (
            r["dead_before"].as_u64(),
            r["dead_slots"].as_u64(),
            r["dead_after"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{r:#}"
    );

    // --force removes while attached.
    let forced = ShmName::new("c19-rm");
    drop(FreeListAllocator::create(forced.as_str(), 1 << 20).unwrap());
    let _holder = spawn_ready(entry, "holder", forced.as_str());
    run(&["rm", forced.as_str()], 1);
    run(&["rm", forced.as_str(), "--force"], 0);
    assert!(!shm_path(forced.as_str()).exists());
}

fn file_bytes(name: &str) -> Vec<u8> {
    std::fs::read(shm_path(name)).unwrap()
}

#[test]
fn foreign_and_world_writable_objects_are_reported_not_opened() {
    let pre = prefix("c19-foreign");
    let foreign = ShmName::new("c19-foreign");
    let open = ShmName::new("c19-foreign");
    drop(FreeListAllocator::create(foreign.as_str(), 1 << 20).unwrap());
    std::os::unix::fs::chown(shm_path(foreign.as_str()), Some(65534), Some(65534)).unwrap();
    drop(
        FreeListAllocator::create_with(
            open.as_str(),
            1 << 20,
            &CreateOptions {
                mode: 0o666,
                ..CreateOptions::default()
            },
        )
        .unwrap(),
    );
    let before = (file_bytes(foreign.as_str()), file_bytes(open.as_str()));
    let ctime = |n: &ShmName| {
        std::fs::metadata(shm_path(n.as_str()))
            .unwrap()
            .ctime_nsec()
    };
    let ctimes = (ctime(&foreign), ctime(&open));

    let rows = json(&["list", "--prefix", &pre, "--json"]);
    let f = row(&rows, foreign.as_str());
    assert_eq!(f["uid"], 65534);
    assert_eq!(f["status"], "foreign-owner (not opened)");
    assert_eq!(f["kind"], Value::Null);
    let w = row(&rows, open.as_str());
    assert_eq!(w["status"], "world-writable (not opened)");
    assert_eq!(w["mode"], "666");

    let (_, err) = run(&["info", foreign.as_str()], 2);
    assert!(
        err.contains("owned by uid 65534") && err.contains("not opened"),
        "{err}"
    );
    let (_, err) = run(&["check", open.as_str()], 2);
    assert!(err.contains("writable by every user"), "{err}");
    run(&["ps", foreign.as_str(), "--json"], 2);
    run(&["rm", foreign.as_str()], 2);
    run(&["rm", open.as_str(), "--force"], 2);
    let g = json(&["gc", "--prefix", &pre, "--json"]);
    assert_eq!(row(&g, foreign.as_str())["action"], "skipped");
    assert_eq!(row(&g, open.as_str())["action"], "skipped");

    // Nothing was written to, or removed from, either.
    assert_eq!(
        before,
        (file_bytes(foreign.as_str()), file_bytes(open.as_str()))
    );
    assert_eq!(ctimes, (ctime(&foreign), ctime(&open)));
}

#[test]
fn objects_that_are_not_ours_are_ignored() {
    let pre = prefix("c19-other");
    let other = ShmName::new("c19-other");
    std::fs::write(
        shm_path(other.as_str()),
        b"someone else's bytes, long enough to hold a header....",
    )
    .unwrap();
    let rows = json(&["list", "--prefix", &pre, "--json"]);
    assert_eq!(rows, Value::Array(vec![]));
    let g = json(&["gc", "--prefix", &pre, "--json"]);
    assert_eq!(g, Value::Array(vec![]));
    let (_, err) = run(&["rm", other.as_str(), "--force"], 2);
    assert!(err.contains("not a shared_allocator segment"), "{err}");
    assert!(shm_path(other.as_str()).exists());
}

#[test]
fn check_reports_damage() {
    // A scribbler (here: this test writing the metadata through the file) makes
    // `check` exit 1 with the problem named.
    let name = ShmName::new("c19-damage");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    a.allocate(100).unwrap();
    let state_at = a.page_state_offset(5);
    drop(a);
    assert_eq!(
        json(&["check", name.as_str(), "--json"])["consistent"],
        true
    );
    // Page 0's state word: an unknown page kind (7).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name.as_str()))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &(7u64 << 37).to_le_bytes(), state_at).unwrap();
    let out = shm_alloc()
        .args(["check", name.as_str(), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["consistent"], false);
    assert!(
        c["problems"][0].as_str().unwrap().contains("page 5"),
        "{c:#}"
    );
}

/// Red-team #1: `check` on a healthy free list whose data region is sized by size
/// classes (10 MiB, 12345678 B) panicked (page index out of range) instead of
/// reporting `consistent`.
#[test]
fn check_is_consistent_on_healthy_free_lists_of_odd_sizes() {
    for cap in [1u64 << 20, 10 << 20, 1 << 16, 12_345_678] {
        let name = ShmName::new("cli-chk-size");
        let a = shared_allocator::FreeListAllocator::create(name.as_str(), cap).unwrap();
        let _ = a.allocate(100).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shm-alloc"))
            .args(["check", name.as_str()])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "check on a {cap}-byte free list: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Red-team #2: `gc --dry-run` reports exactly what `gc` does. A half-initialised
/// object older than the grace whose lifecycle lock a live process holds (a
/// creator stopped mid-initialisation, or an opener) is kept by both; once the
/// lock is released both remove it ("would remove" / "removed").
#[test]
fn gc_dry_run_reports_what_gc_does() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;
    let pre = prefix("c19-dry");
    let half = ShmName::new("c19-dry");
    let fd = nix::sys::mman::shm_open(
        format!("/{}", half.as_str()).as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"SHMALLOC", 0).unwrap();
    // The lifecycle lock byte (src/segment/lifecycle.rs), held shared as an
    // attaching process holds it.
    let lock = |l_type: i32| nix::libc::flock {
        l_type: l_type as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: (1 << 40) - 4096,
        l_len: 1,
        l_pid: 0,
    };
    fcntl(f.as_fd(), FcntlArg::F_OFD_SETLK(&lock(nix::libc::F_RDLCK))).unwrap();
    std::thread::sleep(shared_allocator::segment::STALE_GRACE + Duration::from_millis(200));
    let action = |dry: bool| -> String {
        let mut args = vec!["gc", "--prefix", &pre, "--json"];
        if dry {
            args.push("--dry-run");
        }
        let rows = json(&args);
        row(&rows, half.as_str())["action"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(action(true), "kept", "dry run while the lock is held");
    assert_eq!(action(false), "kept", "gc while the lock is held");
    fcntl(f.as_fd(), FcntlArg::F_OFD_SETLK(&lock(nix::libc::F_UNLCK))).unwrap();
    assert_eq!(action(true), "would remove");
    assert!(
        shm_path(half.as_str()).exists(),
        "a dry run removes nothing"
    );
    assert_eq!(action(false), "removed");
    assert!(!shm_path(half.as_str()).exists());
}
