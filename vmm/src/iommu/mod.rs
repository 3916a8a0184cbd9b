//! The guest's virtual IOMMU in the VM: an Intel VT-d unit or an AMD-Vi unit over guest
//! memory, seen by the interrupt router through one vocabulary.
//!
//! * [`Iommu::translate`] answers what a source's message becomes: a route (cacheable until
//!   an invalidation covers it), a block (with the fault to record when it fires), or, for
//!   AMD-Vi guest-mode IRTEs and VT-d posted-format IRTEs, a post the VMM performs at every
//!   interrupt ([`Iommu::deliver_guest`], which reads the entry again each time).
//! * Register writes return [`IommuEffects`]: which cached translations to re-translate
//!   ([`Covers`]: IRTE index ranges for VT-d, device IDs for AMD-Vi, or all) and the unit's
//!   own interrupts.
//! * [`Iommu::dma_access`] translates one page of an emulated device's DMA (VT-d DMA
//!   remapping; identity for AMD-Vi, whose model does not translate DMA), recording the
//!   fault; [`dma::IommuDma`] is that as the devices' [`devices::dma::DmaTranslator`].
//! * [`shadow`] keeps passed-through devices' host DMA mappings equal to the guest's VT-d
//!   mappings, batched per invalidation.
//! * [`mmio`] is the register window on the MMIO bus; [`amd`] the PCI function an AMD-Vi
//!   unit is to the guest.

pub mod amd;
pub mod dma;
pub mod mmio;
pub mod shadow;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use virtual_iommu::amd::{self as amdvi, AmdFault, AmdViConfig, AmdViUnit, Invalidation};
use virtual_iommu::vtd::dma::walk::{self, LeafScan, Table};
use virtual_iommu::vtd::dma::IDENTITY_BLOCK;
use virtual_iommu::vtd::Fault as VtdFault;
use virtual_iommu::{DeviceView, DmaFault, DmaInvalidation, DmaMapping, DmaRequest};
use virtual_iommu::{
    Effects, GuestMemoryReader, IecInvalidation, MemError, MsiMessage, SourceId, Translation,
    VtdConfig, VtdUnit,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

pub use amd::AmdIommuFunction;
pub use mmio::{AmdMmio, IommuMmio, VtdMmio};

/// Guest RAM as the IOMMU models see it: accesses outside RAM fail whole; the IRR/PIR
/// update of a posted interrupt is one atomic `fetch_or` on the mapped dword, and the
/// VT-d descriptor's ON update one atomic compare-exchange on the mapped qword (`lock or`
/// and `lock cmpxchg` on the host, coherent with the guest's own locked instructions on
/// the same memory).
pub struct GuestRam(pub GuestMemoryMmap);

impl GuestMemoryReader for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped {
                gpa,
                len: buf.len(),
            })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.0
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped {
                gpa,
                len: buf.len(),
            })
    }

    fn fetch_or_u32(&self, gpa: u64, mask: u32) -> Result<u32, MemError> {
        let unmapped = MemError::Unmapped { gpa, len: 4 };
        if !gpa.is_multiple_of(4) {
            return Err(unmapped);
        }
        let slice = self
            .0
            .get_slice(GuestAddress(gpa), 4)
            .map_err(|_| unmapped)?;
        let atomic = slice.get_atomic_ref::<AtomicU32>(0).map_err(|_| unmapped)?;
        Ok(atomic.fetch_or(mask, Ordering::SeqCst))
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let unmapped = MemError::Unmapped { gpa, len: 8 };
        if !gpa.is_multiple_of(8) {
            return Err(unmapped);
        }
        let slice = self
            .0
            .get_slice(GuestAddress(gpa), 8)
            .map_err(|_| unmapped)?;
        let atomic = slice.get_atomic_ref::<AtomicU64>(0).map_err(|_| unmapped)?;
        Ok(atomic.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }
}

/// A cached translation's fault, recorded when the blocked source fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuFault {
    /// VT-d.
    Vtd(VtdFault),
    /// AMD-Vi.
    Amd(AmdFault),
}

/// What a message becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not remapped: remapping is off (the IOMMU-less policy applies) or the entry passes
    /// the message through.
    Passthrough(MsiMessage),
    /// Remapped to `message`; VT-d's translations name IRTE `irte`.
    Remapped {
        /// The interrupt in KVM's x2APIC API layout.
        message: MsiMessage,
        /// VT-d IRTE index (the key IEC invalidations reach it by).
        irte: Option<u32>,
    },
    /// Blocked.
    Blocked {
        /// The fault to record when the source fires.
        fault: IommuFault,
        /// VT-d IRTE index it named.
        irte: Option<u32>,
    },
    /// An AMD-Vi guest-mode entry or a VT-d posted-format entry: post it at every
    /// interrupt ([`Iommu::deliver_guest`]); no route.
    GuestMode {
        /// VT-d IRTE index (the key IEC invalidations reach it by, e.g. when the guest
        /// moves the entry back to remapped format).
        irte: Option<u32>,
    },
}

/// Which cached translations an IOMMU event covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Covers {
    /// None.
    #[default]
    Nothing,
    /// Every source.
    All,
    /// Sources whose VT-d translation named an IRTE in one of these `(start, count)`.
    Irte(Vec<(u32, u32)>),
    /// Sources with these requester IDs (AMD-Vi device IDs).
    Devices(Vec<SourceId>),
}

/// What the VMM must do after a register write, a recorded fault or a post.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IommuEffects {
    /// Translations to redo (before the writing vCPU resumes).
    pub covers: Covers,
    /// The unit's interrupts to send with `KVM_SIGNAL_MSI` (never remapped).
    pub interrupts: Vec<MsiMessage>,
    /// Times to signal the unit's own PCI MSI (AMD-Vi without XT interrupts).
    pub own_msi: usize,
}

impl IommuEffects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.covers == Covers::Nothing && self.interrupts.is_empty() && self.own_msi == 0
    }
}

impl From<Effects> for IommuEffects {
    fn from(e: Effects) -> Self {
        let covers = if e.invalidates_all() {
            Covers::All
        } else if e.iec.is_empty() {
            Covers::Nothing
        } else {
            Covers::Irte(
                e.iec
                    .iter()
                    .filter_map(|i| match *i {
                        IecInvalidation::Range { start, count } => Some((start, count)),
                        IecInvalidation::Global => None,
                    })
                    .collect(),
            )
        };
        IommuEffects {
            covers,
            interrupts: e.interrupts,
            own_msi: 0,
        }
    }
}

impl From<amdvi::Effects> for IommuEffects {
    fn from(e: amdvi::Effects) -> Self {
        let covers = if e.invalidates_all() {
            Covers::All
        } else if e.invalidations.is_empty() {
            Covers::Nothing
        } else {
            let mut ids: Vec<SourceId> = e
                .invalidations
                .iter()
                .filter_map(|i| match *i {
                    Invalidation::DeviceTableEntry(d) | Invalidation::InterruptTable(d) => {
                        Some(SourceId(d))
                    }
                    Invalidation::All => None,
                })
                .collect();
            ids.sort();
            ids.dedup();
            Covers::Devices(ids)
        };
        IommuEffects {
            covers,
            interrupts: e.interrupts,
            own_msi: e.msi.len(),
        }
    }
}

/// What a register write asks of passed-through devices' DMA shadows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmaEffects {
    /// Translation was enabled or disabled, or the root table latched: every device's
    /// view must be re-read.
    pub state_changed: bool,
    /// Context-cache and IOTLB invalidations, in order.
    pub invalidations: Vec<DmaInvalidation>,
}

impl DmaEffects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.state_changed && self.invalidations.is_empty()
    }
}

/// How the guest has set interrupt remapping up (for logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemapMode {
    /// Remapping is on (VT-d GSTS.IRES, AMD-Vi `IommuEn`).
    pub enabled: bool,
    /// 32-bit x2APIC destinations (VT-d IRTA.EIME, AMD-Vi `XTEn`).
    pub x2apic: bool,
    /// AMD-Vi: 128-bit IRTEs (`GAEn`); VT-d's are always 128 bits.
    pub irte_128: bool,
    /// AMD-Vi: guest virtual APIC mode (`GAMEn`): guest-mode IRTEs may post.
    pub guest_apic: bool,
}

impl std::fmt::Display for RemapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.enabled {
            return write!(f, "off");
        }
        write!(
            f,
            "on, {}-bit IRTEs, {} destinations",
            if self.irte_128 { 128 } else { 32 },
            if self.x2apic { "x2APIC" } else { "xAPIC" }
        )?;
        if self.guest_apic {
            write!(f, ", guest virtual APIC")?;
        }
        Ok(())
    }
}

/// The unit.
enum Unit {
    Vtd(VtdUnit),
    Amd(AmdViUnit),
}

/// A guest-visible IOMMU over the guest's memory.
pub struct Iommu {
    unit: Mutex<Unit>,
    mem: GuestRam,
}

impl Iommu {
    /// A VT-d unit in its reset state.
    pub fn new(config: VtdConfig, mem: GuestMemoryMmap) -> Self {
        Iommu {
            unit: Mutex::new(Unit::Vtd(VtdUnit::new(config))),
            mem: GuestRam(mem),
        }
    }

    /// An AMD-Vi unit in its reset state.
    pub fn new_amd(config: AmdViConfig, mem: GuestMemoryMmap) -> Self {
        Iommu {
            unit: Mutex::new(Unit::Amd(AmdViUnit::new(config))),
            mem: GuestRam(mem),
        }
    }

    fn unit(&self) -> MutexGuard<'_, Unit> {
        self.unit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `msg` from `sid` becomes now (the tables are read at this moment).
    pub fn translate(&self, sid: SourceId, msg: MsiMessage) -> Outcome {
        match &*self.unit() {
            Unit::Vtd(u) => match u.translate(&self.mem, sid, msg) {
                Translation::Passthrough(m) => Outcome::Passthrough(m),
                Translation::Remapped { index, message } => Outcome::Remapped {
                    message,
                    irte: Some(index),
                },
                Translation::Posted(p) => Outcome::GuestMode {
                    irte: Some(p.index),
                },
                Translation::Blocked(f) => Outcome::Blocked {
                    fault: IommuFault::Vtd(f),
                    irte: f.index,
                },
            },
            Unit::Amd(u) => match u.translate(&self.mem, sid, msg) {
                amdvi::Translation::Passthrough(m) => Outcome::Passthrough(m),
                amdvi::Translation::Remapped { message, .. } => Outcome::Remapped {
                    message,
                    irte: None,
                },
                amdvi::Translation::Blocked(f) => Outcome::Blocked {
                    fault: IommuFault::Amd(f),
                    irte: None,
                },
                amdvi::Translation::GuestMode(_) => Outcome::GuestMode { irte: None },
            },
        }
    }

    /// True while the guest has interrupt remapping enabled.
    pub fn remapping_enabled(&self) -> bool {
        match &*self.unit() {
            Unit::Vtd(u) => u.remapping_enabled(),
            Unit::Amd(u) => u.remapping_enabled(),
        }
    }

    /// How the guest has interrupt remapping set up now.
    pub fn remap_mode(&self) -> RemapMode {
        match &*self.unit() {
            Unit::Vtd(u) => RemapMode {
                enabled: u.remapping_enabled(),
                x2apic: u.ir_table().is_some_and(|t| t.eime),
                irte_128: true,
                guest_apic: false,
            },
            Unit::Amd(u) => {
                let mode = u.remap_settings().mode;
                RemapMode {
                    enabled: u.remapping_enabled(),
                    x2apic: mode.xt,
                    irte_128: mode.ga,
                    guest_apic: mode.guest_apic,
                }
            }
        }
    }

    /// The unit's name in logs.
    pub fn name(&self) -> &'static str {
        match &*self.unit() {
            Unit::Vtd(_) => "VT-d",
            Unit::Amd(_) => "AMD-Vi",
        }
    }

    /// Records a fault for a request that was blocked.
    pub fn record_fault(&self, fault: &IommuFault) -> IommuEffects {
        match (&mut *self.unit(), fault) {
            (Unit::Vtd(u), IommuFault::Vtd(f)) => u.record_fault(f).into(),
            (Unit::Amd(u), IommuFault::Amd(f)) => u.record_fault(&self.mem, f).into(),
            _ => IommuEffects::default(),
        }
    }

    /// Delivers one interrupt of a source whose translation is guest mode (AMD-Vi) or
    /// posted (VT-d): re-translates and posts, records a fault, or returns the message to
    /// send when the entry stopped being guest mode or posted. The effects carry the
    /// unit's own interrupts: a VT-d posting's notification event (vector NV to NDST),
    /// fault events, GA log interrupts.
    ///
    /// AMD-Vi guest-mode fields are never cached (its spec says so). A VT-d posted IRTE
    /// could be cached until an IEC invalidation covers it; it is read again at every
    /// interrupt instead, which the spec equally allows (a unit may drop cached entries at
    /// any time), so a guest that rewrites a posted entry without invalidating it sees the
    /// change at once here. The descriptor is never cached, on hardware or here.
    pub fn deliver_guest(
        &self,
        sid: SourceId,
        msg: MsiMessage,
    ) -> (Option<MsiMessage>, IommuEffects) {
        match &mut *self.unit() {
            Unit::Amd(u) => {
                let (t, effects) = u.deliver(&self.mem, sid, msg);
                (t.message(), effects.into())
            }
            Unit::Vtd(u) => {
                let (t, effects) = u.deliver(&self.mem, sid, msg);
                (t.message(), effects.into())
            }
        }
    }

    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        match &*self.unit() {
            Unit::Vtd(u) => u.mmio_read(offset, data),
            Unit::Amd(u) => u.mmio_read(offset, data),
        }
    }

    fn mmio_write(&self, offset: u64, data: &[u8]) -> (IommuEffects, DmaEffects) {
        match &mut *self.unit() {
            Unit::Vtd(u) => {
                let mut e = u.mmio_write(&self.mem, offset, data);
                let dma = DmaEffects {
                    state_changed: e.dma_state_changed,
                    invalidations: std::mem::take(&mut e.dma),
                };
                (e.into(), dma)
            }
            Unit::Amd(u) => (
                u.mmio_write(&self.mem, offset, data).into(),
                DmaEffects::default(),
            ),
        }
    }

    /// Translates the page of `req` (VT-d: through the IOTLB and the guest's tables;
    /// AMD-Vi: identity, its model does not translate DMA), recording the fault when there
    /// is one. The effects hold the fault event to send.
    pub fn dma_access(&self, req: DmaRequest) -> (Result<DmaMapping, DmaFault>, IommuEffects) {
        match &mut *self.unit() {
            Unit::Vtd(u) => {
                let (r, e) = u.dma_access(&self.mem, req);
                (r, e.into())
            }
            Unit::Amd(_) => {
                let base = req.iova & !(IDENTITY_BLOCK - 1);
                let identity = DmaMapping {
                    iova: base,
                    gpa: base,
                    size: IDENTITY_BLOCK,
                    read: true,
                    write: true,
                    domain: None,
                };
                (Ok(identity), IommuEffects::default())
            }
        }
    }

    /// How `sid`'s DMA is translated now, from the guest's tables (AMD-Vi: untranslated).
    pub fn dma_view(&self, sid: SourceId) -> DeviceView {
        match &*self.unit() {
            Unit::Vtd(u) => u.dma_view(&self.mem, sid),
            Unit::Amd(_) => DeviceView::Untranslated,
        }
    }

    /// The leaves of `table` overlapping `[start, end)`, visiting at most `*budget`
    /// tables. Reads guest memory only (the unit is not locked).
    pub fn dma_leaves(&self, table: &Table, start: u64, end: u64, budget: &mut usize) -> LeafScan {
        walk::leaves(&self.mem, table, start, end, budget)
    }

    /// True while the guest has DMA translation enabled (VT-d GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        match &*self.unit() {
            Unit::Vtd(u) => u.translation_enabled(),
            Unit::Amd(_) => false,
        }
    }

    /// VT-d context-cache and IOTLB hit/miss counts (zeros for AMD-Vi).
    pub fn dma_cache_stats(
        &self,
    ) -> (
        virtual_iommu::vtd::dma::cache::CacheStats,
        virtual_iommu::vtd::dma::cache::CacheStats,
    ) {
        match &*self.unit() {
            Unit::Vtd(u) => u.dma_cache_stats(),
            Unit::Amd(_) => Default::default(),
        }
    }

    /// The AMD-Vi unit's extended feature register (the IVHD's EFR image); 0 for VT-d.
    pub fn extended_features(&self) -> u64 {
        match &*self.unit() {
            Unit::Amd(u) => u.extended_features(),
            Unit::Vtd(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_or_is_atomic_on_guest_ram_and_refuses_bad_addresses() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let ram = GuestRam(mem.clone());
        std::thread::scope(|s| {
            for bit in 0..32u32 {
                let ram = &ram;
                s.spawn(move || ram.fetch_or_u32(0x200, 1 << bit).unwrap());
            }
        });
        let v: u32 = mem.read_obj(GuestAddress(0x200)).unwrap();
        assert_eq!(v, u32::MAX, "every concurrent OR landed");
        assert!(ram.fetch_or_u32(0x201, 1).is_err(), "misaligned");
        assert!(
            ram.fetch_or_u32(0xffe, 1).is_err(),
            "crosses the end of RAM"
        );
        assert!(ram.fetch_or_u32(0x10_0000, 1).is_err(), "outside RAM");
    }

    #[test]
    fn compare_exchange_is_atomic_on_guest_ram_and_refuses_bad_addresses() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let ram = GuestRam(mem.clone());
        // 16 threads each set their own bit with a compare-exchange loop, as the guest's
        // `lock cmpxchg` users and the unit's ON update do: none may be lost.
        std::thread::scope(|s| {
            for bit in 0..16u32 {
                let ram = &ram;
                s.spawn(move || {
                    let mut seen = 0u64;
                    for _ in 0..1000 {
                        let current = seen;
                        let new = current ^ (1u64 << (bit * 4));
                        match ram.compare_exchange_u64(0x220, current, new).unwrap() {
                            Ok(_) => seen = new,
                            Err(actual) => seen = actual,
                        }
                    }
                    loop {
                        let current = seen;
                        let new = current | (1u64 << (bit * 4));
                        match ram.compare_exchange_u64(0x220, current, new).unwrap() {
                            Ok(_) => break,
                            Err(actual) => seen = actual,
                        }
                    }
                });
            }
        });
        let v: u64 = mem.read_obj(GuestAddress(0x220)).unwrap();
        assert_eq!(v, 0x1111_1111_1111_1111, "every bit set exactly once");
        assert_eq!(
            ram.compare_exchange_u64(0x220, 0, 5).unwrap(),
            Err(0x1111_1111_1111_1111)
        );
        assert!(ram.compare_exchange_u64(0x224, 0, 1).is_err(), "misaligned");
        assert!(ram.compare_exchange_u64(0xffc, 0, 1).is_err(), "misaligned");
        assert!(
            ram.compare_exchange_u64(0x1000, 0, 1).is_err(),
            "outside RAM"
        );
    }

    #[test]
    fn effects_name_what_they_cover() {
        let amd = amdvi::Effects {
            invalidations: vec![
                Invalidation::InterruptTable(0x10),
                Invalidation::DeviceTableEntry(0x8),
                Invalidation::InterruptTable(0x10),
            ],
            ..amdvi::Effects::default()
        };
        let e: IommuEffects = amd.into();
        assert_eq!(e.covers, Covers::Devices(vec![SourceId(8), SourceId(0x10)]));
        let all: IommuEffects = amdvi::Effects {
            invalidations: vec![Invalidation::All],
            ..amdvi::Effects::default()
        }
        .into();
        assert_eq!(all.covers, Covers::All);
        let vtd: IommuEffects = Effects {
            iec: vec![IecInvalidation::Range { start: 4, count: 2 }],
            ..Effects::default()
        }
        .into();
        assert_eq!(vtd.covers, Covers::Irte(vec![(4, 2)]));
        assert!(IommuEffects::default().is_empty());
    }

    #[test]
    fn remap_mode_follows_the_amd_control_register() {
        use virtual_iommu::amd::regs::{
            CONTROL_REG, CTRL_GAM_SHIFT, CTRL_GAM_VAPIC, CTRL_GA_EN, CTRL_IOMMU_EN, CTRL_XT_EN,
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let iommu = Iommu::new_amd(AmdViConfig::default(), mem);
        assert_eq!(iommu.name(), "AMD-Vi");
        assert_eq!(iommu.remap_mode(), RemapMode::default());
        assert_eq!(iommu.remap_mode().to_string(), "off");
        let legacy = CTRL_IOMMU_EN;
        iommu.mmio_write(CONTROL_REG, &legacy.to_le_bytes());
        let m = iommu.remap_mode();
        assert!(m.enabled && !m.x2apic && !m.irte_128 && !m.guest_apic);
        assert_eq!(m.to_string(), "on, 32-bit IRTEs, xAPIC destinations");
        let full = legacy | CTRL_GA_EN | CTRL_XT_EN | (CTRL_GAM_VAPIC << CTRL_GAM_SHIFT);
        iommu.mmio_write(CONTROL_REG, &full.to_le_bytes());
        assert_eq!(
            iommu.remap_mode().to_string(),
            "on, 128-bit IRTEs, x2APIC destinations, guest virtual APIC"
        );
    }
}
