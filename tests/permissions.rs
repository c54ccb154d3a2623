//! Segments are created `0600` whatever the umask, a custom mode is applied exactly,
//! and create never reuses an existing object (`O_EXCL`): not a stale segment, not a
//! plain file, not a symlink planted in its place.
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{env_req, finish, report, role, shm_entries, shm_path, spawn_child, ShmName};
use nix::sys::stat::{umask, Mode};
use shared_allocator::prelude::*;
use shared_allocator::{CreateOptions, SegmentError};

fn mode_of(name: &str) -> u32 {
    std::fs::metadata(shm_path(name))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Creates one segment of each kind with `opts` and returns their modes.
fn modes_with(tag: &str, opts: &CreateOptions) -> [u32; 3] {
    let (a, b, c) = (
        ShmName::new(&format!("{tag}-fl")),
        ShmName::new(&format!("{tag}-slab")),
        ShmName::new(&format!("{tag}-bump")),
    );
    let _fl = FreeListAllocator::create_with(a.as_str(), 4096, opts).unwrap();
    let _sl = SlabAllocator::create_with(b.as_str(), 8, 8, opts).unwrap();
    let _bu = BumpAllocator::create_with(c.as_str(), 4096, opts).unwrap();
    [
        mode_of(a.as_str()),
        mode_of(b.as_str()),
        mode_of(c.as_str()),
    ]
}

const CUSTOM: [u32; 6] = [0o600, 0o640, 0o644, 0o660, 0o666, 0o400];

/// umask is per process, so each umask runs in its own child process.
#[test]
fn mode_ignores_umask() {
    if role().is_some() {
        let mask = u32::from_str_radix(&env_req("SA_UMASK"), 8).unwrap();
        umask(Mode::from_bits_truncate(mask as nix::libc::mode_t));
        let default = modes_with("perm-def", &CreateOptions::default());
        assert_eq!(default, [0o600; 3], "default mode under umask {mask:03o}");
        for mode in CUSTOM {
            let got = modes_with(
                "perm-custom",
                &CreateOptions {
                    mode,
                    ..Default::default()
                },
            );
            assert_eq!(got, [mode; 3], "mode {mode:03o} under umask {mask:03o}");
        }
        println!(
            "RESULT umask={mask:03o} default={:03o} custom_ok={}",
            default[0],
            CUSTOM.len()
        );
        for tag in ["perm-def", "perm-custom"] {
            assert!(shm_entries(&format!("sa-test-{tag}-"))
                .iter()
                .all(|n| !n.contains(&format!("-{}-", std::process::id()))));
        }
        return;
    }
    for mask in ["000", "022", "077", "777"] {
        let child = spawn_child(
            "mode_ignores_umask",
            "umask",
            &[("SA_UMASK", mask.to_owned())],
        );
        let out = finish(
            child,
            Duration::from_secs(60),
            &format!("umask {mask} child"),
        );
        println!("{}", report(&out, "RESULT"));
    }
}

#[test]
fn custom_mode_is_exact() {
    for mode in CUSTOM.into_iter().chain([0o000, 0o604, 0o777]) {
        let got = modes_with(
            "perm-exact",
            &CreateOptions {
                mode,
                ..Default::default()
            },
        );
        assert_eq!(got, [mode; 3], "mode {mode:03o}");
    }
    // Owned by this process's user.
    let name = ShmName::new("perm-owner");
    let _a = BumpAllocator::create(name.as_str(), 4096).unwrap();
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        std::fs::metadata(shm_path(name.as_str())).unwrap().uid(),
        me
    );
}

/// A creator that narrowed the mode still uses its own mapping; an opener without
/// the rights gets PermissionDenied (checked only when not root: root bypasses modes).
#[test]
fn read_only_mode_and_permission_denied() {
    let name = ShmName::new("perm-ro");
    let a = FreeListAllocator::create_with(
        name.as_str(),
        4096,
        &CreateOptions {
            mode: 0o400,
            ..Default::default()
        },
    )
    .unwrap();
    let o = a.allocate(16).unwrap();
    a.write(o, b"still writable!!").unwrap();
    assert_eq!(mode_of(name.as_str()), 0o400);
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    match FreeListAllocator::open(name.as_str()) {
        Err(SegmentError::PermissionDenied { name: n }) => {
            assert_ne!(me, 0);
            assert_eq!(n, format!("/{}", name.as_str()));
        }
        Ok(b) => {
            assert_eq!(me, 0, "a 0400 segment opened read-write by a non-root user");
            println!("running as root: permission check skipped (root bypasses modes)");
            assert_eq!(b.read(o, 16).unwrap(), b"still writable!!");
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn create_is_exclusive() {
    // An existing segment.
    let name = ShmName::new("perm-excl");
    let a = SlabAllocator::create(name.as_str(), 8, 8).unwrap();
    let o = a.allocate(8).unwrap();
    a.write(o, b"original").unwrap();
    let exists = SegmentError::AlreadyExists {
        name: format!("/{}", name.as_str()),
    };
    assert_eq!(
        SlabAllocator::create(name.as_str(), 8, 8).unwrap_err(),
        exists
    );
    assert_eq!(
        FreeListAllocator::create_with(
            name.as_str(),
            4096,
            &CreateOptions {
                mode: 0o666,
                ..Default::default()
            }
        )
        .unwrap_err(),
        exists
    );
    assert_eq!(
        mode_of(name.as_str()),
        0o600,
        "a failed create changed the mode"
    );
    assert_eq!(
        SlabAllocator::open(name.as_str())
            .unwrap()
            .read(o, 8)
            .unwrap(),
        b"original"
    );

    // A stale plain file left in its place: not reused, not modified.
    let stale = ShmName::new("perm-stale");
    std::fs::write(shm_path(stale.as_str()), b"stale contents").unwrap();
    std::fs::set_permissions(shm_path(stale.as_str()), PermissionsExt::from_mode(0o644)).unwrap();
    assert!(matches!(
        BumpAllocator::create(stale.as_str(), 4096),
        Err(SegmentError::AlreadyExists { .. })
    ));
    assert_eq!(
        std::fs::read(shm_path(stale.as_str())).unwrap(),
        b"stale contents"
    );
    assert_eq!(mode_of(stale.as_str()), 0o644);

    // A symlink planted under the name: create must not follow it.
    let link = ShmName::new("perm-link");
    let target = std::env::temp_dir().join(format!("sa-test-link-target-{}", std::process::id()));
    std::fs::write(&target, b"victim file").unwrap();
    std::os::unix::fs::symlink(&target, shm_path(link.as_str())).unwrap();
    let r = FreeListAllocator::create(link.as_str(), 4096);
    let after = std::fs::read(&target).unwrap();
    let _ = std::fs::remove_file(&target);
    assert!(
        matches!(r, Err(SegmentError::AlreadyExists { .. })),
        "create over a symlink: {r:?}"
    );
    assert_eq!(after, b"victim file", "create wrote through a symlink");
}

/// Every name this file created is gone once its guards dropped, also when the test
/// body panicked (checked in a child, so its silenced panic hook stays private).
#[test]
fn nothing_left_behind() {
    if role().is_some() {
        std::panic::set_hook(Box::new(|_| {}));
        let n = ShmName::new("perm-left");
        let _a = BumpAllocator::create(n.as_str(), 4096).unwrap();
        println!("RESULT created {}", n.as_str());
        panic!("deliberate panic: unwinding must remove the segment");
    }
    let prefix = format!("sa-test-perm-left-{}-", std::process::id());
    {
        let n = ShmName::new("perm-left");
        let _a = FreeListAllocator::create(n.as_str(), 4096).unwrap();
        assert_eq!(shm_entries(&prefix).len(), 1);
    }
    assert!(shm_entries(&prefix).is_empty());
    let mut c = spawn_child("nothing_left_behind", "panicker", &[]);
    let pid = c.id();
    let out = common::read_stdout(&mut c);
    let status = common::wait_or_kill(&mut c, Duration::from_secs(60)).expect("child hung");
    let out = out.join().unwrap();
    assert!(!status.success(), "the child was meant to panic");
    let created = report(
        &out.lines().map(str::to_owned).collect::<Vec<_>>(),
        "RESULT",
    )
    .trim_start_matches("RESULT created ")
    .to_owned();
    assert!(created.contains(&format!("-{pid}-")));
    assert!(!shm_path(&created).exists(), "{created} survived a panic");
}
