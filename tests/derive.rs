//! `#[derive(ShmSafe)]` on structs it accepts, and the fingerprints it computes.
//! The rejections are compile-fail cases in `tests/ui/`, run by `tests/derive_ui.rs`.
#![cfg(feature = "derive")]

// The derive under a renamed dependency, with `#[shm(crate = "...")]`.
extern crate shared_allocator as renamed;

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::num::Wrapping;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Point {
    x: f64,
    y: f64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Nested {
    origin: Point,
    corners: [Point; 4],
    id: u64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Arrays {
    bytes: [u8; 16],
    matrix: [[u32; 3]; 2],
    _pad: [u8; 8],
}

#[derive(ShmSafe)]
#[repr(C)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU32,
    flags: AtomicU32,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Pair<T> {
    a: T,
    b: T,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Buffer<T: Copy, const N: usize>
where
    T: Default,
{
    head: T,
    items: [T; N],
}

#[derive(ShmSafe)]
#[repr(transparent)]
struct Meters(f64);

#[derive(ShmSafe)]
#[repr(transparent)]
struct Tagged<T> {
    value: T,
    _marker: PhantomData<u8>,
}

#[derive(ShmSafe)]
#[repr(C, align(64))]
struct CacheLine {
    head: AtomicU64,
    _pad: [u8; 56],
}

#[derive(ShmSafe)]
#[repr(C)]
#[repr(align(16))]
struct TwoReprAttrs {
    a: u64,
    b: Wrapping<u64>,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Unit;

#[derive(ShmSafe)]
#[repr(C)]
#[shm(crate = "renamed")]
struct ViaRenamedCrate {
    v: u32,
}

// The derive through the prelude.
mod via_prelude {
    use shared_allocator::prelude::*;

    #[derive(ShmSafe)]
    #[repr(C)]
    pub struct Sample {
        pub x: u32,
    }
}

fn fingerprint<T: ShmSafe>() -> u64 {
    // Evaluated in a const context, as the typed layer does: this is also where a
    // generic instantiation's padding check runs.
    const { T::FINGERPRINT }
}

#[test]
fn layouts_are_what_the_derive_accepted() {
    assert_eq!(size_of::<Nested>(), 5 * 16 + 8);
    assert_eq!(size_of::<Arrays>(), 48);
    assert_eq!(size_of::<Counters>(), 16);
    assert_eq!(size_of::<Pair<u16>>(), 4);
    assert_eq!(size_of::<Buffer<u32, 6>>(), 28);
    assert_eq!(size_of::<Meters>(), 8);
    assert_eq!(size_of::<Tagged<u32>>(), 4);
    assert_eq!((size_of::<CacheLine>(), align_of::<CacheLine>()), (64, 64));
    assert_eq!(align_of::<TwoReprAttrs>(), 16);
    assert_eq!(size_of::<Unit>(), 0);
}

#[test]
fn derived_types_are_usable() {
    let c = Counters {
        hits: AtomicU64::new(0),
        misses: AtomicU32::new(0),
        flags: AtomicU32::new(0),
    };
    c.hits.fetch_add(3, Ordering::Relaxed);
    assert_eq!(c.hits.load(Ordering::Relaxed), 3);
    let p = Pair {
        a: Meters(1.5),
        b: Meters(2.5),
    };
    assert_eq!(p.a.0 + p.b.0, 4.0);
    let b = Buffer::<u8, 2> {
        head: 2,
        items: [1, 2],
    };
    assert_eq!(b.items.len() as u8, b.head);
    let t = Tagged {
        value: 7u8,
        _marker: PhantomData,
    };
    let n = Nested {
        origin: Point { x: 0.0, y: 0.0 },
        corners: [
            Point { x: 0.0, y: 1.0 },
            Point { x: 1.0, y: 1.0 },
            Point { x: 1.0, y: 0.0 },
            Point { x: 0.0, y: 0.0 },
        ],
        id: u64::from(t.value),
    };
    assert_eq!(n.corners[1].x + n.origin.y, 1.0);
    assert_eq!(n.id, 7);
    let a = Arrays {
        bytes: [0; 16],
        matrix: [[0; 3]; 2],
        _pad: [0; 8],
    };
    assert_eq!(a.bytes.len() + a.matrix.len() + a._pad.len(), 26);
    let l = CacheLine {
        head: AtomicU64::new(1),
        _pad: [0; 56],
    };
    assert_eq!(l.head.into_inner() + l._pad[0] as u64, 1);
    let r = TwoReprAttrs {
        a: 1,
        b: Wrapping(2),
    };
    assert_eq!(r.a + r.b.0, 3);
    assert_eq!(ViaRenamedCrate { v: 5 }.v, 5);
}

#[test]
fn renamed_crate_path_implements_the_same_trait() {
    fn is_shm_safe<T: renamed::ShmSafe>() -> u64 {
        T::FINGERPRINT
    }
    assert_eq!(
        is_shm_safe::<ViaRenamedCrate>(),
        fingerprint::<ViaRenamedCrate>()
    );
}

/// Defines a struct of the same name in its own module, so two "identical" or
/// "slightly different" definitions can be compared.
macro_rules! variant {
    ($module:ident, $name:ident { $($field:ident : $ty:ty),* }) => {
        mod $module {
            #[derive(shared_allocator::ShmSafe)]
            #[repr(C)]
            pub struct $name {
                $(pub $field: $ty),*
            }
        }
    };
}

variant!(
    original,
    Header {
        magic: u64,
        len: u32,
        flags: u32
    }
);
variant!(
    identical,
    Header {
        magic: u64,
        len: u32,
        flags: u32
    }
);
variant!(
    renamed_field,
    Header {
        magic: u64,
        size: u32,
        flags: u32
    }
);
variant!(
    retyped_field,
    Header {
        magic: u64,
        len: i32,
        flags: u32
    }
);
variant!(
    atomic_field,
    Header {
        magic: u64,
        len: std::sync::atomic::AtomicU32,
        flags: u32
    }
);
variant!(
    reordered,
    Header {
        magic: u64,
        flags: u32,
        len: u32
    }
);
variant!(
    extra_field,
    Header {
        magic: u64,
        len: u32,
        flags: u32,
        more: u64
    }
);
variant!(
    renamed_type,
    Header2 {
        magic: u64,
        len: u32,
        flags: u32
    }
);

#[test]
fn fingerprints_are_equal_for_identical_definitions() {
    assert_eq!(
        fingerprint::<original::Header>(),
        fingerprint::<identical::Header>()
    );
    assert_eq!(fingerprint::<Pair<u32>>(), fingerprint::<Pair<u32>>());
    assert_eq!(
        fingerprint::<Buffer<u8, 8>>(),
        fingerprint::<Buffer<u8, 8>>()
    );
}

#[test]
fn fingerprints_differ_when_the_layout_changes() {
    let all = [
        ("original", fingerprint::<original::Header>()),
        ("renamed field", fingerprint::<renamed_field::Header>()),
        ("retyped field", fingerprint::<retyped_field::Header>()),
        ("atomic field", fingerprint::<atomic_field::Header>()),
        ("reordered fields", fingerprint::<reordered::Header>()),
        ("extra field", fingerprint::<extra_field::Header>()),
        ("renamed type", fingerprint::<renamed_type::Header2>()),
        ("Pair<u32>", fingerprint::<Pair<u32>>()),
        ("Pair<i32>", fingerprint::<Pair<i32>>()),
        ("Pair<u64>", fingerprint::<Pair<u64>>()),
        ("Pair<[u32; 2]>", fingerprint::<Pair<[u32; 2]>>()),
        ("Buffer<u8, 8>", fingerprint::<Buffer<u8, 8>>()),
        ("Buffer<u8, 16>", fingerprint::<Buffer<u8, 16>>()),
        ("Meters", fingerprint::<Meters>()),
        ("f64", fingerprint::<f64>()),
        ("CacheLine", fingerprint::<CacheLine>()),
        ("via_prelude::Sample", fingerprint::<via_prelude::Sample>()),
    ];
    for (i, (a, fa)) in all.iter().enumerate() {
        for (b, fb) in &all[i + 1..] {
            assert_ne!(fa, fb, "{a} and {b} have the same fingerprint");
        }
    }
}

#[test]
fn std_wrappers_have_their_own_fingerprints() {
    assert_ne!(fingerprint::<Wrapping<u64>>(), fingerprint::<u64>());
    assert_ne!(fingerprint::<PhantomData<u64>>(), fingerprint::<u64>());
    assert_ne!(
        fingerprint::<PhantomData<u64>>(),
        fingerprint::<PhantomData<u32>>()
    );
    assert_eq!(size_of::<PhantomData<u64>>(), 0);
}
