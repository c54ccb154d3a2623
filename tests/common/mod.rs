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

/// Re-executes this test binary running only the test `entry` (which must dispatch
/// on [`role`]), with `role` and extra environment variables.
pub fn spawn_child(entry: &str, role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child test process")
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
