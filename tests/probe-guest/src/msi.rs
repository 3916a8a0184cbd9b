//! Programming a PCI function's MSI and MSI-X capabilities (PCI Local Bus 3.0 6.8): the
//! message address and data the device writes when it interrupts. The messages themselves
//! (compatibility or remappable format) are built by the callers.

use crate::mmio::Mmio;
use crate::pci::{self, Function};
use crate::report::Text;
use crate::text;

/// MSI: message control register (16-bit) offset in the capability.
const MSI_CONTROL: u16 = 0x02;
/// MSI: message address (low dword) offset.
const MSI_ADDRESS_LO: u16 = 0x04;
/// MSI, 64-bit capability: message upper address offset.
const MSI_ADDRESS_HI: u16 = 0x08;
/// MSI: message data offset in a 32-bit capability.
const MSI_DATA_32: u16 = 0x08;
/// MSI: message data offset in a 64-bit capability.
const MSI_DATA_64: u16 = 0x0c;
/// MSI: mask bits offset in a 32-bit capability with per-vector masking.
const MSI_MASK_32: u16 = 0x0c;
/// MSI: mask bits offset in a 64-bit capability with per-vector masking.
const MSI_MASK_64: u16 = 0x10;
/// MSI control bit 0: MSI enable.
const MSI_CONTROL_ENABLE: u16 = 1 << 0;
/// MSI control bits 6:4: multiple message enable (log2 of the vectors granted).
const MSI_CONTROL_MME_MASK: u16 = 0b111 << 4;
/// MSI control bit 7: 64-bit address capable.
const MSI_CONTROL_64BIT: u16 = 1 << 7;
/// MSI control bit 8: per-vector masking capable.
const MSI_CONTROL_PVM: u16 = 1 << 8;

/// MSI-X: message control register (16-bit) offset in the capability.
const MSIX_CONTROL: u16 = 0x02;
/// MSI-X: table offset / BIR register offset.
const MSIX_TABLE: u16 = 0x04;
/// MSI-X: PBA offset / BIR register offset.
const MSIX_PBA: u16 = 0x08;
/// MSI-X control bits 10:0: table size - 1.
const MSIX_CONTROL_SIZE_MASK: u16 = 0x7ff;
/// MSI-X control bit 14: function mask (all vectors masked).
const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X control bit 15: MSI-X enable.
const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Table/PBA register bits 2:0: the BAR indicator.
const MSIX_BIR_MASK: u32 = 0x7;
/// Size of one MSI-X table entry.
const MSIX_ENTRY_SIZE: u64 = 16;
/// Entry: message address (low dword).
const MSIX_ENTRY_ADDRESS_LO: u64 = 0x0;
/// Entry: message upper address.
const MSIX_ENTRY_ADDRESS_HI: u64 = 0x4;
/// Entry: message data.
const MSIX_ENTRY_DATA: u64 = 0x8;
/// Entry: vector control (bit 0 = masked).
const MSIX_ENTRY_CONTROL: u64 = 0xc;
/// Vector control bit 0: the vector is masked.
const MSIX_VECTOR_MASKED: u32 = 1 << 0;
/// Pending bits per PBA qword.
const PBA_BITS_PER_QWORD: u16 = 64;
/// Bytes per PBA qword.
const PBA_QWORD_SIZE: u64 = 8;

/// A function's MSI capability.
#[derive(Clone, Copy, Debug)]
pub struct Msi {
    function: Function,
    cap: u16,
    is_64bit: bool,
    per_vector_masking: bool,
}

impl Msi {
    /// The MSI capability of `function`; fails when it has none.
    pub fn find(function: Function) -> Result<Msi, Text> {
        let cap = function
            .find_capability(pci::CAP_ID_MSI)?
            .ok_or_else(|| text!("{} has no MSI capability", function))?;
        let control = function.read16(cap + MSI_CONTROL);
        Ok(Msi {
            function,
            cap,
            is_64bit: control & MSI_CONTROL_64BIT != 0,
            per_vector_masking: control & MSI_CONTROL_PVM != 0,
        })
    }

    /// Turns MSI off (the device then sends nothing).
    pub fn disable(&self) {
        let control = self.function.read16(self.cap + MSI_CONTROL);
        self.function
            .write16(self.cap + MSI_CONTROL, control & !MSI_CONTROL_ENABLE);
    }

    /// Programs one vector with `address` (upper half 0) and `data`, unmasks it and enables
    /// MSI. MSI is off while the message changes, so no half-written message is sent.
    pub fn program(&self, address: u32, data: u16) {
        self.disable();
        let f = &self.function;
        f.write32(self.cap + MSI_ADDRESS_LO, address);
        let (data_at, mask_at) = if self.is_64bit {
            f.write32(self.cap + MSI_ADDRESS_HI, 0);
            (MSI_DATA_64, MSI_MASK_64)
        } else {
            (MSI_DATA_32, MSI_MASK_32)
        };
        f.write16(self.cap + data_at, data);
        if self.per_vector_masking {
            f.write32(self.cap + mask_at, 0);
        }
        let control = f.read16(self.cap + MSI_CONTROL) & !MSI_CONTROL_MME_MASK;
        f.write16(self.cap + MSI_CONTROL, control | MSI_CONTROL_ENABLE);
    }
}

/// A function's MSI-X capability and its table.
#[derive(Clone, Copy, Debug)]
pub struct MsiX {
    function: Function,
    cap: u16,
    table: Mmio,
    vectors: u16,
}

/// Where a function's MSI-X table or PBA lives: a BAR and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLocation {
    /// The BAR indicator (BIR).
    pub bir: u8,
    /// Offset in that BAR.
    pub offset: u32,
}

impl MsixLocation {
    fn from_register(value: u32) -> MsixLocation {
        MsixLocation {
            // The BIR is three bits, so the conversion cannot fail.
            bir: u8::try_from(value & MSIX_BIR_MASK).unwrap_or(u8::MAX),
            offset: value & !MSIX_BIR_MASK,
        }
    }
}

impl MsiX {
    /// The MSI-X capability of `function` and its table (located through the BAR it names);
    /// fails when there is none or the table is not reachable.
    pub fn find(function: Function) -> Result<MsiX, Text> {
        let cap = function
            .find_capability(pci::CAP_ID_MSIX)?
            .ok_or_else(|| text!("{} has no MSI-X capability", function))?;
        let vectors = (function.read16(cap + MSIX_CONTROL) & MSIX_CONTROL_SIZE_MASK) + 1;
        let at = MsixLocation::from_register(function.read32(cap + MSIX_TABLE));
        let bar = function.memory_bar(at.bir)?;
        let table = Mmio::new(
            "MSI-X table",
            bar + u64::from(at.offset),
            u64::from(vectors) * MSIX_ENTRY_SIZE,
        )?;
        Ok(MsiX {
            function,
            cap,
            table,
            vectors,
        })
    }

    /// Number of table entries.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Where the capability says the table is.
    pub fn table_location(&self) -> MsixLocation {
        MsixLocation::from_register(self.function.read32(self.cap + MSIX_TABLE))
    }

    /// Where the capability says the pending bit array is.
    pub fn pba_location(&self) -> MsixLocation {
        MsixLocation::from_register(self.function.read32(self.cap + MSIX_PBA))
    }

    /// Sets the function mask: no vector sends; fires set pending bits instead.
    pub fn mask_function(&self) {
        let control = self.function.read16(self.cap + MSIX_CONTROL);
        self.function.write16(
            self.cap + MSIX_CONTROL,
            control | MSIX_CONTROL_FUNCTION_MASK,
        );
    }

    /// Masks or unmasks entry `vector` (its vector control), leaving its message alone.
    pub fn set_masked(&self, vector: u16, masked: bool) -> Result<(), Text> {
        let entry = self.entry(vector)?;
        let control = if masked { MSIX_VECTOR_MASKED } else { 0 };
        self.table.write32(entry + MSIX_ENTRY_CONTROL, control);
        Ok(())
    }

    /// Whether entry `vector`'s vector control says masked.
    pub fn is_masked(&self, vector: u16) -> Result<bool, Text> {
        let entry = self.entry(vector)?;
        Ok(self.table.read32(entry + MSIX_ENTRY_CONTROL) & MSIX_VECTOR_MASKED != 0)
    }

    /// Whether `vector`'s pending bit is set, read (one qword) from the PBA where the
    /// capability says it is.
    pub fn is_pending(&self, vector: u16) -> Result<bool, Text> {
        self.entry(vector)?;
        let at = self.pba_location();
        let bar = self.function.memory_bar(at.bir)?;
        let qword = u64::from(vector / PBA_BITS_PER_QWORD) * PBA_QWORD_SIZE;
        let pba = Mmio::new(
            "MSI-X PBA",
            bar + u64::from(at.offset) + qword,
            PBA_QWORD_SIZE,
        )?;
        Ok(pba.read64(0) & (1 << (vector % PBA_BITS_PER_QWORD)) != 0)
    }

    /// Offset of entry `vector` in the table; fails beyond the table.
    fn entry(&self, vector: u16) -> Result<u64, Text> {
        if vector >= self.vectors {
            return Err(text!(
                "MSI-X vector {} beyond the table's {}",
                vector,
                self.vectors
            ));
        }
        Ok(u64::from(vector) * MSIX_ENTRY_SIZE)
    }

    /// Enables MSI-X with the function mask set: entries can be programmed, nothing is sent.
    pub fn enable_masked(&self) {
        let control = self.function.read16(self.cap + MSIX_CONTROL);
        self.function.write16(
            self.cap + MSIX_CONTROL,
            control | MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK,
        );
    }

    /// Clears the function mask: unmasked entries may now send.
    pub fn unmask_function(&self) {
        let control = self.function.read16(self.cap + MSIX_CONTROL);
        self.function.write16(
            self.cap + MSIX_CONTROL,
            control & !MSIX_CONTROL_FUNCTION_MASK,
        );
    }

    /// Writes entry `vector`: `address` (upper half 0), `data`, masked or not. The entry is
    /// masked while its message changes.
    pub fn set_entry(
        &self,
        vector: u16,
        address: u32,
        data: u32,
        masked: bool,
    ) -> Result<(), Text> {
        let entry = self.entry(vector)?;
        self.table
            .write32(entry + MSIX_ENTRY_CONTROL, MSIX_VECTOR_MASKED);
        self.table.write32(entry + MSIX_ENTRY_ADDRESS_LO, address);
        self.table.write32(entry + MSIX_ENTRY_ADDRESS_HI, 0);
        self.table.write32(entry + MSIX_ENTRY_DATA, data);
        if !masked {
            self.table.write32(entry + MSIX_ENTRY_CONTROL, 0);
        }
        Ok(())
    }
}
