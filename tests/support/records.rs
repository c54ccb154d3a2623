//! The sample record type shared by `tests/archive.rs`, `benches/archive.rs` and
//! `examples/rkyv_pipeline.rs` (each includes this file with `#[path]`): strings,
//! vectors, an option and an enum, so archives exercise rkyv's relative pointers.
#![allow(dead_code)]

use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[rkyv(derive(Debug))]
pub struct Record {
    pub id: u64,
    pub name: String,
    pub values: Vec<u32>,
    pub score: f64,
    pub kind: Kind,
    pub note: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[rkyv(derive(Debug))]
pub enum Kind {
    Empty,
    Label(String),
    Point { x: i32, y: i32 },
    Tags(Vec<String>),
}

/// Record `i`, the same in every process.
pub fn record(i: u64) -> Record {
    let kind = match i % 4 {
        0 => Kind::Empty,
        1 => Kind::Label(format!("label-{}", i * 7)),
        2 => Kind::Point {
            x: i as i32 - 5000,
            y: -(i as i32) * 3,
        },
        _ => Kind::Tags((0..i % 5).map(|t| format!("t{t}-{i}")).collect()),
    };
    Record {
        id: i,
        name: format!("record number {i} {}", "x".repeat((i % 23) as usize)),
        values: (0..(i % 17) as u32).map(|v| v * 1000 + i as u32).collect(),
        score: i as f64 / 7.0,
        kind,
        note: (i % 3 == 0).then(|| format!("note {i}")),
    }
}
