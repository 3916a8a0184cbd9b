//! The invalidation queue: one 4 KiB page of 256 128-bit descriptors (IQA.QS = 0), the
//! interrupt-entry-cache (IEC) and wait descriptors, and submission through IQT.
//!
//! Every submission is a descriptor followed by a wait descriptor with SW set: the unit
//! writes a fresh status value to [`STATUS`] when it reaches the wait descriptor, which it
//! may do only after completing everything before it. The probe polls that dword, as Linux's
//! `qi_submit_sync` does, and checks FSTS.IQE (an invalid descriptor stops the queue).
//!
//! A submission costs the VMM one register access when the unit finishes during the IQT
//! write (both VMMs the probe runs on do): the queue keeps its own view of the head and
//! reads IQH only when that view says the queue is full, and the status dword (memory) is
//! checked before FSTS. `ir-bench` times exactly this path.

use core::cell::UnsafeCell;
use core::sync::atomic::{compiler_fence, AtomicU32, Ordering};

use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::report::Text;
use crate::{text, x86};

/// Invalidation queue head register (64-bit, read-only).
pub(crate) const IQH_REG: u64 = 0x80;
/// Invalidation queue tail register (64-bit).
pub(crate) const IQT_REG: u64 = 0x88;
/// Invalidation queue address register (64-bit).
pub(crate) const IQA_REG: u64 = 0x90;
/// IQA.QS = 0: 2^(0 + 8) = 256 descriptors, one page.
const IQA_QS_ONE_PAGE: u64 = 0;
/// Descriptors in the queue.
const QUEUE_ENTRIES: u32 = 256;
/// Shift of the descriptor index in IQH/IQT (bits 18:4 for 128-bit descriptors).
const IQ_INDEX_SHIFT: u32 = 4;
/// Mask (after shifting) of that index.
const IQ_INDEX_MASK: u64 = 0x7fff;
/// FSTS.IQE (bit 4): invalidation queue error.
const FSTS_IQE: u32 = 1 << 4;

/// Descriptor type 0x4: interrupt entry cache invalidation.
const TYPE_IEC: u64 = 0x4;
/// IEC bit 4 (G): 1 = index-selective, 0 = global.
const IEC_INDEX_SELECTIVE: u64 = 1 << 4;
/// IEC bits 31:27: index mask (2^IM entries from IIDX).
const IEC_IM_SHIFT: u32 = 27;
/// Largest IEC index mask (ECAP.MHMV may limit it further; the probe uses small masks).
const IEC_IM_MAX: u32 = 0xf;
/// IEC bits 47:32: the interrupt index.
const IEC_IIDX_SHIFT: u32 = 32;
/// Largest interrupt index.
const IEC_IIDX_MAX: u32 = 0xffff;
/// Descriptor type 0x5: invalidation wait.
const TYPE_WAIT: u64 = 0x5;
/// Wait bit 5 (SW): write the status data to the status address.
const WAIT_STATUS_WRITE: u64 = 1 << 5;
/// Wait bits 63:32: the status data.
const WAIT_STATUS_DATA_SHIFT: u32 = 32;

/// How long the unit gets to reach the wait descriptor.
const WAIT_TIMEOUT_NS: u64 = 1_000_000_000;

/// One 128-bit descriptor: (low qword, high qword).
pub type Descriptor = (u64, u64);

/// The queue page (4 KiB aligned, as IQA requires).
#[repr(C, align(4096))]
struct QueuePage(UnsafeCell<[u64; 2 * QUEUE_ENTRIES as usize]>);

// SAFETY: only the `Queue` that `claim` hands out (once, see `Vtd::enable`) writes the page,
// from the BSP; the unit reads it.
unsafe impl Sync for QueuePage {}

static QUEUE: QueuePage = QueuePage(UnsafeCell::new([0; 2 * QUEUE_ENTRIES as usize]));

/// Status dword the wait descriptors write (4-byte aligned by its type).
static STATUS: AtomicU32 = AtomicU32::new(0);

/// The software side of the queue.
pub(crate) struct Queue {
    tail: u32,
    /// The head as last read from IQH: the unit has consumed everything before it, so the
    /// slots from the tail up to it are free without asking the unit again.
    head: u32,
    token: u32,
}

impl Queue {
    /// The queue page, empty. Only `Vtd::enable` calls this, once per boot.
    pub(crate) fn claim() -> Queue {
        Queue {
            tail: 0,
            head: 0,
            token: 0,
        }
    }

    /// The IQA value: the page's physical (identity-mapped) address, 128-bit descriptors,
    /// one page.
    pub(crate) fn iqa(&self) -> u64 {
        QUEUE.0.get() as u64 | IQA_QS_ONE_PAGE
    }

    /// Places `desc` at the tail (advancing it); fails when the queue is full.
    fn push(&mut self, regs: &Mmio, desc: Descriptor) -> Result<(), Text> {
        let next = (self.tail + 1) % QUEUE_ENTRIES;
        if next == self.head {
            // Full as far as this queue knows: the unit may have moved on since.
            self.head = ((regs.read64(IQH_REG) >> IQ_INDEX_SHIFT) & IQ_INDEX_MASK) as u32;
            if next == self.head {
                return Err(text!(
                    "invalidation queue full (head {}, tail {})",
                    self.head,
                    self.tail
                ));
            }
        }
        let slot = 2 * self.tail as usize;
        let page = QUEUE.0.get() as *mut u64;
        // SAFETY: `slot + 1` < 2 * QUEUE_ENTRIES, inside the page; only this queue writes it
        // and the unit reads entries only between head and the tail written to IQT, which
        // this one is not yet part of.
        unsafe {
            core::ptr::write_volatile(page.add(slot), desc.0);
            core::ptr::write_volatile(page.add(slot + 1), desc.1);
        }
        self.tail = next;
        Ok(())
    }

    /// Submits `desc` plus a wait descriptor and polls the status write; fails on a queue
    /// error (FSTS.IQE) or when the status does not arrive in time.
    pub(crate) fn submit_and_wait(
        &mut self,
        regs: &Mmio,
        clock: &Clock,
        desc: Descriptor,
    ) -> Result<(), Text> {
        self.token = self.token.wrapping_add(1).max(1);
        let token = self.token;
        let wait = (
            TYPE_WAIT | WAIT_STATUS_WRITE | (u64::from(token) << WAIT_STATUS_DATA_SHIFT),
            STATUS.as_ptr() as u64,
        );
        self.push(regs, desc)?;
        self.push(regs, wait)?;
        // The descriptors must be in memory before the unit is told to fetch them.
        compiler_fence(Ordering::SeqCst);
        regs.write64(IQT_REG, u64::from(self.tail) << IQ_INDEX_SHIFT);
        // Both VMMs finish during the IQT write: check the status (memory) first, so the
        // usual submission costs one register access.
        if STATUS.load(Ordering::Acquire) == token {
            return Ok(());
        }
        let deadline = clock.now_ns() + WAIT_TIMEOUT_NS;
        loop {
            let fsts = regs.read32(super::FSTS_REG);
            if STATUS.load(Ordering::Acquire) == token {
                return Ok(());
            }
            if fsts & FSTS_IQE != 0 {
                return Err(text!(
                    "invalidation queue error: FSTS 0x{:x} IQH 0x{:x} IQT 0x{:x}",
                    fsts,
                    regs.read64(IQH_REG),
                    regs.read64(IQT_REG)
                ));
            }
            if clock.now_ns() >= deadline {
                return Err(text!(
                    "wait descriptor status {} not written within {} ms (IQH 0x{:x} IQT 0x{:x})",
                    token,
                    WAIT_TIMEOUT_NS / 1_000_000,
                    regs.read64(IQH_REG),
                    regs.read64(IQT_REG)
                ));
            }
            x86::pause();
        }
    }
}

/// A global IEC invalidation descriptor.
pub(crate) fn iec_global() -> Descriptor {
    (TYPE_IEC, 0)
}

/// An index-selective IEC invalidation of `index .. index + 2^mask_log2`.
pub(crate) fn iec_index(index: u32, mask_log2: u32) -> Result<Descriptor, Text> {
    if index > IEC_IIDX_MAX || mask_log2 > IEC_IM_MAX || !index.is_multiple_of(1 << mask_log2) {
        return Err(text!(
            "bad IEC invalidation: index {} mask 2^{}",
            index,
            mask_log2
        ));
    }
    let low = TYPE_IEC
        | IEC_INDEX_SELECTIVE
        | (u64::from(mask_log2) << IEC_IM_SHIFT)
        | (u64::from(index) << IEC_IIDX_SHIFT);
    Ok((low, 0))
}

/// Descriptor type 0x1: context-cache invalidation.
const TYPE_CONTEXT_CACHE: u64 = 0x1;
/// Descriptor type 0x2: IOTLB invalidation.
const TYPE_IOTLB: u64 = 0x2;
/// Granularity (bits 5:4): global.
pub(crate) const GRANULARITY_GLOBAL: u64 = 1;
/// Granularity: domain-selective.
pub(crate) const GRANULARITY_DOMAIN: u64 = 2;
/// Granularity: device-selective (context cache) or page-selective (IOTLB).
pub(crate) const GRANULARITY_SELECTIVE: u64 = 3;
/// Shift of the granularity.
const GRANULARITY_SHIFT: u32 = 4;
/// Shift of the domain ID (31:16).
const DID_SHIFT: u32 = 16;
/// Context cache: shift of the source ID (47:32).
const CC_SID_SHIFT: u32 = 32;
/// IOTLB: DR and DW (7:6), drain reads and writes (Linux sets them when CAP.DRD/DWD).
const IOTLB_DRAIN: u64 = 0b11 << 6;
/// IOTLB high qword: address mask (5:0).
const IOTLB_AM_MASK: u64 = 0x3f;

/// A context-cache invalidation of `granularity` (global, domain `did`, or device `sid`
/// with function mask 0).
pub(crate) fn context_cache(granularity: u64, did: u16, sid: u16) -> Descriptor {
    (
        TYPE_CONTEXT_CACHE
            | (granularity << GRANULARITY_SHIFT)
            | (u64::from(did) << DID_SHIFT)
            | (u64::from(sid) << CC_SID_SHIFT),
        0,
    )
}

/// An IOTLB invalidation of `granularity` (global, domain `did`, or 2^`am` pages at
/// `iova` in `did`), with read and write draining.
pub(crate) fn iotlb(granularity: u64, did: u16, iova: u64, am: u8) -> Descriptor {
    let high = if granularity == GRANULARITY_SELECTIVE {
        (iova & !0xfff) | (u64::from(am) & IOTLB_AM_MASK)
    } else {
        0
    };
    (
        TYPE_IOTLB
            | (granularity << GRANULARITY_SHIFT)
            | (u64::from(did) << DID_SHIFT)
            | IOTLB_DRAIN,
        high,
    )
}
