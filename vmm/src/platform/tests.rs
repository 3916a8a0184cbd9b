//! Tests of the AMD-Vi wiring: where the unit, its function and the IOAPIC's device ID go,
//! what the IVRS says about them, and the unit's own MSI through the router.

use std::sync::{Arc, Mutex};

use devices::pci::config::PCI_CAPABILITY_LIST;
use devices::pci::msi::{MSI_ADDRESS_HI, MSI_ADDRESS_LO, MSI_CONTROL, MSI_CTRL_ENABLE, MSI_DATA};
use devices::pci::{PciAddress, PciRoot};
use devices::BusDevice;
use kvm_bindings::kvm_irq_routing_entry;
use virtual_iommu::amd::cmd::CMD_COMPLETION_WAIT;
use virtual_iommu::amd::pci::{AMDVI_CLASS_CODE, AMD_VENDOR_ID, CAP_ID_SECURE_DEVICE};
use virtual_iommu::amd::regs::{
    CMD_BUF_BASE_REG, CMD_TAIL_REG, CONTROL_REG, CTRL_CMDBUF_EN, CTRL_COMWAIT_INT_EN, CTRL_GA_EN,
    CTRL_IOMMU_EN, CTRL_XT_EN, DEV_TAB_BASE_REG, EFR_GA_SUP, EFR_XT_SUP,
};
use virtual_iommu::amd::{dte, irte};
use virtual_iommu::{MsiMessage, SourceId};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::acpi::ivrs::device_id;
use crate::interrupt::routes::RouteError;
use crate::interrupt::{IrqLine, IrqfdBackend, MsiSignal, RoutingBackend};

/// Linux's `IOAPIC_SB_DEVID` (drivers/iommu/amd/init.c): 00:14.0.
const LINUX_IOAPIC_SB_DEVID: u16 = 0x00a0;

/// A committed route: (address_lo, address_hi, data).
type Route = (u32, u32, u32);

/// Records the MSIs the router signals and the last route table it commits.
#[derive(Default)]
struct Recorder {
    msis: Mutex<Vec<MsiMessage>>,
    /// (gsi, route) pairs.
    routes: Mutex<Vec<(u32, Route)>>,
}

impl RoutingBackend for Recorder {
    fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
        // SAFETY: the router only builds MSI entries, so `msi` is the live union member.
        let table = entries
            .iter()
            .map(|e| unsafe {
                (
                    e.gsi,
                    (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data),
                )
            })
            .collect();
        *self.routes.lock().unwrap() = table;
        Ok(())
    }
}
impl IrqLine for Recorder {
    fn set_irq_line(&self, _gsi: u32, _level: bool) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }
}
impl MsiSignal for Recorder {
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error> {
        self.msis.lock().unwrap().push(msg);
        Ok(())
    }
}
impl IrqfdBackend for Recorder {
    fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }
}

#[test]
fn ioapic_device_id_is_the_one_linux_expects_under_amd_vi() {
    assert_eq!(
        device_id(ioapic_source_id(IommuKind::Amd)),
        LINUX_IOAPIC_SB_DEVID
    );
    assert_eq!(device_id(ioapic_source_id(IommuKind::Intel)), 0xff00);
    assert_eq!(device_id(ioapic_source_id(IommuKind::None)), 0xff00);
}

#[test]
fn device_numbers_skip_the_reserved_ones() {
    let numbers: Vec<u8> = (0..).map_while(crate::passthrough::device_number).collect();
    assert_eq!(numbers.len(), 29, "{numbers:?}");
    assert_eq!(&numbers[..3], &[1, 2, 3]);
    assert!(numbers.windows(2).all(|w| w[0] < w[1]));
    for reserved in RESERVED_PCI_DEVICES {
        assert!(!numbers.contains(&reserved), "{reserved:#x} handed out");
    }
    assert!(RESERVED_PCI_DEVICES.contains(&AMDVI_BDF.1));
    assert!(RESERVED_PCI_DEVICES.contains(&AMDVI_IOAPIC_SOURCE_ID.1));
    // The 20th device moved past 0x14.
    assert_eq!(crate::passthrough::device_number(19), Some(0x15));
}

#[test]
fn amd_vi_window_overlaps_nothing_else() {
    let window = AMDVI_ADDR..AMDVI_ADDR + AMDVI_SIZE;
    assert_eq!(
        AMDVI_ADDR % 0x4000,
        0,
        "16 KiB aligned (capability base register)"
    );
    for (base, size) in [
        (IOAPIC_ADDR, IOAPIC_SIZE),
        (VTD_ADDR, VTD_SIZE),
        (LAPIC_ADDR, 0x10_0000),
        (PCI_MMIO_START, PCI_MMIO_END - PCI_MMIO_START),
        (PCIE_ECAM_START, PCIE_ECAM_SIZE),
    ] {
        assert!(
            window.end <= base || base + size <= window.start,
            "{base:#x}+{size:#x}"
        );
    }
}

/// Reads a dword of `address`'s configuration space.
fn config_u32(root: &mut PciRoot, address: PciAddress, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    root.config_read(address, offset, &mut b);
    u32::from_le_bytes(b)
}

/// The capability list of `address`: (ID, offset) pairs.
fn capabilities(root: &mut PciRoot, address: PciAddress) -> Vec<(u8, u16)> {
    let mut caps = Vec::new();
    let mut p = (config_u32(root, address, PCI_CAPABILITY_LIST) & 0xfc) as u16;
    while p != 0 && caps.len() < 16 {
        let header = config_u32(root, address, p);
        caps.push((header as u8, p));
        p = ((header >> 8) & 0xfc) as u16;
    }
    caps
}

fn router_with_amd_unit() -> (
    Arc<Recorder>,
    Arc<Iommu>,
    Arc<InterruptRouter<Recorder>>,
    GuestMemoryMmap,
) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let iommu = Arc::new(Iommu::new_amd(amd_vi_config(), mem.clone()));
    let kvm = Arc::new(Recorder::default());
    let (b, d, f) = ioapic_source_id(IommuKind::Amd);
    let router = InterruptRouter::new(
        kvm.clone(),
        TranslationPolicy { ext_dest_id: false },
        Some(iommu.clone()),
        IOAPIC_PINS as u32,
        SourceId::new(b, d, f),
        HostPosting::default(),
    );
    (kvm, iommu, router, mem)
}

#[test]
fn ivrs_describes_the_function_the_platform_places() {
    let (_kvm, _iommu, router, mem) = router_with_amd_unit();
    let mut root = PciRoot::new();
    add_amd_iommu_function(&mut root, &router).unwrap();
    let (bus, dev, func) = AMDVI_BDF;
    let address = PciAddress::new(bus, dev, func).unwrap();
    let id = config_u32(&mut root, address, 0);
    assert_eq!(id & 0xffff, u32::from(AMD_VENDOR_ID));
    assert_eq!(config_u32(&mut root, address, 0x08) >> 8, AMDVI_CLASS_CODE);

    let ivrs = amd_ivrs_config().unwrap();
    assert_eq!(ivrs.iommu_bdf, AMDVI_BDF);
    let caps = capabilities(&mut root, address);
    assert!(
        caps.contains(&(CAP_ID_SECURE_DEVICE, ivrs.capability_offset)),
        "IVHD capability offset {:#x} vs {caps:x?}",
        ivrs.capability_offset
    );
    // The capability's base address registers name the window, enabled.
    let low = config_u32(&mut root, address, ivrs.capability_offset + 4);
    let high = config_u32(&mut root, address, ivrs.capability_offset + 8);
    assert_eq!(u64::from(high) << 32 | u64::from(low & !1), AMDVI_ADDR);
    assert_eq!(low & 1, 1);
    assert_eq!(ivrs.register_base, AMDVI_ADDR);
    assert_eq!(device_id(ivrs.ioapic_bdf), LINUX_IOAPIC_SB_DEVID);
    assert_eq!(ivrs.ioapic_id, IOAPIC_ID);
    assert_eq!(ivrs.bus, 0);
    assert!(ivrs.host_translation_disabled);
    assert_eq!(ivrs.address_bits, 48);
    assert_eq!(
        ivrs.efr & (EFR_XT_SUP | EFR_GA_SUP),
        EFR_XT_SUP | EFR_GA_SUP
    );
    assert_eq!(
        ivrs.efr,
        Iommu::new_amd(amd_vi_config(), mem).extended_features()
    );
}

/// A COMPLETION_WAIT with its interrupt bit, while `IntCapXTEn` is clear, reaches the guest
/// through the function's MSI capability: effects → router → own-MSI hook → function.
#[test]
fn completion_wait_interrupt_signals_the_function_msi() {
    let (kvm, iommu, router, mem) = router_with_amd_unit();
    let mut root = PciRoot::new();
    add_amd_iommu_function(&mut root, &router).unwrap();
    let (bus, dev, func) = AMDVI_BDF;
    let address = PciAddress::new(bus, dev, func).unwrap();
    let msi = capabilities(&mut root, address)
        .into_iter()
        .find(|&(id, _)| id == devices::pci::msi::PCI_CAP_ID_MSI)
        .map(|(_, off)| off)
        .expect("MSI capability");

    const CMD_BUF: u64 = 0x8000;
    /// ComLen 8: 256 commands.
    const COM_LEN_256: u64 = 8 << 56;
    const CW_INTERRUPT: u64 = 1 << 1;
    let mut window = AmdMmio::new(iommu, Arc::downgrade(&router));
    window.write(CMD_BUF_BASE_REG, &(CMD_BUF | COM_LEN_256).to_le_bytes());
    let control = CTRL_IOMMU_EN | CTRL_CMDBUF_EN | CTRL_COMWAIT_INT_EN;
    window.write(CONTROL_REG, &control.to_le_bytes());
    let command = (u64::from(CMD_COMPLETION_WAIT) << 60) | CW_INTERRUPT;
    mem.write_obj(command, GuestAddress(CMD_BUF)).unwrap();
    mem.write_obj(0u64, GuestAddress(CMD_BUF + 8)).unwrap();

    // MSI disabled: nothing is sent.
    window.write(CMD_TAIL_REG, &16u64.to_le_bytes());
    assert!(kvm.msis.lock().unwrap().is_empty());

    // Program and enable the MSI (APIC ID 1, vector 0x41), clear ComWaitInt, run again.
    root.config_write(address, msi + MSI_ADDRESS_LO, &0xfee0_1000u32.to_le_bytes());
    root.config_write(address, msi + MSI_ADDRESS_HI, &0u32.to_le_bytes());
    root.config_write(address, msi + MSI_DATA, &0x41u16.to_le_bytes());
    let ctrl = (config_u32(&mut root, address, msi) >> 16) as u16 | MSI_CTRL_ENABLE;
    root.config_write(address, msi + MSI_CONTROL, &ctrl.to_le_bytes());
    const STATUS_REG: u64 = virtual_iommu::amd::regs::STATUS_REG;
    window.write(STATUS_REG, &u32::MAX.to_le_bytes());
    mem.write_obj(command, GuestAddress(CMD_BUF + 16)).unwrap();
    mem.write_obj(0u64, GuestAddress(CMD_BUF + 24)).unwrap();
    window.write(CMD_TAIL_REG, &32u64.to_le_bytes());
    let sent = kvm.msis.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:x?}");
    assert_eq!(sent[0].data & 0xff, 0x41);
    assert_eq!((sent[0].address_lo >> 12) & 0xff, 1);
}

/// An IOAPIC pin under AMD-Vi is remapped through the interrupt table of device 00:14.0, the
/// device ID the IVRS special entry gives the IOAPIC (128-bit IRTE, x2APIC destination 287,
/// IRTE index in the RTE's vector field as Linux programs it).
#[test]
fn ioapic_pins_are_remapped_through_the_device_table_entry_of_00_14_0() {
    let (kvm, iommu, router, mem) = router_with_amd_unit();
    const DEV_TAB: u64 = 0x1_0000;
    const IRT: u64 = 0x2_0000;
    const PIN: u8 = 4;
    let ioapic_devid = u64::from(device_id(ioapic_source_id(IommuKind::Amd)));
    // Two 4 KiB pages of device table (size field 1) reach device ID 0xa0.
    let dte_addr = DEV_TAB + ioapic_devid * dte::DTE_SIZE as u64;
    mem.write_slice(
        &dte::build::remapped(1, IRT, 9).to_bytes(),
        GuestAddress(dte_addr),
    )
    .unwrap();
    let entry = irte::build::remapped(0x55, 287, false).to_bytes();
    let irte_addr = IRT + u64::from(PIN) * irte::IRTE128_SIZE as u64;
    mem.write_slice(&entry, GuestAddress(irte_addr)).unwrap();

    let mut window = AmdMmio::new(iommu, Arc::downgrade(&router));
    window.write(DEV_TAB_BASE_REG, &(DEV_TAB | 1).to_le_bytes());
    let control = CTRL_IOMMU_EN | CTRL_GA_EN | CTRL_XT_EN;
    window.write(CONTROL_REG, &control.to_le_bytes());

    let pins = Arc::new(IoApicPins::new(router.clone()));
    let mut ioapic = IoApic::new(IOAPIC_ID, pins);
    let rte_low = 0x10 + 2 * u32::from(PIN);
    for (reg, value) in [(rte_low + 1, 0u32), (rte_low, u32::from(PIN))] {
        ioapic.write(devices::ioapic::IOAPIC_IOREGSEL_OFFSET, &reg.to_le_bytes());
        ioapic.write(devices::ioapic::IOAPIC_IOWIN_OFFSET, &value.to_le_bytes());
    }
    // Pin routes are staged and committed when the pin fires.
    ioapic.set_irq_level(usize::from(PIN), true);
    let routes = kvm.routes.lock().unwrap().clone();
    let route = routes
        .iter()
        .find(|(gsi, _)| *gsi == u32::from(PIN))
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("no route for pin {PIN}: {routes:x?}"));
    let (address_lo, address_hi, data) = route;
    assert_eq!(data & 0xff, 0x55, "{route:x?}");
    let dest = (address_hi & 0xffff_ff00) | ((address_lo >> 12) & 0xff);
    assert_eq!(dest, 287, "{route:x?}");
}
