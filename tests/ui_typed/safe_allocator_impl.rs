// ShmAllocator is an unsafe trait: the typed layer turns its answers into
// references, so an implementation that hands out one live block twice would give
// two ShmBox at one address. A safe impl does not compile.
use shared_allocator::prelude::*;
use shared_allocator::segment::{AllocatorKind, Segment};
use shared_allocator::{AccessError, AllocError, Offset, Stats};

struct SameBlockTwice(FreeListAllocator);

impl ShmAllocator for SameBlockTwice {
    const KIND: AllocatorKind = AllocatorKind::FreeList;
    fn segment(&self) -> &Segment {
        self.0.segment()
    }
    fn allocate_aligned(&self, _size: usize, _align: usize) -> Result<Offset, AllocError> {
        Ok(Offset::new(4096))
    }
    fn check_range(&self, _offset: Offset, _len: u64) -> Result<(), AccessError> {
        Ok(())
    }
    fn available_bytes(&self) -> u64 {
        0
    }
    fn used_bytes(&self) -> u64 {
        0
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
    fn liveness_token(&self) -> u32 {
        0
    }
    fn token_alive(&self, _token: u32) -> bool {
        true
    }
}

fn main() {}
