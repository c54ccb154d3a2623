//! [`ShmHashMap<K, V>`]: a concurrent hash map shared by many processes, found by
//! name, that survives a process killed at any instant.
//!
//! # Design
//!
//! The map is a named root (a [`Roots`] object, never freed) holding
//! [`SHARDS`] shards; a key's hash picks its shard. Each shard has
//!
//! - a robust lock ([`ShmMutex`]: a holder that dies is detected through the
//!   process registry, and the next locker gets [`OwnerDied`](crate::OwnerDied));
//! - a **sequence word** (a seqlock): even when stable, odd while a writer changes
//!   a slot that readers may be copying;
//! - a **table word**: offset and capacity of its open-addressing table
//!   (SwissTable-style control bytes probed 8 at a time, tombstones, grown at 7/8
//!   full; see `table.rs`), swapped in one atomic store when the shard grows;
//! - `len`, `used` (full and tombstoned slots) and an **intent record**: the kind
//!   and slot of the operation in progress, with the raw key, old and new value in
//!   the table's intent area, and the two table offsets of a resize in progress.
//!
//! **Readers take no lock**: they load the sequence word, probe with byte-wise
//! atomic copies, copy the value out (following nested strings and vectors through
//! the checked copy paths), and keep the copy only if the sequence word is
//! unchanged. A writer never blocks them for longer than one slot write; they never
//! block a writer. A reader that keeps seeing an odd word (its writer died) takes
//! the lock, which repairs the shard.
//!
//! **Writers lock their shard** and make every change in a fixed order, so that
//! the next locker can finish or undo it from the intent record alone:
//!
//! | operation | steps (commit point in bold) | repair after a crash |
//! | --- | --- | --- |
//! | insert a new key | store key and value (fresh blocks); copy their raw forms to the intent area; intent = INSERT(slot); copy into the slot; **control byte = FULL** | control byte FULL: done; else release the intent's key and value |
//! | replace a value | store the new value; intent area = old and new raw value; intent = UPDATE(slot); seq odd; **slot value = new**; seq even; release the old value | write the new value again, release the old one |
//! | remove | intent area = raw key and value; **intent = REMOVE(slot)**; seq odd; control byte = TOMB; seq even; release key and value | control byte = TOMB, release key and value |
//! | grow | allocate, header, record it (`resize_new`); copy the entries; record the old table (`resize_old`); seq odd; **table word = new**; seq even; free the old | free whichever recorded table is not the current one |
//!
//! Every repair step is idempotent: releasing a value clears each reference (an
//! atomic swap) before freeing what it named ([`ShmValue::release`]), and the resize
//! words are swapped to 0 before the table is freed, so a repairer that dies
//! repairing leaves work that the next one redoes without freeing anything twice.
//! The repair then recounts `len` and `used` from the control bytes and makes the sequence
//! word even. So after any crash: **every acknowledged write is visible** (an
//! operation returned only after its commit point), **no key is there twice** (a
//! key's slot is decided under its shard's lock, a new table is built privately
//! and published whole), and **nothing the map owns is leaked**. What can leak is
//! what the dead process's code held and had not yet handed to the map: a key or
//! value it had stored but not yet recorded in the intent area (one allocation
//! window per operation), a block whose reference it had just cleared (one per
//! release), a table between its allocation and `resize_new`.
//!
//! **Hostile bytes.** Readers check the table word's bounds (data region), bound
//! every probe by the capacity and copy with atomics, so scribbled metadata gives
//! an error or a wrong copy, never undefined behaviour or a hang; writers also
//! check, from allocator metadata, that the table is a live block with this map's
//! header before writing or freeing it; nested blocks are checked the same way
//! before they are freed; a lock held longer than [`LOCK_TIMEOUT`] (a word
//! scribbled with another live process as its owner) is
//! [`CollectionError::Busy`]. A lock word that names this very process while no
//! thread of it holds the lock (each shard records its holder thread, each thread
//! how many shard locks it holds), unchanged for a second, is taken over and the shard
//! repaired. (A real holder writes its thread id right after the lock word; one
//! preempted for that whole second in between would be taken over too.)

mod table;

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use self::table::{
    ctrl_of, first, free_bytes, match_byte, zero_bytes, Layout, Table, EMPTY, FULL, GROUP, MAX_LOG2,
    MIN_LOG2, TOMB,
};
use super::{ShmKey, ShmValue, LOCK_TIMEOUT};
use crate::alloc::{Offset, ShmFree};
use crate::error::{CollectionError, Error};
use crate::coord::{ShmMutex, ShmMutexGuard};
use crate::typed::{fingerprint, raw, Roots, ShmSafe, ShmShared};

/// Shards of every map (a key's shard is the top bits of its hash).
pub const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 58;
const MAGIC: u64 = 0x5348_4d48_4d41_5031; // "SHMHMAP1"

const I_NONE: u64 = 0;
const I_INSERT: u64 = 1;
const I_UPDATE: u64 = 2;
const I_REMOVE: u64 = 3;

/// Lock-free read attempts before a reader takes the shard's lock.
const READ_TRIES: u32 = 256;

/// How long a lock word naming this process may stay unchanged, with no thread
/// of this process recorded as its holder, before it counts as forged.
const FORGED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's id in shard `holder` words (never 0, never reused; set on
    /// first use).
    static THREAD_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// How many shard locks this thread holds (a thread that holds one never
    /// takes a lock word over: a reentrant write waits, as documented).
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

#[inline]
fn thread_id() -> u64 {
    THREAD_ID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

#[repr(C)]
struct Shard {
    lock: ShmMutex<[u32; 2]>,
    seq: AtomicU64,
    table: AtomicU64,
    len: AtomicU64,
    used: AtomicU64,
    intent: AtomicU64,
    resize_new: AtomicU64,
    resize_old: AtomicU64,
    /// The process-local id of the thread holding the lock (0 when free): lets a
    /// thread that finds the lock word naming its own process, unchanged for
    /// [`FORGED_AFTER`], tell a replayed or scribbled word from a real holder.
    holder: AtomicU64,
}

#[repr(C)]
struct MapRoot {
    magic: AtomicU64,
    kv: AtomicU64,
    shards: [Shard; SHARDS],
}

// SAFETY: repr(C) of AtomicU64s and ShmMutex<[u32; 2]> (16 bytes: two AtomicU32 and
// an UnsafeCell<[u32; 2]>), all 8-aligned multiples of 8: no padding, every bit
// pattern valid (the lock accepts any word; every other word is checked on use),
// no pointers, no Drop.
unsafe impl ShmSafe for MapRoot {
    const FINGERPRINT: u64 = {
        assert!(std::mem::size_of::<Shard>() == 80);
        assert!(std::mem::size_of::<MapRoot>() == 16 + 80 * SHARDS);
        fingerprint::primitive("ShmHashMapRoot", std::mem::size_of::<MapRoot>(), 8)
    };
}

// SAFETY: only this module touches a MapRoot (the type is private, so no other
// code can name it as a root): its words are atomics, and the lock's data is never
// used; the lock's own API is sound when several processes call it at once.
unsafe impl ShmShared for MapRoot {
    const ATOMIC_ONLY: bool = false;
}

impl MapRoot {
    fn new() -> MapRoot {
        // SAFETY: MapRoot is ShmSafe: all zeros is a valid value (unlocked
        // consistent mutexes, zero words).
        let r: MapRoot = unsafe { std::mem::zeroed() };
        r.magic.store(MAGIC, Ordering::Relaxed);
        r
    }
}

/// A concurrent hash map in shared memory, opened by name by any number of
/// processes; see the [module docs](self) for the design and what survives a crash.
///
/// Keys are [`ShmKey`]s (`ShmSafe` types that are `Eq + Hash`, [`InlineStr`](super::InlineStr),
/// `String`, `Vec<u8>`); values are [`ShmValue`]s (`ShmSafe` types, strings,
/// vectors, structs of them). Reads copy out ([`ShmValue::Out`]): no reference into
/// the map outlives a call.
///
/// The handle holds its allocator by value: pass `&alloc` to borrow it, or an
/// `Arc<FreeListAllocator>` for a `'static` handle to move into threads. It owns
/// nothing: dropping it leaves the map as it is.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::collections::ShmHashMap;
/// # let name = format!("doc-map-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 8 << 20)?;
/// let ages = ShmHashMap::<String, u64, _>::open(&alloc, "ages")?;
/// ages.insert("ada", 36)?;
/// ages.update("ada", |age| age.map(|a| a + 1))?;
/// assert_eq!(ages.get("ada")?, Some(37));
///
/// // Another process (here: a second mapping) opens it by name.
/// let other = FreeListAllocator::open(&name)?;
/// let same = ShmHashMap::<String, u64, _>::open(&other, "ages")?;
/// assert_eq!(same.remove("ada")?, Some(37));
/// assert!(same.is_empty());
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmHashMap<K: ShmKey, V: ShmValue, A: ShmFree> {
    alloc: A,
    root: NonNull<MapRoot>,
    /// Per shard, the last table word this handle checked is a live table block of
    /// this map (writers skip the metadata lookup while it is unchanged).
    checked: Box<[AtomicU64]>,
    /// Per shard, the last table word this handle resolved (its bytes lie inside
    /// the mapping's usable data region, which never shrinks): lock-free readers
    /// skip the region check while the word is unchanged.
    readable: Box<[AtomicU64; SHARDS]>,
    _kv: PhantomData<fn() -> (K, V)>,
}

// SAFETY: the handle holds an allocator (`A: Send + Sync` through ShmAllocator), a
// pointer to an all-atomic/lock root in the mapping the allocator keeps alive, and
// atomics; keys and values are only ever copied in and out.
unsafe impl<K: ShmKey, V: ShmValue, A: ShmFree> Send for ShmHashMap<K, V, A> {}
// SAFETY: every method takes `&self` and synchronises through the shard locks and
// sequence words in shared memory, which already serve many processes at once.
unsafe impl<K: ShmKey, V: ShmValue, A: ShmFree> Sync for ShmHashMap<K, V, A> {}

/// A snapshot of a map's entries: `(key, value)` copies.
pub type Entries<K, V> = Vec<(<K as ShmValue>::Out, <V as ShmValue>::Out)>;

/// What a probe found.
struct Probe {
    found: Option<u64>,
    free: Option<u64>,
}

impl<K: ShmKey, V: ShmValue, A: ShmFree> ShmHashMap<K, V, A> {
    const L: Layout = Layout::of::<K::Raw, V::Raw>();

    fn kv_fp() -> u64 {
        // The value types' fingerprints, not only their raw forms': `String`,
        // `Vec<u8>` and a plain `RawStr` share a raw form but not its meaning.
        let k = K::VALUE_FINGERPRINT;
        let v = V::VALUE_FINGERPRINT;
        fingerprint::str(k.wrapping_mul(31) ^ v, "ShmHashMap") | 1
    }

    fn table_fp() -> u64 {
        fingerprint::str(Self::kv_fp(), "ShmHashMapTable")
    }

    /// Opens the map named `name` in `alloc`'s segment, creating it (empty) if no
    /// process has yet. Puts the segment in typed mode.
    ///
    /// # Errors
    /// As [`Roots::root`]; [`Error::TypeMismatch`] if the map was created with other
    /// key or value types; [`CollectionError::Corrupted`] if its root is damaged.
    pub fn open(alloc: A, name: &str) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let root = alloc.root_with(name, MapRoot::new)?;
        let root: &MapRoot = &root;
        let magic = root.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(CollectionError::Corrupted {
                what: "map root magic",
                found: magic,
            }
            .into());
        }
        let fp = Self::kv_fp();
        match root
            .kv
            .compare_exchange(0, fp, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(found) if found == fp => {}
            Err(found) => {
                return Err(Error::TypeMismatch {
                    name: name.to_owned(),
                    expected: std::any::type_name::<ShmHashMap<K, V, A>>().to_owned(),
                    found: format!("a map of other key or value types ({found:#x})"),
                })
            }
        }
        let root = NonNull::from(root);
        Ok(ShmHashMap {
            alloc,
            root,
            checked: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            readable: Box::new([const { AtomicU64::new(0) }; SHARDS]),
            _kv: PhantomData,
        })
    }

    /// The allocator handle.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    #[inline]
    fn root(&self) -> &MapRoot {
        // SAFETY: `root` was resolved by `Roots::root_with` inside the mapping that
        // `self.alloc` keeps alive (moving the handle does not move the mapping);
        // roots are never freed; MapRoot is only touched through atomics and its
        // locks' API.
        unsafe { self.root.as_ref() }
    }

    #[inline]
    fn shard_of(h: u64) -> usize {
        (h >> SHARD_SHIFT) as usize & (SHARDS - 1)
    }

    /// Number of entries (a sum over the shards: exact when no one is writing).
    pub fn len(&self) -> usize {
        self.root()
            .shards
            .iter()
            .map(|s| s.len.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add) as usize
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot of `key` (hash `h`) in `t`: [`probe`](Self::probe) without the
    /// free slot (what readers need).
    #[inline(always)]
    fn find(&self, t: &Table, h: u64, key: &K::Query) -> Result<Option<u64>, Error> {
        let c = ctrl_of(h);
        let mut g = (h & t.mask()) / GROUP;
        for _ in 0..t.groups() {
            let w = t.group(g).load(Ordering::Acquire);
            let mut m = match_byte(w, c);
            while m != 0 {
                let i = g * GROUP + first(m);
                if t.hash(i).load(Ordering::Relaxed) == h
                    && K::matches(&table::load(t.key(i)), key, &self.alloc)?
                {
                    return Ok(Some(i));
                }
                m &= m - 1;
            }
            if zero_bytes(w) != 0 {
                break;
            }
            g = (g + 1) & (t.groups() - 1);
        }
        Ok(None)
    }

    /// Probes `t` for `key` (hash `h`): its slot, and the first free slot seen.
    #[inline]
    fn probe(&self, t: &Table, h: u64, key: &K::Query) -> Result<Probe, Error> {
        let c = ctrl_of(h);
        let mut free = None;
        let home = h & t.mask();
        let mut g = home / GROUP;
        // In the first group, prefer free slots at or after the home slot (the
        // line `Table::prefetch` fetched).
        let mut from = !0u64 << (8 * (home % GROUP));
        for _ in 0..t.groups() {
            let w = t.group(g).load(Ordering::Acquire);
            let mut m = match_byte(w, c);
            while m != 0 {
                let i = g * GROUP + first(m);
                if t.hash(i).load(Ordering::Relaxed) == h {
                    let kr: K::Raw = table::load(t.key(i));
                    if K::matches(&kr, key, &self.alloc)? {
                        return Ok(Probe {
                            found: Some(i),
                            free,
                        });
                    }
                }
                m &= m - 1;
            }
            if free.is_none() {
                let f = free_bytes(w);
                let f = if f & from != 0 { f & from } else { f };
                if f != 0 {
                    free = Some(g * GROUP + first(f));
                }
            }
            if zero_bytes(w) != 0 {
                break;
            }
            from = !0;
            g = (g + 1) & (t.groups() - 1);
        }
        Ok(Probe { found: None, free })
    }

    /// Runs `f` under the shard's seqlock: retried until no writer overlapped it;
    /// after [`READ_TRIES`] attempts, under the lock (which repairs a dead writer's
    /// shard).
    #[inline]
    fn read<R>(
        &self,
        si: usize,
        f: impl Fn(Option<&Table>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let shard = &self.root().shards[si];
        for n in 0..READ_TRIES {
            let s1 = shard.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let word = shard.table.load(Ordering::Acquire);
                let t = Table::resolve(&self.alloc, word, Self::L);
                if matches!(t, Ok(Some(_))) {
                    self.readable[si].store(word, Ordering::Relaxed);
                }
                let r = t.and_then(|t| f(t.as_ref()));
                fence(Ordering::Acquire);
                if shard.seq.load(Ordering::Relaxed) == s1 {
                    return r;
                }
            }
            if n > 64 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let mut l = self.lock(si)?;
        let t = l.table()?;
        f(t.as_ref())
    }

    /// A copy of the value of `key`.
    ///
    /// # Errors
    /// [`CollectionError`] or [`Error::Access`] if the map's bytes are damaged;
    /// [`CollectionError::Busy`] if a reader had to wait for a lock that stayed held.
    #[inline]
    pub fn get(&self, key: &K::Query) -> Result<Option<V::Out>, Error> {
        let h = K::hash_query(key);
        let si = Self::shard_of(h);
        // The fast path (small enough to inline, so a caller's independent lookups
        // overlap their memory misses): a table word this handle resolved before,
        // no writer in the shard.
        let shard = &self.root().shards[si];
        let s1 = shard.seq.load(Ordering::Acquire);
        let word = shard.table.load(Ordering::Acquire);
        if s1 & 1 == 0 && word == self.readable[si].load(Ordering::Relaxed) {
            if let Some(t) = Table::resolve_known(&self.alloc, word, Self::L) {
                let r = match self.find(&t, h, key) {
                    Ok(Some(i)) => V::load(&table::load(t.val(i)), &self.alloc).map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                fence(Ordering::Acquire);
                if shard.seq.load(Ordering::Relaxed) == s1 {
                    return r;
                }
            }
        }
        self.get_slow(si, h, key)
    }

    #[cold]
    #[inline(never)]
    fn get_slow(&self, si: usize, h: u64, key: &K::Query) -> Result<Option<V::Out>, Error> {
        self.read(si, |t| {
            let Some(t) = t else { return Ok(None) };
            match self.find(t, h, key)? {
                Some(i) => V::load(&table::load(t.val(i)), &self.alloc).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Whether `key` is in the map.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn contains_key(&self, key: &K::Query) -> Result<bool, Error> {
        let h = K::hash_query(key);
        self.read(Self::shard_of(h), |t| match t {
            Some(t) => Ok(self.find(t, h, key)?.is_some()),
            None => Ok(false),
        })
    }

    /// A snapshot of every entry (each shard copied consistently; shards one after
    /// another).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn entries(&self) -> Result<Entries<K, V>, Error> {
        let mut out = Vec::with_capacity(self.len().min(1 << 20));
        for si in 0..SHARDS {
            out.extend(self.read(si, |t| {
                let mut v = Vec::new();
                let Some(t) = t else { return Ok(v) };
                for i in 0..t.cap() {
                    if t.ctrl(i) & FULL != 0 {
                        let k = K::load(&table::load(t.key(i)), &self.alloc)?;
                        let val = V::load(&table::load(t.val(i)), &self.alloc)?;
                        v.push((k, val));
                    }
                }
                Ok(v)
            })?);
        }
        Ok(out)
    }

    /// A snapshot of every key.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn keys(&self) -> Result<Vec<K::Out>, Error> {
        let mut out = Vec::with_capacity(self.len().min(1 << 20));
        for si in 0..SHARDS {
            out.extend(self.read(si, |t| {
                let mut v = Vec::new();
                let Some(t) = t else { return Ok(v) };
                for i in 0..t.cap() {
                    if t.ctrl(i) & FULL != 0 {
                        v.push(K::load(&table::load(t.key(i)), &self.alloc)?);
                    }
                }
                Ok(v)
            })?);
        }
        Ok(out)
    }

    /// Inserts or replaces the value of `key`; returns the old value.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the segment is full (nothing changed);
    /// [`CollectionError`] or [`Error::Access`] if the map's bytes are damaged;
    /// [`CollectionError::Busy`] if the shard's lock stayed held.
    pub fn insert(
        &self,
        key: impl Borrow<K::Query>,
        value: impl Borrow<V::Query>,
    ) -> Result<Option<V::Out>, Error> {
        let key = key.borrow();
        let h = K::hash_query(key);
        let si = Self::shard_of(h);
        // Start fetching the slot's line before the lock's barrier stalls loads.
        let word = self.root().shards[si].table.load(Ordering::Relaxed);
        if let Ok(Some(t)) = Table::resolve(&self.alloc, word, Self::L) {
            t.prefetch(h);
        }
        let mut l = self.lock(si)?;
        l.put(h, key, value.borrow())
    }

    /// Removes `key`; returns its value.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn remove(&self, key: &K::Query) -> Result<Option<V::Out>, Error> {
        let h = K::hash_query(key);
        let mut l = self.lock(Self::shard_of(h))?;
        let Some(t) = l.table()? else { return Ok(None) };
        match self.probe(&t, h, key)?.found {
            Some(i) => Ok(l.remove_slot(&t, i)),
            None => Ok(None),
        }
    }

    /// Entry-style update under the key's shard lock: `f` gets a copy of the
    /// current value (or `None`) and returns the new one (`None` removes the key).
    /// No other writer of that shard runs in between; readers see the old or the
    /// new value. If `f` panics the map is unchanged (the next locker repairs).
    /// `f` must not write to this map (the shard's lock is not reentrant: such a
    /// write waits [`LOCK_TIMEOUT`] and fails with [`CollectionError::Busy`]).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn update<Q: Borrow<V::Query>>(
        &self,
        key: impl Borrow<K::Query>,
        f: impl FnOnce(Option<V::Out>) -> Option<Q>,
    ) -> Result<(), Error> {
        let key = key.borrow();
        let h = K::hash_query(key);
        let mut l = self.lock(Self::shard_of(h))?;
        let t = l.table()?;
        let found = match &t {
            Some(t) => self.probe(t, h, key)?.found,
            None => None,
        };
        let cur = match (found, &t) {
            (Some(i), Some(t)) => Some(V::load(&table::load(t.val(i)), &self.alloc)?),
            _ => None,
        };
        match (f(cur), found, t) {
            (Some(v), _, _) => {
                l.put(h, key, v.borrow())?;
            }
            (None, Some(i), Some(t)) => {
                l.remove_slot(&t, i);
            }
            (None, _, _) => {}
        }
        Ok(())
    }

    /// Removes every entry and frees every table (the map's root stays).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn clear(&self) -> Result<(), Error> {
        for si in 0..SHARDS {
            let mut l = self.lock(si)?;
            let Some(t) = l.table()? else { continue };
            for i in 0..t.cap() {
                if t.ctrl(i) & FULL != 0 {
                    l.remove_slot(&t, i);
                }
            }
            l.drop_table(&t);
        }
        Ok(())
    }

    /// Locks shard `si`, repairing it if its last holder died (or left it in an
    /// unfinished state).
    fn lock(&self, si: usize) -> Result<Locked<'_, K, V, A>, Error> {
        let shard = &self.root().shards[si];
        let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
        let (guard, died) = loop {
            let before = (shard.lock.state_word(), shard.holder.load(Ordering::Acquire));
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match shard.lock.lock_robust_timeout(left.min(FORGED_AFTER)) {
                Some(Ok(g)) => break (g, false),
                Some(Err(d)) => break (d.into_inner(), true),
                None => {}
            }
            // The word stayed held. If it names this process, unchanged all along,
            // with no holder recorded or this thread recorded, and this thread
            // holds no such lock, no thread of this process holds it: a replayed
            // or scribbled word. Take it (and repair) instead of waiting for good.
            let now = (shard.lock.state_word(), shard.holder.load(Ordering::Acquire));
            if now == before
                && (now.1 == 0 || now.1 == thread_id())
                && HELD.with(|h| h.get()) == 0
            {
                if let Some(g) = shard.lock.take_from_self(now.0) {
                    break (g, true);
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(CollectionError::Busy {
                    secs: LOCK_TIMEOUT.as_secs(),
                }
                .into());
            }
        };
        shard.holder.store(thread_id(), Ordering::Release);
        HELD.with(|h| h.set(h.get().wrapping_add(1)));
        let mut l = Locked {
            map: self,
            shard,
            si,
            guard,
        };
        if died
            || shard.seq.load(Ordering::Relaxed) & 1 != 0
            || shard.intent.load(Ordering::Relaxed) != I_NONE
            || shard.resize_new.load(Ordering::Relaxed) != 0
            || shard.resize_old.load(Ordering::Relaxed) != 0
        {
            l.repair()?;
            l.guard.mark_consistent();
        }
        Ok(l)
    }
}

/// A shard, locked.
struct Locked<'m, K: ShmKey, V: ShmValue, A: ShmFree> {
    map: &'m ShmHashMap<K, V, A>,
    shard: &'m Shard,
    si: usize,
    guard: ShmMutexGuard<'m, [u32; 2]>,
}

impl<K: ShmKey, V: ShmValue, A: ShmFree> Drop for Locked<'_, K, V, A> {
    fn drop(&mut self) {
        // Before the guard (a field, dropped after this) unlocks.
        self.shard.holder.store(0, Ordering::Release);
        HELD.with(|h| h.set(h.get().wrapping_sub(1)));
    }
}

impl<K: ShmKey, V: ShmValue, A: ShmFree> Locked<'_, K, V, A> {
    fn alloc(&self) -> &A {
        &self.map.alloc
    }

    /// The shard's table, checked to be a live table block of this map.
    #[inline]
    fn table(&mut self) -> Result<Option<Table>, Error> {
        let word = self.shard.table.load(Ordering::Acquire);
        if word != 0 && self.map.checked[self.si].load(Ordering::Relaxed) == word {
            // Checked before (resolved and owned), unchanged since.
            if let Some(t) = Table::resolve_known(self.alloc(), word, ShmHashMap::<K, V, A>::L) {
                return Ok(Some(t));
            }
        }
        let t = Table::resolve(self.alloc(), word, ShmHashMap::<K, V, A>::L)?;
        if let Some(t) = &t {
            let cache = &self.map.checked[self.si];
            if cache.load(Ordering::Relaxed) != word {
                t.check_owned(self.alloc(), ShmHashMap::<K, V, A>::table_fp())?;
                cache.store(word, Ordering::Relaxed);
            }
        }
        Ok(t)
    }

    // The shard's words below are written only under its lock, so a load and a
    // store stand in for a read-modify-write (no locked instruction, whose full
    // barrier would stop a CPU from overlapping one operation's memory misses with
    // the next's).

    fn seq_begin(&self) {
        let s = self.shard.seq.load(Ordering::Relaxed);
        self.shard.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn seq_end(&self) {
        let s = self.shard.seq.load(Ordering::Relaxed);
        self.shard.seq.store(s.wrapping_add(1), Ordering::Release);
    }

    fn add_len(&self, n: u64) {
        let len = self.shard.len.load(Ordering::Relaxed);
        self.shard.len.store(len.wrapping_add(n), Ordering::Relaxed);
    }

    /// Allocates and publishes a table of `2^log2` slots holding the entries of
    /// `old` (if any); frees `old`.
    fn grow(&mut self, old: Option<&Table>, log2: u32) -> Result<Table, Error> {
        let fp = ShmHashMap::<K, V, A>::table_fp();
        let l = ShmHashMap::<K, V, A>::L;
        let bytes = l.bytes(log2).ok_or(CollectionError::Full {
            capacity: 1 << MAX_LOG2,
        })?;
        let bytes = usize::try_from(bytes).map_err(|_| CollectionError::Full {
            capacity: 1 << MAX_LOG2,
        })?;
        let off = self.alloc().allocate_block(crate::alloc::INTERNAL, bytes, 16)?.get();
        if let Err(e) = table::init_table(self.alloc(), off, fp) {
            // SAFETY: allocated just above, never published.
            let _ = unsafe { self.alloc().free_owned(Offset::new(off)) };
            return Err(e);
        }
        self.shard.resize_new.store(off, Ordering::Release);
        crate::fail_point!("map.resize.allocated");
        let word = table::pack(off, log2);
        let new = match Table::resolve(self.alloc(), word, l)? {
            Some(t) => t,
            None => unreachable!("a nonzero word"),
        };
        for g in 0..new.groups() {
            new.group(g).store(0, Ordering::Relaxed);
        }
        let mut len = 0;
        if let Some(old) = old {
            for i in 0..old.cap() {
                if old.ctrl(i) & FULL == 0 {
                    continue;
                }
                if len + 1 >= new.cap() {
                    // More full slots than the shard's count said (scribbled control bytes):
                    // never loop looking for room that is not there.
                    self.shard.resize_new.store(0, Ordering::Release);
                    // SAFETY: allocated above, never published; its offset was
                    // just cleared from `resize_new`.
                    let _ = unsafe { self.alloc().free_owned(Offset::new(off)) };
                    return Err(CollectionError::Corrupted {
                        what: "map control bytes (more full slots than counted)",
                        found: len,
                    }
                    .into());
                }
                let h = old.hash(i).load(Ordering::Relaxed);
                // A free slot exists (len + 1 < cap): the loop ends.
                let mut g = (h & new.mask()) / GROUP;
                let j = loop {
                    let e = zero_bytes(new.group(g).load(Ordering::Relaxed));
                    if e != 0 {
                        break g * GROUP + first(e);
                    }
                    g = (g + 1) & (new.groups() - 1);
                };
                new.hash(j).store(h, Ordering::Relaxed);
                table::store::<K::Raw>(new.key(j), table::load(old.key(i)));
                table::store::<V::Raw>(new.val(j), table::load(old.val(i)));
                new.set_ctrl(j, ctrl_of(h));
                len += 1;
            }
            self.shard.resize_old.store(old.off, Ordering::Release);
        }
        crate::fail_point!("map.resize.built");
        self.seq_begin();
        self.shard.table.store(word, Ordering::Release);
        self.shard.len.store(len, Ordering::Relaxed);
        self.shard.used.store(len, Ordering::Relaxed);
        self.seq_end();
        self.map.checked[self.si].store(word, Ordering::Relaxed);
        crate::fail_point!("map.resize.committed");
        self.shard.resize_new.store(0, Ordering::Release);
        let old_off = self.shard.resize_old.swap(0, Ordering::AcqRel);
        if old_off != 0 {
            // SAFETY: the old table was checked a live table block of this map
            // (`table()`), is no longer published (readers that still copy from it
            // validate with the sequence word and retry), and its offset was swapped
            // out of `resize_old`, so no repair frees it again.
            let _ = unsafe { self.alloc().free_owned(Offset::new(old_off)) };
        }
        Ok(new)
    }

    /// Frees the shard's table (after `clear` removed every entry).
    fn drop_table(&mut self, t: &Table) {
        self.shard.resize_old.store(t.off, Ordering::Release);
        self.seq_begin();
        self.shard.table.store(0, Ordering::Release);
        self.shard.len.store(0, Ordering::Relaxed);
        self.shard.used.store(0, Ordering::Relaxed);
        self.seq_end();
        let old = self.shard.resize_old.swap(0, Ordering::AcqRel);
        if old != 0 {
            // SAFETY: as in `grow`: checked ours, unpublished, swapped out.
            let _ = unsafe { self.alloc().free_owned(Offset::new(old)) };
        }
    }

    /// Inserts or replaces (the shard is locked).
    fn put(&mut self, h: u64, key: &K::Query, value: &V::Query) -> Result<Option<V::Out>, Error> {
        let mut t = match self.table()? {
            Some(t) => t,
            None => self.grow(None, MIN_LOG2)?,
        };
        let mut p = self.map.probe(&t, h, key)?;
        if let Some(i) = p.found {
            let vraw = V::store(value, self.alloc())?;
            return Ok(self.replace(&t, i, vraw));
        }
        let used = self.shard.used.load(Ordering::Relaxed);
        if p.free.is_none() || used.saturating_add(1) > t.cap() - t.cap() / 8 {
            let len = self.shard.len.load(Ordering::Relaxed);
            let want = len
                .saturating_add(1)
                .saturating_mul(2)
                .clamp(1 << MIN_LOG2, 1 << MAX_LOG2);
            let log2 = want.next_power_of_two().trailing_zeros().max(t.log2);
            if log2 > MAX_LOG2 {
                return Err(CollectionError::Full {
                    capacity: 1 << MAX_LOG2,
                }
                .into());
            }
            t = self.grow(Some(&t), log2)?;
            p = self.map.probe(&t, h, key)?;
        }
        let Some(i) = p.free else {
            return Err(CollectionError::Full { capacity: t.cap() }.into());
        };
        let mut kraw = K::store(key, self.alloc())?;
        let vraw = match V::store(value, self.alloc()) {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: `kraw` is a local copy just made by `K::store`, owned by
                // nobody else.
                unsafe { K::release(NonNull::from(&mut kraw), self.alloc()) };
                return Err(e);
            }
        };
        table::store(t.intent_key::<K::Raw>(), kraw);
        table::store(t.intent_new::<V::Raw>(), vraw);
        self.shard
            .intent
            .store(I_INSERT | (i << 2), Ordering::Release);
        crate::fail_point!("map.insert.intent");
        t.hash(i).store(h, Ordering::Relaxed);
        table::store(t.key::<K::Raw>(i), kraw);
        table::store(t.val::<V::Raw>(i), vraw);
        crate::fail_point!("map.insert.written");
        let was = t.ctrl(i);
        t.set_ctrl(i, ctrl_of(h));
        crate::fail_point!("map.insert.committed");
        self.add_len(1);
        if was == EMPTY {
            let used = self.shard.used.load(Ordering::Relaxed);
            self.shard.used.store(used.wrapping_add(1), Ordering::Relaxed);
        }
        self.shard.intent.store(I_NONE, Ordering::Release);
        Ok(None)
    }

    /// Replaces the value in slot `i` with `vraw` (stored already); returns the old.
    fn replace(&mut self, t: &Table, i: u64, vraw: V::Raw) -> Option<V::Out> {
        let old: V::Raw = table::load(t.val(i));
        table::store(t.intent_old::<V::Raw>(), old);
        table::store(t.intent_new::<V::Raw>(), vraw);
        self.shard
            .intent
            .store(I_UPDATE | (i << 2), Ordering::Release);
        crate::fail_point!("map.update.intent");
        self.seq_begin();
        table::store(t.val::<V::Raw>(i), vraw);
        self.seq_end();
        crate::fail_point!("map.update.written");
        let out = V::load(&old, self.alloc()).ok();
        // SAFETY: the old value is no longer in the table (replaced above; readers
        // that copied it validate with the sequence word), so the shard (this
        // lock) owns its raw form in the intent area exclusively.
        unsafe { V::release(t.intent_old::<V::Raw>(), self.alloc()) };
        self.shard.intent.store(I_NONE, Ordering::Release);
        out
    }

    /// Removes the entry in slot `i`; returns its value.
    fn remove_slot(&mut self, t: &Table, i: u64) -> Option<V::Out> {
        let k: K::Raw = table::load(t.key(i));
        let v: V::Raw = table::load(t.val(i));
        table::store(t.intent_key::<K::Raw>(), k);
        table::store(t.intent_old::<V::Raw>(), v);
        self.shard
            .intent
            .store(I_REMOVE | (i << 2), Ordering::Release);
        crate::fail_point!("map.remove.intent");
        self.seq_begin();
        t.set_ctrl(i, TOMB);
        self.add_len(u64::MAX);
        self.seq_end();
        crate::fail_point!("map.remove.tombstoned");
        let out = V::load(&v, self.alloc()).ok();
        self.release_intent(t, true, true);
        self.shard.intent.store(I_NONE, Ordering::Release);
        out
    }

    /// Releases the intent area's key and/or old value.
    fn release_intent(&self, t: &Table, key: bool, old: bool) {
        if key {
            // SAFETY: the intent area's key is the raw form of a key no slot holds
            // any more (tombstoned, or never committed), owned by this shard
            // (locked); `release` clears before it frees, so a rerun frees nothing
            // twice.
            unsafe { K::release(t.intent_key::<K::Raw>(), self.alloc()) };
        }
        if old {
            // SAFETY: as above, for the old value (replaced or removed).
            unsafe { V::release(t.intent_old::<V::Raw>(), self.alloc()) };
        }
    }

    /// Finishes or undoes what a dead holder left: see the module docs' table.
    fn repair(&mut self) -> Result<(), Error> {
        let fp = ShmHashMap::<K, V, A>::table_fp();
        if self.shard.seq.load(Ordering::Relaxed) & 1 == 0 {
            self.seq_begin();
        }
        let cur = self.shard.table.load(Ordering::Acquire) & ((1 << 56) - 1);
        for word in [&self.shard.resize_new, &self.shard.resize_old] {
            let off = word.load(Ordering::Acquire);
            if off != 0 && off != cur {
                let ours = table::check_table_block(self.alloc(), off, fp).is_ok();
                if word.swap(0, Ordering::AcqRel) == off && ours {
                    crate::fail_point!("map.repair.table");
                    // SAFETY: a table block of this map (checked) that is not the
                    // published table: a resize's new table that never got
                    // published or its old table that was not freed yet; its
                    // offset was just swapped out, so no one frees it again.
                    let _ = unsafe { self.alloc().free_owned(Offset::new(off)) };
                }
            } else if off == cur {
                word.store(0, Ordering::Release);
            }
        }
        self.map.checked[self.si].store(0, Ordering::Relaxed);
        let t = self.table()?;
        let intent = self.shard.intent.load(Ordering::Acquire);
        if let Some(t) = &t {
            let i = intent >> 2;
            if intent != I_NONE && i >= t.cap() {
                return Err(CollectionError::Corrupted {
                    what: "map intent slot",
                    found: intent,
                }
                .into());
            }
            match intent & 3 {
                I_INSERT if t.ctrl(i) & FULL == 0 => {
                    // Never committed: the key and value are the intent's only.
                    self.release_intent(t, true, false);
                    // SAFETY: the intent's new value was never published (its
                    // slot's control byte is not FULL), so the shard owns it; release
                    // clears before it frees.
                    unsafe { V::release(t.intent_new::<V::Raw>(), self.alloc()) };
                }
                I_UPDATE => {
                    table::store::<V::Raw>(t.val(i), table::load(t.intent_new()));
                    self.release_intent(t, false, true);
                }
                I_REMOVE => {
                    t.set_ctrl(i, TOMB);
                    self.release_intent(t, true, true);
                }
                _ => {}
            }
            self.shard.intent.store(I_NONE, Ordering::Release);
            let (mut len, mut used) = (0, 0);
            for i in 0..t.cap() {
                let c = t.ctrl(i);
                len += u64::from(c & FULL != 0);
                used += u64::from(c != EMPTY);
            }
            self.shard.len.store(len, Ordering::Relaxed);
            self.shard.used.store(used, Ordering::Relaxed);
        } else {
            self.shard.intent.store(I_NONE, Ordering::Release);
            self.shard.len.store(0, Ordering::Relaxed);
            self.shard.used.store(0, Ordering::Relaxed);
        }
        self.seq_end();
        Ok(())
    }
}
