//! IVRS (I/O Virtualization Reporting Structure, AMD IOMMU specification, "ACPI tables"):
//! the AMD-Vi units (IVHD blocks), the device IDs each one covers, and the device ID the
//! I/O APIC's interrupts carry (the IOAPIC special entry).
//!
//! Layout after the 36-byte header: IVinfo u32 @36, 8 reserved bytes, then blocks
//! `type u8, flags u8, length u16, ...` from offset 48. An IVHD (types 10h, 11h, 40h):
//! device ID u16 @4 (the unit's own PCI function), capability offset u16 @6, register base
//! u64 @8, PCI segment u16 @16, IOMMU info u16 @18; type 10h then has a feature-reporting
//! dword @20 and its device entries from @24; types 11h and 40h have attributes u32 @20,
//! the EFR image u64 @24, EFR2 u64 @32 and their device entries from @40. One unit may be
//! described by several IVHDs of different types (QEMU writes a 10h and an 11h twin); an OS
//! picks the highest type it knows, the probe the first one with an EFR image.
//!
//! Device entries: the type's bits 7:6 give the length (00b: 4 bytes, 01b: 8 bytes); type
//! F0h (ACPI HID) is 22 bytes plus the UID length in its byte 21. Bytes 1-2 are a device ID
//! and byte 3 the DTE settings. The probe records which device IDs are covered (type 1 all,
//! 2 select, 3/43h/47h range start ... 4 range end, 42h alias select, 46h extended select)
//! and the special entries (type 48h: handle @4, source device ID u16 @5, variety @7; variety
//! 1 = IOAPIC, whose handle is its MADT ID, 2 = HPET).

use super::{Table, HEADER_LEN};
use crate::phys::{u16_at, u32_at, u64_at, u8_at};
use crate::report::Text;
use crate::text;

/// Offset of IVinfo.
const IVINFO_OFFSET: usize = HEADER_LEN;
/// Offset of the first IVHD/IVMD block.
const BLOCKS_OFFSET: usize = HEADER_LEN + 12;
/// Block header: type u8, flags u8, length u16.
const BLOCK_HEADER_LEN: usize = 4;
/// IVHD types.
pub const IVHD_10: u8 = 0x10;
/// IVHD type with the EFR image.
pub const IVHD_11: u8 = 0x11;
/// IVHD type with the EFR image and ACPI-HID entries.
pub const IVHD_40: u8 = 0x40;
/// IVHD field offsets.
const IVHD_DEVICE_ID: usize = 4;
const IVHD_CAP_OFFSET: usize = 6;
const IVHD_BASE: usize = 8;
const IVHD_SEGMENT: usize = 16;
const IVHD_INFO: usize = 18;
const IVHD_ATTRIBUTES: usize = 20;
const IVHD_EFR: usize = 24;
/// Where the device entries start in a type 10h block and in types 11h/40h.
const IVHD_10_ENTRIES: usize = 24;
const IVHD_11_ENTRIES: usize = 40;
/// Offset of the OEM ID in every ACPI table header, and its length.
const OEM_ID_OFFSET: usize = 10;
const OEM_ID_LEN: usize = 6;

/// Device entry types.
const DEV_PAD: u8 = 0x00;
const DEV_ALL: u8 = 0x01;
const DEV_SELECT: u8 = 0x02;
const DEV_RANGE_START: u8 = 0x03;
const DEV_RANGE_END: u8 = 0x04;
const DEV_ALIAS_SELECT: u8 = 0x42;
const DEV_ALIAS_RANGE: u8 = 0x43;
const DEV_EXT_SELECT: u8 = 0x46;
const DEV_EXT_RANGE: u8 = 0x47;
const DEV_SPECIAL: u8 = 0x48;
const DEV_ACPI_HID: u8 = 0xf0;
/// Device entry: device ID at byte 1.
const ENTRY_DEVICE_ID: usize = 1;
/// Special entry fields.
const SPECIAL_HANDLE: usize = 4;
const SPECIAL_DEVICE_ID: usize = 5;
const SPECIAL_VARIETY: usize = 7;
/// Special entry variety: IOAPIC.
pub const SPECIAL_IOAPIC: u8 = 1;
/// Special entry variety: HPET.
pub const SPECIAL_HPET: u8 = 2;
/// ACPI HID entry: fixed length and where its UID length is.
const ACPI_HID_FIXED_LEN: usize = 22;
const ACPI_HID_UID_LEN: usize = 21;
/// Entry type bits 7:6 select the length for types below 80h: 4 << (type >> 6).
const ENTRY_LEN_SHIFT: u32 = 6;
const ENTRY_BASE_LEN: usize = 4;
/// First type with an explicit length.
const VARIABLE_TYPES: u8 = 0x80;

/// Most IVHDs, covered ranges (after merging neighbours; QEMU selects every function on its
/// own) and special entries the probe keeps.
const MAX_UNITS: usize = 4;
const MAX_RANGES: usize = crate::pci::BUS_FUNCTIONS;
const MAX_SPECIALS: usize = 8;

/// A covered run of device IDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRange {
    /// First device ID.
    pub first: u16,
    /// Last device ID (inclusive).
    pub last: u16,
}

/// A special device entry (IOAPIC or HPET).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Special {
    /// 1 = IOAPIC, 2 = HPET.
    pub variety: u8,
    /// The IOAPIC's MADT ID (or the HPET number).
    pub handle: u8,
    /// The device ID its interrupts carry.
    pub device_id: u16,
}

/// One IVHD block: a unit and what it covers.
#[derive(Clone, Copy, Debug)]
pub struct Ivhd {
    /// Block type (10h, 11h, 40h).
    pub kind: u8,
    /// IVHD flags (HtTunEn 0, PassPW 1, ResPassPW 2, Isoc 3, IotlbSup 4, Coherent 5).
    pub flags: u8,
    /// The unit's own PCI function (bus << 8 | devfn).
    pub device_id: u16,
    /// Offset of the IOMMU capability block in that function's configuration space.
    pub capability_offset: u16,
    /// Register window base.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// IOMMU info (MSI number 4:0, unit ID 12:8).
    pub info: u16,
    /// Attributes (types 11h/40h; bit 0 HATDis), 0 for 10h.
    pub attributes: u32,
    /// EFR image (types 11h/40h).
    pub efr: Option<u64>,
    ranges: [DeviceRange; MAX_RANGES],
    n_ranges: usize,
    specials: [Special; MAX_SPECIALS],
    n_specials: usize,
}

impl Ivhd {
    /// The device-ID ranges its entries select, in table order.
    pub fn ranges(&self) -> &[DeviceRange] {
        &self.ranges[..self.n_ranges]
    }

    /// Its special entries.
    pub fn specials(&self) -> &[Special] {
        &self.specials[..self.n_specials]
    }

    /// Whether an entry selects `device_id`.
    pub fn covers(&self, device_id: u16) -> bool {
        self.ranges()
            .iter()
            .any(|r| (r.first..=r.last).contains(&device_id))
    }

    /// The highest device ID any entry names (ranges and specials): an OS sizes its device
    /// table by it.
    pub fn last_device_id(&self) -> u16 {
        let ranges = self.ranges().iter().map(|r| r.last);
        let specials = self.specials().iter().map(|s| s.device_id);
        ranges.chain(specials).max().unwrap_or(0)
    }

    /// The device ID of the IOAPIC with MADT ID `id` (its special entry).
    pub fn ioapic_device_id(&self, id: u8) -> Result<u16, Text> {
        self.specials()
            .iter()
            .find(|s| s.variety == SPECIAL_IOAPIC && s.handle == id)
            .map(|s| s.device_id)
            .ok_or_else(|| text!("no IVRS IOAPIC special entry for I/O APIC {}", id))
    }

    fn push_range(&mut self, first: u16, last: u16) -> Result<(), Text> {
        if let Some(prev) = self.n_ranges.checked_sub(1).map(|i| &mut self.ranges[i]) {
            if prev.last.checked_add(1) == Some(first) {
                prev.last = prev.last.max(last);
                return Ok(());
            }
        }
        let slot = self
            .ranges
            .get_mut(self.n_ranges)
            .ok_or_else(|| text!("IVHD selects more than {} device ranges", MAX_RANGES))?;
        *slot = DeviceRange { first, last };
        self.n_ranges += 1;
        Ok(())
    }

    fn push_special(&mut self, special: Special) -> Result<(), Text> {
        let slot = self
            .specials
            .get_mut(self.n_specials)
            .ok_or_else(|| text!("IVHD has more than {} special entries", MAX_SPECIALS))?;
        *slot = special;
        self.n_specials += 1;
        Ok(())
    }

    /// Parses one IVHD block (`block` is the whole block, header included).
    fn parse(block: &[u8], at: usize) -> Result<Ivhd, Text> {
        let kind = block[0];
        let entries_at = if kind == IVHD_10 {
            IVHD_10_ENTRIES
        } else {
            IVHD_11_ENTRIES
        };
        let (Some(device_id), Some(capability_offset), Some(base), Some(segment), Some(info)) = (
            u16_at(block, IVHD_DEVICE_ID),
            u16_at(block, IVHD_CAP_OFFSET),
            u64_at(block, IVHD_BASE),
            u16_at(block, IVHD_SEGMENT),
            u16_at(block, IVHD_INFO),
        ) else {
            return Err(text!("IVHD at offset {} too short ({})", at, block.len()));
        };
        if block.len() < entries_at {
            return Err(text!(
                "IVHD type 0x{:x} at offset {} too short ({})",
                kind,
                at,
                block.len()
            ));
        }
        let has_efr = kind != IVHD_10;
        let mut ivhd = Ivhd {
            kind,
            flags: block[1],
            device_id,
            capability_offset,
            base,
            segment,
            info,
            attributes: if has_efr {
                u32_at(block, IVHD_ATTRIBUTES).unwrap_or(0)
            } else {
                0
            },
            efr: if has_efr {
                u64_at(block, IVHD_EFR)
            } else {
                None
            },
            ranges: [DeviceRange::default(); MAX_RANGES],
            n_ranges: 0,
            specials: [Special::default(); MAX_SPECIALS],
            n_specials: 0,
        };
        ivhd.parse_entries(&block[entries_at..], at + entries_at)?;
        Ok(ivhd)
    }

    fn parse_entries(&mut self, entries: &[u8], at: usize) -> Result<(), Text> {
        let mut off = 0;
        let mut range_start: Option<u16> = None;
        while off < entries.len() {
            let kind = entries[off];
            let len = entry_len(entries, off).ok_or_else(|| {
                text!("IVHD device entry type 0x{:x} at offset {}", kind, at + off)
            })?;
            let Some(e) = entries.get(off..off + len) else {
                return Err(text!(
                    "IVHD device entry type 0x{:x} at offset {} runs past its block",
                    kind,
                    at + off
                ));
            };
            let device_id = u16_at(e, ENTRY_DEVICE_ID).unwrap_or(0);
            match kind {
                DEV_PAD => {}
                DEV_ALL => self.push_range(0, u16::MAX)?,
                DEV_SELECT | DEV_ALIAS_SELECT | DEV_EXT_SELECT => {
                    self.push_range(device_id, device_id)?
                }
                DEV_RANGE_START | DEV_ALIAS_RANGE | DEV_EXT_RANGE => range_start = Some(device_id),
                DEV_RANGE_END => {
                    let first = range_start.take().ok_or_else(|| {
                        text!("IVHD range end at offset {} without a start", at + off)
                    })?;
                    self.push_range(first, device_id)?;
                }
                DEV_SPECIAL => self.push_special(Special {
                    variety: e[SPECIAL_VARIETY],
                    handle: e[SPECIAL_HANDLE],
                    device_id: u16_at(e, SPECIAL_DEVICE_ID).unwrap_or(0),
                })?,
                _ => {}
            }
            off += len;
        }
        Ok(())
    }
}

/// Length of the device entry at `off`, or `None` for a type without a known length.
fn entry_len(entries: &[u8], off: usize) -> Option<usize> {
    let kind = *entries.get(off)?;
    if kind < VARIABLE_TYPES {
        return Some(ENTRY_BASE_LEN << (kind >> ENTRY_LEN_SHIFT));
    }
    if kind == DEV_ACPI_HID {
        let uid = u8_at(entries, off + ACPI_HID_UID_LEN)?;
        return Some(ACPI_HID_FIXED_LEN + usize::from(uid));
    }
    None
}

/// The parts of an IVRS the probe uses.
#[derive(Clone, Copy, Debug)]
pub struct Ivrs {
    /// IVinfo (EFRSup bit 0, PAsize 14:8, VAsize 21:15, GVAsize 7:5).
    pub ivinfo: u32,
    /// OEM ID of the table ("IRVMM " on irvmm, "BOCHS " on QEMU).
    pub oem_id: [u8; OEM_ID_LEN],
    units: [Option<Ivhd>; MAX_UNITS],
    n_units: usize,
}

impl Ivrs {
    /// Parses `table` (an "IVRS"); IVMD blocks are skipped.
    pub fn parse(table: &Table) -> Result<Ivrs, Text> {
        let data = table.data;
        if &table.signature != b"IVRS" || data.len() < BLOCKS_OFFSET {
            return Err(text!("table at 0x{:x} is not a valid IVRS", table.addr));
        }
        let mut oem_id = [0u8; OEM_ID_LEN];
        oem_id.copy_from_slice(&data[OEM_ID_OFFSET..OEM_ID_OFFSET + OEM_ID_LEN]);
        let mut ivrs = Ivrs {
            ivinfo: u32_at(data, IVINFO_OFFSET).unwrap_or(0),
            oem_id,
            units: [None; MAX_UNITS],
            n_units: 0,
        };
        let mut at = BLOCKS_OFFSET;
        while at < data.len() {
            let (Some(kind), Some(len)) = (u8_at(data, at), u16_at(data, at + 2)) else {
                return Err(text!("IVRS block header truncated at offset {}", at));
            };
            let len = usize::from(len);
            let Some(block) = data.get(at..at + len).filter(|_| len >= BLOCK_HEADER_LEN) else {
                return Err(text!("IVRS block at offset {} has bad length {}", at, len));
            };
            if matches!(kind, IVHD_10 | IVHD_11 | IVHD_40) {
                let ivhd = Ivhd::parse(block, at)?;
                let slot = ivrs
                    .units
                    .get_mut(ivrs.n_units)
                    .ok_or_else(|| text!("IVRS has more than {} IVHDs", MAX_UNITS))?;
                *slot = Some(ivhd);
                ivrs.n_units += 1;
            }
            at += len;
        }
        if ivrs.n_units == 0 {
            return Err(text!("IVRS has no IVHD"));
        }
        Ok(ivrs)
    }

    /// Every IVHD in table order.
    pub fn ivhds(&self) -> impl Iterator<Item = &Ivhd> {
        self.units[..self.n_units].iter().flatten()
    }

    /// The description of the first unit (segment 0): its IVHD with an EFR image (11h or
    /// 40h) when there is one, else its type 10h block.
    pub fn unit(&self) -> Result<Ivhd, Text> {
        let first = self
            .ivhds()
            .find(|h| h.segment == 0)
            .ok_or_else(|| text!("no IVHD for PCI segment 0"))?;
        Ok(*self
            .ivhds()
            .find(|h| h.base == first.base && h.efr.is_some())
            .unwrap_or(first))
    }

    /// The OEM ID as text (`??????` if it is not UTF-8).
    pub fn oem(&self) -> &str {
        core::str::from_utf8(&self.oem_id).unwrap_or("??????")
    }
}
