//! Multiple APIC Description Table, revision 5 (ACPI 6.3 §5.2.12).
//!
//! Processor `i` gets ACPI processor UID `i`. Following §5.2.12.12, a processor whose APIC ID
//! is below 255 is described by a Processor Local APIC entry (type 0) and one whose APIC ID is
//! 255 or more by a Processor Local x2APIC entry (type 9); Linux ignores type 9 entries with
//! IDs below 255 once any type 0 entry exists, so mixing the other way is not an option.
//! Entries appear in processor order, so the BSP (index 0) comes first.
//!
//! Flags are 0: there is no 8259 (no PCAT_COMPAT). After the processors come the I/O APIC,
//! one Interrupt Source Override and the NMI entries:
//! - ISA IRQs reach the I/O APIC pin of the same number; COM1's IRQ 4 is edge-triggered
//!   active-high, the ISA default an OS assumes without an override, and nothing sits on IRQ 0
//!   (no PIT), so the only override is the SCI's ([`super::fadt::SCI_INT`]): level-triggered,
//!   active-high (the SCI's default would be active-low), as QEMU's q35 describes it.
//! - LINT1 of every processor is wired to NMI, as on a PC: a Local APIC NMI entry (type 4,
//!   UID 0xff = all) for the processors of type 0 entries and a Local x2APIC NMI entry
//!   (type 0xA, UID 0xffffffff = all) for those of type 9 entries.

use super::fadt::SCI_INT;
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
/// Interrupt controller structure type: Interrupt Source Override.
pub const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Interrupt controller structure type: Local APIC NMI.
pub const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Interrupt controller structure type: Processor Local x2APIC.
pub const TYPE_LOCAL_X2APIC: u8 = 9;
/// Interrupt controller structure type: Local x2APIC NMI.
pub const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;

/// Length of a Processor Local APIC structure.
pub const LOCAL_APIC_LEN: u8 = 8;
/// Length of an I/O APIC structure.
pub const IO_APIC_LEN: u8 = 12;
/// Length of a Processor Local x2APIC structure.
pub const LOCAL_X2APIC_LEN: u8 = 16;
/// Length of an Interrupt Source Override structure.
pub const INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
/// Length of a Local APIC NMI structure.
pub const LOCAL_APIC_NMI_LEN: u8 = 6;
/// Length of a Local x2APIC NMI structure.
pub const LOCAL_X2APIC_NMI_LEN: u8 = 12;

/// Interrupt Source Override bus: ISA.
const BUS_ISA: u8 = 0;
/// MPS INTI flags (ACPI 6.3 Table 5-50): polarity active high (bits 1:0 = 01).
pub const INTI_ACTIVE_HIGH: u16 = 0b01;
/// MPS INTI flags: trigger mode edge (bits 3:2 = 01).
pub const INTI_EDGE: u16 = 0b01 << 2;
/// MPS INTI flags: trigger mode level (bits 3:2 = 11).
pub const INTI_LEVEL: u16 = 0b11 << 2;
/// The SCI's flags: level-triggered, active high.
pub const SCI_FLAGS: u16 = INTI_LEVEL | INTI_ACTIVE_HIGH;
/// The NMI entries' flags: edge-triggered, active high (an NMI is an edge).
pub const NMI_FLAGS: u16 = INTI_EDGE | INTI_ACTIVE_HIGH;
/// Processor UID of a Local APIC NMI entry that applies to all processors.
pub const ALL_PROCESSORS_UID8: u8 = 0xff;
/// Processor UID of a Local x2APIC NMI entry that applies to all processors.
pub const ALL_PROCESSORS_UID32: u32 = u32::MAX;
/// The local APIC input NMI is wired to.
pub const NMI_LINT: u8 = 1;

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

    let sci_gsi = cfg
        .ioapic_gsi_base
        .checked_add(u32::from(SCI_INT))
        .ok_or(AcpiError::InvalidGsiBase(cfg.ioapic_gsi_base))?;
    t.append(&[
        TYPE_INTERRUPT_SOURCE_OVERRIDE,
        INTERRUPT_SOURCE_OVERRIDE_LEN,
        BUS_ISA,
        SCI_INT,
    ])
    .append_u32(sci_gsi)
    .append_u16(SCI_FLAGS);

    let (mut local, mut x2) = (false, false);
    for (uid, &apic_id) in cfg.apic_ids.iter().enumerate() {
        let uid = u32::try_from(uid).map_err(|_| AcpiError::TooManyCpus(cfg.apic_ids.len()))?;
        match lapic_entry(uid, apic_id)? {
            LapicEntry::Local { .. } => local = true,
            LapicEntry::X2 { .. } => x2 = true,
        }
    }
    if local {
        t.append(&[TYPE_LOCAL_APIC_NMI, LOCAL_APIC_NMI_LEN, ALL_PROCESSORS_UID8])
            .append_u16(NMI_FLAGS)
            .append_u8(NMI_LINT);
    }
    if x2 {
        t.append(&[TYPE_LOCAL_X2APIC_NMI, LOCAL_X2APIC_NMI_LEN])
            .append_u16(NMI_FLAGS)
            .append_u32(ALL_PROCESSORS_UID32)
            .append(&[NMI_LINT, 0, 0, 0]);
    }
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
        assert_eq!(t.len(), 44 + 8 + 12 + 10 + 6);
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
        // ISA IRQ 9 (the SCI) -> GSI 9, level (bits 3:2 = 11), active high (bits 1:0 = 01).
        assert_eq!(e[2], (2, &[2u8, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0][..]));
        // LINT1 of all processors (UID 0xff) is NMI, edge, active high.
        assert_eq!(e[3], (4, &[4u8, 6, 0xff, 0x05, 0, 1][..]));
        assert_eq!(e.len(), 4, "no x2APIC NMI without x2APIC entries");
    }

    #[test]
    fn sci_override_follows_the_gsi_base() {
        let mut c = cfg([0]);
        c.ioapic_gsi_base = 24;
        let t = build(&c).unwrap();
        let e = entries(&t);
        assert_eq!(e[2].1[4..8], 33u32.to_le_bytes());
        c.ioapic_gsi_base = u32::MAX;
        assert_eq!(build(&c), Err(AcpiError::InvalidGsiBase(u32::MAX)));
    }

    #[test]
    fn four_cpus() {
        let t = build(&cfg([0, 1, 2, 3])).unwrap();
        let e = entries(&t);
        assert_eq!(e.len(), 7);
        for (i, (ty, b)) in e[..4].iter().enumerate() {
            assert_eq!(*ty, 0);
            assert_eq!((b[2], b[3]), (i as u8, i as u8));
        }
        assert_eq!(e[4].0, 1);
        assert_eq!((e[5].0, e[6].0), (2, 4));
    }

    #[test]
    fn x2apic_entries_past_254() {
        let t = build(&cfg(0..288)).unwrap();
        let e = entries(&t);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 0).count(), 255);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 9).count(), 33);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 1).count(), 1);
        assert_eq!(e.iter().filter(|(ty, _)| *ty == 4).count(), 1);
        // LINT1 of all x2APIC processors (UID 0xffffffff) is NMI, edge, active high.
        let x2nmi: Vec<_> = e.iter().filter(|(ty, _)| *ty == 0xa).collect();
        assert_eq!(
            x2nmi,
            [&(
                0xa,
                &[0xau8, 12, 0x05, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0][..]
            )]
        );
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
        assert_eq!(t.len(), 44 + 255 * 8 + 33 * 16 + 12 + 10 + 6 + 12);
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
