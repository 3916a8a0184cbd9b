//! The PCI function an AMD-Vi unit is to the guest: class 0806h, the IOMMU capability block
//! (whose base registers tell where the register window is) and a one-message MSI
//! capability for the unit's own interrupts when its XT interrupt registers are off.
//! The unit's own MSI is never remapped (an IOMMU does not remap its own interrupts).

use std::sync::{Arc, Mutex, Weak};

use devices::fill_ones;
use devices::pci::config::{BarRegion, ConfigWriteEffect, PciConfigSpace, PciHeader};
use devices::pci::msi::MsiCapability;
use devices::pci::{MsiSink, PciError, PciFunction};
use virtual_iommu::amd::pci::{
    IommuCapability, AMDVI_CLASS_CODE, AMDVI_DEVICE_ID, AMD_VENDOR_ID, CAP_ID_SECURE_DEVICE,
    IOMMU_CAP_LEN, MSI_VECTORS,
};
use virtual_iommu::MsiMessage;

use crate::interrupt::{InterruptBackend, InterruptRouter};

/// Size of a dword.
const DWORD: u16 = 4;

/// The unit's MSI, sent as programmed (only the IOMMU-less policy applies).
pub struct UnremappedMsi<B: InterruptBackend + 'static> {
    router: Weak<InterruptRouter<B>>,
    route: Mutex<Option<MsiMessage>>,
}

impl<B: InterruptBackend + 'static> UnremappedMsi<B> {
    /// A sink sending through `router`.
    pub fn new(router: Weak<InterruptRouter<B>>) -> Self {
        UnremappedMsi {
            router,
            route: Mutex::new(None),
        }
    }
}

impl<B: InterruptBackend + 'static> MsiSink for UnremappedMsi<B> {
    fn set_vector_route(&self, _index: u16, msg: Option<MsiMessage>) {
        if let Ok(mut r) = self.route.lock() {
            *r = msg;
        }
    }

    fn trigger_vector(&self, _index: u16) {
        let msg = self.route.lock().ok().and_then(|r| *r);
        if let (Some(m), Some(router)) = (msg, self.router.upgrade()) {
            router.signal_unremapped(m);
        }
    }
}

/// The AMD-Vi PCI function.
pub struct AmdIommuFunction {
    config: PciConfigSpace,
    cap_offset: u16,
    msi: MsiCapability,
}

impl AmdIommuFunction {
    /// The function for a unit whose register window is at `mmio_base`, covering bus
    /// `bus`; the unit's own MSI goes to `msi_sink`.
    pub fn new(mmio_base: u64, bus: u8, msi_sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: AMD_VENDOR_ID,
            device_id: AMDVI_DEVICE_ID,
            class_code: AMDVI_CLASS_CODE,
            ..PciHeader::default()
        });
        let cap_offset = config.add_capability(CAP_ID_SECURE_DEVICE, IOMMU_CAP_LEN)?;
        for (i, dword) in IommuCapability::new(mmio_base, bus)
            .dwords()
            .into_iter()
            .enumerate()
        {
            let at = cap_offset + DWORD * i as u16;
            // The header's low half is the capability ID and next pointer.
            let keep = if i == 0 {
                config.read_u32(at) & 0xffff
            } else {
                0
            };
            config.set_u32(at, dword | keep);
        }
        let msi = MsiCapability::new(&mut config, MSI_VECTORS, false, msi_sink)?;
        Ok(AmdIommuFunction {
            config,
            cap_offset,
            msi,
        })
    }

    /// Offset of the IOMMU capability block (the IVHD names it).
    pub fn capability_offset(&self) -> u16 {
        self.cap_offset
    }

    /// Signals the unit's MSI once (if the guest enabled and unmasked it).
    pub fn signal(&mut self) {
        self.msi.trigger(&mut self.config, 0);
    }
}

impl PciFunction for AmdIommuFunction {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        let effects = self.config.write(offset, data);
        self.msi.config_written(&mut self.config);
        effects
    }

    fn bars(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        fill_ones(data);
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
