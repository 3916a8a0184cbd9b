//! Fixed ACPI Description Table, revision 6 (ACPI 6.3 §5.2.9), for a hardware-reduced platform.
//!
//! Hardware-reduced ACPI means there is no PM1/GPE register block, no SCI-driven fixed event,
//! no FACS and no SMI handshake: OSPM powers off by writing SLP_TYP and SLP_EN to the
//! SLEEP_CONTROL_REG and resets through RESET_REG. Everything not written here stays zero,
//! which is what the specification asks of a hardware-reduced FADT.

use super::sdt::{Gas, Sdt};
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
const DSDT_OFFSET: usize = 40;
const PREFERRED_PM_PROFILE_OFFSET: usize = 45;
const SCI_INT_OFFSET: usize = 46;
const IAPC_BOOT_ARCH_OFFSET: usize = 109;
const FLAGS_OFFSET: usize = 112;
const RESET_REG_OFFSET: usize = 116;
const RESET_VALUE_OFFSET: usize = 128;
const MINOR_VERSION_OFFSET: usize = 131;
const X_DSDT_OFFSET: usize = 140;
const SLEEP_CONTROL_REG_OFFSET: usize = 244;
const SLEEP_STATUS_REG_OFFSET: usize = 256;
const HYPERVISOR_VENDOR_ID_OFFSET: usize = 268;

/// Preferred_PM_Profile: unspecified (a VM is neither desktop nor server by nature).
const PM_PROFILE_UNSPECIFIED: u8 = 0;

/// SCI_INT. A hardware-reduced platform has no SCI-raising fixed hardware and Linux ignores
/// the field when HW_REDUCED_ACPI is set (it neither installs an SCI handler nor programs the
/// pin), but the field is not marked "ignored" by the specification, so it names the
/// conventional PC pin 9, which no irvmm device uses: if an OS ever claims it, nothing collides.
pub const SCI_INT: u16 = 9;

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
/// No fixed-feature power button.
pub const FLAG_PWR_BUTTON: u32 = 1 << 4;
/// No fixed-feature sleep button.
pub const FLAG_SLP_BUTTON: u32 = 1 << 5;
/// RESET_REG / RESET_VALUE are valid.
pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
/// Hardware-reduced ACPI.
pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;

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

/// Builds the FADT pointing at the DSDT at guest physical address `dsdt_addr`.
///
/// Both DSDT fields are filled when the address fits 32 bits (they then agree, which ACPICA
/// accepts); above 4 GiB only X_DSDT is set.
pub fn build(cfg: &AcpiConfig, dsdt_addr: u64) -> Result<Vec<u8>, AcpiError> {
    let flags =
        FLAG_WBINVD | FLAG_PWR_BUTTON | FLAG_SLP_BUTTON | FLAG_RESET_REG_SUP | FLAG_HW_REDUCED_ACPI;
    let dsdt32 = u32::try_from(dsdt_addr).unwrap_or(0);

    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.pad_to(FADT_LEN)
        .write_at(DSDT_OFFSET, &dsdt32.to_le_bytes())
        .write_at(PREFERRED_PM_PROFILE_OFFSET, &[PM_PROFILE_UNSPECIFIED])
        .write_at(SCI_INT_OFFSET, &SCI_INT.to_le_bytes())
        .write_at(IAPC_BOOT_ARCH_OFFSET, &boot_arch(cfg).to_le_bytes())
        .write_at(FLAGS_OFFSET, &flags.to_le_bytes())
        .write_at(RESET_REG_OFFSET, &Gas::io_u8(cfg.reset_port).to_bytes())
        .write_at(RESET_VALUE_OFFSET, &[cfg.reset_value])
        .write_at(MINOR_VERSION_OFFSET, &[MINOR_REVISION])
        .write_at(X_DSDT_OFFSET, &dsdt_addr.to_le_bytes())
        .write_at(
            SLEEP_CONTROL_REG_OFFSET,
            &Gas::io_u8(cfg.sleep_control_port).to_bytes(),
        )
        .write_at(
            SLEEP_STATUS_REG_OFFSET,
            &Gas::io_u8(cfg.sleep_status_port).to_bytes(),
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
        let t = build(&cfg, 0xe0140).unwrap();
        assert_eq!(t.len(), 276);
        assert_eq!(&t[0..4], b"FACP");
        assert_eq!(u32_at(&t, 4), 276);
        assert_eq!(t[8], 6);
        assert_eq!(checksum(&t), 0);
        assert_eq!(u32_at(&t, 36), 0, "FIRMWARE_CTRL: no FACS");
        assert_eq!(u32_at(&t, 40), 0xe0140, "DSDT");
        assert_eq!(u16_at(&t, 46), 9, "SCI_INT");
        assert_eq!(u32_at(&t, 48), 0, "SMI_CMD");
        assert_eq!(u16_at(&t, 109), 0b10_0101, "IAPC_BOOT_ARCH");
        let flags = u32_at(&t, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(&t[116..128], &[1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t[128], 0x06, "RESET_VALUE");
        assert_eq!(t[131], 3, "minor version");
        assert_eq!(u64_at(&t, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u64_at(&t, 140), 0xe0140, "X_DSDT");
        assert!(t[148..244].iter().all(|&b| b == 0), "no PM/GPE blocks");
        assert_eq!(&t[244..256], &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&t[256..268], &[1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&t[268..276], b"IRVMM\0\0\0");
    }

    #[test]
    fn boot_arch_follows_config() {
        let cfg = AcpiConfig {
            serial: None,
            ..AcpiConfig::default()
        };
        let t = build(&cfg, 0x1_0000_0000).unwrap();
        assert_eq!(u16_at(&t, 109), 0b10_0100, "no LEGACY_DEVICES without COM1");
        assert_eq!(u32_at(&t, 40), 0, "DSDT above 4 GiB: only X_DSDT");
        assert_eq!(u64_at(&t, 140), 0x1_0000_0000);
    }
}
