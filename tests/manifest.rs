//! tests/Cargo.toml lists every file of tests/, benches/ and examples/ as a target (the
//! test crate turns auto-discovery off, so a new file would otherwise never run).

use std::process::Command;

#[test]
fn every_test_bench_and_example_is_a_target() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(dir.join("../scripts/test-manifest"))
        .arg("--check")
        .output()
        .expect("run scripts/test-manifest --check (python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
