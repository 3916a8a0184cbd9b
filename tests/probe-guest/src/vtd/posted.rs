//! VT-d posted interrupts from the guest hypervisor's side (VT-d spec 9.11, 9.12; Linux's
//! `struct pi_desc` and `arch/x86/kvm/vmx/posted_intr.c` use the same layout): posted-format
//! IRTEs and the 64-byte posted-interrupt descriptor (PD) they post into.
//!
//! Posted-format IRTE: P 0, FPD 1, URG 14, IM 15 = 1, vector 23:16, PDA bits 31:6 in 63:38,
//! SID/SQ/SVT 83:64 as in remapped format, PDA bits 63:32 in 127:96; every other bit
//! reserved except AVAIL 11:8.
//!
//! Descriptor: PIR 255:0 (one bit per vector), ON 256 (outstanding notification), SN 257
//! (suppress notification), NV 279:272 (notification vector), NDST 319:288 (the 32-bit
//! x2APIC ID in x2APIC mode). The unit sets the PIR bit, and sets ON and sends NV to NDST
//! when ON was clear and SN clear (or the entry's URG set). The guest accesses it only with
//! locked instructions (`lock and/or`, `xchg`), as Linux and KVM do, so the unit's atomic
//! updates and the guest's never lose each other's bits.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Irte;

/// CAP.PI: the unit can post interrupts.
pub const CAP_PI: u64 = 1 << 59;

/// IRTE low qword: present.
const IRTE_P: u64 = 1 << 0;
/// IRTE low qword: URG, urgent.
const IRTE_URG: u64 = 1 << 14;
/// IRTE low qword: IM = 1, posted format.
const IRTE_IM: u64 = 1 << 15;
/// IRTE low qword: shift of the vector (23:16).
const IRTE_VECTOR_SHIFT: u32 = 16;
/// IRTE low qword: where PDA bits 31:6 go (63:38).
const IRTE_PDA_LOW_SHIFT: u32 = 38;
/// Descriptor alignment: address bits 5:0 are not stored.
const PDA_ALIGN_SHIFT: u32 = 6;
/// Mask of address bits 31:0.
const LOW_32: u64 = 0xffff_ffff;
/// IRTE high qword: PDA bits 63:32 stay in place (127:96).
const IRTE_PDA_HIGH_MASK: u64 = !LOW_32;
/// IRTE high qword: SVT = 1 (verify the requester id), SQ = 0 (all 16 bits).
const IRTE_SVT_REQUESTER_ID: u64 = 1 << 18;

/// Control qword: ON.
pub const PD_ON: u64 = 1 << 0;
/// Control qword: SN.
pub const PD_SN: u64 = 1 << 1;
/// Control qword: shift of NV.
const PD_NV_SHIFT: u32 = 16;
/// Control qword: shift of NDST.
const PD_NDST_SHIFT: u32 = 32;
/// Vectors per PIR dword.
const VECTORS_PER_DWORD: u8 = 32;
/// PIR dwords.
const PIR_DWORDS: usize = 8;

/// A posted-format entry posting `vector` into the descriptor at `pda` (64-byte aligned),
/// urgent or not, verifying requester `sid` when given (SVT = 1, SQ = 0).
pub fn posted_irte(vector: u8, pda: u64, urgent: bool, sid: Option<u16>) -> Irte {
    let mut low = IRTE_P
        | IRTE_IM
        | (u64::from(vector) << IRTE_VECTOR_SHIFT)
        | (((pda & LOW_32) >> PDA_ALIGN_SHIFT) << IRTE_PDA_LOW_SHIFT);
    if urgent {
        low |= IRTE_URG;
    }
    let mut high = pda & IRTE_PDA_HIGH_MASK;
    if let Some(sid) = sid {
        high |= u64::from(sid) | IRTE_SVT_REQUESTER_ID;
    }
    Irte { low, high }
}

/// A posted-interrupt descriptor in guest memory.
#[repr(C, align(64))]
pub struct Descriptor {
    pir: [AtomicU32; PIR_DWORDS],
    control: AtomicU64,
    rest: [AtomicU64; 3],
}

impl Descriptor {
    /// An empty descriptor (all zero).
    pub const fn new() -> Descriptor {
        Descriptor {
            pir: [const { AtomicU32::new(0) }; PIR_DWORDS],
            control: AtomicU64::new(0),
            rest: [const { AtomicU64::new(0) }; 3],
        }
    }

    /// Its physical (identity-mapped) address: what the IRTE's PDA holds.
    pub fn address(&'static self) -> u64 {
        self as *const Descriptor as u64
    }

    /// Empties PIR and sets the control qword: notification vector `nv` to x2APIC ID
    /// `ndst`, ON and SN clear.
    pub fn reset(&self, nv: u8, ndst: u32) {
        for d in &self.pir {
            d.store(0, Ordering::SeqCst);
        }
        for r in &self.rest {
            r.store(0, Ordering::SeqCst);
        }
        self.control.store(
            (u64::from(nv) << PD_NV_SHIFT) | (u64::from(ndst) << PD_NDST_SHIFT),
            Ordering::SeqCst,
        );
    }

    /// The control qword.
    pub fn control(&self) -> u64 {
        self.control.load(Ordering::SeqCst)
    }

    /// ON.
    pub fn on(&self) -> bool {
        self.control() & PD_ON != 0
    }

    /// SN.
    pub fn sn(&self) -> bool {
        self.control() & PD_SN != 0
    }

    /// Clears `clear` and then sets `set` in the control qword (`lock and`, `lock or`).
    pub fn update_control(&self, clear: u64, set: u64) {
        self.control.fetch_and(!clear, Ordering::SeqCst);
        self.control.fetch_or(set, Ordering::SeqCst);
    }

    /// True when `vector`'s PIR bit is set.
    pub fn pending(&self, vector: u8) -> bool {
        let (dword, bit) = Self::pir_slot(vector);
        self.pir[dword].load(Ordering::SeqCst) & bit != 0
    }

    /// Harvests (`xchg` with 0) the PIR dword holding `vector`; true when its bit was set.
    pub fn take(&self, vector: u8) -> bool {
        let (dword, bit) = Self::pir_slot(vector);
        self.pir[dword].swap(0, Ordering::SeqCst) & bit != 0
    }

    /// True when no PIR bit is set.
    pub fn pir_empty(&self) -> bool {
        self.pir.iter().all(|d| d.load(Ordering::SeqCst) == 0)
    }

    /// Empties PIR (`xchg` with 0 on every dword).
    pub fn harvest_all(&self) {
        for d in &self.pir {
            d.swap(0, Ordering::SeqCst);
        }
    }

    fn pir_slot(vector: u8) -> (usize, u32) {
        (
            usize::from(vector / VECTORS_PER_DWORD),
            1u32 << (vector % VECTORS_PER_DWORD),
        )
    }
}

impl Default for Descriptor {
    fn default() -> Self {
        Self::new()
    }
}
