//! ACPI tables for irvmm's guests: RSDP, XSDT, FADT, FACS, DSDT and MADT, laid out
//! in a guest-physical window (normally 0xe0000..0x100000, where a legacy scan finds the RSDP).
//!
//! Pure data: [`build`] returns the bytes and where each blob goes; the caller writes them
//! into guest memory. Each table is built by its own module on top of the [`sdt::Sdt`] builder;
//! the DSDT's AML comes from the small encoder in [`aml`].
//!
//! Layout: the RSDP at `base`, then the XSDT, FADT, FACS (64-byte aligned), DSDT and every
//! other XSDT-listed table, each other one starting on a 16-byte boundary. Tables whose bytes do not depend on other tables'
//! addresses (DSDT, MADT, ...) are built first; the XSDT and FADT have fixed sizes, so they are
//! built last, once every address is known. To add a table, build it in [`build`] and push
//! it onto the list of XSDT-listed tables there (MADT, then MCFG, DMAR and IVRS when
//! configured).

pub mod aml;
pub mod aml_code;
pub mod dmar;
pub mod dsdt;
pub mod facs;
pub mod fadt;
pub mod ivrs;
pub mod madt;
pub mod mcfg;
pub mod osc;
pub mod resources;
pub mod root;
pub mod sdt;

#[cfg(test)]
mod proptest_tables;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use thiserror::Error;

/// Alignment of every table after the RSDP.
pub const TABLE_ALIGN: u64 = 16;

/// Errors building the ACPI tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The configuration lists no vCPU.
    #[error("no vCPUs: at least one APIC ID is required")]
    NoCpus,
    /// An APIC ID is listed twice.
    #[error("APIC ID {0} is listed more than once")]
    DuplicateApicId(u32),
    /// An APIC ID cannot be described (0xffffffff is the x2APIC broadcast ID).
    #[error("APIC ID {0:#x} cannot be described in the MADT")]
    InvalidApicId(u32),
    /// A processor with an APIC ID below 255 needs a type 0 MADT entry, whose UID is 8 bits.
    #[error(
        "processor UID {uid} (APIC ID {apic_id}) does not fit a Processor Local APIC entry; \
         list vCPUs with APIC IDs below 255 among the first 256"
    )]
    UidTooLargeForLocalApic {
        /// The processor's UID (its index in `apic_ids`).
        uid: u32,
        /// Its APIC ID.
        apic_id: u32,
    },
    /// More vCPUs than the tables can name.
    #[error("{0} vCPUs are more than the ACPI tables can describe")]
    TooManyCpus(usize),
    /// The RSDP address is not 16-byte aligned.
    #[error("RSDP address {0:#x} is not 16-byte aligned")]
    MisalignedBase(u64),
    /// The tables do not fit in `[base, limit)`.
    #[error("ACPI table {table} would end at {end:#x}, past the limit {limit:#x}")]
    DoesNotFit {
        /// Signature of the first table that does not fit.
        table: String,
        /// Where it would end (exclusive), or `u64::MAX` on overflow.
        end: u64,
        /// The limit given to [`build`].
        limit: u64,
    },
    /// A table is longer than its 32-bit length field can state.
    #[error("ACPI table of {len} bytes exceeds the 32-bit length field")]
    TableTooLarge {
        /// Its length.
        len: usize,
    },
    /// The I/O APIC's GSI base leaves no room for the SCI's GSI.
    #[error("I/O APIC GSI base {0} leaves no GSI for the SCI")]
    InvalidGsiBase(u32),
    /// The ECAM window must lie below 4 GiB to be reserved with Memory32Fixed.
    #[error("ECAM window at {0:#x} is above 4 GiB")]
    EcamAbove4G(u64),
    /// The DSDT's AML could not be encoded.
    #[error("AML encoding: {0}")]
    Aml(#[from] aml::AmlError),
}

/// A PCI host bridge: its ECAM window and the 32-bit MMIO window it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostConfig {
    /// ECAM window and bus range.
    pub ecam: mcfg::EcamConfig,
    /// Base of the 32-bit MMIO window for BARs.
    pub mmio32_base: u32,
    /// Size of that window.
    pub mmio32_size: u32,
    /// Legacy interrupt routing of bus 0 (`_PRT`): which GSI each device's INTx pin drives.
    pub intx_routes: Vec<IntxRoute>,
}

/// One `_PRT` entry: device `device`'s INTx pin `pin` (0 = INTA) drives `gsi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntxRoute {
    /// Device number on bus 0.
    pub device: u8,
    /// Interrupt pin, 0 = INTA# .. 3 = INTD#.
    pub pin: u8,
    /// The IOAPIC input (GSI).
    pub gsi: u32,
}

/// What the ACPI tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// x2APIC/APIC IDs of the vCPUs in order; index i is ACPI processor UID i. The first is
    /// the BSP. Must be non-empty and free of duplicates. vCPUs with IDs below 255 must be
    /// among the first 256 (their type 0 MADT entry holds an 8-bit UID).
    pub apic_ids: Vec<u32>,
    /// I/O APIC ID (MADT type 1 entry), normally 0.
    pub ioapic_id: u8,
    /// I/O APIC MMIO base, normally 0xfec0_0000.
    pub ioapic_addr: u32,
    /// First GSI of the I/O APIC's pins, normally 0. ISA IRQs map to GSIs 0-15 identically.
    pub ioapic_gsi_base: u32,
    /// Local APIC MMIO base, normally 0xfee0_0000.
    pub lapic_addr: u32,
    /// First I/O port of the PM1a event block (PM1_STS, PM1_EN: 4 ports), normally 0x600.
    pub pm1a_event_port: u16,
    /// First I/O port of the PM1a control block (PM1_CNT: 2 ports), normally 0x604.
    pub pm1a_control_port: u16,
    /// I/O port of the FADT RESET_REG (8-bit), normally 0xcf9.
    pub reset_port: u16,
    /// Value written to RESET_REG to reset, normally 0x06.
    pub reset_value: u8,
    /// COM1 as (I/O base, ISA IRQ), normally (0x3f8, 4): described in the DSDT as PNP0501
    /// with `_CRS` IO + IRQ, and flagged in IAPC_BOOT_ARCH as a legacy device. The IRQ must
    /// be 0-15.
    pub serial: Option<(u16, u8)>,
    /// The PCI host bridge: described in the DSDT, its ECAM window listed in an MCFG.
    pub pci: Option<PciHostConfig>,
    /// The ISA pvpanic device's I/O port (normally 0x505): described in the DSDT as
    /// `QEMU0001` with an `IO` resource, which Linux's pvpanic driver binds.
    pub pvpanic_port: Option<u16>,
    /// The VT-d remapping unit, listed in a DMAR when present.
    pub dmar: Option<dmar::DmarConfig>,
    /// The AMD-Vi unit, listed in an IVRS when present.
    pub ivrs: Option<ivrs::IvrsConfig>,
}

impl Default for AcpiConfig {
    /// One vCPU with APIC ID 0 and irvmm's platform addresses (see each field).
    fn default() -> Self {
        AcpiConfig {
            apic_ids: vec![0],
            ioapic_id: 0,
            ioapic_addr: 0xfec0_0000,
            ioapic_gsi_base: 0,
            lapic_addr: 0xfee0_0000,
            pm1a_event_port: 0x600,
            pm1a_control_port: 0x604,
            reset_port: 0xcf9,
            reset_value: 0x06,
            serial: Some((0x3f8, 4)),
            pci: None,
            pvpanic_port: None,
            dmar: None,
            ivrs: None,
        }
    }
}

impl AcpiConfig {
    /// Checks the vCPU list: non-empty, no duplicates, no unusable IDs, UIDs that fit.
    pub fn validate(&self) -> Result<(), AcpiError> {
        if self.apic_ids.is_empty() {
            return Err(AcpiError::NoCpus);
        }
        if self.apic_ids.len() > dsdt::MAX_CPUS {
            return Err(AcpiError::TooManyCpus(self.apic_ids.len()));
        }
        let mut seen = HashSet::with_capacity(self.apic_ids.len());
        for (uid, &id) in self.apic_ids.iter().enumerate() {
            if id == u32::MAX {
                return Err(AcpiError::InvalidApicId(id));
            }
            if !seen.insert(id) {
                return Err(AcpiError::DuplicateApicId(id));
            }
            let uid = u32::try_from(uid).map_err(|_| AcpiError::TooManyCpus(uid))?;
            madt::lapic_entry(uid, id)?;
        }
        Ok(())
    }
}

/// The built tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest physical address of the RSDP (the `base` given to [`build`]).
    pub rsdp_addr: u64,
    /// (guest physical address, bytes) of each blob: the RSDP first, then the XSDT, FADT,
    /// FACS, DSDT, MADT, in ascending non-overlapping address order.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// End (exclusive) of the highest blob: the tables occupy `[rsdp_addr, end())`.
    pub fn end(&self) -> u64 {
        self.blobs
            .iter()
            .map(|(addr, b)| addr.saturating_add(b.len() as u64))
            .max()
            .unwrap_or(self.rsdp_addr)
    }
}

/// Hands out aligned addresses in `[next, limit)`.
struct Placer {
    next: u64,
    limit: u64,
}

impl Placer {
    /// Reserves `len` bytes at the next `TABLE_ALIGN` boundary for the table `name`.
    fn place(&mut self, name: &[u8], len: usize) -> Result<u64, AcpiError> {
        self.place_aligned(name, len, TABLE_ALIGN)
    }

    /// Reserves `len` bytes at the next `align` boundary for the table `name`.
    fn place_aligned(&mut self, name: &[u8], len: usize, align: u64) -> Result<u64, AcpiError> {
        let too_big = |end| AcpiError::DoesNotFit {
            table: String::from_utf8_lossy(name).into_owned(),
            end,
            limit: self.limit,
        };
        let addr = self
            .next
            .checked_next_multiple_of(align)
            .ok_or_else(|| too_big(u64::MAX))?;
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .ok_or_else(|| too_big(u64::MAX))?;
        if end > self.limit {
            return Err(too_big(end));
        }
        self.next = end;
        Ok(addr)
    }
}

/// Builds the tables for `cfg` with the RSDP at `base` (16-byte aligned) and everything
/// within `[base, limit)`.
pub fn build(cfg: &AcpiConfig, base: u64, limit: u64) -> Result<AcpiTables, AcpiError> {
    cfg.validate()?;
    if base & (root::RSDP_ALIGN - 1) != 0 {
        return Err(AcpiError::MisalignedBase(base));
    }

    // Tables with address-independent contents.
    let dsdt = dsdt::build(cfg)?;
    // Tables listed in the XSDT after the FADT, as (signature, bytes).
    let mut listed: Vec<(&[u8], Vec<u8>)> = vec![(&madt::SIGNATURE, madt::build(cfg)?)];
    if let Some(pci) = &cfg.pci {
        listed.push((&mcfg::SIGNATURE, mcfg::build(&pci.ecam)?));
    }
    if let Some(dmar) = &cfg.dmar {
        listed.push((&dmar::SIGNATURE, dmar::build(dmar)?));
    }
    if let Some(ivrs) = &cfg.ivrs {
        listed.push((&ivrs::SIGNATURE, ivrs::build(ivrs)?));
    }

    let mut placer = Placer { next: base, limit };
    let rsdp_addr = placer.place(b"RSD PTR ", root::RSDP_LEN)?;
    let xsdt_addr = placer.place(&root::XSDT_SIGNATURE, root::xsdt_len(1 + listed.len()))?;
    let fadt_addr = placer.place(&fadt::SIGNATURE, fadt::FADT_LEN)?;
    let facs_addr = placer.place_aligned(&facs::SIGNATURE, facs::FACS_LEN, facs::FACS_ALIGN)?;
    let dsdt_addr = placer.place(&dsdt::SIGNATURE, dsdt.len())?;
    let mut listed_placed = Vec::with_capacity(listed.len());
    for (sig, bytes) in listed {
        listed_placed.push((placer.place(sig, bytes.len())?, bytes));
    }

    let fadt = fadt::build(cfg, dsdt_addr, facs_addr)?;
    let mut xsdt_entries = vec![fadt_addr];
    xsdt_entries.extend(listed_placed.iter().map(|(addr, _)| *addr));
    let xsdt = root::xsdt(&xsdt_entries)?;
    let rsdp = root::rsdp(xsdt_addr).to_vec();

    let mut blobs = vec![
        (rsdp_addr, rsdp),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt),
        (facs_addr, facs::build()),
        (dsdt_addr, dsdt),
    ];
    blobs.extend(listed_placed);
    let tables = AcpiTables { rsdp_addr, blobs };
    log::debug!(
        "ACPI: {} vCPUs, tables at {:#x}..{:#x}",
        cfg.apic_ids.len(),
        tables.rsdp_addr,
        tables.end()
    );
    Ok(tables)
}
