//! Fixed ACPI Description Table, revision 6 (ACPI 6.3 §5.2.9), for a platform with ACPI
//! fixed hardware, as a PC (and QEMU's q35) has.
//!
//! The platform is not hardware-reduced: on a hardware-reduced platform Linux assumes there
//! are no legacy interrupts at all (`acpi_reduced_hw_init` installs the null legacy PIC
//! before the MADT is parsed), so its I/O APIC domain is dynamic and COM1's ISA IRQ 4 comes
//! up as Linux IRQ 24. With fixed hardware Linux maps ISA IRQs 0-15 one to one.
//!
//! What the FADT describes:
//! - the PM1a event block (PM1_STS, PM1_EN; 4 ports) and control block (PM1_CNT; 2 ports),
//!   no PM1b, PM2, PM timer or GPE blocks; OSPM powers off by writing SLP_TYP (from `\_S5`)
//!   with SLP_EN to PM1a_CNT;
//! - the SCI on ISA IRQ [`SCI_INT`] (the MADT overrides it to level, active high, as q35);
//! - SMI_CMD = 0: the platform is always in ACPI mode (SCI_EN reads 1), there is no SMM;
//! - a FACS ([`super::facs`]) through FIRMWARE_CTRL (X_FIRMWARE_CTRL above 4 GiB);
//! - RESET_REG, IAPC_BOOT_ARCH (COM1 as a legacy device; no 8042, VGA or CMOS RTC) and no
//!   C2/C3 states.

use super::sdt::{Gas, Sdt, GAS_ACCESS_WORD};
use super::{AcpiConfig, AcpiError};

/// FADT signature.
pub const SIGNATURE: [u8; 4] = *b"FACP";
/// FADT major revision (ACPI 6.x).
pub const REVISION: u8 = 6;
/// FADT minor revision: ACPI 6.3, matching the MADT revision used.
pub const MINOR_REVISION: u8 = 3;
/// Length of a revision 6 FADT.
pub const FADT_LEN: usize = 276;

// Field offsets (ACPI 6.3 Table 5-34).
const FIRMWARE_CTRL_OFFSET: usize = 36;
const DSDT_OFFSET: usize = 40;
const PREFERRED_PM_PROFILE_OFFSET: usize = 45;
const SCI_INT_OFFSET: usize = 46;
const PM1A_EVT_BLK_OFFSET: usize = 56;
const PM1A_CNT_BLK_OFFSET: usize = 64;
const PM1_EVT_LEN_OFFSET: usize = 88;
const PM1_CNT_LEN_OFFSET: usize = 89;
const P_LVL2_LAT_OFFSET: usize = 96;
const P_LVL3_LAT_OFFSET: usize = 98;
const IAPC_BOOT_ARCH_OFFSET: usize = 109;
const FLAGS_OFFSET: usize = 112;
const RESET_REG_OFFSET: usize = 116;
const RESET_VALUE_OFFSET: usize = 128;
const MINOR_VERSION_OFFSET: usize = 131;
const X_FIRMWARE_CTRL_OFFSET: usize = 132;
const X_DSDT_OFFSET: usize = 140;
const X_PM1A_EVT_BLK_OFFSET: usize = 148;
const X_PM1A_CNT_BLK_OFFSET: usize = 172;
const HYPERVISOR_VENDOR_ID_OFFSET: usize = 268;

/// Preferred_PM_Profile: unspecified (a VM is neither desktop nor server by nature).
const PM_PROFILE_UNSPECIFIED: u8 = 0;

/// SCI_INT: the conventional PC SCI, ISA IRQ 9 (I/O APIC pin 9; no irvmm device uses it).
pub const SCI_INT: u8 = 9;

/// PM1_EVT_LEN: PM1_STS and PM1_EN, 16 bits each.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1_CNT_LEN: PM1_CNT, 16 bits.
pub const PM1_CNT_LEN: u8 = 2;
/// Bits per byte, for the GAS bit widths.
const BITS_PER_BYTE: u8 = 8;

/// P_LVL2_LAT above 100 µs: C2 is not supported.
const P_LVL2_NOT_SUPPORTED: u16 = 101;
/// P_LVL3_LAT above 1000 µs: C3 is not supported.
const P_LVL3_NOT_SUPPORTED: u16 = 1001;

// IAPC_BOOT_ARCH bits (ACPI 6.3 Table 5-35).
/// The platform has user-visible ISA/LPC devices (COM1), so OSPM may probe them.
pub const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// No VGA hardware at the legacy addresses.
pub const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// No CMOS RTC at ports 0x70/0x71 (irvmm emulates none; the guest keeps time with kvmclock).
pub const BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

// Fixed feature flags (ACPI 6.3 Table 5-35).
/// WBINVD flushes all caches and keeps memory coherent (true of any x86 vCPU).
pub const FLAG_WBINVD: u32 = 1 << 0;
/// C1 (HLT) works on every processor.
pub const FLAG_PROC_C1: u32 = 1 << 2;
/// No fixed-feature power button.
pub const FLAG_PWR_BUTTON: u32 = 1 << 4;
/// No fixed-feature sleep button.
pub const FLAG_SLP_BUTTON: u32 = 1 << 5;
/// RTC wake status is not in the fixed register space (there is no RTC).
pub const FLAG_FIX_RTC: u32 = 1 << 6;
/// RESET_REG / RESET_VALUE are valid.
pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
/// Hardware-reduced ACPI (never set by irvmm; see the module documentation).
pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// The flags irvmm sets.
pub const FLAGS: u32 = FLAG_WBINVD
    | FLAG_PROC_C1
    | FLAG_PWR_BUTTON
    | FLAG_SLP_BUTTON
    | FLAG_FIX_RTC
    | FLAG_RESET_REG_SUP;

/// Hypervisor Vendor Identity: "IRVMM" as a little-endian u64.
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"IRVMM\0\0\0";

/// IAPC_BOOT_ARCH for `cfg`.
///
/// LEGACY_DEVICES is set when COM1 exists: the spec defines it as "user-visible devices on
/// the LPC or ISA bus ... for which the OS must load a driver (for example, a serial port)".
/// 8042 stays clear (there is no keyboard controller); VGA and the CMOS RTC are absent (the
/// platform has neither, so the guest must not probe ports 0x3c0+ or 0x70/0x71).
fn boot_arch(cfg: &AcpiConfig) -> u16 {
    let mut arch = BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
    if cfg.serial.is_some() {
        arch |= BOOT_ARCH_LEGACY_DEVICES;
    }
    arch
}

/// Builds the FADT pointing at the DSDT at `dsdt_addr` and the FACS at `facs_addr` (guest
/// physical addresses).
///
/// Both DSDT fields are filled when the address fits 32 bits (they then agree, which ACPICA
/// accepts); above 4 GiB only X_DSDT is set. The FACS goes in FIRMWARE_CTRL when it fits 32
/// bits, else in X_FIRMWARE_CTRL: the specification allows only one of them to be non-zero.
pub fn build(cfg: &AcpiConfig, dsdt_addr: u64, facs_addr: u64) -> Result<Vec<u8>, AcpiError> {
    let dsdt32 = u32::try_from(dsdt_addr).unwrap_or(0);
    let (facs32, x_facs) = match u32::try_from(facs_addr) {
        Ok(a) => (a, 0),
        Err(_) => (0, facs_addr),
    };
    let evt = cfg.pm1a_event_port;
    let cnt = cfg.pm1a_control_port;

    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.pad_to(FADT_LEN)
        .write_at(FIRMWARE_CTRL_OFFSET, &facs32.to_le_bytes())
        .write_at(DSDT_OFFSET, &dsdt32.to_le_bytes())
        .write_at(PREFERRED_PM_PROFILE_OFFSET, &[PM_PROFILE_UNSPECIFIED])
        .write_at(SCI_INT_OFFSET, &u16::from(SCI_INT).to_le_bytes())
        .write_at(PM1A_EVT_BLK_OFFSET, &u32::from(evt).to_le_bytes())
        .write_at(PM1A_CNT_BLK_OFFSET, &u32::from(cnt).to_le_bytes())
        .write_at(PM1_EVT_LEN_OFFSET, &[PM1_EVT_LEN])
        .write_at(PM1_CNT_LEN_OFFSET, &[PM1_CNT_LEN])
        .write_at(P_LVL2_LAT_OFFSET, &P_LVL2_NOT_SUPPORTED.to_le_bytes())
        .write_at(P_LVL3_LAT_OFFSET, &P_LVL3_NOT_SUPPORTED.to_le_bytes())
        .write_at(IAPC_BOOT_ARCH_OFFSET, &boot_arch(cfg).to_le_bytes())
        .write_at(FLAGS_OFFSET, &FLAGS.to_le_bytes())
        .write_at(RESET_REG_OFFSET, &Gas::io_u8(cfg.reset_port).to_bytes())
        .write_at(RESET_VALUE_OFFSET, &[cfg.reset_value])
        .write_at(MINOR_VERSION_OFFSET, &[MINOR_REVISION])
        .write_at(X_FIRMWARE_CTRL_OFFSET, &x_facs.to_le_bytes())
        .write_at(X_DSDT_OFFSET, &dsdt_addr.to_le_bytes())
        .write_at(
            X_PM1A_EVT_BLK_OFFSET,
            &Gas::io(evt, PM1_EVT_LEN * BITS_PER_BYTE, GAS_ACCESS_WORD).to_bytes(),
        )
        .write_at(
            X_PM1A_CNT_BLK_OFFSET,
            &Gas::io(cnt, PM1_CNT_LEN * BITS_PER_BYTE, GAS_ACCESS_WORD).to_bytes(),
        )
        .write_at(HYPERVISOR_VENDOR_ID_OFFSET, &HYPERVISOR_VENDOR_ID);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::sdt::checksum;

    fn u16_at(t: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(t[o..o + 2].try_into().unwrap())
    }
    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }
    fn u64_at(t: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
    }

    // Offsets below are literal spec values (ACPI 6.3 Table 5-34), independent of the
    // constants above.
    #[test]
    fn layout() {
        let cfg = AcpiConfig::default();
        let t = build(&cfg, 0xe0140, 0xe00c0).unwrap();
        assert_eq!(t.len(), 276);
        assert_eq!(&t[0..4], b"FACP");
        assert_eq!(u32_at(&t, 4), 276);
        assert_eq!(t[8], 6);
        assert_eq!(checksum(&t), 0);
        assert_eq!(u32_at(&t, 36), 0xe00c0, "FIRMWARE_CTRL: the FACS");
        assert_eq!(u32_at(&t, 40), 0xe0140, "DSDT");
        assert_eq!(u16_at(&t, 46), 9, "SCI_INT");
        assert_eq!(u32_at(&t, 48), 0, "SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(&t, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(&t, 60), 0, "PM1b_EVT_BLK");
        assert_eq!(u32_at(&t, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(&t, 68), 0, "PM1b_CNT_BLK");
        assert_eq!(u32_at(&t, 76), 0, "PM_TMR_BLK");
        assert_eq!(u32_at(&t, 80), 0, "GPE0_BLK");
        assert_eq!((t[88], t[89], t[91], t[92]), (4, 2, 0, 0), "block lengths");
        assert_eq!((u16_at(&t, 96), u16_at(&t, 98)), (101, 1001), "no C2/C3");
        assert_eq!(u16_at(&t, 109), 0b10_0101, "IAPC_BOOT_ARCH");
        let flags = u32_at(&t, 112);
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
        assert_eq!(
            flags, 0b100_0111_0101,
            "WBINVD PROC_C1 PWR/SLP_BUTTON FIX_RTC RESET_REG_SUP"
        );
        assert_eq!(&t[116..128], &[1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t[128], 0x06, "RESET_VALUE");
        assert_eq!(t[131], 3, "minor version");
        assert_eq!(u64_at(&t, 132), 0, "X_FIRMWARE_CTRL: FIRMWARE_CTRL is set");
        assert_eq!(u64_at(&t, 140), 0xe0140, "X_DSDT");
        assert_eq!(
            &t[148..160],
            &[1, 32, 0, 2, 0x00, 0x06, 0, 0, 0, 0, 0, 0],
            "X_PM1a_EVT_BLK"
        );
        assert_eq!(
            &t[172..184],
            &[1, 16, 0, 2, 0x04, 0x06, 0, 0, 0, 0, 0, 0],
            "X_PM1a_CNT_BLK"
        );
        assert!(t[160..172].iter().all(|&b| b == 0), "X_PM1b_EVT_BLK");
        assert!(
            t[184..244].iter().all(|&b| b == 0),
            "no PM1b, PM2, PM timer, GPE blocks"
        );
        assert!(
            t[244..268].iter().all(|&b| b == 0),
            "no sleep control/status registers"
        );
        assert_eq!(&t[268..276], b"IRVMM\0\0\0");
    }

    #[test]
    fn boot_arch_follows_config() {
        let cfg = AcpiConfig {
            serial: None,
            ..AcpiConfig::default()
        };
        let t = build(&cfg, 0x1_0000_0000, 0x1_0000_1000).unwrap();
        assert_eq!(u16_at(&t, 109), 0b10_0100, "no LEGACY_DEVICES without COM1");
        assert_eq!(u32_at(&t, 40), 0, "DSDT above 4 GiB: only X_DSDT");
        assert_eq!(u64_at(&t, 140), 0x1_0000_0000);
        assert_eq!(u32_at(&t, 36), 0, "FACS above 4 GiB: only X_FIRMWARE_CTRL");
        assert_eq!(u64_at(&t, 132), 0x1_0000_1000);
    }
}
