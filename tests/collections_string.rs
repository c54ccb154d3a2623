//! `ShmString` handed between processes by token, and `InlineStr` keys.
//!
//! `cargo test --release --test collections_string`
mod common;

use std::time::Duration;

use common::{child_command, env_req, read_stdout, role, wait_or_kill, ShmName};
use shared_allocator::collections::{InlineStr, ShmHashMap, ShmString, StringToken};
use shared_allocator::prelude::*;

#[test]
fn a_string_grows_moves_to_another_process_and_back_and_is_freed_once() {
    if role().as_deref() == Some("string-child") {
        let alloc = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
        let raw: Vec<u64> = env_req("SA_TOKEN")
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        let t = StringToken::from_raw([raw[0], raw[1]]);
        let mut s = ShmString::from_token(&alloc, t).unwrap();
        assert!(ShmString::from_token(&alloc, t).is_err(), "redeemed twice");
        assert_eq!(s.len(), 2000 * 3);
        assert!(s.as_str().chars().all(|c| c == 'é' || c == 'a'));
        s.push_str("ü-child").unwrap();
        let t = s.into_token().to_raw();
        println!("TOKEN {},{}", t[0], t[1]);
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("string");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let before = alloc.stats().live_blocks.unwrap();
    let mut s = ShmString::new_in(&alloc, "").unwrap();
    for _ in 0..2000 {
        s.push_str("éa").unwrap();
    }
    assert_eq!(
        alloc.stats().live_blocks.unwrap(),
        before + 1,
        "growth leaked"
    );
    let t = s.into_token().to_raw();
    let mut c = child_command(
        &[],
        "a_string_grows_moves_to_another_process_and_back_and_is_freed_once",
        "string-child",
        &[
            ("SA_SEG", name.as_str().to_owned()),
            ("SA_TOKEN", format!("{},{}", t[0], t[1])),
        ],
    )
    .spawn()
    .unwrap();
    let out = read_stdout(&mut c);
    let status = wait_or_kill(&mut c, Duration::from_secs(60)).expect("watchdog: child");
    assert!(status.success());
    let text = out.join().unwrap();
    let line = text.lines().find(|l| l.starts_with("TOKEN ")).unwrap();
    let raw: Vec<u64> = line[6..].split(',').map(|x| x.parse().unwrap()).collect();
    let back = ShmString::from_token(&alloc, StringToken::from_raw([raw[0], raw[1]])).unwrap();
    assert!(back.ends_with("ü-child"));
    assert_eq!(back.len(), 2000 * 3 + "ü-child".len());
    // A forged token (inside the bytes) is refused.
    let forged = StringToken::from_raw([raw[0] + 24, raw[1]]);
    assert!(ShmString::from_token(&alloc, forged).is_err());
    drop(back);
    assert_eq!(alloc.stats().live_blocks.unwrap(), before);
}

#[test]
fn inline_strings_key_a_map() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("inline");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let m = ShmHashMap::<InlineStr<16>, InlineStr<32>, _>::open(&alloc, "m").unwrap();
    for i in 0..100 {
        let k = InlineStr::new(&format!("key {i}")).unwrap();
        m.insert(k, InlineStr::new(&format!("value {i} ✓")).unwrap())
            .unwrap();
    }
    let k = InlineStr::<16>::new("key 42").unwrap();
    assert_eq!(m.get(&k).unwrap().unwrap().as_str().unwrap(), "value 42 ✓");
    assert!(InlineStr::<16>::new("a key far too long for sixteen").is_err());
}
