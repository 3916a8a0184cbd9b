//! DMAR (DMA Remapping Reporting, Intel VT-d specification chapter 8): the remapping units
//! (DRHD structures) and the I/O APIC device scopes, which give each I/O APIC's source-id.
//!
//! Layout after the 36-byte header: host address width u8 @36, flags u8 @37, 10 reserved
//! bytes, then remapping structures `type u16, length u16, ...` from offset 48. A DRHD:
//! flags u8 @4 (bit 0 INCLUDE_PCI_ALL), size u8 @5, segment u16 @6, register base u64 @8,
//! device scopes from @16. A device scope: type u8 @0, length u8 @1, reserved u16,
//! enumeration ID u8 @4, start bus u8 @5, then (device u8, function u8) path entries.

use super::{Table, HEADER_LEN};
use crate::phys::{u16_at, u64_at, u8_at};
use crate::report::Text;
use crate::text;

/// Offset of the DMAR flags.
const FLAGS_OFFSET: usize = HEADER_LEN + 1;
/// Offset of the first remapping structure.
const STRUCTURES_OFFSET: usize = HEADER_LEN + 12;
/// DMAR flags bit 0: the platform supports interrupt remapping.
pub const FLAG_INTR_REMAP: u8 = 1 << 0;
/// DMAR flags bit 1: firmware asks the OS not to enable x2APIC.
pub const FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;
/// Remapping structure type 0: DRHD.
const TYPE_DRHD: u16 = 0;
/// Remapping structure header: type u16, length u16.
const STRUCTURE_HEADER_LEN: usize = 4;
/// DRHD field offsets: flags, segment, register base.
const DRHD_FLAGS: usize = 4;
const DRHD_SEGMENT: usize = 6;
const DRHD_BASE: usize = 8;
/// Device scope field offsets: enumeration ID, start bus.
const SCOPE_ENUMERATION_ID: usize = 4;
const SCOPE_START_BUS: usize = 5;
/// Source-id: bus number shift (15:8) and device number shift (7:3).
const SID_BUS_SHIFT: u32 = 8;
const SID_DEVICE_SHIFT: u32 = 3;
/// Fixed part of a DRHD.
const DRHD_FIXED_LEN: usize = 16;
/// DRHD flags bit 0: the unit covers every PCI device of its segment not claimed elsewhere.
pub const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// Device scope type 1: PCI endpoint device.
const SCOPE_PCI_ENDPOINT: u8 = 1;
/// Device scope type 3: I/O APIC.
const SCOPE_IOAPIC: u8 = 3;
/// Fixed part of a device scope (before the path).
const SCOPE_FIXED_LEN: usize = 6;
/// Bytes per path entry.
const PATH_ENTRY_LEN: usize = 2;
/// Offset of the OEM ID in every ACPI table header, and its length.
const OEM_ID_OFFSET: usize = 10;
const OEM_ID_LEN: usize = 6;
/// Most DRHDs, I/O APIC scopes and PCI endpoint scopes the probe keeps (QEMU lists every
/// function, and `ir-bench` may fill bus 0 with them).
const MAX_UNITS: usize = 8;
const MAX_IOAPICS: usize = 8;
const MAX_ENDPOINTS: usize = crate::pci::BUS_FUNCTIONS;

/// One remapping unit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Drhd {
    /// Register base (4 KiB page).
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// [`DRHD_INCLUDE_PCI_ALL`].
    pub flags: u8,
}

/// An I/O APIC device scope: which unit remaps its interrupts and the source-id they carry.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoApicScope {
    /// Enumeration ID: the I/O APIC's MADT ID.
    pub id: u8,
    /// Source-id: start bus << 8 | device << 3 | function.
    pub sid: u16,
    /// Index of its unit in [`Dmar::units`].
    pub unit: usize,
}

/// A PCI endpoint device scope on the scope's start bus (one-entry path).
#[derive(Clone, Copy, Debug, Default)]
struct EndpointScope {
    /// Requester ID: start bus << 8 | device << 3 | function.
    sid: u16,
    /// Index of its unit in [`Dmar::units`].
    unit: usize,
}

/// The parts of a DMAR the probe uses.
#[derive(Clone, Copy, Debug)]
pub struct Dmar {
    /// DMAR flags ([`FLAG_INTR_REMAP`], [`FLAG_X2APIC_OPT_OUT`]).
    pub flags: u8,
    /// OEM ID of the table ("IRVMM " on irvmm, "BOCHS " on QEMU).
    pub oem_id: [u8; OEM_ID_LEN],
    units: [Drhd; MAX_UNITS],
    n_units: usize,
    ioapics: [IoApicScope; MAX_IOAPICS],
    n_ioapics: usize,
    endpoints: [EndpointScope; MAX_ENDPOINTS],
    n_endpoints: usize,
}

impl Dmar {
    /// Parses `table` (a "DMAR"); fails on malformed structures, a multi-level I/O APIC
    /// scope path (bridges are not followed) or more units/scopes than the probe keeps.
    pub fn parse(table: &Table) -> Result<Dmar, Text> {
        let data = table.data;
        if &table.signature != b"DMAR" || data.len() < STRUCTURES_OFFSET {
            return Err(text!("table at 0x{:x} is not a valid DMAR", table.addr));
        }
        let mut oem_id = [0u8; OEM_ID_LEN];
        oem_id.copy_from_slice(&data[OEM_ID_OFFSET..OEM_ID_OFFSET + OEM_ID_LEN]);
        let mut dmar = Dmar {
            flags: u8_at(data, FLAGS_OFFSET).unwrap_or(0),
            oem_id,
            units: [Drhd::default(); MAX_UNITS],
            n_units: 0,
            ioapics: [IoApicScope::default(); MAX_IOAPICS],
            n_ioapics: 0,
            endpoints: [EndpointScope::default(); MAX_ENDPOINTS],
            n_endpoints: 0,
        };
        let mut at = STRUCTURES_OFFSET;
        while at < data.len() {
            let (Some(kind), Some(len)) = (u16_at(data, at), u16_at(data, at + 2)) else {
                return Err(text!("DMAR structure header truncated at offset {}", at));
            };
            let len = usize::from(len);
            let Some(s) = data
                .get(at..at + len)
                .filter(|_| len >= STRUCTURE_HEADER_LEN)
            else {
                return Err(text!(
                    "DMAR structure at offset {} has bad length {}",
                    at,
                    len
                ));
            };
            if kind == TYPE_DRHD {
                dmar.add_drhd(s, at)?;
            }
            at += len;
        }
        if dmar.n_units == 0 {
            return Err(text!("DMAR lists no remapping unit (DRHD)"));
        }
        Ok(dmar)
    }

    fn add_drhd(&mut self, s: &[u8], at: usize) -> Result<(), Text> {
        let (Some(flags), Some(segment), Some(base)) = (
            u8_at(s, DRHD_FLAGS),
            u16_at(s, DRHD_SEGMENT),
            u64_at(s, DRHD_BASE),
        ) else {
            return Err(text!("DMAR DRHD at offset {} too short ({})", at, s.len()));
        };
        let unit = self.n_units;
        let slot = self
            .units
            .get_mut(unit)
            .ok_or_else(|| text!("DMAR lists more than {} DRHDs", MAX_UNITS))?;
        *slot = Drhd {
            base,
            segment,
            flags,
        };
        self.n_units += 1;
        let mut off = DRHD_FIXED_LEN;
        while off < s.len() {
            let (Some(kind), Some(len)) = (u8_at(s, off), u8_at(s, off + 1)) else {
                return Err(text!("DMAR device scope truncated at offset {}", at + off));
            };
            let len = usize::from(len);
            let Some(scope) = s.get(off..off + len).filter(|_| len >= SCOPE_FIXED_LEN) else {
                return Err(text!(
                    "DMAR device scope at offset {} has bad length {}",
                    at + off,
                    len
                ));
            };
            match kind {
                SCOPE_IOAPIC => self.add_ioapic(scope, unit, at + off)?,
                SCOPE_PCI_ENDPOINT => self.add_endpoint(scope, unit)?,
                _ => {}
            }
            off += len;
        }
        Ok(())
    }

    fn add_ioapic(&mut self, scope: &[u8], unit: usize, at: usize) -> Result<(), Text> {
        let path = &scope[SCOPE_FIXED_LEN..];
        if path.len() != PATH_ENTRY_LEN {
            return Err(text!(
                "DMAR I/O APIC scope at offset {} has a {}-byte path (only one entry, no bridges, is supported)",
                at,
                path.len()
            ));
        }
        let (id, bus) = (scope[SCOPE_ENUMERATION_ID], scope[SCOPE_START_BUS]);
        let (device, function) = (path[0], path[1]);
        let slot = self
            .ioapics
            .get_mut(self.n_ioapics)
            .ok_or_else(|| text!("DMAR lists more than {} I/O APIC scopes", MAX_IOAPICS))?;
        *slot = IoApicScope {
            id,
            sid: scope_sid(bus, device, function),
            unit,
        };
        self.n_ioapics += 1;
        Ok(())
    }

    /// Records a PCI endpoint scope. Only one-entry paths name a device on the start bus;
    /// longer ones go through bridges to devices on other buses, which the probe never
    /// looks up, so they are skipped.
    fn add_endpoint(&mut self, scope: &[u8], unit: usize) -> Result<(), Text> {
        let path = &scope[SCOPE_FIXED_LEN..];
        if path.len() != PATH_ENTRY_LEN {
            return Ok(());
        }
        let slot = self
            .endpoints
            .get_mut(self.n_endpoints)
            .ok_or_else(|| text!("DMAR lists more than {} PCI endpoint scopes", MAX_ENDPOINTS))?;
        *slot = EndpointScope {
            sid: scope_sid(scope[SCOPE_START_BUS], path[0], path[1]),
            unit,
        };
        self.n_endpoints += 1;
        Ok(())
    }

    /// The remapping units in table order.
    pub fn units(&self) -> &[Drhd] {
        &self.units[..self.n_units]
    }

    /// The unit that remaps requests from PCI function `sid` on segment 0: the unit that
    /// lists it in a PCI endpoint scope (QEMU lists each device), else the segment's
    /// INCLUDE_PCI_ALL unit (irvmm's).
    pub fn pci_unit(&self, sid: u16) -> Result<(usize, Drhd), Text> {
        let listed = self.endpoints[..self.n_endpoints]
            .iter()
            .find(|e| e.sid == sid && self.units[e.unit].segment == 0)
            .map(|e| e.unit);
        let unit = listed.or_else(|| {
            self.units()
                .iter()
                .position(|u| u.segment == 0 && u.flags & DRHD_INCLUDE_PCI_ALL != 0)
        });
        unit.map(|i| (i, self.units[i])).ok_or_else(|| {
            text!(
                "no DMAR unit covers PCI requester 0x{:04x} (no endpoint scope, no INCLUDE_PCI_ALL)",
                sid
            )
        })
    }

    /// Number of PCI endpoint scopes (one-entry paths).
    pub fn endpoint_scopes(&self) -> usize {
        self.n_endpoints
    }

    /// The device scope of the I/O APIC with MADT ID `id`.
    pub fn ioapic(&self, id: u8) -> Result<IoApicScope, Text> {
        self.ioapics[..self.n_ioapics]
            .iter()
            .copied()
            .find(|s| s.id == id)
            .ok_or_else(|| text!("no DMAR device scope for I/O APIC {}", id))
    }

    /// The OEM ID as text (`??????` if it is not UTF-8).
    pub fn oem(&self) -> &str {
        core::str::from_utf8(&self.oem_id).unwrap_or("??????")
    }
}

/// The source-id of the function at `device`.`function` on `bus`.
fn scope_sid(bus: u8, device: u8, function: u8) -> u16 {
    (u16::from(bus) << SID_BUS_SHIFT)
        | (u16::from(device) << SID_DEVICE_SHIFT)
        | u16::from(function)
}
