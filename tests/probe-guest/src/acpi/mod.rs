//! ACPI: finding the RSDP, walking the XSDT/RSDT, validating every table's checksum.
//!
//! Everything read here comes from the VMM or firmware; malformed data becomes an `Err`
//! reason for the scenario's `PROBE FAIL` line, never a panic.

pub mod dmar;
pub mod fadt;
pub mod ivrs;
pub mod madt;

use core::fmt;

use crate::phys::{self, checksum, u32_at, u64_at};
use crate::report::Text;
use crate::text;

/// Size of the common ACPI table header.
pub const HEADER_LEN: usize = 36;
/// Largest table the probe accepts (a sanity bound on the length field).
const MAX_TABLE_LEN: u32 = 16 << 20;
/// Most tables (besides the root table) the probe keeps.
pub const MAX_TABLES: usize = 32;

/// Where the RSDP came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsdpSource {
    /// `hvm_start_info.rsdp_paddr`.
    StartInfo,
    /// The scan of the EBDA and 0xe0000..0x100000.
    Scan,
}

/// A validated Root System Description Pointer.
#[derive(Clone, Copy, Debug)]
pub struct Rsdp {
    /// Physical address.
    pub addr: u64,
    /// Revision (0 = ACPI 1.0, RSDT only; 2 = has the XSDT).
    pub revision: u8,
    /// RSDT address.
    pub rsdt: u32,
    /// XSDT address (0 for revision 0).
    pub xsdt: u64,
    /// How it was found.
    pub source: RsdpSource,
}

/// A validated ACPI table: header length and checksum checked.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// Physical address.
    pub addr: u64,
    /// Signature, e.g. `*b"APIC"`.
    pub signature: [u8; 4],
    /// The whole table, header included.
    pub data: &'static [u8],
}

impl Table {
    /// The signature as text (`????` if not ASCII).
    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.signature).unwrap_or("????")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Table revision from the header.
    pub fn revision(&self) -> u8 {
        self.data[8]
    }
}

/// Parses and checks the RSDP at `addr`.
fn rsdp_at(addr: u64, source: RsdpSource) -> Result<Rsdp, Text> {
    // SAFETY: the RSDP lies in firmware/VMM-provided memory that nothing writes after boot.
    let v1 =
        unsafe { phys::bytes(addr, 20) }.ok_or_else(|| text!("RSDP at 0x{:x} not mapped", addr))?;
    if &v1[..8] != b"RSD PTR " {
        return Err(text!("no RSDP signature at 0x{:x}", addr));
    }
    if checksum(v1) != 0 {
        return Err(text!("bad RSDP checksum at 0x{:x}", addr));
    }
    let revision = v1[15];
    let rsdt = u32_at(v1, 16).unwrap_or(0);
    let mut xsdt = 0;
    if revision >= 2 {
        // SAFETY: as above; an ACPI 2.0+ RSDP is 36 bytes.
        let v2 = unsafe { phys::bytes(addr, 36) }
            .ok_or_else(|| text!("RSDP at 0x{:x} not mapped", addr))?;
        let length = u32_at(v2, 20).unwrap_or(0);
        if length < 36 {
            return Err(text!("RSDP at 0x{:x} has length {}", addr, length));
        }
        if checksum(v2) != 0 {
            return Err(text!("bad RSDP extended checksum at 0x{:x}", addr));
        }
        xsdt = u64_at(v2, 24).unwrap_or(0);
    }
    Ok(Rsdp {
        addr,
        revision,
        rsdt,
        xsdt,
        source,
    })
}

/// Scans `[start, end)` on 16-byte boundaries for a valid RSDP.
fn scan(start: u64, end: u64) -> Option<Rsdp> {
    // SAFETY: the EBDA and the BIOS area are read-only to everyone after boot (plain RAM on
    // irvmm, shadowed ROM on QEMU).
    let area = unsafe { phys::bytes(start, usize::try_from(end - start).ok()?) }?;
    (0..area.len().saturating_sub(20))
        .step_by(16)
        .filter(|&off| &area[off..off + 8] == b"RSD PTR ")
        .find_map(|off| rsdp_at(start + off as u64, RsdpSource::Scan).ok())
}

/// Finds the RSDP: `hint` (from `hvm_start_info.rsdp_paddr`) when non-zero, else a scan of the
/// first KiB of the EBDA and of 0xe0000..0x100000 (QEMU's PVH path passes 0).
pub fn find_rsdp(hint: u64) -> Result<Rsdp, Text> {
    if hint != 0 {
        return rsdp_at(hint, RsdpSource::StartInfo);
    }
    // SAFETY: the BIOS data area word at 0x40e (EBDA segment) is plain memory.
    let ebda = unsafe { phys::bytes(0x40e, 2) }
        .and_then(|b| phys::u16_at(b, 0))
        .map_or(0, |segment| u64::from(segment) << 4);
    let in_ebda = if (0x8_0000..0xa_0000).contains(&ebda) {
        scan(ebda, ebda + 1024)
    } else {
        None
    };
    in_ebda
        .or_else(|| scan(0xe_0000, 0x10_0000))
        .ok_or_else(|| text!("no RSDP (start_info rsdp_paddr=0, scan found none)"))
}

/// Reads and validates the table at `addr`.
pub fn table_at(addr: u64) -> Result<Table, Text> {
    // SAFETY: ACPI tables are in memory that nothing writes after boot.
    let header = unsafe { phys::bytes(addr, HEADER_LEN) }
        .ok_or_else(|| text!("ACPI table at 0x{:x} not mapped", addr))?;
    let mut signature = [0u8; 4];
    signature.copy_from_slice(&header[..4]);
    let sig = core::str::from_utf8(&signature).unwrap_or("????");
    let length = u32_at(header, 4).unwrap_or(0);
    if !(HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&length) {
        return Err(text!(
            "ACPI {} at 0x{:x} has bad length {}",
            sig,
            addr,
            length
        ));
    }
    // SAFETY: as above.
    let data = unsafe { phys::bytes(addr, length as usize) }
        .ok_or_else(|| text!("ACPI {} at 0x{:x} len={} not mapped", sig, addr, length))?;
    if checksum(data) != 0 {
        return Err(text!("bad checksum in ACPI {} at 0x{:x}", sig, addr));
    }
    Ok(Table {
        addr,
        signature,
        data,
    })
}

/// All tables reachable from the RSDP, in the order found.
pub struct Tables {
    /// The XSDT (or RSDT for an ACPI 1.0 RSDP).
    pub root: Table,
    list: [Option<Table>; MAX_TABLES],
    count: usize,
}

impl Tables {
    fn push(&mut self, table: Table) -> Result<(), Text> {
        let slot = self
            .list
            .get_mut(self.count)
            .ok_or_else(|| text!("more than {} ACPI tables", MAX_TABLES))?;
        *slot = Some(table);
        self.count += 1;
        Ok(())
    }

    /// The tables in the order found, without the root table.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        self.list[..self.count].iter().flatten()
    }

    /// The first table with `signature`.
    pub fn find(&self, signature: &[u8; 4]) -> Option<&Table> {
        self.iter().find(|t| &t.signature == signature)
    }

    /// Comma-separated signatures, for `tables=` in a PASS line.
    pub fn signatures(&self) -> Signatures<'_> {
        Signatures(self)
    }
}

/// Display adaptor: `FACP,DSDT,APIC,...`.
pub struct Signatures<'a>(&'a Tables);

impl fmt::Display for Signatures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(t.name())?;
        }
        Ok(())
    }
}

/// The DSDT address named by a FADT: X_DSDT (offset 140) if present and non-zero, else DSDT
/// (offset 40).
fn dsdt_address(fadt: &Table) -> Option<u64> {
    let x_dsdt = u64_at(fadt.data, 140).unwrap_or(0);
    if x_dsdt != 0 {
        return Some(x_dsdt);
    }
    u32_at(fadt.data, 40).filter(|&a| a != 0).map(u64::from)
}

/// Walks the XSDT (RSDT for revision 0), validating each table and, after the FADT, the DSDT
/// it names. `seen` is called for every table, the root first.
pub fn load(rsdp: &Rsdp, seen: &mut dyn FnMut(&Table)) -> Result<Tables, Text> {
    let (root_addr, entry_size) = if rsdp.revision >= 2 && rsdp.xsdt != 0 {
        (rsdp.xsdt, 8)
    } else {
        (u64::from(rsdp.rsdt), 4)
    };
    let root = table_at(root_addr)?;
    let expected = if entry_size == 8 { "XSDT" } else { "RSDT" };
    if root.name() != expected {
        return Err(text!(
            "root table at 0x{:x} is {} not {}",
            root_addr,
            root.name(),
            expected
        ));
    }
    seen(&root);
    let mut tables = Tables {
        root,
        list: [None; MAX_TABLES],
        count: 0,
    };
    for entry in root.data[HEADER_LEN..].chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            u64_at(entry, 0).unwrap_or(0)
        } else {
            u64::from(u32_at(entry, 0).unwrap_or(0))
        };
        let table = table_at(addr)?;
        seen(&table);
        tables.push(table)?;
        if &table.signature == b"FACP" {
            let dsdt_addr = dsdt_address(&table).ok_or_else(|| text!("FADT names no DSDT"))?;
            let dsdt = table_at(dsdt_addr)?;
            if &dsdt.signature != b"DSDT" {
                return Err(text!("FADT's DSDT at 0x{:x} is {}", dsdt_addr, dsdt.name()));
            }
            seen(&dsdt);
            tables.push(dsdt)?;
        }
    }
    Ok(tables)
}
