//! The unit's translation caches: a context cache (requester → decoded context entry) and
//! an IOTLB (domain and input page → leaf), both bounded.
//!
//! Only successful lookups are cached: a fault is always recomputed from the tables.
//! That is allowed with and without caching mode (a unit may cache less than it could),
//! and it means a guest that fixes an entry without invalidating may see the fix early,
//! never a stale fault. Hardware may also drop cached entries at any time, which is what
//! the bounds do: a cache that is full is emptied before the next insertion, so a guest
//! cannot grow the VMM's memory by touching many pages.

use std::collections::HashMap;

use crate::msi::SourceId;

use super::context::Context;
use super::inval::{ContextInvalidation, IotlbInvalidation};
use super::walk::{Leaf, PAGE_SHIFT};

/// Most cached context entries.
pub const CONTEXT_CACHE_ENTRIES: usize = 4096;
/// Most cached IOTLB entries.
pub const IOTLB_ENTRIES: usize = 8192;
/// Input-address bits per level above the page offset.
const LEVEL_STRIDE: u32 = 9;

/// Hit and miss counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the tables.
    pub misses: u64,
}

/// Cached context entries by requester.
#[derive(Clone, Debug, Default)]
pub struct ContextCache {
    entries: HashMap<u16, Context>,
    stats: CacheStats,
}

impl ContextCache {
    /// The cached context of `source`.
    pub fn get(&mut self, source: SourceId) -> Option<Context> {
        let hit = self.entries.get(&source.0).copied();
        if hit.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        hit
    }

    /// Caches `context` for `source`.
    pub fn insert(&mut self, source: SourceId, context: Context) {
        if self.entries.len() >= CONTEXT_CACHE_ENTRIES && !self.entries.contains_key(&source.0) {
            self.entries.clear();
        }
        self.entries.insert(source.0, context);
    }

    /// Drops what `inv` covers.
    pub fn invalidate(&mut self, inv: &ContextInvalidation) {
        match inv {
            ContextInvalidation::Global => self.entries.clear(),
            _ => self
                .entries
                .retain(|&sid, c| !inv.covers(SourceId(sid), c.domain)),
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

/// An IOTLB key: domain, level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) and page number at it.
type IotlbKey = (u16, u8, u64);

/// Cached leaves by domain and page.
#[derive(Clone, Debug, Default)]
pub struct Iotlb {
    entries: HashMap<IotlbKey, Leaf>,
    stats: CacheStats,
}

fn page_number(iova: u64, level: u32) -> u64 {
    iova >> (PAGE_SHIFT + LEVEL_STRIDE * (level - 1))
}

impl Iotlb {
    /// The cached leaf of `domain` that contains `iova`.
    pub fn get(&mut self, domain: u16, iova: u64) -> Option<Leaf> {
        let hit = (1..=3u32).find_map(|level| {
            self.entries
                .get(&(domain, level as u8, page_number(iova, level)))
                .copied()
        });
        if hit.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        hit
    }

    /// Caches `leaf` for `domain`.
    pub fn insert(&mut self, domain: u16, leaf: Leaf) {
        let level = leaf.level();
        let key = (domain, level as u8, page_number(leaf.iova, level));
        if self.entries.len() >= IOTLB_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        self.entries.insert(key, leaf);
    }

    /// Drops what `inv` covers.
    pub fn invalidate(&mut self, inv: &IotlbInvalidation) {
        match inv {
            IotlbInvalidation::Global => self.entries.clear(),
            _ => self
                .entries
                .retain(|&(domain, _, _), leaf| !inv.covers(domain, leaf.iova, leaf.size)),
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::dma::context::ContextKind;

    fn leaf(iova: u64, size: u64) -> Leaf {
        Leaf {
            iova,
            gpa: iova + 0x1000_0000,
            size,
            read: true,
            write: true,
        }
    }

    #[test]
    fn iotlb_finds_every_page_size_and_invalidates_by_range() {
        let mut t = Iotlb::default();
        t.insert(1, leaf(0x1000, 0x1000));
        t.insert(1, leaf(0x4000_0000, 0x4000_0000));
        t.insert(2, leaf(0x20_0000, 0x20_0000));
        assert_eq!(t.get(1, 0x1fff), Some(leaf(0x1000, 0x1000)));
        assert_eq!(t.get(1, 0x2000), None);
        assert_eq!(t.get(1, 0x7fff_ffff), Some(leaf(0x4000_0000, 0x4000_0000)));
        assert_eq!(t.get(2, 0x3f_ffff), Some(leaf(0x20_0000, 0x20_0000)));
        assert_eq!(t.get(1, 0x20_0000), None, "domains are separate");
        assert_eq!(t.stats(), CacheStats { hits: 3, misses: 2 });
        // A page-selective invalidation inside the 1 GiB leaf drops it.
        t.invalidate(&IotlbInvalidation::pages(1, 0x5000_0000, 0, true));
        assert_eq!(t.get(1, 0x4000_0000), None);
        assert!(t.get(1, 0x1000).is_some());
        t.invalidate(&IotlbInvalidation::Domain(2));
        assert_eq!(t.get(2, 0x20_0000), None);
        assert_eq!(t.len(), 1);
        t.invalidate(&IotlbInvalidation::Global);
        assert!(t.is_empty());
    }

    #[test]
    fn caches_are_bounded() {
        let mut t = Iotlb::default();
        for i in 0..IOTLB_ENTRIES as u64 + 10 {
            t.insert(0, leaf(i << 12, 0x1000));
            assert!(t.len() <= IOTLB_ENTRIES);
        }
        let mut c = ContextCache::default();
        let ctx = Context {
            domain: 1,
            kind: ContextKind::PassThrough,
            fpd: false,
        };
        for sid in 0..=u16::MAX {
            c.insert(SourceId(sid), ctx);
            assert!(c.len() <= CONTEXT_CACHE_ENTRIES);
        }
    }

    #[test]
    fn context_cache_invalidation() {
        let mut c = ContextCache::default();
        let ctx = |domain| Context {
            domain,
            kind: ContextKind::PassThrough,
            fpd: false,
        };
        c.insert(SourceId(0x08), ctx(1));
        c.insert(SourceId(0x09), ctx(2));
        c.insert(SourceId(0x10), ctx(1));
        c.invalidate(&ContextInvalidation::Domain(1));
        assert_eq!(c.len(), 1);
        c.invalidate(&ContextInvalidation::Device {
            source: SourceId(0x08),
            function_mask: 3,
        });
        assert!(c.is_empty());
        assert_eq!(c.get(SourceId(0x09)), None);
    }
}
