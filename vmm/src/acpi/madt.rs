//! Multiple APIC Description Table, revision 5 (ACPI 6.3 §5.2.12).
//!
//! Processor `i` gets ACPI processor UID `i`. Following §5.2.12.12, a processor whose APIC ID
//! is below 255 is described by a Processor Local APIC entry (type 0) and one whose APIC ID is
//! 255 or more by a Processor Local x2APIC entry (type 9); Linux ignores type 9 entries with
//! IDs below 255 once any type 0 entry exists, so mixing the other way is not an option.
//! Entries appear in processor order, so the BSP (index 0) comes first.
//!
//! Flags are 0: there is no 8259 (no PCAT_COMPAT). There are no Interrupt Source Overrides:
//! nothing sits on ISA IRQ 0 (no PIT), and the only ISA interrupt, COM1's IRQ 4, reaches
//! IOAPIC pin 4 edge-triggered active-high, which is exactly the ISA identity default an OS
//! assumes without an override. The I/O APIC entry is last.

use super::sdt::Sdt;
use super::{AcpiConfig, AcpiError};

/// MADT signature.
pub const SIGNATURE: [u8; 4] = *b"APIC";
/// MADT revision (ACPI 6.3).
pub const REVISION: u8 = 5;

/// Length of the MADT up to its first interrupt controller structure.
pub const FIXED_LEN: usize = 44;

/// Interrupt controller structure type: Processor Local APIC.
pub const TYPE_LOCAL_APIC: u8 = 0;
/// Interrupt controller structure type: I/O APIC.
pub const TYPE_IO_APIC: u8 = 1;
/// Interrupt controller structure type: Processor Local x2APIC.
pub const TYPE_LOCAL_X2APIC: u8 = 9;

/// Length of a Processor Local APIC structure.
pub const LOCAL_APIC_LEN: u8 = 8;
/// Length of an I/O APIC structure.
pub const IO_APIC_LEN: u8 = 12;
/// Length of a Processor Local x2APIC structure.
pub const LOCAL_X2APIC_LEN: u8 = 16;

/// Local APIC flags: the processor is enabled.
pub const LAPIC_ENABLED: u32 = 1 << 0;
/// MADT flags: no dual 8259 (PCAT_COMPAT clear).
const MADT_FLAGS: u32 = 0;

/// APIC IDs below this go into type 0 entries; 0xff is the xAPIC broadcast ID.
pub const X2APIC_ENTRY_MIN_ID: u32 = 0xff;

/// How processor `uid` with `apic_id` is described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicEntry {
    /// Type 0: 8-bit UID and APIC ID.
    Local { uid: u8, apic_id: u8 },
    /// Type 9: 32-bit UID and x2APIC ID.
    X2 { uid: u32, apic_id: u32 },
}

/// Chooses the entry type for processor `uid` with `apic_id`.
///
/// Errors when the APIC ID is below 255 (so the spec requires a type 0 entry) but the UID does
/// not fit the type 0 entry's 8-bit UID field.
pub fn lapic_entry(uid: u32, apic_id: u32) -> Result<LapicEntry, AcpiError> {
    if apic_id >= X2APIC_ENTRY_MIN_ID {
        return Ok(LapicEntry::X2 { uid, apic_id });
    }
    let uid8 =
        u8::try_from(uid).map_err(|_| AcpiError::UidTooLargeForLocalApic { uid, apic_id })?;
    // apic_id < 0xff here.
    let id8 = u8::try_from(apic_id).map_err(|_| AcpiError::InvalidApicId(apic_id))?;
    Ok(LapicEntry::Local {
        uid: uid8,
        apic_id: id8,
    })
}

/// Builds the MADT for `cfg` (whose APIC IDs must already be validated).
pub fn build(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.append_u32(cfg.lapic_addr).append_u32(MADT_FLAGS);

    for (uid, &apic_id) in cfg.apic_ids.iter().enumerate() {
        let uid = u32::try_from(uid).map_err(|_| AcpiError::TooManyCpus(cfg.apic_ids.len()))?;
        match lapic_entry(uid, apic_id)? {
            LapicEntry::Local { uid, apic_id } => {
                t.append(&[TYPE_LOCAL_APIC, LOCAL_APIC_LEN, uid, apic_id])
                    .append_u32(LAPIC_ENABLED);
            }
            LapicEntry::X2 { uid, apic_id } => {
                t.append(&[TYPE_LOCAL_X2APIC, LOCAL_X2APIC_LEN])
                    .append_u16(0) // reserved
                    .append_u32(apic_id)
                    .append_u32(LAPIC_ENABLED)
                    .append_u32(uid);
            }
        }
    }

    t.append(&[TYPE_IO_APIC, IO_APIC_LEN, cfg.ioapic_id, 0])
        .append_u32(cfg.ioapic_addr)
        .append_u32(cfg.ioapic_gsi_base);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::sdt::checksum;

    /// (type, bytes) of each interrupt controller structure.
    fn entries(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < t.len() {
            let (ty, len) = (t[off], usize::from(t[off + 1]));
            assert!(len >= 2 && off + len <= t.len());
            out.push((ty, &t[off..off + len]));
            off += len;
        }
        assert_eq!(off, t.len());
        out
    }

    fn cfg(ids: impl IntoIterator<Item = u32>) -> AcpiConfig {
        AcpiConfig {
            apic_ids: ids.into_iter().collect(),
            ..AcpiConfig::default()
        }
    }

    #[test]
    fn one_cpu() {
        let t = build(&cfg([0])).unwrap();
        assert_eq!(t.len(), 44 + 8 + 12);
        assert_eq!(checksum(&t), 0);
        assert_eq!(t[8], 5);
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(u32::from_le_bytes(t[40..44].try_into().unwrap()), 0);
        let e = entries(&t);
        assert_eq!(e[0], (0, &[0u8, 8, 0, 0, 1, 0, 0, 0][..]));
        assert_eq!(
            e[1],
            (1, &[1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0][..])
        );
    }

    #[test]
    fn four_cpus() {
        let t = build(&cfg([0, 1, 2, 3])).unwrap();
        let e = entries(&t);
        assert_eq!(e.len(), 5);
        for (i, (ty, b)) in e[..4].iter().enumerate() {
            assert_eq!(*ty, 0);
            assert_eq!((b[2], b[3]), (i as u8, i as u8));
        }
        assert_eq!(e[4].0, 1);
    }

    #[test]
    fn x2apic_entries_past_254() {
        let t = build(&cfg(0..288)).unwrap();
        let e = entries(&t);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 0).count(), 255);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 9).count(), 33);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 1).count(), 1);
        let (ty, b) = e[255];
        assert_eq!(ty, 9);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[2..4], &[0, 0]);
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
            255,
            "x2APIC ID"
        );
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            1,
            "enabled"
        );
        assert_eq!(
            u32::from_le_bytes(b[12..16].try_into().unwrap()),
            255,
            "UID"
        );
        assert_eq!(t.len(), 44 + 255 * 8 + 33 * 16 + 12);
    }

    #[test]
    fn uid_too_large_for_type0() {
        let mut ids: Vec<u32> = (1000..1256).collect();
        ids.push(7);
        assert_eq!(
            build(&cfg(ids)),
            Err(AcpiError::UidTooLargeForLocalApic {
                uid: 256,
                apic_id: 7
            })
        );
    }
}
