//! The virtio-pci modern transport: a PCI function whose BAR 0 holds the common
//! configuration, ISR, device configuration and notification structures and the MSI-X
//! table and PBA ([`layout`]), announced by vendor-specific capabilities (common, notify,
//! ISR, device and PCI configuration access).
//!
//! Identity: vendor 0x1af4, device 0x1040 + virtio type, revision 1 (modern only, no
//! legacy I/O BAR), subsystem 0x1af4:0x1100, no INTx (interrupt pin 0: MSI-X is required;
//! Linux and the probe use it). Offered transport features: `VIRTIO_F_VERSION_1`,
//! `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_RING_F_INDIRECT_DESC`, and `VIRTIO_F_ACCESS_PLATFORM`
//! when the VMM gave the device a DMA translator ([`VirtioPciDevice::with_dma`]: a VT-d
//! unit that remaps DMA). When the driver accepts it, the device's rings and buffers are
//! I/O virtual addresses translated for the function's requester ID at every access
//! ([`crate::memory`]); when it does not, they are guest-physical addresses as without an
//! IOMMU.
//!
//! Notifications: each queue's eventfd is registered (KVM_IOEVENTFD, any write size, no
//! data match) at `BAR 0 + 0x3000 + 4 q` whenever memory decoding is on and the BAR is
//! placed, and moved when the guest moves the BAR. A notify write that does reach the
//! transport (no ioeventfd) signals the same eventfd. The device's I/O thread
//! ([`crate::worker`]) consumes them.
//!
//! Interrupts: MSI-X vector `i`'s eventfd is the VMM's irqfd source (nothing is sent while
//! Bus Master Enable is clear); masking is handled by
//! [`devices::pci::MsixCapability`] with the VMM's sink, and masked fires come back
//! through [`VirtioPciDevice::masked_fire`] to set the pending bit.

pub mod common;
pub mod layout;

use std::sync::Arc;

use devices::fill_ones;
use devices::pci::config::PCI_COMMAND_MEMORY;
use devices::pci::{
    BarKind, BarRegion, ConfigWriteEffect, MsiSink, MsixCapability, MsixLayout, PciConfigSpace,
    PciError, PciFunction, PciHeader,
};
use log::{debug, info, warn};
use thiserror::Error;
use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::common::{CommonConfig, CommonEffect};
use self::layout::*;
use crate::interrupt::VirtioInterrupt;
use crate::memory::{DeviceMemory, DmaView};
use crate::spec::*;
use crate::worker::{Activation, QueueHandler, Worker, WorkerError};
use crate::IoEventRegistrar;

/// Transport features every device offers.
pub const TRANSPORT_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_RING_F_INDIRECT_DESC);

/// `VIRTIO_F_ACCESS_PLATFORM` as a mask: offered with a DMA translator.
pub const ACCESS_PLATFORM: u64 = feature(VIRTIO_F_ACCESS_PLATFORM);

/// What a device type tells the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Short name for logs (`blk0`, `console`, `rng`).
    pub name: String,
    /// Virtio device type (`VIRTIO_ID_*`).
    pub device_type: u32,
    /// PCI class code (base << 16 | sub << 8 | interface).
    pub class_code: u32,
    /// Device-type features (transport features are added).
    pub features: u64,
    /// Each queue's maximum size (a power of two).
    pub queue_sizes: Vec<u16>,
    /// The device-specific configuration structure (read only to the driver).
    pub config: Vec<u8>,
}

impl DeviceSpec {
    /// MSI-X vectors the device needs: one per queue and one for configuration changes.
    pub fn vectors(&self) -> u16 {
        u16::try_from(self.queue_sizes.len() + 1).unwrap_or(u16::MAX)
    }
}

/// Errors building a device (never caused by the guest).
#[derive(Debug, Error)]
pub enum VirtioPciError {
    /// The PCI pieces refused the layout.
    #[error("{name}: PCI: {source}")]
    Pci {
        /// Device name.
        name: String,
        /// What the PCI model said.
        source: PciError,
    },
    /// Vectors or queues out of the layout's range.
    #[error("{name}: {what}")]
    Layout {
        /// Device name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// Eventfds.
    #[error("{name}: eventfds: {source}")]
    Io {
        /// Device name.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// The I/O thread.
    #[error("{name}: {source}")]
    Worker {
        /// Device name.
        name: String,
        /// The error.
        source: WorkerError,
    },
}

/// Offsets of the capabilities in configuration space.
#[derive(Clone, Copy, Debug, Default)]
struct Caps {
    pci_cfg: u16,
}

/// One virtio device on PCI.
pub struct VirtioPciDevice {
    spec: DeviceSpec,
    config: PciConfigSpace,
    msix: MsixCapability,
    common: CommonConfig,
    interrupt: Arc<VirtioInterrupt>,
    notifiers: Vec<Arc<EventFd>>,
    registrar: Arc<dyn IoEventRegistrar>,
    /// BAR 0's address as last reported by a (non-sizing) BAR write.
    bar_address: u64,
    /// Where the notification eventfds are registered now.
    notify_base: Option<u64>,
    mem: GuestMemoryMmap,
    /// The device's DMA translation, offered as `VIRTIO_F_ACCESS_PLATFORM`.
    dma: Option<DmaView>,
    worker: Worker,
    caps: Caps,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("name", &self.spec.name)
            .field("notify_base", &self.notify_base)
            .finish_non_exhaustive()
    }
}

/// Adds a virtio capability of `len` bytes: `cfg_type`, BAR 0, `offset`, `length`.
fn add_virtio_cap(
    config: &mut PciConfigSpace,
    len: u8,
    cfg_type: u8,
    offset: u64,
    length: u64,
) -> Result<u16, PciError> {
    let at = config.add_capability(PCI_CAP_ID_VENDOR, len)?;
    config.set_u8(at + VIRTIO_PCI_CAP_LEN_OFFSET, len);
    config.set_u8(at + VIRTIO_PCI_CAP_CFG_TYPE, cfg_type);
    config.set_u8(at + VIRTIO_PCI_CAP_BAR, VIRTIO_BAR);
    config.set_u8(at + VIRTIO_PCI_CAP_ID, 0);
    // The layout's offsets and lengths fit 32 bits.
    config.set_u32(at + VIRTIO_PCI_CAP_OFFSET, offset as u32);
    config.set_u32(at + VIRTIO_PCI_CAP_LENGTH, length as u32);
    Ok(at)
}

impl VirtioPciDevice {
    /// Builds the function for `spec`, served by `handler` on a new I/O thread. `sink` and
    /// `vectors` are the device's MSI-X vectors as the VMM's interrupt router made them
    /// ([`DeviceSpec::vectors`] of each); `registrar` places notification eventfds.
    pub fn new(
        spec: DeviceSpec,
        handler: Box<dyn QueueHandler>,
        sink: Arc<dyn MsiSink>,
        vectors: Vec<Arc<EventFd>>,
        registrar: Arc<dyn IoEventRegistrar>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, VirtioPciError> {
        let name = spec.name.clone();
        let layout_err = |what: String| VirtioPciError::Layout {
            name: name.clone(),
            what,
        };
        let pci = |source| VirtioPciError::Pci {
            name: name.clone(),
            source,
        };
        let queues = spec.queue_sizes.len();
        if queues == 0 || queues > MAX_QUEUES {
            return Err(layout_err(format!("{queues} queues (1..={MAX_QUEUES})")));
        }
        if spec.vectors() > MAX_VECTORS || vectors.len() != usize::from(spec.vectors()) {
            return Err(layout_err(format!(
                "{} vector eventfds for {} vectors",
                vectors.len(),
                spec.vectors()
            )));
        }
        if spec.config.len() as u64 > DEVICE_SIZE {
            return Err(layout_err("device configuration too large".into()));
        }
        let device_id = u16::try_from(spec.device_type)
            .ok()
            .and_then(|t| VIRTIO_PCI_MODERN_DEVICE_BASE.checked_add(t))
            .ok_or_else(|| layout_err(format!("device type {}", spec.device_type)))?;
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision_id: VIRTIO_PCI_REVISION,
            class_code: spec.class_code,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config
            .add_bar(VIRTIO_BAR, BarKind::Memory64, BAR_SIZE, false)
            .map_err(pci)?;
        let msix = MsixCapability::new(
            &mut config,
            MsixLayout {
                vectors: spec.vectors(),
                table_bar: VIRTIO_BAR,
                table_offset: MSIX_TABLE_OFFSET,
                pba_bar: VIRTIO_BAR,
                pba_offset: MSIX_PBA_OFFSET,
            },
            sink,
        )
        .map_err(pci)?;
        // Every vector starts masked: the router must not hand them to KVM yet.
        msix.announce_masks();
        add_virtio_cap(
            &mut config,
            VIRTIO_PCI_CAP_LEN,
            VIRTIO_PCI_CAP_COMMON_CFG,
            COMMON_OFFSET,
            common::COMMON_CFG_SIZE,
        )
        .map_err(pci)?;
        let notify = add_virtio_cap(
            &mut config,
            VIRTIO_PCI_NOTIFY_CAP_LEN,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            queues as u64 * u64::from(NOTIFY_MULTIPLIER),
        )
        .map_err(pci)?;
        config.set_u32(notify + VIRTIO_PCI_NOTIFY_MULTIPLIER, NOTIFY_MULTIPLIER);
        add_virtio_cap(
            &mut config,
            VIRTIO_PCI_CAP_LEN,
            VIRTIO_PCI_CAP_ISR_CFG,
            ISR_OFFSET,
            1,
        )
        .map_err(pci)?;
        add_virtio_cap(
            &mut config,
            VIRTIO_PCI_CAP_LEN,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            DEVICE_OFFSET,
            spec.config.len().max(1) as u64,
        )
        .map_err(pci)?;
        let pci_cfg = add_virtio_cap(
            &mut config,
            VIRTIO_PCI_CFG_CAP_LEN,
            VIRTIO_PCI_CAP_PCI_CFG,
            0,
            0,
        )
        .map_err(pci)?;
        config.set_writable_u8(pci_cfg + VIRTIO_PCI_CAP_BAR, u8::MAX);
        config.set_writable_u32(pci_cfg + VIRTIO_PCI_CAP_OFFSET, u32::MAX);
        config.set_writable_u32(pci_cfg + VIRTIO_PCI_CAP_LENGTH, u32::MAX);
        config.set_writable_u32(pci_cfg + VIRTIO_PCI_CFG_DATA, u32::MAX);

        let interrupt = Arc::new(VirtioInterrupt::new(vectors, queues));
        interrupt.set_bus_master(config.bus_master_enabled());
        let notifiers = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| VirtioPciError::Io {
                name: name.clone(),
                source,
            })?;
        let worker =
            Worker::spawn(handler, notifiers.clone(), interrupt.clone()).map_err(|source| {
                VirtioPciError::Worker {
                    name: name.clone(),
                    source,
                }
            })?;
        let common = CommonConfig::new(
            spec.features | TRANSPORT_FEATURES,
            &spec.queue_sizes,
            interrupt.clone(),
        );
        Ok(VirtioPciDevice {
            spec,
            config,
            msix,
            common,
            interrupt,
            notifiers,
            registrar,
            bar_address: 0,
            notify_base: None,
            mem,
            dma: None,
            worker,
            caps: Caps { pci_cfg },
        })
    }

    /// Offers `VIRTIO_F_ACCESS_PLATFORM`: when the driver accepts it, the device reaches
    /// its rings and buffers through `view` (the platform IOMMU's translation for the
    /// function's requester ID). Call before the guest sees the device.
    pub fn with_dma(mut self, view: DmaView) -> Self {
        self.common = CommonConfig::new(
            self.spec.features | TRANSPORT_FEATURES | ACCESS_PLATFORM,
            &self.spec.queue_sizes,
            self.interrupt.clone(),
        );
        self.dma = Some(view);
        self
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The configuration space.
    pub fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    /// The MSI-X capability.
    pub fn msix(&self) -> &MsixCapability {
        &self.msix
    }

    /// The device's interrupt state.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Queue `q`'s notification eventfd.
    pub fn notifier(&self, q: usize) -> Option<&Arc<EventFd>> {
        self.notifiers.get(q)
    }

    /// Where the notification eventfds are registered (BAR 0 + 0x3000), if anywhere.
    pub fn notify_base(&self) -> Option<u64> {
        self.notify_base
    }

    /// MSI-X vector `index` fired while masked (the router watched its eventfd): set its
    /// pending bit, or deliver it if it was unmasked meanwhile.
    pub fn masked_fire(&mut self, index: u16) {
        self.msix.trigger(index);
    }

    /// Moves the notification eventfds where BAR 0 now decodes.
    fn place_notifiers(&mut self) {
        let decoding = self.config.command() & PCI_COMMAND_MEMORY != 0;
        let want = (decoding && self.bar_address != 0)
            .then(|| self.bar_address.checked_add(NOTIFY_OFFSET))
            .flatten();
        if want == self.notify_base {
            return;
        }
        let step = u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.notify_base.take() {
            for (q, fd) in self.notifiers.iter().enumerate() {
                if let Err(e) = self.registrar.unregister(old + step * q as u64, fd) {
                    warn!("{}: removing queue {q}'s ioeventfd: {e}", self.spec.name);
                }
            }
        }
        if let Some(base) = want {
            for (q, fd) in self.notifiers.iter().enumerate() {
                let Some(addr) = base.checked_add(step * q as u64) else {
                    continue;
                };
                if let Err(e) = self.registrar.register(addr, fd) {
                    warn!(
                        "{}: queue {q}'s ioeventfd at {addr:#x}: {e}",
                        self.spec.name
                    );
                }
            }
            debug!("{}: notifications at {base:#x}", self.spec.name);
            self.notify_base = Some(base);
        }
    }

    fn apply(&mut self, effects: Vec<CommonEffect>) {
        for fx in effects {
            match fx {
                CommonEffect::Reset => self.worker.reset(),
                CommonEffect::QueueEnabled(q) => {
                    if let Some(Err(e)) = self.common.queue(q).map(|r| r.check()) {
                        warn!(
                            "{}: queue {q} enabled with {e}; the device needs a reset",
                            self.spec.name
                        );
                        self.interrupt.needs_reset();
                    }
                }
                CommonEffect::DriverOk(features) => self.start(features),
            }
        }
    }

    fn start(&mut self, features: u64) {
        let event_idx = features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mem = match &self.dma {
            Some(view) if features & ACCESS_PLATFORM != 0 => {
                DeviceMemory::translated(self.mem.clone(), view.clone())
            }
            _ => DeviceMemory::physical(self.mem.clone()),
        };
        let mut queues = Vec::new();
        for (q, regs) in self.common.queues().iter().enumerate() {
            if !regs.enabled {
                queues.push(None);
                continue;
            }
            match regs.build(event_idx, &mem) {
                Ok(queue) => queues.push(Some(queue)),
                Err(e) => {
                    warn!(
                        "{}: queue {q}: {e}; the device needs a reset",
                        self.spec.name
                    );
                    self.interrupt.needs_reset();
                    return;
                }
            }
        }
        info!(
            "{}: started (features {features:#x}, {} of {} queues{})",
            self.spec.name,
            queues.iter().filter(|q| q.is_some()).count(),
            queues.len(),
            if mem.is_translated() {
                ", addresses through the IOMMU"
            } else {
                ""
            }
        );
        self.worker.activate(Activation {
            queues,
            mem,
            interrupt: self.interrupt.clone(),
            features,
        });
    }

    /// BAR 0 read.
    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        match region(offset) {
            Region::Common(o) => self.common.read(o, data),
            Region::Isr(o) => {
                data.fill(0);
                if o == 0 {
                    if let Some(b) = data.first_mut() {
                        *b = self.interrupt.take_isr();
                    }
                }
            }
            Region::Device(o) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = o
                        .checked_add(i as u64)
                        .and_then(|at| usize::try_from(at).ok())
                        .and_then(|at| self.spec.config.get(at))
                        .copied()
                        .unwrap_or(0);
                }
            }
            Region::Notify(_) => data.fill(0),
            Region::Msix => {
                if !self.msix.bar_read(VIRTIO_BAR, offset, data) {
                    data.fill(0);
                }
            }
            Region::Outside => fill_ones(data),
        }
    }

    /// BAR 0 write.
    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match region(offset) {
            Region::Common(o) => {
                let fx = self.common.write(o, data);
                self.apply(fx);
            }
            Region::Isr(_) => debug!("{}: ISR write ignored", self.spec.name),
            Region::Device(o) => {
                debug!(
                    "{}: device configuration write at {o:#x} ignored",
                    self.spec.name
                )
            }
            Region::Notify(o) => {
                let q = o / u64::from(NOTIFY_MULTIPLIER);
                match usize::try_from(q).ok().and_then(|q| self.notifiers.get(q)) {
                    Some(fd) => {
                        if let Err(e) = fd.write(1) {
                            warn!("{}: queue {q} notification: {e}", self.spec.name);
                        }
                    }
                    None => debug!("{}: notify of nonexistent queue {q}", self.spec.name),
                }
            }
            Region::Msix => {
                if !self.msix.bar_write(VIRTIO_BAR, offset, data) {
                    debug!(
                        "{}: write at {offset:#x} between table and PBA",
                        self.spec.name
                    );
                }
            }
            Region::Outside => {}
        }
    }

    /// The BAR access the PCI configuration access capability describes, if valid:
    /// `(offset, length)` with BAR 0, length 1, 2 or 4 and the offset aligned to it.
    fn cfg_window(&self) -> Option<(u64, usize)> {
        let at = self.caps.pci_cfg;
        let bar = self.config.read_u8(at + VIRTIO_PCI_CAP_BAR);
        let offset = self.config.read_u32(at + VIRTIO_PCI_CAP_OFFSET);
        let length = self.config.read_u32(at + VIRTIO_PCI_CAP_LENGTH) as usize;
        (bar == VIRTIO_BAR
            && matches!(length, 1 | 2 | 4)
            && (offset as usize).is_multiple_of(length))
        .then_some((u64::from(offset), length))
    }

    /// True when `[offset, offset + len)` touches `pci_cfg_data`.
    fn touches_cfg_data(&self, offset: u16, len: usize) -> bool {
        let data = self.caps.pci_cfg + VIRTIO_PCI_CFG_DATA;
        let end = u32::from(offset) + len as u32;
        u32::from(offset) < u32::from(data) + 4 && end > u32::from(data)
    }
}

impl PciFunction for VirtioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.touches_cfg_data(offset, data.len()) {
            if let Some((bar_offset, len)) = self.cfg_window() {
                let mut buf = [0u8; 4];
                if let Some(b) = buf.get_mut(..len) {
                    self.bar0_read(bar_offset, b);
                }
                self.config.set_u32(
                    self.caps.pci_cfg + VIRTIO_PCI_CFG_DATA,
                    u32::from_le_bytes(buf),
                );
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        let effects = self.config.write(offset, data);
        self.msix.config_written(&self.config);
        self.interrupt
            .set_bus_master(self.config.bus_master_enabled());
        for fx in &effects {
            if let ConfigWriteEffect::BarMoved {
                bar: VIRTIO_BAR,
                new,
                ..
            } = fx
            {
                self.bar_address = *new;
            }
        }
        if !effects.is_empty() {
            self.place_notifiers();
        }
        if self.touches_cfg_data(offset, data.len()) {
            if let Some((bar_offset, len)) = self.cfg_window() {
                let value = self
                    .config
                    .read_u32(self.caps.pci_cfg + VIRTIO_PCI_CFG_DATA)
                    .to_le_bytes();
                if let Some(v) = value.get(..len) {
                    self.bar0_write(bar_offset, v);
                }
            }
        }
        effects
    }

    fn bars(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == VIRTIO_BAR {
            self.bar0_read(offset, data);
        } else {
            fill_ones(data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == VIRTIO_BAR {
            self.bar0_write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
