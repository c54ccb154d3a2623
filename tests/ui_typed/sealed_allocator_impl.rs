// ShmAllocator is sealed: the typed layer turns its answers into references, and
// its internal methods allocate and grow blocks in either segment mode, so only
// this crate's allocators (and `&A` / `Arc<A>` of them) implement it. An
// `unsafe impl` elsewhere does not compile either.
use shared_allocator::prelude::*;
use shared_allocator::segment::Segment;
use shared_allocator::{AccessError, Offset, Stats};

struct Wrap(FreeListAllocator);

unsafe impl ShmAllocator for Wrap {
    fn segment(&self) -> &Segment {
        self.0.segment()
    }
    fn check_range(&self, o: Offset, l: u64) -> Result<(), AccessError> {
        self.0.check_range(o, l)
    }
    fn available_bytes(&self) -> u64 {
        self.0.available_bytes()
    }
    fn used_bytes(&self) -> u64 {
        self.0.used_bytes()
    }
    fn stats(&self) -> Stats {
        self.0.stats()
    }
}

fn main() {}
