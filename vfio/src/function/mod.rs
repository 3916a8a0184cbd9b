//! The guest-visible PCI function of a passed-through device, built on a [`VfioBackend`]:
//! configuration space ([`config`]), BARs mapped or trapped and the MSI-X table placed
//! ([`plan`]), the device's layout ([`layout`]), and the host side of its interrupts
//! ([`irqs`]).
//!
//! # Wiring (what the VMM does)
//!
//! 1. [`VfioPciFunction::open`] reads the device and decides where its MSI-X table goes.
//! 2. [`VfioPciFunction::needs`] says which interrupts the device has; the VMM creates an
//!    irqfd vector (an eventfd with a GSI) for each MSI-X and MSI vector and an eventfd for
//!    INTx, and gives them with their sinks to [`VfioPciFunction::connect`].
//! 3. The VMM adds the function to its PCI root, DMA-maps guest RAM
//!    ([`VfioPciFunction::dma_map`]), and maps [`VfioPciFunction::mapped_areas`] into the
//!    guest as KVM memory slots wherever the BARs are programmed, following
//!    `BarMoved`/`DecodeChanged` effects.
//! 4. At run time the function emulates what traps, forwards the rest to the device, and
//!    enables the device's INTx, MSI or MSI-X (with the same eventfds) as the guest does.

pub mod config;
pub mod irqs;
pub mod layout;
pub mod plan;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use devices::fill_ones;
use devices::pci::config::{
    BarKind, BarRegion, ConfigWriteEffect, PCI_COMMAND_MEMORY, PCI_ROM_BAR_INDEX,
};
use devices::pci::msix::{MSIX_CONTROL, MSIX_CTRL_ENABLE, MSIX_ENTRY_SIZE};
use devices::pci::{MsiSink, PciError, PciFunction};
use thiserror::Error;
use virtual_iommu::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{BackendError, DmaRegion, RegionMmap, VfioBackend, CONFIG_REGION, ROM_REGION};
use config::VirtConfig;
use irqs::{Active, HostIrqs};
use layout::{read_layout, DeviceLayout, LayoutError, LayoutFacts, CONFIG_HEADER_SIZE};
use plan::{MapArea, MsixDecision, MsixPlacement, MsixPolicy, PlanError, PAGE_SIZE};

pub use irqs::VectorKind;

/// Why a device cannot be passed through as asked (reported before the VM starts).
#[derive(Debug, Error)]
pub enum FunctionError {
    /// The device's layout cannot be presented.
    #[error("{0}")]
    Layout(#[from] LayoutError),
    /// The MSI-X placement asked for is impossible.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// Talking to the device failed.
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The emulated configuration space could not be built.
    #[error("{0}")]
    Pci(#[from] PciError),
}

/// The interrupts the device offers, for the VMM to create vectors for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqNeeds {
    /// MSI-X vectors (0: none).
    pub msix: u16,
    /// The MSI-X table is the device's own (`msix=direct`).
    pub msix_direct: bool,
    /// MSI vectors (0: none).
    pub msi: u16,
    /// INTx.
    pub intx: bool,
}

/// One kind of vectors as the VMM provides them: where messages go and the eventfds the
/// device signals (in vector order).
pub struct VectorSet {
    /// Receives raw messages, masks and one-shot deliveries.
    pub sink: Arc<dyn MsiSink>,
    /// One eventfd per vector.
    pub fds: Vec<Arc<EventFd>>,
}

/// What the VMM gives [`VfioPciFunction::connect`].
#[derive(Default)]
pub struct Interrupts {
    /// MSI-X vectors.
    pub msix: Option<VectorSet>,
    /// MSI vectors.
    pub msi: Option<VectorSet>,
    /// The INTx eventfd.
    pub intx: Option<Arc<EventFd>>,
}

/// A part of a BAR mapped into the guest.
#[derive(Clone, Debug)]
pub struct MappedArea {
    /// Where in which BAR.
    pub area: MapArea,
    /// The host mapping (KVM slot memory).
    pub mmap: Arc<RegionMmap>,
}

/// A sink bound once the VMM has created the vectors; calls before that are dropped
/// (the guest cannot have run yet).
#[derive(Default)]
struct LateSink(OnceLock<Arc<dyn MsiSink>>);

impl MsiSink for LateSink {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        if let Some(s) = self.0.get() {
            s.set_vector_route(index, msg);
        }
    }
    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        if let Some(s) = self.0.get() {
            s.set_vector_routes(routes);
        }
    }
    fn trigger_vector(&self, index: u16) {
        if let Some(s) = self.0.get() {
            s.trigger_vector(index);
        }
    }
    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        if let Some(s) = self.0.get() {
            s.set_vectors_masked(changes);
        }
    }
}

/// The device's own MSI-X table, mapped (`msix=direct`): what the VMM reads a vector's
/// message from. Lock-free: shared memory and an atomic.
#[derive(Clone)]
pub struct DirectTable {
    mmap: Arc<RegionMmap>,
    /// Offset of the table in `mmap`.
    base: usize,
    vectors: u16,
    enabled: Arc<AtomicBool>,
}

impl DirectTable {
    /// Entry `index`'s message while MSI-X is enabled; `None` otherwise.
    pub fn read_message(&self, index: u16) -> Option<MsiMessage> {
        if index >= self.vectors || !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let at = self.base + usize::from(index) * MSIX_ENTRY_SIZE as usize;
        let mut e = [0u8; 12];
        let ok = self.mmap.read(at, &mut e[0..4])
            && self.mmap.read(at + 4, &mut e[4..8])
            && self.mmap.read(at + 8, &mut e[8..12]);
        ok.then(|| MsiMessage {
            address_lo: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            address_hi: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            data: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
        })
    }
}

struct Facts<'a>(&'a dyn VfioBackend);

impl LayoutFacts for Facts<'_> {
    fn region_size(&self, index: u32) -> u64 {
        self.0.region(index).map(|r| r.size).unwrap_or(0)
    }
    fn irq_count(&self, index: u32) -> u32 {
        self.0.irq(index).map(|i| i.count).unwrap_or(0)
    }
}

/// A passed-through PCI function.
pub struct VfioPciFunction {
    name: String,
    backend: Box<dyn VfioBackend>,
    layout: DeviceLayout,
    decision: MsixDecision,
    config: VirtConfig,
    msix_sink: Arc<LateSink>,
    msi_sink: Arc<LateSink>,
    host: HostIrqs,
    mapped: Vec<MappedArea>,
    direct: Option<DirectTable>,
    /// Trapped BAR accesses by (BAR, page offset).
    trapped: BTreeMap<(u8, u64), u64>,
    /// A device error was logged (later ones are not, until it works again).
    failing: bool,
}

impl VfioPciFunction {
    /// Reads the device behind `backend` and plans how to present it; `name` prefixes log
    /// lines (`vfio 0000:01:00.0`, `vfio-user /run/dev.sock`).
    pub fn open(
        mut backend: Box<dyn VfioBackend>,
        name: String,
        policy: MsixPolicy,
    ) -> Result<Self, FunctionError> {
        let mut cfg = vec![0u8; CONFIG_HEADER_SIZE];
        backend.region_read(CONFIG_REGION, 0, &mut cfg)?;
        let layout = read_layout(&cfg, &Facts(backend.as_ref()))?;
        let mmap_areas = |bar: u8| {
            backend
                .region(u32::from(bar))
                .map(|r| r.mmap_areas())
                .unwrap_or_default()
        };
        let table_mappable = layout.msix.is_some_and(|m| {
            let l = m.layout;
            plan::covered(
                &mmap_areas(l.table_bar),
                u64::from(l.table_offset),
                l.table_size(),
            ) && plan::covered(
                &mmap_areas(l.pba_bar),
                u64::from(l.pba_offset),
                l.pba_size(),
            )
        });
        let decision = plan::decide(
            policy,
            &layout,
            backend.kind(),
            &backend.isolation(),
            table_mappable,
        )?;
        let guest_msix = layout
            .msix
            .map(|m| plan::guest_msix_layout(&m.layout, decision.placement));
        let msix_sink = Arc::new(LateSink::default());
        let msi_sink = Arc::new(LateSink::default());
        let config = VirtConfig::new(
            &layout,
            decision.placement,
            guest_msix,
            msix_sink.clone(),
            msi_sink.clone(),
        )?;
        let mut mapped = Vec::new();
        for bar in layout.bars.iter().filter(|b| b.kind != BarKind::Io) {
            let msix = layout.msix.map(|m| m.layout);
            for area in plan::map_areas(
                bar.index,
                bar.size,
                &mmap_areas(bar.index),
                msix.as_ref(),
                decision.placement,
            ) {
                match backend.mmap(u32::from(bar.index), area.offset, area.size) {
                    Ok(m) => mapped.push(MappedArea {
                        area,
                        mmap: Arc::new(m),
                    }),
                    Err(e) => log::warn!(
                        "{name}: BAR {} {:#x}+{:#x} cannot be mapped ({e}); its accesses will trap",
                        bar.index,
                        area.offset,
                        area.size
                    ),
                }
            }
        }
        let direct = match (decision.placement, layout.msix) {
            (MsixPlacement::Direct, Some(m)) => {
                let l = m.layout;
                let found = mapped.iter().find(|a| {
                    a.area.bar == l.table_bar
                        && a.area.offset <= u64::from(l.table_offset)
                        && u64::from(l.table_offset) + l.table_size() <= a.area.offset + a.area.size
                });
                let Some(a) = found else {
                    return Err(PlanError::DirectNotMappable("table").into());
                };
                Some(DirectTable {
                    mmap: a.mmap.clone(),
                    base: (u64::from(l.table_offset) - a.area.offset) as usize,
                    vectors: l.vectors,
                    enabled: Arc::new(AtomicBool::new(false)),
                })
            }
            _ => None,
        };
        log::info!(
            "{name}: {:04x}:{:04x}, {} BARs, MSI-X {} ({})",
            layout.header.vendor_id,
            layout.header.device_id,
            layout.bars.len(),
            describe(decision.placement, layout.msix.is_some()),
            decision.reason
        );
        Ok(VfioPciFunction {
            name,
            backend,
            layout,
            decision,
            config,
            msix_sink,
            msi_sink,
            host: HostIrqs::default(),
            mapped,
            direct,
            trapped: BTreeMap::new(),
            failing: false,
        })
    }

    /// The name used in log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the MSI-X table went and why.
    pub fn msix_decision(&self) -> &MsixDecision {
        &self.decision
    }

    /// The interrupts the device offers.
    pub fn needs(&self) -> IrqNeeds {
        IrqNeeds {
            msix: self.layout.msix.map(|m| m.layout.vectors).unwrap_or(0),
            msix_direct: self.direct.is_some(),
            msi: self.layout.msi.map(|m| m.vectors).unwrap_or(0),
            intx: self.layout.intx,
        }
    }

    /// The device's INTx pin (1 = INTA), when it has INTx.
    pub fn layout_intx_pin(&self) -> Option<u8> {
        self.layout.intx.then_some(self.layout.header.interrupt_pin)
    }

    /// The device's own table, for `msix=direct`.
    pub fn direct_table(&self) -> Option<DirectTable> {
        self.direct.clone()
    }

    /// Binds the VMM's vectors and enables INTx on the device if it has it.
    pub fn connect(&mut self, irqs: Interrupts) {
        if let Some(v) = irqs.msix {
            let _ = self.msix_sink.0.set(v.sink);
            self.host.msix_fds = v.fds;
        }
        if let Some(v) = irqs.msi {
            let _ = self.msi_sink.0.set(v.sink);
            self.host.msi_fds = v.fds;
        }
        self.host.intx_fd = irqs.intx;
        if let Some(m) = &self.config.msix {
            m.announce_masks();
        }
        if let Some(m) = &self.config.msi {
            m.announce_masks();
        }
        self.sync_host_irqs();
    }

    /// Makes guest RAM `regions` reachable by the device's DMA.
    pub fn dma_map(&mut self, regions: &[DmaRegion]) -> Result<(), BackendError> {
        for r in regions {
            self.backend.dma_map(r)?;
        }
        Ok(())
    }

    /// Makes `region` reachable by the device's DMA with the permissions given (a
    /// shadowed guest IOMMU mapping).
    pub fn dma_map_with(
        &mut self,
        region: &DmaRegion,
        read: bool,
        write: bool,
    ) -> Result<(), BackendError> {
        self.backend.dma_map_with(region, read, write)
    }

    /// Removes a DMA mapping made by [`VfioPciFunction::dma_map`] or
    /// [`VfioPciFunction::dma_map_with`].
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), BackendError> {
        self.backend.dma_unmap(iova, size)
    }

    /// The BAR parts mapped into the guest (KVM memory slots at the BAR's address).
    pub fn mapped_areas(&self) -> &[MappedArea] {
        &self.mapped
    }

    /// Trapped BAR accesses so far, by (BAR, page offset).
    pub fn trapped_accesses(&self) -> &BTreeMap<(u8, u64), u64> {
        &self.trapped
    }

    /// A vector of `kind` fired while masked (reported by the VMM's watcher): its pending
    /// bit is set, or it is delivered if it was unmasked meanwhile.
    pub fn masked_fire(&mut self, kind: VectorKind, index: u16) {
        match kind {
            VectorKind::Msix => {
                if let Some(m) = &mut self.config.msix {
                    m.trigger(index);
                }
            }
            VectorKind::Msi => {
                if let (Some(m), emu) = self.config.msi_parts() {
                    m.trigger(emu, index);
                }
            }
        }
    }

    /// The guest ended the INTx interrupt (EOI): the host masked INTx when it fired.
    pub fn intx_eoi(&mut self) {
        if self.host.active == Active::Intx {
            if let Err(e) = self.backend.unmask_intx() {
                self.device_error("INTx unmask", &e);
            }
        }
    }

    /// The file descriptor whose hang-up means the device is gone (a vfio-user socket).
    pub fn hangup_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.backend.hangup_fd()
    }

    fn device_error(&mut self, what: &str, e: &BackendError) {
        // A device that is gone was reported when it went (the VMM watches for that).
        if matches!(e, BackendError::Gone) {
            log::debug!("{}: {what}: {e}", self.name);
            return;
        }
        if !self.failing {
            log::error!(
                "{}: {what}: {e} (further device errors are not logged)",
                self.name
            );
            self.failing = true;
        }
    }

    /// Enables on the device the interrupt kind the guest enabled (INTx, MSI or MSI-X are
    /// exclusive in VFIO), with the VMM's eventfds.
    fn sync_host_irqs(&mut self) {
        let msix_on = match (&self.config.msix, &self.direct) {
            (Some(m), _) => m.is_enabled(),
            (None, Some(d)) => d.enabled.load(Ordering::Acquire),
            (None, None) => false,
        };
        let want = if msix_on {
            Active::Msix
        } else if let Some(m) = self.config.msi.as_ref().filter(|m| m.is_enabled()) {
            Active::Msi(m.enabled_vectors())
        } else if self.layout.intx && !self.config.emu().intx_disabled() {
            Active::Intx
        } else {
            Active::None
        };
        if let Err(e) = self.host.switch(self.backend.as_mut(), want) {
            self.device_error("enabling interrupts", &e);
        }
    }

    /// After a write to the device's own MSI-X capability (direct): learn enable/mask.
    fn direct_control_written(&mut self) {
        let (Some(cap), Some(d)) = (self.config.direct_msix(), &self.direct) else {
            return;
        };
        let mut ctl = [0u8; 2];
        if self
            .backend
            .region_read(CONFIG_REGION, u64::from(cap + MSIX_CONTROL), &mut ctl)
            .is_ok()
        {
            // The device honours its function mask itself; the VMM only needs to know
            // whether MSI-X is on, to enable the device's vectors with its eventfds.
            let v = u16::from_le_bytes(ctl);
            d.enabled
                .store(v & MSIX_CTRL_ENABLE != 0, Ordering::Release);
        }
    }

    fn count_trap(&mut self, bar: u8, offset: u64) {
        *self
            .trapped
            .entry((bar, offset / PAGE_SIZE * PAGE_SIZE))
            .or_default() += 1;
    }

    fn device_bar_size(&self, bar: u8) -> u64 {
        self.layout.bar(bar).map(|b| b.size).unwrap_or(0)
    }
}

fn describe(p: MsixPlacement, has_msix: bool) -> String {
    if !has_msix {
        return "none".into();
    }
    match p {
        MsixPlacement::Trap => "table and PBA pages trapped".into(),
        MsixPlacement::Relocated { bar, .. } => {
            format!("table relocated to BAR {bar}; device BARs mapped whole")
        }
        MsixPlacement::Doubled { bar, device_size } => format!(
            "table relocated to the upper half of BAR {bar} (doubled from {device_size:#x}); device BARs mapped whole"
        ),
        MsixPlacement::Direct => "the device's own table, mapped (direct)".into(),
    }
}

impl PciFunction for VfioPciFunction {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let backend = &mut self.backend;
        let mut err = None;
        self.config
            .read(offset, data, &mut |o, buf| match backend.region_read(
                CONFIG_REGION,
                u64::from(o),
                buf,
            ) {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            });
        if let Some(e) = err {
            self.device_error("config read", &e);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        let backend = &mut self.backend;
        let mut err = None;
        let (effects, touched) = self.config.write(offset, data, &mut |o, bytes| {
            if let Err(e) = backend.region_write(CONFIG_REGION, u64::from(o), bytes) {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            self.device_error("config write", &e);
        }
        if touched.direct_msix {
            self.direct_control_written();
        }
        if touched.msix || touched.msi || touched.command || touched.direct_msix {
            self.sync_host_irqs();
        }
        effects
    }

    fn bars(&self) -> Vec<BarRegion> {
        let emu = self.config.emu();
        let mut bars = emu.bar_regions();
        if let Some((size, address, enabled)) = self.config.rom() {
            bars.push(BarRegion {
                index: PCI_ROM_BAR_INDEX,
                kind: BarKind::Memory32,
                prefetchable: false,
                size,
                address,
                decoding: enabled && emu.command() & PCI_COMMAND_MEMORY != 0,
            });
        }
        bars
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.count_trap(bar, offset);
        if bar == PCI_ROM_BAR_INDEX {
            if let Err(e) = self.backend.region_read(ROM_REGION, offset, data) {
                fill_ones(data);
                self.device_error("ROM read", &e);
            }
            return;
        }
        if let Some(m) = &self.config.msix {
            if m.bar_read(bar, offset, data) {
                return;
            }
        }
        let in_device = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.device_bar_size(bar));
        if !in_device {
            fill_ones(data);
            return;
        }
        if let Err(e) = self.backend.region_read(u32::from(bar), offset, data) {
            fill_ones(data);
            self.device_error("BAR read", &e);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.count_trap(bar, offset);
        if bar == PCI_ROM_BAR_INDEX {
            return;
        }
        if let Some(m) = &mut self.config.msix {
            if m.bar_write(bar, offset, data) {
                return;
            }
        }
        let in_device = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.device_bar_size(bar));
        if !in_device {
            return;
        }
        if let Err(e) = self.backend.region_write(u32::from(bar), offset, data) {
            self.device_error("BAR write", &e);
        }
    }
}

/// The raw fd numbers of `fds` (for SET_IRQS).
pub(crate) fn raw_fds(fds: &[Arc<EventFd>]) -> Vec<Option<std::os::fd::RawFd>> {
    fds.iter().map(|f| Some(f.as_raw_fd())).collect()
}

#[cfg(test)]
mod tests;
