//! Shared test support: unique segment names that clean up after themselves,
//! and child processes (re-executions of the test binary) with watchdogs.
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A unique segment name; the segment is unlinked when this is dropped, also when
/// the test panics (unwinding drops it).
pub struct ShmName(String);

impl ShmName {
    pub fn new(tag: &str) -> ShmName {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        ShmName(format!(
            "sa-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

/// The environment variable that selects a child role in a re-executed test binary.
pub const ROLE_VAR: &str = "SA_TEST_ROLE";

/// The role this process was started with, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// The command that re-executes this test binary running only the test `entry`
/// (which must dispatch on [`role`]), with `role` and extra environment variables;
/// through `wrapper` first if it is not empty (`["unshare", "--pid", "--fork"]`).
/// stdin is null, stdout piped, stderr inherited: callers change what they need.
pub fn child_command(wrapper: &[&str], entry: &str, role: &str, env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// [`child_command`] without a wrapper, started.
pub fn spawn_child(entry: &str, role: &str, env: &[(&str, String)]) -> Child {
    child_command(&[], entry, role, env)
        .spawn()
        .expect("spawn child test process")
}

/// SIGKILLs the children of process `pid` (found through /proc): the process that
/// `unshare --fork` runs in its new namespace. Returns how many.
pub fn kill_children(pid: u32) -> usize {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("/proc children list");
    let mut n = 0;
    for kid in kids.split_whitespace() {
        let kid: i32 = kid.parse().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(kid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        n += 1;
    }
    n
}

/// Waits for `child`, killing it and failing the test if it runs past `limit`.
pub fn wait_with_watchdog(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: {what} still running after {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits with a watchdog and returns the child's stdout lines.
pub fn finish(mut child: Child, limit: Duration, what: &str) -> Vec<String> {
    use std::io::Read;
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let status = wait_with_watchdog(&mut child, limit, what);
    let text = reader.join().unwrap();
    assert!(
        status.success(),
        "{what} failed with {status}; output:\n{text}"
    );
    text.lines().map(str::to_owned).collect()
}

/// A small deterministic PRNG (xorshift64*), so runs can be reproduced by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

// ------------------------------------------------------------------------------------
// Helpers added for the multi-process proof suites (multiprocess, sigkill, bad_input,
// hostile, permissions).

/// The file that backs segment `name` on Linux (`/dev/shm/<name>`).
pub fn shm_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/dev/shm").join(name.trim_start_matches('/'))
}

/// Entries of /dev/shm whose name starts with `prefix`.
pub fn shm_entries(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every segment a (crashed or killed) process `pid` created through
/// [`ShmName`] (`sa-test-<tag>-<pid>-...`), returning the names removed.
pub fn cleanup_pid(pid: u32) -> Vec<String> {
    let needle = format!("-{pid}-");
    let mut removed = Vec::new();
    for n in shm_entries("sa-test-") {
        if n.contains(&needle) && shared_allocator::unlink(&n).is_ok() {
            removed.push(n);
        }
    }
    removed
}

/// Reads a numeric knob from the environment (for heavier local runs), else `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A required environment variable of a child role.
pub fn env_req(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("child started without {var}"))
}

/// Kills (SIGKILL) and reaps the child when dropped, unless it already exited:
/// a parent test that panics never leaves workers running.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }
    pub fn take(&mut self) -> Child {
        self.0.take().expect("child already taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `child` at most `limit`; kills and reaps it on timeout (returns `None`).
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects a child's stdout on a thread (so a full pipe never blocks the child).
pub fn read_stdout(child: &mut Child) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    })
}

/// Waits for all `children` (running in parallel) under one watchdog. If any fails
/// or the watchdog fires, kills the others and panics with every child's output.
/// Returns each child's stdout lines, in order.
pub fn finish_all(children: Vec<Child>, limit: Duration, what: &str) -> Vec<Vec<String>> {
    let mut guards: Vec<KillOnDrop> = children.into_iter().map(KillOnDrop::new).collect();
    let readers: Vec<_> = guards.iter_mut().map(|g| read_stdout(g.child())).collect();
    let start = Instant::now();
    let mut status: Vec<Option<ExitStatus>> = vec![None; guards.len()];
    let mut failure = None;
    while status.iter().any(Option::is_none) {
        for (i, g) in guards.iter_mut().enumerate() {
            if status[i].is_none() {
                if let Some(s) = g.child().try_wait().expect("try_wait") {
                    if !s.success() && failure.is_none() {
                        failure = Some(format!("{what} #{i} failed with {s}"));
                    }
                    status[i] = Some(s);
                }
            }
        }
        if failure.is_some() {
            break;
        }
        if start.elapsed() > limit {
            failure = Some(format!("watchdog: {what} still running after {limit:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(guards); // kills whatever still runs
    let outs: Vec<String> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    if let Some(f) = failure {
        let mut msg = f;
        for (i, o) in outs.iter().enumerate() {
            msg.push_str(&format!("\n--- {what} #{i} ({:?}) output:\n{o}", status[i]));
        }
        panic!("{msg}");
    }
    outs.iter()
        .map(|o| o.lines().map(str::to_owned).collect())
        .collect()
}

/// Finds `key=value` in a child's report line and parses the value.
pub fn field(line: &str, key: &str) -> u64 {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad {key}= in {line:?}"))
}

/// The report line (starting with `tag`) among a child's stdout lines.
pub fn report<'a>(lines: &'a [String], tag: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in child output: {lines:?}"))
}

/// The tag pattern of a block: word `i` is `tag ^ (i * golden)`, so a block copied
/// or shifted onto another shows, and the intruder's tag can be decoded.
pub fn fill_pattern(buf: &mut [u8], tag: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = tag ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
}

/// Checks `got` against the pattern of `tag`; on mismatch describes the first bad
/// word and the tag found there (decoded as if written by another block).
pub fn check_pattern(got: &[u8], tag: u64) -> Result<(), String> {
    for (i, chunk) in got.chunks(8).enumerate() {
        let mix = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let w = (tag ^ mix).to_le_bytes();
        if chunk != &w[..chunk.len()] {
            let mut found = [0u8; 8];
            found[..chunk.len()].copy_from_slice(chunk);
            let intruder = u64::from_le_bytes(found) ^ mix;
            return Err(format!(
                "block tag {tag:#x}: byte {} of {} differs: found {:02x?}, expected {:02x?} \
                 (decodes as tag {intruder:#x})",
                i * 8,
                got.len(),
                chunk,
                &w[..chunk.len()]
            ));
        }
    }
    Ok(())
}

/// Reads a child's stdout lines until one `@@ ` line starts with `prefix`;
/// returns it (without `@@ `). Fails if the child ends first.
pub fn expect_line(r: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("read child stdout") > 0,
            "child ended before printing {prefix:?}"
        );
        if let Some(l) = line.trim().strip_prefix("@@ ") {
            if l.starts_with(prefix) {
                return l.to_owned();
            }
        }
    }
}

/// Prints a result line for the parent (the test harness prints its own lines too;
/// only lines written with `say` are returned by [`results`]).
pub fn say(line: impl std::fmt::Display) {
    println!("@@ {line}");
}

/// Waits like [`finish`] and returns only the lines the child wrote with [`say`].
pub fn results(child: Child, limit: Duration, what: &str) -> Vec<String> {
    finish(child, limit, what)
        .into_iter()
        .filter_map(|l| l.strip_prefix("@@ ").map(str::to_owned))
        .collect()
}

/// An untrusted writer: maps the segment of `alloc` by its name through its own
/// mapping (not this crate's API, which refuses raw writes to typed blocks) and
/// writes `bytes` at `offset` with volatile stores, as a C program or a scribbling
/// peer would. Tests of the checked copy paths use it to damage typed data.
pub fn scribble<A: shared_allocator::ShmAllocator + ?Sized>(
    alloc: &A,
    offset: shared_allocator::Offset,
    bytes: &[u8],
) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(alloc.segment().name()))?;
    let map = memmap2::MmapRaw::map_raw(&f)?;
    let start = usize::try_from(offset.get()).map_err(std::io::Error::other)?;
    if start.checked_add(bytes.len()).is_none_or(|e| e > map.len()) {
        return Err(std::io::Error::other("scribble outside the object"));
    }
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: `start + i < map.len()` (checked above); the mapping is ours and
        // lives until the end of this function; a volatile byte store is what an
        // untrusted writer does (the code under test must cope with it).
        unsafe { map.as_mut_ptr().add(start + i).write_volatile(b) };
    }
    Ok(())
}
