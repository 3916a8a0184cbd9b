//! I/O Virtualization Reporting Structure (IVRS, AMD IOMMU specification, chapter "ACPI
//! tables"): the table through which a guest finds an AMD-Vi unit, the devices it covers,
//! and the device ID each IOAPIC's interrupts carry.
//!
//! The table holds one IVHD (I/O virtualization hardware definition) of type 11h:
//!
//! * **Why 11h.** Type 10h has no room for the extended feature register image, so Linux
//!   learns XTSup and GASup only from the 10h "feature reporting" field, which lacks XTSup:
//!   x2APIC interrupt remapping needs 11h (or 40h). Type 40h adds ACPI-HID device entries,
//!   which irvmm has no use for. Every Linux with AMD x2APIC support (4.10 and later) parses
//!   11h; it picks the highest type it knows, so a 10h twin would only matter to kernels
//!   too old for the x2APIC guests irvmm targets.
//! * **Header.** The IOMMU's PCI device ID and capability offset (Linux finds the function
//!   and reads the capability header through them), the MMIO base, PCI segment 0, IOMMU
//!   info 0 (MSI message 0, unit 0), the attributes with `HATDis` (host address translation
//!   disabled: the unit does no DMA translation, and a Linux that knows the bit uses the
//!   unit for interrupt remapping only), and the unit's extended feature register image,
//!   which Linux reads instead of MMIO (IVinfo `EFRSup` set).
//! * **Device entries.** A select-range (types 3 and 4) over every function of the PCI bus
//!   the unit covers; a select entry (type 2) for the IOAPIC's device ID when it is on
//!   another bus, because Linux sizes its device table and per-device lookup tables from the
//!   highest device ID that select, range-end, alias and extended-select entries name (a
//!   special entry alone would leave the IOAPIC's device ID outside them); and the IOAPIC
//!   special entry (type 48h, variety 1) whose handle is the IOAPIC's MADT ID and whose
//!   device ID is the source ID of its messages. Linux refuses interrupt remapping when an
//!   IOAPIC of the MADT has no special entry.
//!
//! Byte layout of the IVHD type 11h header (40 bytes): type 0, flags 1, length 2..4, device
//! ID 4..6, capability offset 6..8, base address 8..16, PCI segment 16..18, IOMMU info
//! 18..20, attributes 20..24, EFR image 24..32, EFR2 image 32..40.

use super::sdt::Sdt;
use super::AcpiError;

/// IVRS signature.
pub const SIGNATURE: [u8; 4] = *b"IVRS";
/// IVRS revision (2: IVHD types 11h and 40h may be present).
pub const REVISION: u8 = 2;
/// Length of the IVRS header: SDT header, IVinfo, 8 reserved bytes.
pub const IVRS_HEADER_LEN: usize = 48;
/// IVinfo: EFRSup, the IVHD's EFR image is valid.
pub const IVINFO_EFR_SUP: u32 = 1 << 0;
/// IVinfo: shift of PAsize (14:8).
pub const IVINFO_PA_SIZE_SHIFT: u32 = 8;
/// IVinfo: shift of VAsize (21:15).
pub const IVINFO_VA_SIZE_SHIFT: u32 = 15;
/// IVHD type carrying the EFR image.
pub const IVHD_TYPE_11: u8 = 0x11;
/// Length of an IVHD type 11h header, before its device entries.
pub const IVHD_11_HEADER_LEN: u16 = 40;
/// IVHD flags: the unit's memory accesses are coherent.
pub const IVHD_FLAG_COHERENT: u8 = 1 << 5;
/// IVHD type 11h attributes: HATDis, host address translation is not supported.
pub const IVHD_ATTR_HATDIS: u32 = 1 << 0;
/// Device entry: select one device.
pub const DEV_SELECT: u8 = 0x02;
/// Device entry: start of a select range.
pub const DEV_RANGE_START: u8 = 0x03;
/// Device entry: end of a range.
pub const DEV_RANGE_END: u8 = 0x04;
/// Device entry: special device (IOAPIC or HPET), 8 bytes.
pub const DEV_SPECIAL: u8 = 0x48;
/// Special device variety: IOAPIC.
pub const SPECIAL_IOAPIC: u8 = 1;
/// Length of a 4-byte device entry.
const DEV_ENTRY_LEN: u16 = 4;
/// Length of an 8-byte device entry.
const DEV_ENTRY8_LEN: u16 = 8;
/// Last device/function number of a bus.
const LAST_DEVFN: u8 = 0xff;

/// What the IVRS describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvrsConfig {
    /// The IOMMU's own PCI function (bus, device, function).
    pub iommu_bdf: (u8, u8, u8),
    /// Offset of the IOMMU capability block in the function's configuration space.
    pub capability_offset: u16,
    /// Guest-physical base of the unit's MMIO window.
    pub register_base: u64,
    /// The unit's extended feature register (`AmdViUnit::extended_features`).
    pub efr: u64,
    /// Guest-physical address width reported in IVinfo (PAsize and VAsize).
    pub address_bits: u8,
    /// Report `HATDis`: the unit does not translate DMA.
    pub host_translation_disabled: bool,
    /// The PCI bus whose every function the unit covers.
    pub bus: u8,
    /// The IOAPIC's ID as the MADT lists it (the special entry's handle).
    pub ioapic_id: u8,
    /// The source ID of the IOAPIC's messages (bus, device, function).
    pub ioapic_bdf: (u8, u8, u8),
}

/// A device ID (requester ID) from bus, device and function.
pub fn device_id((bus, device, function): (u8, u8, u8)) -> u16 {
    (u16::from(bus) << 8) | (u16::from(device & 0x1f) << 3) | u16::from(function & 0x7)
}

fn dev_entry(t: &mut Sdt, kind: u8, device_id: u16, flags: u8) {
    t.append_u8(kind).append_u16(device_id).append_u8(flags);
}

/// Builds the IVRS.
pub fn build(cfg: &IvrsConfig) -> Result<Vec<u8>, AcpiError> {
    let mut t = Sdt::new(SIGNATURE, REVISION);
    let address_bits = u32::from(cfg.address_bits & 0x7f);
    let ivinfo = IVINFO_EFR_SUP
        | (address_bits << IVINFO_PA_SIZE_SHIFT)
        | (address_bits << IVINFO_VA_SIZE_SHIFT);
    t.append_u32(ivinfo).append_u64(0);

    let ioapic = device_id(cfg.ioapic_bdf);
    let ioapic_outside = cfg.ioapic_bdf.0 != cfg.bus;
    let mut len = IVHD_11_HEADER_LEN + 2 * DEV_ENTRY_LEN + DEV_ENTRY8_LEN;
    if ioapic_outside {
        len += DEV_ENTRY_LEN;
    }
    let attributes = if cfg.host_translation_disabled {
        IVHD_ATTR_HATDIS
    } else {
        0
    };
    t.append_u8(IVHD_TYPE_11)
        .append_u8(IVHD_FLAG_COHERENT)
        .append_u16(len)
        .append_u16(device_id(cfg.iommu_bdf))
        .append_u16(cfg.capability_offset)
        .append_u64(cfg.register_base)
        .append_u16(0) // PCI segment group
        .append_u16(0) // IOMMU info: MSI message 0, unit ID 0
        .append_u32(attributes)
        .append_u64(cfg.efr)
        .append_u64(0); // EFR2 image

    let bus = u16::from(cfg.bus) << 8;
    dev_entry(&mut t, DEV_RANGE_START, bus, 0);
    dev_entry(&mut t, DEV_RANGE_END, bus | u16::from(LAST_DEVFN), 0);
    if ioapic_outside {
        dev_entry(&mut t, DEV_SELECT, ioapic, 0);
    }
    // Special entry: type, reserved device ID, DTE settings, handle, device ID, variety.
    dev_entry(&mut t, DEV_SPECIAL, 0, 0);
    t.append_u8(cfg.ioapic_id)
        .append_u16(ioapic)
        .append_u8(SPECIAL_IOAPIC);
    t.finish()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    fn cfg() -> IvrsConfig {
        IvrsConfig {
            iommu_bdf: (0, 2, 0),
            capability_offset: 0x40,
            register_base: 0xfed8_0000,
            efr: 0x20_00c4,
            address_bits: 48,
            host_translation_disabled: true,
            bus: 0,
            ioapic_id: 0,
            ioapic_bdf: (0xff, 0, 0),
        }
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn header_and_checksum() {
        let b = build(&cfg()).unwrap();
        assert_eq!(&b[0..4], b"IVRS");
        assert_eq!(u32_at(&b, 4) as usize, b.len());
        assert_eq!(b[8], REVISION);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let ivinfo = u32_at(&b, 36);
        assert_eq!(ivinfo & 1, 1, "EFRSup");
        assert_eq!((ivinfo >> 8) & 0x7f, 48);
        assert_eq!((ivinfo >> 15) & 0x7f, 48);
        assert_eq!(u64_at(&b, 40), 0);
        // 48 + IVHD (40 + range 8 + IOAPIC select 4 + special 8).
        assert_eq!(b.len(), 48 + 60);
    }

    #[test]
    fn ivhd_fields() {
        let b = build(&cfg()).unwrap();
        let h = &b[IVRS_HEADER_LEN..];
        assert_eq!(h[0], 0x11);
        assert_eq!(h[1], IVHD_FLAG_COHERENT);
        assert_eq!(usize::from(u16_at(h, 2)), h.len());
        assert_eq!(u16_at(h, 4), 0x0010, "00:02.0");
        assert_eq!(u16_at(h, 6), 0x40);
        assert_eq!(u64_at(h, 8), 0xfed8_0000);
        assert_eq!(u16_at(h, 16), 0);
        assert_eq!(u16_at(h, 18), 0);
        assert_eq!(u32_at(h, 20), IVHD_ATTR_HATDIS);
        assert_eq!(u64_at(h, 24), 0x20_00c4, "EFR image");
        assert_eq!(u64_at(h, 32), 0);
    }

    #[test]
    fn device_entries() {
        let b = build(&cfg()).unwrap();
        let e = &b[IVRS_HEADER_LEN + 40..];
        // Every function of bus 0.
        assert_eq!(&e[0..4], &[0x03, 0x00, 0x00, 0x00]);
        assert_eq!(&e[4..8], &[0x04, 0xff, 0x00, 0x00]);
        // The IOAPIC's device ID (ff:00.0) selected so Linux's last_bdf covers it.
        assert_eq!(&e[8..12], &[0x02, 0x00, 0xff, 0x00]);
        // Special: IOAPIC (variety 1), handle = MADT ID 0, device ID 0xff00.
        assert_eq!(&e[12..20], &[0x48, 0, 0, 0, 0x00, 0x00, 0xff, 0x01]);
        assert_eq!(e.len(), 20);
    }

    #[test]
    fn ioapic_on_the_covered_bus_needs_no_select_entry() {
        let mut c = cfg();
        c.ioapic_bdf = (0, 0x14, 0);
        c.ioapic_id = 3;
        c.host_translation_disabled = false;
        let b = build(&c).unwrap();
        assert_eq!(b.len(), 48 + 56);
        let h = &b[IVRS_HEADER_LEN..];
        assert_eq!(u32_at(h, 20), 0);
        assert_eq!(&h[48..56], &[0x48, 0, 0, 0, 3, 0xa0, 0x00, 0x01]);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
    }

    /// Disassembles the table with ACPICA's `iasl -d` when it is installed.
    #[test]
    fn iasl_disassembles_ivrs() {
        if Command::new("iasl").arg("-v").output().is_err() {
            eprintln!("iasl_disassembles_ivrs SKIPPED: iasl not runnable (install acpica-tools)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("irvmm-ivrs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dsl = disassemble(&dir, &build(&cfg()).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let squashed: String = dsl
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        for field in [
            "Signature : \"IVRS\"",
            "Virtualization Info : 00183001",
            "Subtable Type : 11",
            "Attributes : 00000001",
            "DeviceId : 0010",
            "Capability Offset : 0040",
            "Base Address : 00000000FED80000",
            "EFR Image : 00000000002000C4",
            "Entry Type : 03",
            "Entry Type : 04",
            "Entry Type : 48",
            "Handle : 00",
            "Source Used Device ID : FF00",
            "Variety : 01",
        ] {
            assert!(squashed.contains(field), "{field:?} missing:\n{dsl}");
        }
    }

    fn disassemble(dir: &Path, bytes: &[u8]) -> String {
        let dat: PathBuf = dir.join("ivrs.dat");
        std::fs::write(&dat, bytes).unwrap();
        let out = Command::new("iasl")
            .current_dir(dir)
            .arg("-d")
            .arg(&dat)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d failed:\n{log}");
        let lower = log.to_lowercase();
        for bad in ["error", "warning", "checksum", "invalid", "unknown"] {
            assert!(!lower.contains(bad), "iasl -d reported {bad:?}:\n{log}");
        }
        let dsl = std::fs::read_to_string(dir.join("ivrs.dsl")).unwrap();
        let lower = dsl.to_lowercase();
        for bad in ["**** ", "incorrect checksum", "invalid", "unknown"] {
            assert!(!lower.contains(bad), "ivrs.dsl mentions {bad:?}:\n{dsl}");
        }
        dsl
    }
}
