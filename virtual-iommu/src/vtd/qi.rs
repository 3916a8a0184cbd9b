//! Queued invalidation (VT-d spec 6.5.2, 10.4.22-24).
//!
//! Software writes 128-bit descriptors into a ring in guest memory (IQA: base, size) and
//! moves the tail (IQT); the unit fetches from the head (IQH) to the tail in order. On an
//! error the unit sets FSTS.IQE, leaves the head on the offending descriptor, and fetches
//! nothing more until software clears IQE; then it resumes from the head.
//!
//! The descriptors this unit accepts (legacy mode, 128-bit):
//!
//! * **0x4, interrupt entry cache (IEC)**: G (bit 4) 0 = global, 1 = index-selective;
//!   IM (31:27) the index mask, IIDX (47:32) the index: 2^IM entries starting at IIDX with
//!   its low IM bits cleared. Reported as [`IecInvalidation`] so the VMM re-translates
//!   exactly the routes that use those entries.
//! * **0x5, invalidation wait**: IF (bit 4) sets ICS.IWC and raises the invalidation
//!   completion event; SW (bit 5) writes status data (63:32) to the dword-aligned address
//!   in the high qword (63:2); FN (bit 6) fences, which in-order processing already
//!   guarantees; PD (bit 7, page-request drain) is a no-op without page requests.
//! * **0x1, context-cache**: G (5:4) 1 = global, 2 = domain-selective (DID 31:16),
//!   3 = device-selective (DID, SID 47:32, FM 49:48). Reported as
//!   [`ContextInvalidation`]s; the unit drops the cached contexts they cover.
//! * **0x2, IOTLB**: G (5:4) 1 = global, 2 = domain-selective (DID 31:16), 3 =
//!   page-selective (DID, ADDR 63:12, IH bit 6 and AM 5:0 of the high qword; AM at most
//!   CAP.MAMV); DR and DW (7:6, draining) are accepted. Reported as
//!   [`IotlbInvalidation`]s; the unit drops the cached translations they cover, and the
//!   VMM re-reads the mappings of passed-through devices in that domain.
//!
//! Everything else is an invalid descriptor: device-TLB (0x3, no ECAP.DT), the PASID and
//! scalable-mode types, unknown types, reserved bits set, granularity 0, a page-selective
//! IOTLB invalidation with AM above CAP.MAMV. 256-bit
//! descriptors (IQA.DW = 1) are not supported (no scalable mode) and make every fetch an
//! invalidation queue error, as does a tail beyond the queue.

use thiserror::Error;

use crate::memory::{GuestMemoryReader, MemError};
use crate::msi::SourceId;

use super::dma::inval::{ContextInvalidation, DmaInvalidation, IotlbInvalidation};

use super::regs::{
    CAP_MAMV_VALUE, GRANULARITY_DEVICE_OR_PAGE, GRANULARITY_DOMAIN, GRANULARITY_GLOBAL,
    IQA_BASE_MASK, IQA_DW, IQA_QS_MASK, IQA_WRITABLE, IQ_ENTRIES_PER_PAGE_SHIFT, IQ_INDEX_MASK,
    IQ_INDEX_SHIFT,
};

/// Size in bytes of a 128-bit descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;

/// Descriptor type: context-cache invalidate.
pub const DESC_TYPE_CONTEXT_CACHE: u8 = 0x1;
/// Descriptor type: IOTLB invalidate.
pub const DESC_TYPE_IOTLB: u8 = 0x2;
/// Descriptor type: interrupt entry cache invalidate.
pub const DESC_TYPE_IEC: u8 = 0x4;
/// Descriptor type: invalidation wait.
pub const DESC_TYPE_WAIT: u8 = 0x5;

/// qw0 bits 3:0: type bits 3:0.
const DESC_TYPE_LOW_MASK: u64 = 0xf;
/// qw0 bits 11:9: type bits 6:4.
const DESC_TYPE_HIGH_SHIFT: u32 = 9;
/// Mask (after shifting) of type bits 6:4.
const DESC_TYPE_HIGH_MASK: u64 = 0x7;
/// Where type bits 6:4 go in the type number.
const DESC_TYPE_HIGH_POS: u32 = 4;

/// Context-cache / IOTLB: shift of the granularity (5:4).
const DESC_GRANULARITY_SHIFT: u32 = 4;
/// Mask (after shifting) of the two-bit granularity.
const DESC_GRANULARITY_MASK: u64 = 0x3;
/// Context-cache qw0 reserved bits: 8:6, 15:12, 63:50.
const CC_QW0_RESERVED: u64 = (0x7 << 6) | (0xf << 12) | (!0 << 50);
/// IOTLB qw0 reserved bits: 8, 15:12, 63:32.
const IOTLB_QW0_RESERVED: u64 = (1 << 8) | (0xf << 12) | (!0 << 32);
/// IOTLB qw1 reserved bits: 11:7.
const IOTLB_QW1_RESERVED: u64 = 0x1f << 7;
/// Context-cache and IOTLB: shift of the domain ID (31:16).
const DESC_DID_SHIFT: u32 = 16;
/// Mask (after shifting) of a 16-bit field.
const DESC_U16_MASK: u64 = 0xffff;
/// Context-cache: shift of the source ID (47:32).
const CC_SID_SHIFT: u32 = 32;
/// Context-cache: shift of the function mask (49:48).
const CC_FM_SHIFT: u32 = 48;
/// Context-cache: mask (after shifting) of the function mask.
const CC_FM_MASK: u64 = 0x3;
/// IOTLB qw1: the page address (63:12).
const IOTLB_ADDR_MASK: u64 = !0xfff;
/// IOTLB qw1: IH, invalidation hint (bit 6).
const IOTLB_IH: u64 = 1 << 6;
/// IOTLB qw1: AM, address mask (5:0).
const IOTLB_AM_MASK: u64 = 0x3f;

/// IEC: G, 1 = index-selective.
const IEC_INDEX_SELECTIVE: u64 = 1 << 4;
/// IEC: shift of the index mask (31:27).
const IEC_IM_SHIFT: u32 = 27;
/// IEC: mask (after shifting) of the index mask.
const IEC_IM_MASK: u64 = 0x1f;
/// IEC: shift of the interrupt index (47:32).
const IEC_IIDX_SHIFT: u32 = 32;
/// IEC: mask (after shifting) of the interrupt index.
const IEC_IIDX_MASK: u64 = 0xffff;
/// IEC qw0 reserved bits: 8:5, 26:12, 63:48.
const IEC_QW0_RESERVED: u64 = (0xf << 5) | (0x7fff << 12) | (0xffff << 48);
/// Index masks at or above this cover the whole 16-bit index space.
const IEC_IM_WHOLE_SPACE: u32 = 16;

/// Wait: IF, raise the completion interrupt.
const WAIT_IF: u64 = 1 << 4;
/// Wait: SW, write the status data.
const WAIT_SW: u64 = 1 << 5;
/// Wait: FN, fence.
const WAIT_FN: u64 = 1 << 6;
/// Wait qw0 reserved bits: 8, 31:12.
const WAIT_QW0_RESERVED: u64 = (1 << 8) | (0xf_ffff << 12);
/// Wait: shift of the status data (63:32).
const WAIT_STATUS_DATA_SHIFT: u32 = 32;
/// Wait qw1: the status address is dword-aligned (bits 1:0 reserved).
const WAIT_ADDR_RESERVED: u64 = 0x3;

/// A range of interrupt-entry-cache entries the guest invalidated: the routes whose IRTE
/// index it covers must be re-translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IecInvalidation {
    /// Every entry.
    Global,
    /// `count` entries from `start` (`start` aligned to `count`, a power of two).
    Range {
        /// First index.
        start: u32,
        /// Number of entries.
        count: u32,
    },
}

impl IecInvalidation {
    /// True when IRTE `index` is invalidated.
    pub fn covers(&self, index: u32) -> bool {
        match *self {
            IecInvalidation::Global => true,
            IecInvalidation::Range { start, count } => index >= start && index - start < count,
        }
    }
}

/// A status write requested by a wait descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusWrite {
    /// Guest-physical, dword-aligned address.
    pub address: u64,
    /// The dword to write.
    pub data: u32,
}

/// A decoded invalidation wait descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitDescriptor {
    /// IF: set ICS.IWC and raise the completion event.
    pub interrupt: bool,
    /// SW: the status write to perform.
    pub status_write: Option<StatusWrite>,
    /// FN: fence (descriptors after it wait for it; always true of in-order processing).
    pub fence: bool,
}

/// A decoded, valid descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Context-cache invalidation.
    ContextCache(ContextInvalidation),
    /// IOTLB invalidation.
    Iotlb(IotlbInvalidation),
    /// Interrupt entry cache invalidation.
    InterruptEntryCache(IecInvalidation),
    /// Invalidation wait.
    Wait(WaitDescriptor),
}

/// Why a descriptor is invalid.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// A type this unit does not implement.
    #[error("unsupported descriptor type {0:#x}")]
    UnsupportedType(u8),
    /// Reserved bits set (or a reserved granularity).
    #[error("reserved fields set in descriptor {qw0:#018x} {qw1:#018x}")]
    Reserved {
        /// Low qword.
        qw0: u64,
        /// High qword.
        qw1: u64,
    },
    /// A page-selective IOTLB invalidation with an address mask above CAP.MAMV.
    #[error("IOTLB address mask {0} above the supported {CAP_MAMV_VALUE}")]
    AddressMask(u8),
}

/// The type number of a descriptor (bits 11:9 and 3:0 of its low qword).
pub fn descriptor_type(qw0: u64) -> u8 {
    let low = qw0 & DESC_TYPE_LOW_MASK;
    let high = (qw0 >> DESC_TYPE_HIGH_SHIFT) & DESC_TYPE_HIGH_MASK;
    (low | (high << DESC_TYPE_HIGH_POS)) as u8
}

/// Decodes the 128-bit descriptor `qw0`, `qw1`.
pub fn decode_descriptor(qw0: u64, qw1: u64) -> Result<Descriptor, DescriptorError> {
    let reserved = DescriptorError::Reserved { qw0, qw1 };
    let granularity = (qw0 >> DESC_GRANULARITY_SHIFT) & DESC_GRANULARITY_MASK;
    match descriptor_type(qw0) {
        DESC_TYPE_CONTEXT_CACHE => {
            if qw0 & CC_QW0_RESERVED != 0 || qw1 != 0 {
                return Err(reserved);
            }
            let domain = ((qw0 >> DESC_DID_SHIFT) & DESC_U16_MASK) as u16;
            let inv = match granularity {
                GRANULARITY_GLOBAL => ContextInvalidation::Global,
                GRANULARITY_DOMAIN => ContextInvalidation::Domain(domain),
                GRANULARITY_DEVICE_OR_PAGE => ContextInvalidation::Device {
                    source: SourceId(((qw0 >> CC_SID_SHIFT) & DESC_U16_MASK) as u16),
                    function_mask: ((qw0 >> CC_FM_SHIFT) & CC_FM_MASK) as u8,
                },
                _ => return Err(reserved),
            };
            Ok(Descriptor::ContextCache(inv))
        }
        DESC_TYPE_IOTLB => {
            if qw0 & IOTLB_QW0_RESERVED != 0 || qw1 & IOTLB_QW1_RESERVED != 0 {
                return Err(reserved);
            }
            let domain = ((qw0 >> DESC_DID_SHIFT) & DESC_U16_MASK) as u16;
            let inv = match granularity {
                GRANULARITY_GLOBAL => IotlbInvalidation::Global,
                GRANULARITY_DOMAIN => IotlbInvalidation::Domain(domain),
                GRANULARITY_DEVICE_OR_PAGE => {
                    let am = (qw1 & IOTLB_AM_MASK) as u8;
                    if u64::from(am) > CAP_MAMV_VALUE {
                        return Err(DescriptorError::AddressMask(am));
                    }
                    IotlbInvalidation::pages(domain, qw1 & IOTLB_ADDR_MASK, am, qw1 & IOTLB_IH != 0)
                }
                _ => return Err(reserved),
            };
            Ok(Descriptor::Iotlb(inv))
        }
        DESC_TYPE_IEC => {
            if qw0 & IEC_QW0_RESERVED != 0 || qw1 != 0 {
                return Err(reserved);
            }
            if qw0 & IEC_INDEX_SELECTIVE == 0 {
                return Ok(Descriptor::InterruptEntryCache(IecInvalidation::Global));
            }
            let mask = ((qw0 >> IEC_IM_SHIFT) & IEC_IM_MASK) as u32;
            let index = ((qw0 >> IEC_IIDX_SHIFT) & IEC_IIDX_MASK) as u32;
            if mask >= IEC_IM_WHOLE_SPACE {
                // Beyond ECAP.MHMV; covering the whole space is the safe reading.
                log::debug!("vt-d: IEC index mask {mask} beyond MHMV, invalidating all");
                return Ok(Descriptor::InterruptEntryCache(IecInvalidation::Global));
            }
            let count = 1u32 << mask;
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Range {
                start: index & !(count - 1),
                count,
            }))
        }
        DESC_TYPE_WAIT => {
            if qw0 & WAIT_QW0_RESERVED != 0 {
                return Err(reserved);
            }
            let status_write = if qw0 & WAIT_SW != 0 {
                if qw1 & WAIT_ADDR_RESERVED != 0 {
                    return Err(reserved);
                }
                Some(StatusWrite {
                    address: qw1,
                    data: (qw0 >> WAIT_STATUS_DATA_SHIFT) as u32,
                })
            } else {
                None
            };
            Ok(Descriptor::Wait(WaitDescriptor {
                interrupt: qw0 & WAIT_IF != 0,
                status_write,
                fence: qw0 & WAIT_FN != 0,
            }))
        }
        other => Err(DescriptorError::UnsupportedType(other)),
    }
}

/// Why the queue stopped with an invalidation queue error.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    /// IQA.DW asks for 256-bit descriptors, which this unit does not support.
    #[error("256-bit descriptors requested (IQA.DW) but not supported")]
    WideDescriptors,
    /// The tail names a slot beyond the queue size.
    #[error("tail index {tail} beyond a queue of {entries} descriptors")]
    TailBeyondQueue {
        /// Tail index written.
        tail: u32,
        /// Queue size in descriptors.
        entries: u32,
    },
    /// A descriptor could not be fetched from guest memory.
    #[error("descriptor fetch at head {head} failed: {source}")]
    Fetch {
        /// Head index.
        head: u32,
        /// The memory error.
        source: MemError,
    },
    /// A descriptor is invalid.
    #[error("invalid descriptor at head {head}: {source}")]
    Invalid {
        /// Head index.
        head: u32,
        /// What is wrong with it.
        source: DescriptorError,
    },
    /// A wait descriptor's status write failed.
    #[error("status write of wait descriptor at head {head} failed: {source}")]
    StatusWrite {
        /// Head index.
        head: u32,
        /// The memory error.
        source: MemError,
    },
}

/// What one run of the queue did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// IEC invalidations, in queue order.
    pub invalidations: Vec<IecInvalidation>,
    /// Context-cache and IOTLB invalidations, in queue order.
    pub dma: Vec<DmaInvalidation>,
    /// Number of wait descriptors with IF processed.
    pub completion_interrupts: usize,
    /// Number of descriptors consumed.
    pub processed: usize,
    /// The error that stopped the run (the head stays on the offending descriptor).
    pub error: Option<QueueError>,
}

/// The invalidation queue registers (IQA, IQH, IQT) and the fetch loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvalidationQueue {
    iqa: u64,
    head: u32,
    iqt: u64,
}

impl InvalidationQueue {
    /// The reset state: everything zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// IQA as stored.
    pub fn address_register(&self) -> u64 {
        self.iqa
    }

    /// Stores a new IQA value and resets head and tail, as hardware does on an IQA write
    /// (the caller refuses the write while queued invalidation is enabled).
    pub fn write_address_register(&mut self, value: u64) {
        self.iqa = value & IQA_WRITABLE;
        self.head = 0;
        self.iqt = 0;
    }

    /// IQH: the head index in bits 18:4.
    pub fn head_register(&self) -> u64 {
        u64::from(self.head) << IQ_INDEX_SHIFT
    }

    /// IQT as stored (bits 18:4).
    pub fn tail_register(&self) -> u64 {
        self.iqt
    }

    /// Stores a new IQT value (reserved bits dropped).
    pub fn write_tail_register(&mut self, value: u64) {
        self.iqt = value & (IQ_INDEX_MASK << IQ_INDEX_SHIFT);
    }

    /// Resets the head to 0 (queued invalidation disabled).
    pub fn reset_head(&mut self) {
        self.head = 0;
    }

    /// The head index.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The tail index.
    pub fn tail(&self) -> u32 {
        ((self.iqt >> IQ_INDEX_SHIFT) & IQ_INDEX_MASK) as u32
    }

    /// Queue size in descriptors: 2^(QS + 8).
    pub fn entries(&self) -> u32 {
        1u32 << ((self.iqa & IQA_QS_MASK) as u32 + IQ_ENTRIES_PER_PAGE_SHIFT)
    }

    /// True when descriptors are waiting (head differs from tail).
    pub fn has_work(&self) -> bool {
        self.head != self.tail()
    }

    /// Fetches and executes descriptors from head to tail, at most one queue's worth.
    /// Status writes go to `mem` as they are reached; IEC invalidations and completion
    /// interrupts are returned for the caller to act on.
    pub fn run(&mut self, mem: &dyn GuestMemoryReader) -> QueueRun {
        let mut run = QueueRun::default();
        if self.iqa & IQA_DW != 0 {
            run.error = Some(QueueError::WideDescriptors);
            return run;
        }
        let entries = self.entries();
        let tail = self.tail();
        if tail >= entries {
            run.error = Some(QueueError::TailBeyondQueue { tail, entries });
            return run;
        }
        // The head can only be out of range after a shrinking IQA write, which resets it;
        // stay defensive anyway.
        if self.head >= entries {
            self.head = 0;
        }
        let base = self.iqa & IQA_BASE_MASK;
        while self.head != tail && run.processed < entries as usize {
            let head = self.head;
            let descriptor = match self.fetch(mem, base, head) {
                Ok((qw0, qw1)) => decode_descriptor(qw0, qw1)
                    .map_err(|source| QueueError::Invalid { head, source }),
                Err(source) => Err(QueueError::Fetch { head, source }),
            };
            let descriptor = match descriptor {
                Ok(d) => d,
                Err(e) => {
                    run.error = Some(e);
                    return run;
                }
            };
            match descriptor {
                Descriptor::ContextCache(c) => run.dma.push(DmaInvalidation::Context(c)),
                Descriptor::Iotlb(i) => run.dma.push(DmaInvalidation::Iotlb(i)),
                Descriptor::InterruptEntryCache(inv) => run.invalidations.push(inv),
                Descriptor::Wait(wait) => {
                    if let Some(sw) = wait.status_write {
                        if let Err(source) = mem.write(sw.address, &sw.data.to_le_bytes()) {
                            run.error = Some(QueueError::StatusWrite { head, source });
                            return run;
                        }
                    }
                    if wait.interrupt {
                        run.completion_interrupts += 1;
                    }
                }
            }
            self.head = (head + 1) % entries;
            run.processed += 1;
        }
        run
    }

    fn fetch(
        &self,
        mem: &dyn GuestMemoryReader,
        base: u64,
        head: u32,
    ) -> Result<(u64, u64), MemError> {
        let unmapped = MemError::Unmapped {
            gpa: base,
            len: DESCRIPTOR_SIZE,
        };
        let offset = u64::from(head)
            .checked_mul(DESCRIPTOR_SIZE as u64)
            .ok_or(unmapped)?;
        let gpa = base.checked_add(offset).ok_or(unmapped)?;
        let mut bytes = [0u8; DESCRIPTOR_SIZE];
        mem.read(gpa, &mut bytes)?;
        let mut qw0 = [0u8; 8];
        let mut qw1 = [0u8; 8];
        qw0.copy_from_slice(&bytes[..8]);
        qw1.copy_from_slice(&bytes[8..]);
        Ok((u64::from_le_bytes(qw0), u64::from_le_bytes(qw1)))
    }
}

/// Builders for descriptors, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A global IEC invalidation.
    pub fn iec_global() -> (u64, u64) {
        (u64::from(DESC_TYPE_IEC), 0)
    }

    /// An index-selective IEC invalidation of 2^`mask` entries at `index`.
    pub fn iec_index(index: u16, mask: u8) -> (u64, u64) {
        let qw0 = u64::from(DESC_TYPE_IEC)
            | IEC_INDEX_SELECTIVE
            | ((u64::from(mask) & IEC_IM_MASK) << IEC_IM_SHIFT)
            | (u64::from(index) << IEC_IIDX_SHIFT);
        (qw0, 0)
    }

    /// A wait descriptor; `status` asks for a status write of `(address, data)`.
    pub fn wait(interrupt: bool, status: Option<(u64, u32)>, fence: bool) -> (u64, u64) {
        let mut qw0 = u64::from(DESC_TYPE_WAIT);
        let mut qw1 = 0;
        if interrupt {
            qw0 |= WAIT_IF;
        }
        if fence {
            qw0 |= WAIT_FN;
        }
        if let Some((address, data)) = status {
            qw0 |= WAIT_SW | (u64::from(data) << WAIT_STATUS_DATA_SHIFT);
            qw1 = address;
        }
        (qw0, qw1)
    }

    /// A global context-cache invalidation.
    pub fn context_cache_global() -> (u64, u64) {
        (
            u64::from(DESC_TYPE_CONTEXT_CACHE) | (GRANULARITY_GLOBAL << DESC_GRANULARITY_SHIFT),
            0,
        )
    }

    /// A domain-selective context-cache invalidation.
    pub fn context_cache_domain(domain: u16) -> (u64, u64) {
        (
            u64::from(DESC_TYPE_CONTEXT_CACHE)
                | (GRANULARITY_DOMAIN << DESC_GRANULARITY_SHIFT)
                | (u64::from(domain) << DESC_DID_SHIFT),
            0,
        )
    }

    /// A device-selective context-cache invalidation of `source` (function mask `fm`).
    pub fn context_cache_device(domain: u16, source: u16, fm: u8) -> (u64, u64) {
        (
            u64::from(DESC_TYPE_CONTEXT_CACHE)
                | (GRANULARITY_DEVICE_OR_PAGE << DESC_GRANULARITY_SHIFT)
                | (u64::from(domain) << DESC_DID_SHIFT)
                | (u64::from(source) << CC_SID_SHIFT)
                | ((u64::from(fm) & CC_FM_MASK) << CC_FM_SHIFT),
            0,
        )
    }

    /// A global IOTLB invalidation.
    pub fn iotlb_global() -> (u64, u64) {
        (
            u64::from(DESC_TYPE_IOTLB) | (GRANULARITY_GLOBAL << DESC_GRANULARITY_SHIFT),
            0,
        )
    }

    /// A domain-selective IOTLB invalidation.
    pub fn iotlb_domain(domain: u16) -> (u64, u64) {
        (
            u64::from(DESC_TYPE_IOTLB)
                | (GRANULARITY_DOMAIN << DESC_GRANULARITY_SHIFT)
                | (u64::from(domain) << DESC_DID_SHIFT),
            0,
        )
    }

    /// A page-selective IOTLB invalidation of 2^`am` pages at `address` in `domain`.
    pub fn iotlb_pages(domain: u16, address: u64, am: u8, leaf_only: bool) -> (u64, u64) {
        (
            u64::from(DESC_TYPE_IOTLB)
                | (GRANULARITY_DEVICE_OR_PAGE << DESC_GRANULARITY_SHIFT)
                | (u64::from(domain) << DESC_DID_SHIFT),
            (address & IOTLB_ADDR_MASK)
                | (u64::from(am) & IOTLB_AM_MASK)
                | if leaf_only { IOTLB_IH } else { 0 },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn dec(d: (u64, u64)) -> Result<Descriptor, DescriptorError> {
        decode_descriptor(d.0, d.1)
    }

    #[test]
    fn iec_global_and_selective() {
        assert_eq!(
            dec(iec_global()),
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Global))
        );
        assert_eq!(
            dec(iec_index(0x1234, 0)),
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Range {
                start: 0x1234,
                count: 1
            }))
        );
        // IM aligns the index down.
        assert_eq!(
            dec(iec_index(0x1237, 2)),
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Range {
                start: 0x1234,
                count: 4
            }))
        );
        assert_eq!(
            dec(iec_index(0xffff, 15)),
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Range {
                start: 0x8000,
                count: 0x8000
            }))
        );
        assert_eq!(
            dec(iec_index(3, 16)),
            Ok(Descriptor::InterruptEntryCache(IecInvalidation::Global))
        );
    }

    #[test]
    fn covers() {
        let r = IecInvalidation::Range { start: 8, count: 8 };
        assert!(!r.covers(7));
        assert!(r.covers(8));
        assert!(r.covers(15));
        assert!(!r.covers(16));
        assert!(IecInvalidation::Global.covers(0x1_ffff));
        let top = IecInvalidation::Range {
            start: 0x8000,
            count: 0x8000,
        };
        assert!(top.covers(0xffff));
        assert!(!top.covers(0x1_0000));
    }

    #[test]
    fn reserved_bits_rejected() {
        let (qw0, _) = iec_global();
        for bad in [
            (qw0 | (1 << 5), 0),
            (qw0 | (1 << 12), 0),
            (qw0 | (1 << 48), 0),
            (qw0, 1),
        ] {
            assert!(
                matches!(dec(bad), Err(DescriptorError::Reserved { .. })),
                "{bad:x?}"
            );
        }
        let (w0, w1) = wait(false, Some((0x1000, 1)), false);
        assert!(
            dec((w0, w1 | 1)).is_err(),
            "status address must be dword aligned"
        );
        assert!(dec((w0 | (1 << 8), w1)).is_err());
        assert!(dec((w0 | (1 << 20), w1)).is_err());
        // Without SW the address is not looked at.
        assert!(dec((u64::from(DESC_TYPE_WAIT), 3)).is_ok());
        // Granularity 0 is reserved for context-cache and IOTLB.
        assert!(dec((u64::from(DESC_TYPE_CONTEXT_CACHE), 0)).is_err());
        assert!(dec((u64::from(DESC_TYPE_IOTLB), 0)).is_err());
        assert_eq!(
            dec(context_cache_global()),
            Ok(Descriptor::ContextCache(ContextInvalidation::Global))
        );
        assert_eq!(
            dec(iotlb_global()),
            Ok(Descriptor::Iotlb(IotlbInvalidation::Global))
        );
    }

    #[test]
    fn unsupported_types() {
        for t in [0u64, 3, 6, 7, 8, 0xf] {
            assert_eq!(dec((t, 0)), Err(DescriptorError::UnsupportedType(t as u8)));
        }
        // Type bits 6:4 live in qw0 bits 11:9.
        let (qw0, _) = iec_global();
        assert_eq!(
            dec((qw0 | (1 << 9), 0)),
            Err(DescriptorError::UnsupportedType(0x14))
        );
    }

    #[test]
    fn wait_fields() {
        assert_eq!(
            dec(wait(true, Some((0x2000, 0xdead_beef)), true)),
            Ok(Descriptor::Wait(WaitDescriptor {
                interrupt: true,
                status_write: Some(StatusWrite {
                    address: 0x2000,
                    data: 0xdead_beef
                }),
                fence: true,
            }))
        );
        // PD (bit 7) is accepted.
        let (qw0, qw1) = wait(false, None, false);
        assert!(dec((qw0 | (1 << 7), qw1)).is_ok());
    }

    #[test]
    fn registers() {
        let mut q = InvalidationQueue::new();
        q.write_tail_register(0xffff_ffff_ffff_ffff);
        assert_eq!(q.tail_register(), 0x7_fff0);
        assert_eq!(q.tail(), 0x7fff);
        q.write_address_register(0x1234_5678_9abc_defa);
        assert_eq!(q.address_register(), 0x1234_5678_9abc_d802);
        assert_eq!(q.tail(), 0, "IQA write resets the tail");
        assert_eq!(q.head_register(), 0);
        assert_eq!(q.entries(), 1024);
    }

    #[test]
    fn dma_invalidation_descriptors() {
        assert_eq!(
            dec(context_cache_domain(0x1234)),
            Ok(Descriptor::ContextCache(ContextInvalidation::Domain(
                0x1234
            )))
        );
        assert_eq!(
            dec(context_cache_device(7, 0x0108, 2)),
            Ok(Descriptor::ContextCache(ContextInvalidation::Device {
                source: SourceId(0x0108),
                function_mask: 2
            }))
        );
        assert_eq!(
            dec(iotlb_domain(9)),
            Ok(Descriptor::Iotlb(IotlbInvalidation::Domain(9)))
        );
        assert_eq!(
            dec(iotlb_pages(9, 0x1234_5000, 0, true)),
            Ok(Descriptor::Iotlb(IotlbInvalidation::Pages {
                domain: 9,
                start: 0x1234_5000,
                address_mask: 0,
                leaf_only: true
            }))
        );
        // The address is aligned down to the mask; DR/DW (7:6) are accepted.
        let (qw0, qw1) = iotlb_pages(9, 0x1234_5000, 9, false);
        assert_eq!(
            dec((qw0 | (3 << 6), qw1)),
            Ok(Descriptor::Iotlb(IotlbInvalidation::Pages {
                domain: 9,
                start: 0x1220_0000,
                address_mask: 9,
                leaf_only: false
            }))
        );
        assert_eq!(
            dec(iotlb_pages(9, 0, 19, false)),
            Err(DescriptorError::AddressMask(19))
        );
        assert!(dec(iotlb_pages(9, 0, 18, false)).is_ok());
        // Reserved bits of the high qword (11:7) and of the context-cache descriptor.
        assert!(dec((qw0, qw1 | (1 << 7))).is_err());
        let (c0, _) = context_cache_domain(1);
        assert!(dec((c0, 1)).is_err());
        assert!(dec((c0 | (1 << 50), 0)).is_err());
    }
}
