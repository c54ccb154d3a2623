//! [`Inspect`] for the bump allocator: one cursor, no block boundaries.

use super::*;
use crate::alloc::inspect::{registry_problems, Consistency, Inspect};
use crate::process::RegistryInfo;

impl BumpAllocator {
    /// Frees the registry slots of dead handles (a bump allocator keeps nothing
    /// else in them: a dead reader's pins already count for nothing). Returns how
    /// many. Joining handles take dead slots over by themselves when no free one
    /// is left; this is for tools (`shm-alloc reclaim`).
    pub fn reclaim(&self) -> usize {
        process::reclaim_dead(&self.seg, self.member.current(), &mut |_| true).0
    }
}

impl Inspect for BumpAllocator {
    fn registry(&self) -> RegistryInfo {
        process::registry_info(&self.seg, self.member.current())
    }

    fn largest_free_block(&self) -> u64 {
        self.seg.layout().data_len - self.used()
    }

    fn block_size(&self, _offset: Offset) -> Option<u64> {
        None
    }

    fn check(&self) -> Consistency {
        let mut out = Consistency {
            checked: 1,
            ..Consistency::default()
        };
        let cursor = split(self.state().load(Ordering::Acquire)).1;
        if cursor > self.seg.layout().data_len {
            out.problems.push(format!(
                "cursor {cursor} is past the data region ({} bytes)",
                self.seg.layout().data_len
            ));
        }
        registry_problems(&self.seg, &mut out);
        out
    }

    fn remove_if_unattached(&self) -> Result<bool, SegmentError> {
        self.seg.remove_if_unattached(self.member.current())
    }
}
