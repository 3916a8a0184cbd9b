//! DMA remapping in legacy mode (VT-d spec chapter 3): a device's DMA request, named by
//! its requester ID and input address (IOVA), becomes a guest-physical address or a
//! fault.
//!
//! The pipeline, in the specification's order (each step's fault reason in
//! [`fault::DmaFaultReason`]):
//!
//! 1. translation disabled (GSTS.TES = 0): the input address is the output address;
//! 2. context: from the context cache, else root entry → context entry
//!    ([`context`]: root readable 0x8, present 0x1, reserved 0xA; context table readable
//!    0x9, present 0x2, reserved 0xB, supported type and width 0x3);
//! 3. pass-through context: the input address is the output address;
//! 4. address width: the input address must fit min(CAP.MGAW, the context's width) (0x4);
//! 5. translation: from the IOTLB (domain, page), else the second-level walk ([`walk`]:
//!    readable tables 0x3/0x7, present and permitted 0x5/0x6, reserved bits 0xC);
//! 6. permission of the cached or walked leaf for this request (0x5/0x6).
//!
//! Successful contexts and leaves are cached ([`cache`]) until the guest invalidates them
//! ([`inval`]); faults are never cached. [`DmaRemapping::view`] and [`walk::leaves`] read
//! the tables afresh for the VMM's shadowing of passed-through devices.

pub mod cache;
pub mod context;
pub mod fault;
pub mod inval;
pub mod walk;

use crate::memory::GuestMemoryReader;
use crate::msi::SourceId;

use cache::{CacheStats, ContextCache, Iotlb};
use context::{Context, ContextKind, ContextSupport};
use fault::{DmaFault, DmaFaultReason};
use inval::DmaInvalidation;
use walk::{Leaf, Superpages, Table, ADDRESS_BITS};

/// The block size identity translations (translation disabled, pass-through contexts) are
/// reported in: large, so a long transfer needs few lookups, and aligned, so a block never
/// wraps.
pub const IDENTITY_BLOCK: u64 = 1 << 30;

/// One DMA request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaRequest {
    /// The requester (bus, device, function).
    pub source: SourceId,
    /// The input address (I/O virtual address).
    pub iova: u64,
    /// A write to memory (the device stores) rather than a read.
    pub write: bool,
}

/// A translated block: `[iova, iova + size)` maps to `[gpa, gpa + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaMapping {
    /// Input address of the block (aligned to its size).
    pub iova: u64,
    /// Output (guest-physical) address of the block.
    pub gpa: u64,
    /// Block size: a page (4 KiB, 2 MiB, 1 GiB) or [`IDENTITY_BLOCK`].
    pub size: u64,
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// The domain it belongs to (`None`: translation disabled).
    pub domain: Option<u16>,
}

impl DmaMapping {
    fn identity(iova: u64, domain: Option<u16>) -> Self {
        let base = iova & !(IDENTITY_BLOCK - 1);
        DmaMapping {
            iova: base,
            gpa: base,
            size: IDENTITY_BLOCK,
            read: true,
            write: true,
            domain,
        }
    }

    /// The output address of `iova`, which must lie in the block.
    pub fn gpa_of(&self, iova: u64) -> u64 {
        self.gpa.wrapping_add(iova.wrapping_sub(self.iova))
    }

    /// Bytes from `iova` to the end of the block.
    pub fn remaining(&self, iova: u64) -> u64 {
        self.size.saturating_sub(iova.wrapping_sub(self.iova))
    }
}

/// How a device's DMA is translated at this moment (read from the tables, not the caches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceView {
    /// Translation is disabled: every request reaches its input address.
    Untranslated,
    /// A pass-through context: every request reaches its input address.
    PassThrough {
        /// The context's domain.
        domain: u16,
    },
    /// Through second-level tables.
    Translated {
        /// The context's domain.
        domain: u16,
        /// The tables.
        table: Table,
    },
    /// Every request faults with `reason` (not present, reserved bits, ...).
    Blocked {
        /// The fault a request would record.
        reason: DmaFaultReason,
    },
}

/// What the DMA-remapping hardware supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSupport {
    /// Context-entry features (SAGAW, PT).
    pub context: ContextSupport,
    /// Superpage sizes (SLLPS).
    pub superpages: Superpages,
}

/// The translation engine and its caches.
#[derive(Clone, Debug)]
pub struct DmaRemapping {
    support: DmaSupport,
    contexts: ContextCache,
    iotlb: Iotlb,
}

/// Reads a 128-bit entry at `gpa`.
fn read_entry(mem: &dyn GuestMemoryReader, gpa: Option<u64>) -> Option<(u64, u64)> {
    let mut b = [0u8; 16];
    mem.read(gpa?, &mut b).ok()?;
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    Some((u64::from_le_bytes(lo), u64::from_le_bytes(hi)))
}

/// Reads and decodes `source`'s context entry through the root table at `root_table`.
/// The error carries the reason and the FPD bit of the context entry when one was read.
pub fn resolve_context(
    mem: &dyn GuestMemoryReader,
    root_table: u64,
    support: ContextSupport,
    source: SourceId,
) -> Result<Context, (DmaFaultReason, bool)> {
    let bus = u64::from(source.0 >> 8);
    let devfn = u64::from(source.0 & 0xff);
    let root_gpa = root_table.checked_add(bus * context::ENTRY_SIZE);
    let (rlo, rhi) =
        read_entry(mem, root_gpa).ok_or((DmaFaultReason::RootTableUnreadable, false))?;
    let ctp = context::root_entry(rlo, rhi).map_err(|r| (r, false))?;
    let ctx_gpa = ctp.checked_add(devfn * context::ENTRY_SIZE);
    let (clo, chi) =
        read_entry(mem, ctx_gpa).ok_or((DmaFaultReason::ContextTableUnreadable, false))?;
    let fpd = context::context_fpd(clo);
    context::context_entry(clo, chi, support).map_err(|r| (r, fpd))
}

impl DmaRemapping {
    /// An engine with empty caches.
    pub fn new(support: DmaSupport) -> Self {
        DmaRemapping {
            support,
            contexts: ContextCache::default(),
            iotlb: Iotlb::default(),
        }
    }

    /// What the hardware supports.
    pub fn support(&self) -> DmaSupport {
        self.support
    }

    /// Translates `req` through the root table at `root_table` (`None`: translation
    /// disabled), using and filling the caches. The fault is returned, not recorded.
    pub fn translate(
        &mut self,
        mem: &dyn GuestMemoryReader,
        root_table: Option<u64>,
        req: DmaRequest,
    ) -> Result<DmaMapping, DmaFault> {
        let Some(root_table) = root_table else {
            return Ok(DmaMapping::identity(req.iova, None));
        };
        let fault = |reason, fpd| DmaFault::new(reason, req.source, req.iova, req.write, fpd);
        let ctx = match self.contexts.get(req.source) {
            Some(c) => c,
            None => {
                let c = resolve_context(mem, root_table, self.support.context, req.source)
                    .map_err(|(r, fpd)| fault(r, fpd))?;
                self.contexts.insert(req.source, c);
                c
            }
        };
        let (root, levels) = match ctx.kind {
            ContextKind::PassThrough => {
                return Ok(DmaMapping::identity(req.iova, Some(ctx.domain)));
            }
            ContextKind::Translated { root, levels } => (root, levels),
        };
        let width = ADDRESS_BITS.min(levels.address_bits());
        if req.iova >> width != 0 {
            return Err(fault(DmaFaultReason::AddressBeyondWidth, ctx.fpd));
        }
        let leaf = match self.iotlb.get(ctx.domain, req.iova) {
            Some(l) => l,
            None => {
                let table = Table {
                    root,
                    levels,
                    superpages: self.support.superpages,
                };
                let l = walk::translate(mem, &table, req.iova, req.write)
                    .map_err(|r| fault(r, ctx.fpd))?;
                self.iotlb.insert(ctx.domain, l);
                l
            }
        };
        let allowed = if req.write { leaf.write } else { leaf.read };
        if !allowed {
            return Err(fault(DmaFaultReason::denied(req.write), ctx.fpd));
        }
        Ok(mapping(leaf, ctx.domain))
    }

    /// How `source`'s DMA is translated now, read from the tables (not the caches)
    /// through the root table at `root_table` (`None`: translation disabled).
    pub fn view(
        &self,
        mem: &dyn GuestMemoryReader,
        root_table: Option<u64>,
        source: SourceId,
    ) -> DeviceView {
        let Some(root_table) = root_table else {
            return DeviceView::Untranslated;
        };
        match resolve_context(mem, root_table, self.support.context, source) {
            Ok(Context {
                domain,
                kind: ContextKind::PassThrough,
                ..
            }) => DeviceView::PassThrough { domain },
            Ok(Context {
                domain,
                kind: ContextKind::Translated { root, levels },
                ..
            }) => DeviceView::Translated {
                domain,
                table: Table {
                    root,
                    levels,
                    superpages: self.support.superpages,
                },
            },
            Err((reason, _)) => DeviceView::Blocked { reason },
        }
    }

    /// Applies a guest invalidation to the caches.
    pub fn invalidate(&mut self, inv: &DmaInvalidation) {
        match inv {
            DmaInvalidation::Context(c) => self.contexts.invalidate(c),
            DmaInvalidation::Iotlb(i) => self.iotlb.invalidate(i),
        }
    }

    /// Empties both caches.
    pub fn flush(&mut self) {
        self.contexts.clear();
        self.iotlb.clear();
    }

    /// Hit and miss counts of the context cache and the IOTLB.
    pub fn stats(&self) -> (CacheStats, CacheStats) {
        (self.contexts.stats(), self.iotlb.stats())
    }
}

fn mapping(leaf: Leaf, domain: u16) -> DmaMapping {
    DmaMapping {
        iova: leaf.iova,
        gpa: leaf.gpa,
        size: leaf.size,
        read: leaf.read,
        write: leaf.write,
        domain: Some(domain),
    }
}

#[cfg(test)]
mod tests;
