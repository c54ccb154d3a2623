//! [`Inspect`] for the slab allocator: the bitmap tails, the caches and the
//! registry; the largest free block is one slot (or none).

use std::collections::HashSet;

use super::*;
use crate::alloc::inspect::{dead_slot, registry_problems, Consistency, Inspect};
use crate::process::RegistryInfo;

impl Inspect for SlabAllocator {
    fn registry(&self) -> RegistryInfo {
        process::registry_info(&self.seg, self.member.current())
    }

    fn largest_free_block(&self) -> u64 {
        if self.stats().free_bytes > 0 {
            self.slot_size
        } else {
            0
        }
    }

    fn block_size(&self, offset: Offset) -> Option<u64> {
        let (slot, within) = self.slot_of(offset).ok()?;
        let taken = self.bits()[slot / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0;
        (within == 0 && taken).then_some(self.slot_size)
    }

    fn check(&self) -> Consistency {
        let mut out = Consistency {
            checked: self.slots,
            ..Consistency::default()
        };
        // The bits past the last slot stay set, in the bitmap and in the summary.
        let tail = self.slots % 64;
        if tail != 0 {
            let w = self.bits()[(self.words - 1) as usize].load(Ordering::Acquire);
            if w | ((1u64 << tail) - 1) != !0 {
                out.problems
                    .push("bitmap: a bit past the last slot is clear".to_owned());
            }
        }
        let stail = self.words % 64;
        if stail != 0 {
            let s = self.summary();
            if s[s.len() - 1].load(Ordering::Acquire) | ((1u64 << stail) - 1) != !0 {
                out.problems
                    .push("summary: a bit past the last bitmap word is clear".to_owned());
            }
        }
        if self.depth != 0 {
            let mut seen = HashSet::new();
            let data = self.seg.layout().data_offset;
            for slot in 0..process::SLOTS {
                if dead_slot(&self.seg, slot, self.member.current()) {
                    // Its reclaimer returns it (see the free list's check).
                    out.in_flight += self.mag(slot).len() as u64;
                    continue;
                }
                for off in self.mag(slot).entries() {
                    out.cached_blocks += 1;
                    let mut bad = |what: &str| {
                        out.problems.push(format!(
                            "cache of registry slot {slot}: slot {off:#x} {what}"
                        ))
                    };
                    if self.mark(off).is_none() {
                        bad("is not the start of a slot");
                        continue;
                    }
                    if !seen.insert(off) {
                        bad("is cached twice");
                        continue;
                    }
                    let i = self.slot_index(off - data) as usize;
                    if self.bits()[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) == 0 {
                        bad("is free in the bitmap");
                    }
                }
            }
        }
        registry_problems(&self.seg, &mut out);
        out
    }

    fn remove_if_unattached(&self) -> Result<bool, SegmentError> {
        self.seg.remove_if_unattached(self.member.current())
    }
}
