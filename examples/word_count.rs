//! A word count built in one `ShmHashMap<String, u64>` by 4 worker processes.
//!
//! The parent creates the segment and starts 4 workers (re-executions of this
//! program); each counts the words of its share of the input into the shared map
//! with `update` (an increment under the key's shard lock, so no count is lost);
//! the parent then prints the most frequent words and checks the total.
//!
//! ```text
//! cargo run --release --example word_count [FILE...]
//! ```
//! Without files it counts a generated text.

use std::process::Command;

use shared_allocator::collections::ShmHashMap;
use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

const WORKERS: usize = 4;

fn text(files: &[String]) -> String {
    if files.is_empty() {
        let words = [
            "shared", "memory", "map", "process", "word", "count", "rust", "the",
        ];
        (0..200_000u64)
            .map(|i| words[((i * 7919) ^ (i >> 3)) as usize % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("readable file"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        // Worker: `--worker SEGMENT INDEX FILE...`
        let (seg, index): (&str, usize) = (&args[2], args[3].parse()?);
        let alloc = FreeListAllocator::open(seg)?;
        let counts = ShmHashMap::<String, u64, _>::open(&alloc, "counts")?;
        let all = text(&args[4..]);
        // Every worker takes every 4th word.
        let mine: Vec<String> = words(&all)
            .enumerate()
            .filter(|(i, _)| i % WORKERS == index)
            .map(|(_, w)| w)
            .collect();
        for w in &mine {
            counts.update(w.as_str(), |c| Some(c.unwrap_or(0) + 1))?;
        }
        return Ok(());
    }
    let files = args[1..].to_vec();
    let seg = format!("sa-example-word-count-{}", std::process::id());
    let _cleanup = UnlinkGuard::new(&seg);
    let alloc = FreeListAllocator::create(&seg, 64 << 20)?;
    let counts = ShmHashMap::<String, u64, _>::open(&alloc, "counts")?;
    let exe = std::env::current_exe()?;
    let kids: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new(&exe)
                .arg("--worker")
                .arg(&seg)
                .arg(i.to_string())
                .args(&files)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut k in kids {
        assert!(k.wait()?.success(), "a worker failed");
    }
    let mut all = counts.entries()?;
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total: u64 = all.iter().map(|(_, c)| c).sum();
    let expected = words(&text(&files)).count() as u64;
    println!(
        "{} distinct words, {total} in all (expected {expected})",
        all.len()
    );
    for (w, c) in all.iter().take(10) {
        println!("{c:>8} {w}");
    }
    assert_eq!(total, expected, "a count was lost");
    counts.clear()?;
    Ok(())
}
