//! MADT ("APIC") parsing: processors, IOAPICs, interrupt source overrides.
//!
//! Layout after the 36-byte header: local APIC address u32 @36, flags u32 @40, then entries
//! of `type u8, length u8, ...` from offset 44.

use super::{Table, HEADER_LEN};
use crate::phys::{u16_at, u32_at, u8_at};
use crate::report::Text;
use crate::text;

const ENTRIES_OFFSET: usize = HEADER_LEN + 8;

/// Processor flags bit 0: enabled (usable at boot).
pub const FLAG_ENABLED: u32 = 1 << 0;
/// Processor flags bit 1: online capable (may be enabled later; meaningful when not enabled).
pub const FLAG_ONLINE_CAPABLE: u32 = 1 << 1;

/// One MADT entry.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    /// Type 0, Processor Local APIC (APIC IDs below 255).
    LocalApic {
        /// ACPI processor UID.
        uid: u8,
        /// xAPIC ID.
        apic_id: u8,
        /// [`FLAG_ENABLED`], [`FLAG_ONLINE_CAPABLE`].
        flags: u32,
    },
    /// Type 1, I/O APIC.
    IoApic {
        /// IOAPIC ID.
        id: u8,
        /// MMIO base.
        addr: u32,
        /// First GSI of its pins.
        gsi_base: u32,
    },
    /// Type 2, Interrupt Source Override.
    SourceOverride {
        /// ISA IRQ.
        source: u8,
        /// GSI it is wired to.
        gsi: u32,
        /// MPS INTI flags (polarity, trigger mode).
        flags: u16,
    },
    /// Type 9, Processor Local x2APIC.
    X2Apic {
        /// x2APIC ID.
        apic_id: u32,
        /// [`FLAG_ENABLED`], [`FLAG_ONLINE_CAPABLE`].
        flags: u32,
        /// ACPI processor UID.
        uid: u32,
    },
    /// Any other type, skipped.
    Other {
        /// Entry type.
        kind: u8,
    },
}

/// A validated MADT.
pub struct Madt<'a> {
    table: &'a Table,
}

impl<'a> Madt<'a> {
    /// Wraps `table`, which must be an "APIC" table long enough for the fixed fields.
    pub fn new(table: &'a Table) -> Result<Self, Text> {
        if &table.signature != b"APIC" || table.len() < ENTRIES_OFFSET {
            return Err(text!("table at 0x{:x} is not a valid MADT", table.addr));
        }
        Ok(Madt { table })
    }

    /// The local APIC address field.
    pub fn lapic_addr(&self) -> u32 {
        u32_at(self.table.data, HEADER_LEN).unwrap_or(0)
    }

    /// The entries in table order; an `Err` item (malformed entry) ends the iteration.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            data: self.table.data,
            offset: ENTRIES_OFFSET,
        }
    }
}

/// Iterator over MADT entries.
pub struct Entries<'a> {
    data: &'a [u8],
    offset: usize,
}

impl Entries<'_> {
    fn parse(&self, kind: u8, e: &[u8]) -> Option<Entry> {
        Some(match kind {
            0 if e.len() >= 8 => Entry::LocalApic {
                uid: u8_at(e, 2)?,
                apic_id: u8_at(e, 3)?,
                flags: u32_at(e, 4)?,
            },
            1 if e.len() >= 12 => Entry::IoApic {
                id: u8_at(e, 2)?,
                addr: u32_at(e, 4)?,
                gsi_base: u32_at(e, 8)?,
            },
            2 if e.len() >= 10 => Entry::SourceOverride {
                source: u8_at(e, 3)?,
                gsi: u32_at(e, 4)?,
                flags: u16_at(e, 8)?,
            },
            9 if e.len() >= 16 => Entry::X2Apic {
                apic_id: u32_at(e, 4)?,
                flags: u32_at(e, 8)?,
                uid: u32_at(e, 12)?,
            },
            0 | 1 | 2 | 9 => return None,
            _ => Entry::Other { kind },
        })
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, Text>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.offset;
        if at >= self.data.len() {
            return None;
        }
        // Stop after this item whatever happens; advance properly only on success.
        self.offset = self.data.len();
        let (Some(kind), Some(len)) = (u8_at(self.data, at), u8_at(self.data, at + 1)) else {
            return Some(Err(text!("MADT entry header truncated at offset {}", at)));
        };
        let len = usize::from(len);
        let Some(entry) = self.data.get(at..at + len).filter(|_| len >= 2) else {
            return Some(Err(text!(
                "MADT entry type {} at offset {} has bad length {}",
                kind,
                at,
                len
            )));
        };
        let Some(parsed) = self.parse(kind, entry) else {
            return Some(Err(text!(
                "MADT entry type {} at offset {} too short ({})",
                kind,
                at,
                len
            )));
        };
        self.offset = at + len;
        Some(Ok(parsed))
    }
}

/// Counts over a MADT's entries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Enabled processors (types 0 and 9): the CPUs present at boot.
    pub enabled: u32,
    /// Processors not enabled but online capable (present-but-offline, hot-pluggable).
    pub online_capable: u32,
    /// Processors neither enabled nor online capable.
    pub disabled: u32,
    /// Type 0 entries.
    pub lapic_entries: u32,
    /// Type 9 entries.
    pub x2apic_entries: u32,
    /// Type 1 entries.
    pub ioapics: u32,
    /// Type 2 entries.
    pub overrides: u32,
}

impl Summary {
    fn count_processor(&mut self, flags: u32) {
        if flags & FLAG_ENABLED != 0 {
            self.enabled += 1;
        } else if flags & FLAG_ONLINE_CAPABLE != 0 {
            self.online_capable += 1;
        } else {
            self.disabled += 1;
        }
    }
}

/// Walks every entry of `madt` and counts them.
pub fn summarize(madt: &Madt<'_>) -> Result<Summary, Text> {
    let mut s = Summary::default();
    for entry in madt.entries() {
        match entry? {
            Entry::LocalApic { flags, .. } => {
                s.lapic_entries += 1;
                s.count_processor(flags);
            }
            Entry::X2Apic { flags, .. } => {
                s.x2apic_entries += 1;
                s.count_processor(flags);
            }
            Entry::IoApic { .. } => s.ioapics += 1,
            Entry::SourceOverride { .. } => s.overrides += 1,
            Entry::Other { .. } => {}
        }
    }
    Ok(s)
}
