//! A guest-visible Intel VT-d remapping unit that does DMA and interrupt remapping.
//!
//! [`VtdUnit`] is the register file of one DRHD (4 KiB at [`regs::VTD_MMIO_BASE`]) plus the
//! DMA-remapping engine ([`dma`]) and the interrupt-remapping engine behind it. It is pure: it makes no KVM calls and reads guest
//! memory only through [`GuestMemoryReader`]. The VMM wires it like this:
//!
//! * **MMIO**: forward guest accesses to [`VtdUnit::mmio_read`] and
//!   [`VtdUnit::mmio_write`]. Accesses of 4 bytes at 4-aligned offsets and of 8 bytes at
//!   8-aligned offsets are served (an 8-byte access behaves as the two dword accesses,
//!   low first); any other size or alignment reads as all-ones and is ignored on write.
//! * **Effects**: every write returns [`Effects`]. The VMM must, before it resumes the
//!   vCPU that wrote:
//!   1. if `ir_state_changed`, re-translate *every* interrupt route (remapping was enabled
//!      or disabled, the table pointer or x2APIC mode changed, or CFI changed);
//!   2. otherwise re-translate the routes whose IRTE index any entry of `iec` covers
//!      ([`IecInvalidation::covers`]); routes are the interrupt entry cache, so they
//!      change only here, as on hardware;
//!   3. commit the route table once;
//!   4. then deliver `interrupts` (fault events, invalidation completion events) with
//!      `KVM_SIGNAL_MSI`; they are already in KVM's x2APIC API layout and are not subject
//!      to remapping.
//!
//!   5. for DMA (`dma_state_changed`, `dma`): re-read the mappings of passed-through
//!      devices the invalidations cover (a global or domain-selective IOTLB invalidation
//!      covers the whole domain, a page-selective one its pages; a context-cache
//!      invalidation or a change of GSTS.TES or the root table the device's context) and
//!      shadow them into the host IOMMU. The unit's own caches are already invalidated.
//!
//!   Status writes of wait descriptors are done by the model during the MMIO write. The
//!   vCPU that wrote IQT (in Linux the one that polls the status, holding the queue lock)
//!   sees them only once it resumes, i.e. after steps 3 and 5, which is what makes the
//!   wait descriptor's promise ("everything before me is done") hold for routes and host
//!   DMA mappings.
//! * **Translation**: [`VtdUnit::translate`] turns a device's message into the message to
//!   route, reading the IRTE from guest memory at call time. It is pure; faults come back
//!   in the [`Translation`]. Record them with [`VtdUnit::record_fault`] (or use
//!   [`VtdUnit::translate_and_record`]) when an interrupt is actually blocked, and act on
//!   the returned [`Effects`] as above. Key each route by [`Translation::irte_index`] so
//!   IEC invalidations find it, including routes that failed (a not-present entry the
//!   guest fills in later is announced by an IEC invalidation of its index).
//!
//! * **DMA**: an emulated device's DMA goes through [`VtdUnit::translate_dma`] (or
//!   [`VtdUnit::dma_access`], which records the fault) page by page; a fault fails the
//!   access and is recorded in the same fault log, with the same fault event, as an
//!   interrupt-remapping fault. [`VtdUnit::dma_view`] and [`dma::walk::leaves`] read a
//!   device's current mappings for shadowing. See [`dma`].
//!
//! * **Posting** (CAP.PI, [`VtdConfig::posted_interrupts`]): a request that reaches a
//!   posted-format IRTE translates to [`Translation::Posted`], which is no route. The
//!   entry itself may be cached like any IRTE (IEC invalidations reach it by
//!   [`Translation::irte_index`]), but every interrupt must be posted into the guest's
//!   descriptor at the moment it fires: the VMM keeps such a source's interrupts to itself
//!   and calls [`VtdUnit::deliver`] (or [`VtdUnit::post`] with a cached entry) for each.
//!   Posting sets the vector's PIR bit and, when due, returns the notification event in
//!   [`Effects::interrupts`] (vector NV to NDST, not remapped); a descriptor outside RAM
//!   or with reserved bits set records fault 0x27 or 0x28. See [`posted`].
//!
//! # GCMD
//!
//! Software writes GCMD with the whole desired state (Linux writes `gcmd | bit`). The
//! unit acts on the enable bits (TE, QIE, IRE, CFI) that differ from GSTS, and on the
//! one-shot bits (SRTP, SIRTP) whenever they are written as 1, in this order: TE, SRTP,
//! QIE, SIRTP, IRE, CFI. Specifically:
//!
//! * TE sets or clears TES: DMA translation through the root table latched by SRTP (with
//!   [`VtdConfig::dma_translation`] off, TE is ignored and TES stays clear, as on a unit
//!   reporting CAP.SAGAW = 0).
//! * SRTP latches RTADDR and sets RTPS. Like hardware without CAP.ESRTPS it does not
//!   invalidate the caches; software does that next.
//! * QIE enables or disables the invalidation queue (QIES); disabling resets IQH.
//! * SIRTP latches IRTA (base, size, EIME) as the active table and sets IRTPS.
//! * IRE sets or clears IRES; CFI sets or clears CFIS.
//!
//! # Interrupt remapping disabled
//!
//! With IRES = 0 nothing is remapped: every message, whatever its format, passes through
//! unchanged (as QEMU does; a remappable-format message then reaches the LAPIC as
//! whatever its bits mean in compatibility format). The VMM may still apply the extended
//! destination ID convention to compatibility-format messages in that state.

pub mod dma;
pub mod event;
pub mod fault;
pub mod irte;
pub mod posted;
pub mod qi;
pub mod regs;
pub mod remap;

use crate::memory::GuestMemoryReader;
use crate::msi::{MsiMessage, SourceId};

pub use dma::fault::{DmaFault, DmaFaultReason};
pub use dma::inval::{ContextInvalidation, DmaInvalidation, IotlbInvalidation};
pub use dma::{DeviceView, DmaMapping, DmaRequest};
pub use fault::{Fault, FaultReason};
pub use posted::PostedInterrupt;
pub use qi::IecInvalidation;
pub use remap::IrTable;

use dma::context::ContextSupport;
use dma::walk::Superpages;
use dma::{DmaRemapping, DmaSupport};
use event::EventInterrupt;
use fault::FaultLog;
use qi::InvalidationQueue;
use regs::*;

/// Configuration of a [`VtdUnit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Report ECAP.EIM: interrupt remapping in x2APIC mode with 32-bit destinations.
    /// Linux needs it to use x2APIC with interrupt remapping (and so for APIC IDs above
    /// 255). Default: true.
    pub extended_interrupt_mode: bool,
    /// Number of fault-recording registers, clamped to 1..=[`MAX_FAULT_RECORDS`].
    /// Default: 8.
    pub fault_records: usize,
    /// Report CAP.PI: posted-format IRTEs post into the guest's posted-interrupt
    /// descriptors (for a guest hypervisor). Without it IM = 1 is a reserved bit (fault
    /// 0x24). Default: true.
    pub posted_interrupts: bool,
    /// Report DMA remapping (CAP.SAGAW for 39- and 48-bit tables, superpages,
    /// page-selective invalidation, ECAP.PT) and translate DMA when the guest sets TE.
    /// Without it the unit reports SAGAW = 0 and ignores TE. Default: true.
    pub dma_translation: bool,
    /// Report CAP.CM (caching mode): the guest invalidates after every change to its DMA
    /// tables, mappings made included, which is what shadowing a passed-through device's
    /// mappings needs. Default: true.
    pub caching_mode: bool,
}

impl Default for VtdConfig {
    fn default() -> Self {
        VtdConfig {
            extended_interrupt_mode: true,
            fault_records: 8,
            posted_interrupts: true,
            dma_translation: true,
            caching_mode: true,
        }
    }
}

/// What the VMM must do after an MMIO write (or a recorded fault); see the module
/// documentation for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Interrupts the unit sends (fault events, invalidation completion events), in KVM's
    /// x2APIC API layout, in the order they occurred.
    pub interrupts: Vec<MsiMessage>,
    /// Interrupt entry cache invalidations, in queue order.
    pub iec: Vec<IecInvalidation>,
    /// Remapping was enabled or disabled, or the table pointer, x2APIC mode or CFI
    /// changed: every route must be re-translated.
    pub ir_state_changed: bool,
    /// Context-cache and IOTLB invalidations, in the order the guest issued them.
    pub dma: Vec<DmaInvalidation>,
    /// DMA translation was enabled or disabled, or the root table pointer latched: every
    /// device's DMA view must be re-read.
    pub dma_state_changed: bool,
}

impl Effects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.interrupts.is_empty()
            && self.iec.is_empty()
            && !self.ir_state_changed
            && self.dma.is_empty()
            && !self.dma_state_changed
    }

    /// True when DMA views may have changed (the VMM's shadowing has work).
    pub fn touches_dma(&self) -> bool {
        self.dma_state_changed || !self.dma.is_empty()
    }

    /// True when a route that used IRTE `index` must be re-translated.
    pub fn invalidates(&self, index: u32) -> bool {
        self.ir_state_changed || self.iec.iter().any(|inv| inv.covers(index))
    }

    /// True when every route must be re-translated (state change or global invalidation).
    pub fn invalidates_all(&self) -> bool {
        self.ir_state_changed || self.iec.contains(&IecInvalidation::Global)
    }

    /// Appends `other`'s effects to these.
    pub fn merge(&mut self, other: Effects) {
        self.interrupts.extend(other.interrupts);
        self.iec.extend(other.iec);
        self.ir_state_changed |= other.ir_state_changed;
        self.dma.extend(other.dma);
        self.dma_state_changed |= other.dma_state_changed;
    }
}

/// What the unit does with one interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Not remapped: remapping is disabled, or the message is in compatibility format and
    /// compatibility format passes through. The message is unchanged.
    Passthrough(MsiMessage),
    /// Remapped through IRTE `index`.
    Remapped {
        /// The IRTE index used.
        index: u32,
        /// The interrupt to deliver, in KVM's x2APIC API layout.
        message: MsiMessage,
    },
    /// A posted-format IRTE: no route. Each interrupt is posted into the entry's
    /// descriptor when it fires ([`VtdUnit::deliver`], [`VtdUnit::post`]).
    Posted(PostedInterrupt),
    /// Blocked: no interrupt. The fault is not yet recorded; see
    /// [`VtdUnit::record_fault`].
    Blocked(Fault),
}

impl Translation {
    /// The message to route, if any.
    pub fn message(&self) -> Option<MsiMessage> {
        match *self {
            Translation::Passthrough(m) | Translation::Remapped { message: m, .. } => Some(m),
            Translation::Posted(_) | Translation::Blocked(_) => None,
        }
    }

    /// The posted interrupt, when the entry is in posted format.
    pub fn posted(&self) -> Option<PostedInterrupt> {
        match *self {
            Translation::Posted(p) => Some(p),
            _ => None,
        }
    }

    /// The IRTE index the message named (remapped, or blocked after decoding the index):
    /// the key under which an IEC invalidation reaches this route.
    pub fn irte_index(&self) -> Option<u32> {
        match *self {
            Translation::Passthrough(_) => None,
            Translation::Remapped { index, .. } => Some(index),
            Translation::Posted(p) => Some(p.index),
            Translation::Blocked(f) => f.index,
        }
    }

    /// The fault, when blocked.
    pub fn fault(&self) -> Option<Fault> {
        match *self {
            Translation::Blocked(f) => Some(f),
            _ => None,
        }
    }
}

/// Which access an MMIO request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Dword,
    Qword,
}

fn classify(offset: u64, len: usize) -> Option<Access> {
    let access = match len {
        DWORD => Access::Dword,
        QWORD => Access::Qword,
        _ => return None,
    };
    let size = u64::try_from(len).ok()?;
    // Sizes are powers of two: aligned means no low bits set.
    if offset & (size - 1) != 0 || offset.checked_add(size)? > VTD_MMIO_SIZE {
        return None;
    }
    Some(access)
}

/// One VT-d remapping unit (DRHD) with interrupt remapping and queued invalidation.
#[derive(Clone, Debug)]
pub struct VtdUnit {
    config: VtdConfig,
    cap: u64,
    ecap: u64,
    gsts: u32,
    rtaddr: u64,
    rtaddr_latched: Option<u64>,
    ccmd: u64,
    iva: u64,
    iotlb: u64,
    irta: u64,
    ir_table: Option<IrTable>,
    faults: FaultLog,
    queue: InvalidationQueue,
    ics: u32,
    completion_event: EventInterrupt,
    dma: DmaRemapping,
}

impl VtdUnit {
    /// A unit in its reset state.
    pub fn new(config: VtdConfig) -> Self {
        let fault_records = config.fault_records.clamp(1, MAX_FAULT_RECORDS);
        let config = VtdConfig {
            fault_records,
            ..config
        };
        let eim = config.extended_interrupt_mode;
        let caps = Capabilities {
            fault_records,
            posted_interrupts: config.posted_interrupts,
            dma_translation: config.dma_translation,
            caching_mode: config.caching_mode,
            extended_interrupt_mode: eim,
        };
        let cap = capability(&caps);
        let ecap = extended_capability(&caps);
        let sllps = (cap >> CAP_SLLPS_SHIFT) & 0xf;
        let dma = DmaRemapping::new(DmaSupport {
            context: ContextSupport {
                sagaw: (cap >> CAP_SAGAW_SHIFT) & 0x1f,
                pass_through: ecap & ECAP_PT != 0,
            },
            superpages: Superpages {
                two_mib: sllps & SLLPS_2M != 0,
                one_gib: sllps & SLLPS_1G != 0,
            },
        });
        VtdUnit {
            config,
            cap,
            ecap,
            gsts: 0,
            rtaddr: 0,
            rtaddr_latched: None,
            ccmd: 0,
            iva: 0,
            iotlb: 0,
            irta: 0,
            ir_table: None,
            faults: FaultLog::new(fault_records, eim),
            queue: InvalidationQueue::new(),
            ics: 0,
            completion_event: EventInterrupt::new(eim),
            dma,
        }
    }

    /// Returns the unit to its reset state (platform reset).
    pub fn reset(&mut self) {
        *self = VtdUnit::new(self.config);
    }

    /// The configuration in effect (after clamping).
    pub fn config(&self) -> VtdConfig {
        self.config
    }

    /// The CAP register.
    pub fn capability(&self) -> u64 {
        self.cap
    }

    /// The ECAP register.
    pub fn extended_capability(&self) -> u64 {
        self.ecap
    }

    /// The GSTS register.
    pub fn global_status(&self) -> u32 {
        self.gsts
    }

    /// The FSTS register.
    pub fn fault_status(&self) -> u32 {
        self.faults.status()
    }

    /// True while interrupt remapping is enabled (GSTS.IRES).
    pub fn remapping_enabled(&self) -> bool {
        self.gsts & GSTS_IRES != 0
    }

    /// The active interrupt remapping table (latched by SIRTP).
    pub fn ir_table(&self) -> Option<IrTable> {
        self.ir_table
    }

    /// The root table pointer latched by SRTP.
    pub fn root_table(&self) -> Option<u64> {
        self.rtaddr_latched
    }

    /// True while DMA translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.gsts & GSTS_TES != 0
    }

    /// The root table DMA translation uses now: `None` while translation is disabled
    /// (a root table never latched reads from address 0, as the reset value of RTADDR).
    fn active_root(&self) -> Option<u64> {
        self.translation_enabled()
            .then(|| self.rtaddr_latched.unwrap_or(0))
    }

    /// Translates one DMA request (the page containing `req.iova`), using and filling the
    /// context cache and the IOTLB. The fault is returned, not recorded: see
    /// [`VtdUnit::record_dma_fault`], or use [`VtdUnit::dma_access`].
    pub fn translate_dma(
        &mut self,
        mem: &dyn GuestMemoryReader,
        req: DmaRequest,
    ) -> Result<DmaMapping, DmaFault> {
        let root = self.active_root();
        self.dma.translate(mem, root, req)
    }

    /// [`VtdUnit::translate_dma`], recording the fault (unless FPD suppresses it); the
    /// effects hold the fault event when one is due.
    pub fn dma_access(
        &mut self,
        mem: &dyn GuestMemoryReader,
        req: DmaRequest,
    ) -> (Result<DmaMapping, DmaFault>, Effects) {
        let result = self.translate_dma(mem, req);
        let effects = match &result {
            Err(fault) => self.record_dma_fault(fault),
            Ok(_) => Effects::default(),
        };
        (result, effects)
    }

    /// Records a DMA-remapping fault in the fault log (unless FPD suppresses it or the
    /// log overflowed); the effects hold the fault event interrupt when one is due.
    pub fn record_dma_fault(&mut self, fault: &DmaFault) -> Effects {
        let mut effects = Effects::default();
        effects.interrupts.extend(self.faults.record_dma(fault));
        effects
    }

    /// How `source`'s DMA is translated now, read from the guest's tables (not the
    /// caches): what the VMM shadows for a passed-through device.
    pub fn dma_view(&self, mem: &dyn GuestMemoryReader, source: SourceId) -> DeviceView {
        self.dma.view(mem, self.active_root(), source)
    }

    /// What the DMA-remapping engine supports (from CAP and ECAP).
    pub fn dma_support(&self) -> DmaSupport {
        self.dma.support()
    }

    /// Hit and miss counts of the context cache and the IOTLB.
    pub fn dma_cache_stats(&self) -> (dma::cache::CacheStats, dma::cache::CacheStats) {
        self.dma.stats()
    }

    fn remap_settings(&self) -> remap::RemapSettings {
        remap::RemapSettings {
            table: self.ir_table,
            compatibility_allowed: self.gsts & GSTS_CFIS != 0,
            posted_interrupts: self.config.posted_interrupts,
        }
    }

    /// What `msg` from `source` becomes, reading the IRTE from `mem` now. Pure: a fault
    /// is returned, not recorded.
    pub fn translate(
        &self,
        mem: &dyn GuestMemoryReader,
        source: SourceId,
        msg: MsiMessage,
    ) -> Translation {
        if !self.remapping_enabled() {
            return Translation::Passthrough(msg);
        }
        match remap::remap(&self.remap_settings(), mem, source, &msg) {
            Ok(remap::RemapOutcome::Passthrough(m)) => Translation::Passthrough(m),
            Ok(remap::RemapOutcome::Remapped(r)) => Translation::Remapped {
                index: r.index,
                message: r.message,
            },
            Ok(remap::RemapOutcome::Posted(p)) => Translation::Posted(p),
            Err(fault) => Translation::Blocked(fault),
        }
    }

    /// Delivers one interrupt the VMM handles itself: [`VtdUnit::translate`] (the IRTE is
    /// read now), then the fault is recorded (blocked) or the interrupt posted
    /// ([`VtdUnit::post`]). The translation tells the VMM what, if anything, to send itself
    /// (a remapped or passed-through message); the effects hold the unit's own interrupts
    /// (a posting's notification event, fault events).
    pub fn deliver(
        &mut self,
        mem: &dyn GuestMemoryReader,
        source: SourceId,
        msg: MsiMessage,
    ) -> (Translation, Effects) {
        let translation = self.translate(mem, source, msg);
        let effects = match translation {
            Translation::Blocked(fault) => self.record_fault(&fault),
            Translation::Posted(p) => self.post(mem, &p),
            Translation::Passthrough(_) | Translation::Remapped { .. } => Effects::default(),
        };
        (translation, effects)
    }

    /// Posts one interrupt through a posted-format entry ([`posted::post`]): sets its PIR
    /// bit and, when due, puts the notification event into the effects' interrupts. A
    /// descriptor outside guest RAM records fault 0x27, reserved descriptor bits fault
    /// 0x28 (both suppressed by the entry's FPD); the interrupt is then lost, as on
    /// hardware.
    pub fn post(&mut self, mem: &dyn GuestMemoryReader, p: &PostedInterrupt) -> Effects {
        match posted::post(mem, p) {
            Ok(done) => {
                let mut effects = Effects::default();
                effects.interrupts.extend(done.notification);
                effects
            }
            Err(e) => {
                log::debug!("vt-d: IRTE {} posting failed: {e}", p.index);
                let reason = match e {
                    posted::PostError::Unreadable { .. } => FaultReason::DescriptorAccessFailed,
                    posted::PostError::Reserved { .. } => FaultReason::DescriptorReserved,
                };
                self.record_fault(&Fault {
                    reason,
                    source_id: p.source_id,
                    index: Some(p.index),
                    suppressed: p.entry.fault_processing_disabled,
                })
            }
        }
    }

    /// [`VtdUnit::translate`], recording the fault when the message is blocked.
    pub fn translate_and_record(
        &mut self,
        mem: &dyn GuestMemoryReader,
        source: SourceId,
        msg: MsiMessage,
    ) -> (Translation, Effects) {
        let translation = self.translate(mem, source, msg);
        let effects = match translation {
            Translation::Blocked(fault) => self.record_fault(&fault),
            _ => Effects::default(),
        };
        (translation, effects)
    }

    /// Records `fault` in the fault log (unless FPD suppresses it or the log overflowed);
    /// the effects hold the fault event interrupt when one is due.
    pub fn record_fault(&mut self, fault: &Fault) -> Effects {
        let mut effects = Effects::default();
        effects.interrupts.extend(self.faults.record(fault));
        effects
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the register window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let value = match classify(offset, data.len()) {
            Some(Access::Dword) => u64::from(self.read_dword(offset)),
            Some(Access::Qword) => {
                let low = u64::from(self.read_dword(offset));
                let high = u64::from(self.read_dword(offset + HIGH_DWORD_OFFSET));
                low | (high << DWORD_BITS)
            }
            None => {
                data.iter_mut().for_each(|b| *b = 0xff);
                return;
            }
        };
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    /// Handles a guest write of `data` at `offset` in the register window; `mem` is where
    /// the invalidation queue and wait status words live.
    pub fn mmio_write(&mut self, mem: &dyn GuestMemoryReader, offset: u64, data: &[u8]) -> Effects {
        let mut effects = Effects::default();
        let mut bytes = [0u8; QWORD];
        for (dst, src) in bytes.iter_mut().zip(data) {
            *dst = *src;
        }
        let value = u64::from_le_bytes(bytes);
        match classify(offset, data.len()) {
            Some(Access::Dword) => self.write_dword(mem, offset, low_dword(value), &mut effects),
            Some(Access::Qword) => {
                self.write_dword(mem, offset, low_dword(value), &mut effects);
                self.write_dword(
                    mem,
                    offset + HIGH_DWORD_OFFSET,
                    high_dword(value),
                    &mut effects,
                );
            }
            None => log::debug!("vt-d: ignoring {}-byte write at {offset:#x}", data.len()),
        }
        effects
    }

    /// The fault record and dword an offset in the FRCD range names.
    fn frcd_slot(&self, offset: u64) -> Option<(usize, usize)> {
        let rel = offset.checked_sub(FRCD_REG)?;
        let record = usize::try_from(rel / FRCD_SIZE).ok()?;
        if record >= self.faults.len() {
            return None;
        }
        let dword = usize::try_from((rel % FRCD_SIZE) / DWORD as u64).ok()?;
        Some((record, dword))
    }

    fn read_dword(&self, offset: u64) -> u32 {
        let half = |value: u64, base: u64| {
            if offset == base {
                low_dword(value)
            } else {
                high_dword(value)
            }
        };
        match offset {
            VER_REG => VER_VALUE,
            o if o & !HIGH_DWORD_OFFSET == CAP_REG => half(self.cap, CAP_REG),
            o if o & !HIGH_DWORD_OFFSET == ECAP_REG => half(self.ecap, ECAP_REG),
            GCMD_REG => 0,
            GSTS_REG => self.gsts,
            o if o & !HIGH_DWORD_OFFSET == RTADDR_REG => half(self.rtaddr, RTADDR_REG),
            o if o & !HIGH_DWORD_OFFSET == CCMD_REG => half(self.ccmd, CCMD_REG),
            FSTS_REG => self.faults.status(),
            FECTL_REG => self.faults.event().control(),
            FEDATA_REG => self.faults.event().data(),
            FEADDR_REG => self.faults.event().address(),
            FEUADDR_REG => self.faults.event().upper_address(),
            o if o & !HIGH_DWORD_OFFSET == IQH_REG => half(self.queue.head_register(), IQH_REG),
            o if o & !HIGH_DWORD_OFFSET == IQT_REG => half(self.queue.tail_register(), IQT_REG),
            o if o & !HIGH_DWORD_OFFSET == IQA_REG => half(self.queue.address_register(), IQA_REG),
            ICS_REG => self.ics,
            IECTL_REG => self.completion_event.control(),
            IEDATA_REG => self.completion_event.data(),
            IEADDR_REG => self.completion_event.address(),
            IEUADDR_REG => self.completion_event.upper_address(),
            o if o & !HIGH_DWORD_OFFSET == IRTA_REG => half(self.irta, IRTA_REG),
            o if o & !HIGH_DWORD_OFFSET == IVA_REG => half(self.iva, IVA_REG),
            o if o & !HIGH_DWORD_OFFSET == IOTLB_REG => half(self.iotlb, IOTLB_REG),
            o => match self.frcd_slot(o) {
                Some((record, dword)) => self.faults.read_record(record, dword),
                None => 0,
            },
        }
    }

    fn write_dword(
        &mut self,
        mem: &dyn GuestMemoryReader,
        offset: u64,
        value: u32,
        effects: &mut Effects,
    ) {
        let high = offset & HIGH_DWORD_OFFSET != 0;
        match offset {
            GCMD_REG => self.write_gcmd(mem, value, effects),
            o if o & !HIGH_DWORD_OFFSET == RTADDR_REG => {
                self.rtaddr =
                    with_dword(self.rtaddr, high, value) & (RTADDR_MASK | RTADDR_TTM_MASK);
            }
            o if o & !HIGH_DWORD_OFFSET == CCMD_REG => {
                self.ccmd = with_dword(self.ccmd, high, value);
                if self.ccmd & CCMD_ICC != 0 {
                    self.register_context_invalidation(effects);
                }
            }
            FSTS_REG => {
                let was_stopped = self.faults.queue_error();
                self.faults.write_status(value);
                if was_stopped && !self.faults.queue_error() {
                    // Software cleared IQE: fetching resumes from the head.
                    self.run_queue(mem, effects);
                }
            }
            FECTL_REG => effects
                .interrupts
                .extend(self.faults.event_mut().write_control(value)),
            FEDATA_REG => self.faults.event_mut().write_data(value),
            FEADDR_REG => self.faults.event_mut().write_address(value),
            FEUADDR_REG => self.faults.event_mut().write_upper_address(value),
            o if o & !HIGH_DWORD_OFFSET == IQT_REG => {
                let iqt = with_dword(self.queue.tail_register(), high, value);
                self.queue.write_tail_register(iqt);
                if !high {
                    self.run_queue(mem, effects);
                }
            }
            o if o & !HIGH_DWORD_OFFSET == IQA_REG => {
                if self.gsts & GSTS_QIES != 0 {
                    log::debug!("vt-d: IQA write while queued invalidation is enabled, ignored");
                } else {
                    let iqa = with_dword(self.queue.address_register(), high, value);
                    self.queue.write_address_register(iqa);
                }
            }
            ICS_REG => {
                self.ics &= !(value & ICS_IWC);
                if self.ics & ICS_IWC == 0 {
                    self.completion_event.clear_pending();
                }
            }
            IECTL_REG => effects
                .interrupts
                .extend(self.completion_event.write_control(value)),
            IEDATA_REG => self.completion_event.write_data(value),
            IEADDR_REG => self.completion_event.write_address(value),
            IEUADDR_REG => self.completion_event.write_upper_address(value),
            o if o & !HIGH_DWORD_OFFSET == IRTA_REG => {
                let mut writable = IRTA_BASE_MASK | IRTA_S_MASK;
                if self.config.extended_interrupt_mode {
                    writable |= IRTA_EIME;
                }
                self.irta = with_dword(self.irta, high, value) & writable;
            }
            o if o & !HIGH_DWORD_OFFSET == IVA_REG => self.iva = with_dword(self.iva, high, value),
            o if o & !HIGH_DWORD_OFFSET == IOTLB_REG => {
                self.iotlb = with_dword(self.iotlb, high, value);
                if self.iotlb & IOTLB_IVT != 0 {
                    self.register_iotlb_invalidation(effects);
                }
            }
            o => {
                if let Some((record, dword)) = self.frcd_slot(o) {
                    self.faults.write_record(record, dword, value);
                }
            }
        }
    }

    /// A context-cache invalidation through CCMD (ICC set): performed at once at the
    /// requested granularity (CAIG = CIRG), or not at all for the reserved granularity 0
    /// (CAIG = 0); ICC clears either way.
    fn register_context_invalidation(&mut self, effects: &mut Effects) {
        let ccmd = self.ccmd;
        let cirg = (ccmd >> CCMD_CIRG_SHIFT) & CCMD_GRANULARITY_MASK;
        let domain = (ccmd & CCMD_DID_MASK) as u16;
        let inv = match cirg {
            GRANULARITY_GLOBAL => Some(ContextInvalidation::Global),
            GRANULARITY_DOMAIN => Some(ContextInvalidation::Domain(domain)),
            GRANULARITY_DEVICE_OR_PAGE => Some(ContextInvalidation::Device {
                source: SourceId(((ccmd >> CCMD_SID_SHIFT) & DID_MASK) as u16),
                function_mask: ((ccmd >> CCMD_FM_SHIFT) & 0x3) as u8,
            }),
            _ => None,
        };
        let caig = if inv.is_some() { cirg } else { 0 };
        if let Some(inv) = inv {
            self.apply_dma_invalidation(DmaInvalidation::Context(inv), effects);
        } else {
            log::debug!("vt-d: CCMD with reserved granularity 0 not performed");
        }
        self.ccmd &= !(CCMD_ICC | (CCMD_GRANULARITY_MASK << CCMD_CAIG_SHIFT));
        self.ccmd |= caig << CCMD_CAIG_SHIFT;
    }

    /// An IOTLB invalidation through the IOTLB register (IVT set) and IVA: performed at
    /// once (IAIG = IIRG), or not at all (IAIG = 0) for granularity 0 or a page-selective
    /// request with AM above CAP.MAMV; IVT clears either way.
    fn register_iotlb_invalidation(&mut self, effects: &mut Effects) {
        let reg = self.iotlb;
        let iirg = (reg >> IOTLB_IIRG_SHIFT) & IOTLB_GRANULARITY_MASK;
        let domain = ((reg >> IOTLB_DID_SHIFT) & DID_MASK) as u16;
        let am = (self.iva & IVA_AM_MASK) as u8;
        let inv = match iirg {
            GRANULARITY_GLOBAL => Some(IotlbInvalidation::Global),
            GRANULARITY_DOMAIN => Some(IotlbInvalidation::Domain(domain)),
            GRANULARITY_DEVICE_OR_PAGE if u64::from(am) <= CAP_MAMV_VALUE => {
                Some(IotlbInvalidation::pages(
                    domain,
                    self.iva & IVA_ADDR_MASK,
                    am,
                    self.iva & IVA_IH != 0,
                ))
            }
            _ => None,
        };
        let iaig = if inv.is_some() { iirg } else { 0 };
        if let Some(inv) = inv {
            self.apply_dma_invalidation(DmaInvalidation::Iotlb(inv), effects);
        } else {
            log::debug!(
                "vt-d: IOTLB invalidation {reg:#x} (IVA {:#x}) not performed",
                self.iva
            );
        }
        self.iotlb &= !(IOTLB_IVT | (IOTLB_GRANULARITY_MASK << IOTLB_IAIG_SHIFT));
        self.iotlb |= iaig << IOTLB_IAIG_SHIFT;
    }

    /// Drops what `inv` covers from the caches and reports it to the VMM.
    fn apply_dma_invalidation(&mut self, inv: DmaInvalidation, effects: &mut Effects) {
        self.dma.invalidate(&inv);
        effects.dma.push(inv);
    }

    fn write_gcmd(&mut self, mem: &dyn GuestMemoryReader, value: u32, effects: &mut Effects) {
        let changed = value ^ self.gsts;
        if changed & GCMD_TE != 0 {
            if !self.config.dma_translation {
                if value & GCMD_TE != 0 {
                    log::debug!("vt-d: GCMD.TE ignored: DMA translation is configured off");
                }
            } else {
                if value & GCMD_TE != 0 {
                    self.gsts |= GSTS_TES;
                } else {
                    self.gsts &= !GSTS_TES;
                }
                effects.dma_state_changed = true;
            }
        }
        if value & GCMD_SRTP != 0 {
            if self.rtaddr & RTADDR_TTM_MASK != 0 {
                log::debug!(
                    "vt-d: RTADDR.TTM {:#x} not supported, legacy mode used",
                    self.rtaddr
                );
            }
            self.rtaddr_latched = Some(self.rtaddr & RTADDR_MASK);
            self.gsts |= GSTS_RTPS;
            effects.dma_state_changed |= self.config.dma_translation;
        }
        if changed & GCMD_QIE != 0 {
            if value & GCMD_QIE != 0 {
                self.gsts |= GSTS_QIES;
                self.run_queue(mem, effects);
            } else {
                if self.queue.has_work() {
                    log::debug!("vt-d: queued invalidation disabled with descriptors pending");
                }
                self.gsts &= !GSTS_QIES;
                self.queue.reset_head();
            }
        }
        if value & GCMD_SIRTP != 0 {
            let table = IrTable {
                base: self.irta & IRTA_BASE_MASK,
                entries: 2u32 << (self.irta & IRTA_S_MASK),
                eime: self.irta & IRTA_EIME != 0,
            };
            log::debug!("vt-d: interrupt remapping table {table:x?}");
            self.ir_table = Some(table);
            self.gsts |= GSTS_IRTPS;
            effects.ir_state_changed = true;
        }
        if changed & GCMD_IRE != 0 {
            if value & GCMD_IRE != 0 {
                if self.ir_table.is_none() {
                    log::debug!("vt-d: interrupt remapping enabled before SIRTP");
                }
                self.gsts |= GSTS_IRES;
            } else {
                self.gsts &= !GSTS_IRES;
            }
            effects.ir_state_changed = true;
        }
        if changed & GCMD_CFI != 0 {
            if value & GCMD_CFI != 0 {
                self.gsts |= GSTS_CFIS;
            } else {
                self.gsts &= !GSTS_CFIS;
            }
            effects.ir_state_changed = true;
        }
    }

    /// Runs the invalidation queue if it is enabled and not stopped by an error.
    fn run_queue(&mut self, mem: &dyn GuestMemoryReader, effects: &mut Effects) {
        if self.gsts & GSTS_QIES == 0 || self.faults.queue_error() {
            return;
        }
        let run = self.queue.run(mem);
        effects.iec.extend(run.invalidations);
        for inv in run.dma {
            self.apply_dma_invalidation(inv, effects);
        }
        if run.completion_interrupts > 0 {
            let was_set = self.ics & ICS_IWC != 0;
            self.ics |= ICS_IWC;
            if !was_set {
                effects.interrupts.extend(self.completion_event.signal());
            }
        }
        if let Some(error) = run.error {
            log::debug!("vt-d: invalidation queue error: {error}");
            effects.interrupts.extend(self.faults.set_queue_error());
        }
    }
}

#[cfg(test)]
mod tests;
