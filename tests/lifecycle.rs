
/// Red-team: an observer (a tool) SIGKILLed while attached leaves its slot's
/// observer mark behind. Whoever takes that slot next must count as a live handle
/// for the last-close policy, or the name would vanish under it.
#[test]
fn a_dead_observers_mark_never_passes_to_the_next_holder() {
    if let Some(r) = role() {
        assert_eq!(r, "observer");
        shared_allocator::segment::set_observer_mode(true);
        let _o = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        println!("ready");
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let name = ShmName::new("l19-obs-dead");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    a.segment().set_remove_on_last_close(true);
    let mut c = KillOnDrop::new(spawn_child(
        "a_dead_observers_mark_never_passes_to_the_next_holder",
        "observer",
        &[("SA_NAME", name.as_str().to_owned())],
    ));
    let mut out = BufReader::new(c.child().stdout.take().unwrap());
    let mut l = String::new();
    while l.trim() != "ready" {
        l.clear();
        assert!(out.read_line(&mut l).unwrap() > 0, "observer child exited");
    }
    let obs_slot = a
        .registry()
        .slots
        .iter()
        .find(|s| s.observer)
        .expect("the observer's slot")
        .slot;
    c.child().kill().unwrap();
    c.child().wait().unwrap();
    a.reclaim();
    // Take slots until one lands on the dead observer's.
    let mut handles = Vec::new();
    loop {
        let h = FreeListAllocator::open(name.as_str()).unwrap();
        let mine = h.registry().slots.iter().find(|s| s.is_self).unwrap().clone();
        assert!(!mine.observer, "slot {} inherited an observer mark", mine.slot);
        let hit = mine.slot == obs_slot;
        handles.push(h);
        if hit {
            break;
        }
        assert!(handles.len() < 128, "never got slot {obs_slot}");
    }
    let last = handles.pop().unwrap();
    drop(handles);
    drop(a);
    assert!(exists(&name), "removed while the handle in the old observer slot lives");
    drop(last);
    assert!(!exists(&name));
}
