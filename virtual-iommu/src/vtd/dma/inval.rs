//! Context-cache and IOTLB invalidation requests (VT-d spec 6.5), from the register
//! interface (CCMD, IOTLB/IVA) and from invalidation-queue descriptors.
//!
//! | request | granularities |
//! |---|---|
//! | context-cache | global; domain-selective (DID); device-selective (SID with a function mask FM: 0 none, 1 bit 2, 2 bits 2:1, 3 bits 2:0 of the SID ignored) |
//! | IOTLB | global; domain-selective (DID); page-selective (DID, 2^AM pages at ADDR, AM at most CAP.MAMV) |
//!
//! Granularity 0 is reserved: a descriptor with it is invalid (invalidation queue error);
//! a register write with it completes with actual granularity 0 ("not performed"), as does
//! a page-selective register request with AM above CAP.MAMV.

use crate::msi::SourceId;

use super::walk::PAGE_SHIFT;

/// A context-cache invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextInvalidation {
    /// Every context entry.
    Global,
    /// The entries of domain `0`.
    Domain(u16),
    /// The entries of `source`, ignoring the SID bits `function_mask` names.
    Device {
        /// The requester.
        source: SourceId,
        /// FM: 0-3.
        function_mask: u8,
    },
}

impl ContextInvalidation {
    /// True when the cached context of `source` in `domain` is invalidated.
    pub fn covers(&self, source: SourceId, domain: u16) -> bool {
        match *self {
            ContextInvalidation::Global => true,
            ContextInvalidation::Domain(d) => d == domain,
            ContextInvalidation::Device {
                source: s,
                function_mask,
            } => {
                let ignored: u16 = match function_mask & 3 {
                    0 => 0,
                    1 => 0b100,
                    2 => 0b110,
                    _ => 0b111,
                };
                (s.0 & !ignored) == (source.0 & !ignored)
            }
        }
    }

    /// True when `source`'s context is covered whatever its domain (global or
    /// device-selective): the cue for re-reading it.
    pub fn covers_device(&self, source: SourceId) -> bool {
        match self {
            ContextInvalidation::Domain(_) => false,
            _ => self.covers(source, 0),
        }
    }
}

/// An IOTLB invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IotlbInvalidation {
    /// Every cached translation.
    Global,
    /// The translations of domain `0`.
    Domain(u16),
    /// The translations of `domain` for `[start, start + 2^address_mask pages)`.
    Pages {
        /// Domain.
        domain: u16,
        /// First input address (aligned to the range).
        start: u64,
        /// AM: log2 of the number of 4 KiB pages.
        address_mask: u8,
        /// IH: only leaf entries changed.
        leaf_only: bool,
    },
}

impl IotlbInvalidation {
    /// A page-selective invalidation of 2^`am` pages containing `address` (aligned down
    /// to the range, as hardware ignores the low address bits AM covers).
    pub fn pages(domain: u16, address: u64, am: u8, leaf_only: bool) -> Self {
        let bytes_log2 = u32::from(am) + PAGE_SHIFT;
        let start = if bytes_log2 >= 64 {
            0
        } else {
            address & !((1u64 << bytes_log2) - 1)
        };
        IotlbInvalidation::Pages {
            domain,
            start,
            address_mask: am,
            leaf_only,
        }
    }

    /// The input-address range `[start, end)` it covers (the whole space for global and
    /// domain-selective invalidations); `end` saturates at `u64::MAX`.
    pub fn range(&self) -> (u64, u64) {
        match *self {
            IotlbInvalidation::Pages {
                start,
                address_mask,
                ..
            } => {
                let bytes_log2 = u32::from(address_mask) + PAGE_SHIFT;
                let len = 1u64.checked_shl(bytes_log2).unwrap_or(u64::MAX);
                (start, start.saturating_add(len))
            }
            _ => (0, u64::MAX),
        }
    }

    /// True when translations of `domain` may be covered.
    pub fn covers_domain(&self, domain: u16) -> bool {
        match *self {
            IotlbInvalidation::Global => true,
            IotlbInvalidation::Domain(d) | IotlbInvalidation::Pages { domain: d, .. } => {
                d == domain
            }
        }
    }

    /// True when a cached translation of `domain` for `[iova, iova + size)` is covered.
    pub fn covers(&self, domain: u16, iova: u64, size: u64) -> bool {
        if !self.covers_domain(domain) {
            return false;
        }
        let (start, end) = self.range();
        iova < end && iova.saturating_add(size) > start
    }
}

/// A DMA-remapping cache invalidation, in the order the guest issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaInvalidation {
    /// Context cache.
    Context(ContextInvalidation),
    /// IOTLB.
    Iotlb(IotlbInvalidation),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_coverage() {
        let d = SourceId(0x0108);
        assert!(ContextInvalidation::Global.covers(d, 5));
        assert!(ContextInvalidation::Domain(5).covers(d, 5));
        assert!(!ContextInvalidation::Domain(5).covers(d, 6));
        assert!(!ContextInvalidation::Domain(5).covers_device(d));
        let dev = |sid: u16, fm: u8| ContextInvalidation::Device {
            source: SourceId(sid),
            function_mask: fm,
        };
        assert!(dev(0x0108, 0).covers(d, 9));
        assert!(!dev(0x0109, 0).covers(d, 9));
        assert!(dev(0x010c, 1).covers(d, 9), "bit 2 ignored");
        assert!(!dev(0x010a, 1).covers(d, 9));
        assert!(dev(0x010e, 2).covers(d, 9));
        assert!(dev(0x010f, 3).covers(d, 9));
        assert!(!dev(0x0110, 3).covers(d, 9));
        assert!(dev(0x0108, 0).covers_device(d));
    }

    #[test]
    fn iotlb_coverage() {
        let p = IotlbInvalidation::pages(3, 0x1_2345_6000, 0, true);
        assert_eq!(p.range(), (0x1_2345_6000, 0x1_2345_7000));
        assert!(p.covers(3, 0x1_2345_6000, 0x1000));
        assert!(!p.covers(4, 0x1_2345_6000, 0x1000));
        assert!(!p.covers(3, 0x1_2345_7000, 0x1000));
        // A 2 MiB cached translation overlapping the page is covered.
        assert!(p.covers(3, 0x1_2340_0000, 0x20_0000));
        // AM aligns the start down.
        let q = IotlbInvalidation::pages(3, 0x1_2345_6000, 9, false);
        assert_eq!(q.range(), (0x1_2340_0000, 0x1_2360_0000));
        // Huge masks saturate instead of overflowing.
        let all = IotlbInvalidation::pages(3, u64::MAX, 63, false);
        assert_eq!(all.range(), (0, u64::MAX));
        assert!(IotlbInvalidation::Global.covers(9, 0, 1));
        assert!(IotlbInvalidation::Domain(9).covers(9, u64::MAX - 1, 1));
        assert!(!IotlbInvalidation::Domain(9).covers_domain(8));
    }
}
