//! Differentiated System Description Table (ACPI 6.3 §5.2.11.1): hand-encoded AML.
//!
//! Contents:
//! - `Name(_S5, Package(){5, 0, 0, 0})` at the root: OSPM powers off by writing SLP_TYP = 5
//!   (with SLP_EN) to the FADT's PM1a_CNT.
//! - Under `\_SB`, one processor device per vCPU: `Device(Cnnn){Name(_HID, "ACPI0007")
//!   Name(_UID, i)}` (nnn = i in hex). §5.2.12.12 requires a processor device for every
//!   x2APIC entry; OSPM matches `_UID` against the MADT's processor UIDs.
//! - Under `\_SB`, `COM1` (`_HID EISAID("PNP0501")`, `_UID 0`, `_CRS` with `IO(Decode16)` and
//!   `IRQNoFlags`) when the configuration has a serial port.
//! - Under `\_SB`, when the platform has PCI: `PCI0` (`PNP0A08`, compatible `PNP0A03`),
//!   whose `_CRS` produces the bus range, the config ports, the I/O space around them and the
//!   32-bit MMIO window, and whose `_PRT` routes passed-through devices' INTx pins to
//!   IOAPIC inputs 16..23, and whose `_OSC` grants the OS native control of PCI Express
//!   hot-plug, PME, AER and the capability structure ([`super::osc`]); and `MRES`
//!   (`PNP0C02`), which reserves the ECAM window so an OS trusts the MCFG (the e820/PVH memory
//!   map reserves it too).
//! - Under `\_SB`, when the platform has the ISA pvpanic device: `PEVT` (`_HID "QEMU0001"`,
//!   as QEMU names it) whose `_CRS` is its one I/O port: Linux's `pvpanic-mmio` driver binds
//!   that ACPI ID and takes the first I/O or memory resource as its register.

use super::aml::{Aml, AmlString, Device, EisaId, Name, Package, ResourceTemplate, Scope};
use super::resources::{dword_memory, memory32_fixed, word_bus_number, word_io};
use super::sdt::Sdt;
use super::{AcpiConfig, AcpiError, PciHostConfig};

/// DSDT signature.
pub const SIGNATURE: [u8; 4] = *b"DSDT";
/// DSDT revision 2: AML integers are 64-bit.
pub const REVISION: u8 = 2;

/// Sleep type value the guest writes to power off (`_S5` SLP_TYPa).
pub const S5_SLP_TYP: u8 = 5;
/// Hardware ID of ACPI processor devices.
const PROCESSOR_HID: &str = "ACPI0007";
/// EISA ID of a 16550-compatible serial port.
const SERIAL_HID: &str = "PNP0501";
/// Number of I/O ports a 16550 decodes.
const SERIAL_PORT_LEN: u8 = 8;
/// Alignment field of the serial port's IO descriptor (min == max, so no relocation).
const SERIAL_PORT_ALIGN: u8 = 0;

/// Processor device names are a letter followed by three hex digits; the letter advances
/// from `C` every 4096 processors.
const CPU_NAME_FIRST_LETTER: u8 = b'C';
const CPU_NAME_LAST_LETTER: u8 = b'Z';
const CPUS_PER_LETTER: usize = 0x1000;

/// Largest number of vCPUs the DSDT can name.
pub const MAX_CPUS: usize =
    ((CPU_NAME_LAST_LETTER - CPU_NAME_FIRST_LETTER) as usize + 1) * CPUS_PER_LETTER;

/// Name of the processor device for processor `index`: `C000`..`CFFF`, then `D000`...
pub fn cpu_device_name(index: usize) -> Result<String, AcpiError> {
    let letter = u8::try_from(index / CPUS_PER_LETTER)
        .ok()
        .and_then(|l| CPU_NAME_FIRST_LETTER.checked_add(l))
        .filter(|l| *l <= CPU_NAME_LAST_LETTER)
        .ok_or(AcpiError::TooManyCpus(index.saturating_add(1)))?;
    Ok(format!(
        "{}{:03X}",
        char::from(letter),
        index % CPUS_PER_LETTER
    ))
}

fn processor_device(index: usize) -> Result<Device, AcpiError> {
    let uid = u32::try_from(index).map_err(|_| AcpiError::TooManyCpus(index))?;
    Ok(Device::new(
        &cpu_device_name(index)?,
        vec![
            Box::new(Name::new("_HID", AmlString::new(PROCESSOR_HID)?)?),
            Box::new(Name::new("_UID", uid)?),
        ],
    )?)
}

fn serial_device(port: u16, irq: u8) -> Result<Device, AcpiError> {
    let crs = ResourceTemplate::new()
        .io_decode16(port, port, SERIAL_PORT_ALIGN, SERIAL_PORT_LEN)
        .irq_no_flags(irq)?;
    Ok(Device::new(
        "COM1",
        vec![
            Box::new(Name::new("_HID", EisaId::new(SERIAL_HID)?)?),
            Box::new(Name::new("_UID", 0u8)?),
            Box::new(Name::new("_CRS", crs)?),
        ],
    )?)
}

/// EISA ID of a PCI Express host bridge.
const PCIE_HOST_HID: &str = "PNP0A08";
/// EISA ID of a PCI host bridge (compatible ID).
const PCI_HOST_CID: &str = "PNP0A03";
/// EISA ID of motherboard resources (reservations).
const MOTHERBOARD_RESOURCES_HID: &str = "PNP0C02";
/// The configuration-mechanism ports 0xcf8..0xcff.
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORT_LEN: u8 = 8;
/// I/O space below and above the configuration ports, produced for PCI devices.
const PCI_IO_LOW_END: u16 = 0x0cf7;
const PCI_IO_HIGH_START: u16 = 0x0d00;

/// `_PRT` address field: device number in bits 31:16, any function (0xffff).
const PRT_ANY_FUNCTION: u32 = 0xffff;

/// `Package(){ Package(){ device << 16 | 0xffff, pin, 0, gsi }, ... }`: a source of 0
/// names a GSI directly (no link device).
fn prt(pci: &PciHostConfig) -> Package {
    Package::new(
        pci.intx_routes
            .iter()
            .map(|r| {
                Box::new(Package::new(vec![
                    Box::new((u32::from(r.device) << 16) | PRT_ANY_FUNCTION),
                    Box::new(r.pin),
                    Box::new(0u8),
                    Box::new(r.gsi),
                ])) as Box<dyn Aml>
            })
            .collect(),
    )
}

fn pci_devices(pci: &PciHostConfig) -> Result<Vec<Box<dyn Aml>>, AcpiError> {
    let mmio_end = pci
        .mmio32_base
        .saturating_add(pci.mmio32_size.saturating_sub(1));
    let crs = ResourceTemplate::new()
        .descriptor(&word_bus_number(
            u16::from(pci.ecam.start_bus),
            u16::from(pci.ecam.end_bus),
        ))
        .io_decode16(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_LEN)
        .descriptor(&word_io(0, PCI_IO_LOW_END))
        .descriptor(&word_io(PCI_IO_HIGH_START, u16::MAX))
        .descriptor(&dword_memory(pci.mmio32_base, mmio_end));
    let host = Device::new(
        "PCI0",
        vec![
            Box::new(Name::new("_HID", EisaId::new(PCIE_HOST_HID)?)?),
            Box::new(Name::new("_CID", EisaId::new(PCI_HOST_CID)?)?),
            Box::new(Name::new("_SEG", 0u8)?),
            Box::new(Name::new("_BBN", pci.ecam.start_bus)?),
            Box::new(Name::new("_UID", 0u8)?),
            Box::new(Name::new("_CRS", crs)?),
            Box::new(Name::new("_PRT", prt(pci))?),
            Box::new(super::osc::pci_host_bridge_osc()?),
        ],
    )?;
    let buses = u32::from(pci.ecam.end_bus) - u32::from(pci.ecam.start_bus) + 1;
    let ecam_len = buses << ECAM_BUS_SHIFT;
    let ecam_base =
        u32::try_from(pci.ecam.base).map_err(|_| AcpiError::EcamAbove4G(pci.ecam.base))?;
    let reservation = Device::new(
        "MRES",
        vec![
            Box::new(Name::new("_HID", EisaId::new(MOTHERBOARD_RESOURCES_HID)?)?),
            Box::new(Name::new("_UID", 1u8)?),
            Box::new(Name::new(
                "_CRS",
                ResourceTemplate::new().descriptor(&memory32_fixed(ecam_base, ecam_len)),
            )?),
        ],
    )?;
    Ok(vec![Box::new(host), Box::new(reservation)])
}

/// ACPI ID of QEMU's ISA pvpanic device.
const PVPANIC_HID: &str = "QEMU0001";
/// The pvpanic device decodes one port.
const PVPANIC_PORT_LEN: u8 = 1;
/// Alignment field of its IO descriptor.
const PVPANIC_PORT_ALIGN: u8 = 1;

/// `Device(PEVT){Name(_HID, "QEMU0001") Name(_CRS, ResourceTemplate(){IO(Decode16, port,
/// port, 1, 1)})}`.
fn pvpanic_device(port: u16) -> Result<Device, AcpiError> {
    let crs = ResourceTemplate::new().io_decode16(port, port, PVPANIC_PORT_ALIGN, PVPANIC_PORT_LEN);
    Ok(Device::new(
        "PEVT",
        vec![
            Box::new(Name::new("_HID", AmlString::new(PVPANIC_HID)?)?),
            Box::new(Name::new("_CRS", crs)?),
        ],
    )?)
}

/// Bytes of ECAM per bus: 32 devices x 8 functions x 4 KiB.
const ECAM_BUS_SHIFT: u32 = 20;

/// Builds the DSDT for `cfg`.
pub fn build(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let s5 = Package::new(vec![
        Box::new(S5_SLP_TYP),
        Box::new(0u8),
        Box::new(0u8),
        Box::new(0u8),
    ]);

    let mut sb: Vec<Box<dyn Aml>> = Vec::with_capacity(cfg.apic_ids.len() + 1);
    for index in 0..cfg.apic_ids.len() {
        sb.push(Box::new(processor_device(index)?));
    }
    if let Some((port, irq)) = cfg.serial {
        sb.push(Box::new(serial_device(port, irq)?));
    }
    if let Some(pci) = &cfg.pci {
        sb.extend(pci_devices(pci)?);
    }
    if let Some(port) = cfg.pvpanic_port {
        sb.push(Box::new(pvpanic_device(port)?));
    }

    let mut aml = Vec::new();
    Name::new("_S5", s5)?.append_aml(&mut aml)?;
    Scope::new("\\_SB", sb)?.append_aml(&mut aml)?;

    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.append(&aml);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::sdt::checksum;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn cpu_names() {
        assert_eq!(cpu_device_name(0).unwrap(), "C000");
        assert_eq!(cpu_device_name(0x3ff).unwrap(), "C3FF");
        assert_eq!(cpu_device_name(0x1000).unwrap(), "D000");
        assert_eq!(cpu_device_name(MAX_CPUS - 1).unwrap(), "ZFFF");
        assert!(cpu_device_name(MAX_CPUS).is_err());
    }

    #[test]
    fn contents() {
        let t = build(&AcpiConfig::default()).unwrap();
        assert_eq!(&t[0..4], b"DSDT");
        assert_eq!(t[8], 2);
        assert_eq!(checksum(&t), 0);
        assert_eq!(
            &t[36..49],
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00]
        );
        assert!(contains(&t, b"\x5b\x82"));
        assert!(contains(&t, b"COM1"));
        assert!(contains(&t, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(&t, b"C000"));

        let no_serial = AcpiConfig {
            serial: None,
            ..AcpiConfig::default()
        };
        assert!(!contains(&build(&no_serial).unwrap(), b"COM1"));
    }

    #[test]
    fn pvpanic_device_names_qemu0001_with_its_port() {
        assert!(!contains(&build(&AcpiConfig::default()).unwrap(), b"PEVT"));
        let t = build(&AcpiConfig {
            pvpanic_port: Some(0x505),
            ..AcpiConfig::default()
        })
        .unwrap();
        assert_eq!(checksum(&t), 0);
        assert!(contains(&t, b"PEVT"));
        // Name(_HID, "QEMU0001")
        assert!(contains(&t, b"\x08_HID\x0dQEMU0001\x00"));
        // IO(Decode16, 0x0505, 0x0505, 1, 1) then the end tag.
        assert!(contains(
            &t,
            &[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79]
        ));
    }

    #[test]
    fn bad_serial_irq() {
        let cfg = AcpiConfig {
            serial: Some((0x3f8, 16)),
            ..AcpiConfig::default()
        };
        assert!(matches!(build(&cfg), Err(AcpiError::Aml(_))));
    }
}
