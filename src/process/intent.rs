//! Intent records: what a multi-step operation is working on, in its slot.

/// One intent record of a slot: "pages `page..page + pages` are in flight; the
/// operation's first step installs `expected` in page `page`'s state word".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intent {
    pub kind: u8,
    pub page: u32,
    pub pages: u32,
    pub expected: u64,
}

impl Intent {
    pub(super) fn encode(&self) -> u64 {
        (1 << 63)
            | (u64::from(self.kind & 0x7F) << 56)
            | (u64::from(self.pages & 0xFF_FFFF) << 32)
            | u64::from(self.page)
    }

    pub(super) fn decode(desc: u64, expected: u64) -> Option<Intent> {
        (desc >> 63 == 1).then_some(Intent {
            kind: ((desc >> 56) & 0x7F) as u8,
            pages: ((desc >> 32) & 0xFF_FFFF) as u32,
            page: desc as u32,
            expected,
        })
    }

    /// Whether page `p` lies in this record's range.
    pub fn covers(&self, p: usize) -> bool {
        (self.page as usize..self.page as usize + self.pages as usize).contains(&p)
    }
}
