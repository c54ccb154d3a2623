//! The red team's successful attacks on the shared collections (notes rt18-s2,
//! items B1-B3), each as a test that failed on the code it broke.
//!
//! `cargo test --test collections_attacks`
mod common;

use common::{role, ShmName};
use shared_allocator::collections::{RawStr, ShmHashMap};
use shared_allocator::prelude::*;
use shared_allocator::{CollectionError, Error};

fn mismatch<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::TypeMismatch { .. }))
}

/// B1: `String`, `Vec<u8>` and a plain `RawStr` share one raw form; a map of one
/// opened as another stored a key twice (two hashings of the same bytes), made
/// every reader of the `String` map fail on non-UTF-8 bytes, and (through a plain
/// `RawStr`) let two entries name one block, so removing one freed another key's
/// value.
#[test]
fn a_map_opened_as_other_value_types_with_the_same_raw_form_is_refused() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("rt-map-raw-form");
    let a = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();

    let ms = ShmHashMap::<String, u64, _>::open(&a, "keys").unwrap();
    ms.insert("abc", 1).unwrap();
    assert!(mismatch(ShmHashMap::<Vec<u8>, u64, _>::open(&a, "keys")));
    assert_eq!(ms.len(), 1);
    assert_eq!(ms.entries().unwrap(), vec![("abc".to_owned(), 1)]);

    let mv = ShmHashMap::<u64, String, _>::open(&a, "values").unwrap();
    mv.insert(1u64, "victim-one").unwrap();
    assert!(mismatch(ShmHashMap::<u64, RawStr, _>::open(&a, "values")));
    assert!(mismatch(ShmHashMap::<u64, Vec<u8>, _>::open(&a, "values")));
    assert!(mismatch(ShmHashMap::<u64, Vec<String>, _>::open(
        &a, "values"
    )));
    assert_eq!(mv.get(&1).unwrap().as_deref(), Some("victim-one"));

    // Nested: a vector of strings is not a vector of byte vectors.
    let mn = ShmHashMap::<u64, Vec<String>, _>::open(&a, "nested").unwrap();
    mn.insert(1u64, &["x".to_owned()][..]).unwrap();
    assert!(mismatch(ShmHashMap::<u64, Vec<Vec<u8>>, _>::open(
        &a, "nested"
    )));

    // The same types still open (in any order of opening).
    let again = ShmHashMap::<u64, String, _>::open(&a, "values").unwrap();
    assert_eq!(again.get(&1).unwrap().as_deref(), Some("victim-one"));
}

/// B2: a non-empty vector of a zero-sized element type was stored as a block of
/// no bytes, which no checked read accepts: `get` of it and `entries()` of the
/// whole map failed in every process, and `remove` removed it but returned
/// `None`. Now the insert is refused and the map stays readable.
#[test]
fn a_vector_of_zero_sized_elements_is_refused_and_the_map_stays_readable() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("rt-map-zst");
    let a = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let m = ShmHashMap::<u64, Vec<[u8; 0]>, _>::open(&a, "z").unwrap();
    let live = a.stats().live_blocks.unwrap();
    for n in [1usize, 3, 1 << 20] {
        let r = m.insert(3u64, &vec![[0u8; 0]; n][..]);
        assert!(r.is_err(), "a vector of {n} zero-sized elements was stored");
        assert!(matches!(
            r,
            Err(Error::Collection(CollectionError::ZeroSized))
        ));
    }
    assert_eq!(m.get(&3).unwrap(), None);
    m.insert(4u64, &[][..]).unwrap();
    assert_eq!(m.get(&4).unwrap(), Some(vec![]));
    assert_eq!(m.entries().unwrap().len(), 1);
    assert_eq!(m.remove(&4).unwrap(), Some(vec![]));
    m.clear().unwrap();
    assert_eq!(
        a.stats().live_blocks.unwrap(),
        live,
        "a refused insert leaked"
    );
}
