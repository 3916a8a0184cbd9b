//! The guest-physical address map (q35-like, so one guest runs on irvmm and QEMU).
//!
//! Low RAM ends where the PCIe ECAM window begins (as QEMU's q35 does for guests of up to
//! 2.75 GiB); the rest of RAM is placed above 4 GiB. Fixed boot structures live in the
//! first megabyte, below the kernel.

/// Start of the usable low-memory area (real-mode IVT and BDA end here).
pub const LOW_MEM_START: u64 = 0x0;
/// Start of the extended BIOS data area; RAM below it is reported usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of the legacy VGA/BIOS hole, reserved up to 1 MiB.
pub const LEGACY_HOLE_START: u64 = 0xa_0000;
/// Start of the region that holds the ACPI tables (also scanned for the RSDP).
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI region and of the legacy hole.
pub const ACPI_END: u64 = 0x10_0000;
/// Where kernels are loaded and where "high memory" begins for the loaders.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Boot GDT (a handful of 8-byte descriptors).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Empty boot IDT (the guest installs its own before enabling interrupts).
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// Linux zero page (`boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then PDPT, then four page directories.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the four page directories (2 MiB pages, 4 GiB identity map).
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories (one per GiB mapped).
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line the VMM places (the x86 boot protocol limit is lower for old kernels).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;

/// End of low RAM: the PCIe ECAM window starts here.
pub const LOW_RAM_END: u64 = 0xb000_0000;
/// PCIe ECAM (MMCONFIG) base.
pub const PCIE_ECAM_START: u64 = 0xb000_0000;
/// PCIe ECAM size: 256 buses x 1 MiB.
pub const PCIE_ECAM_SIZE: u64 = 0x1000_0000;
/// Last bus the ECAM window decodes.
pub const PCIE_ECAM_END_BUS: u8 = 0xff;
/// Base of the 32-bit PCI MMIO window (BARs).
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// 32-bit PCI MMIO window end.
pub const PCI_MMIO_END: u64 = 0xfe00_0000;
/// Userspace IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Size of the IOAPIC MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// VT-d remapping unit base.
pub const VTD_ADDR: u64 = 0xfed9_0000;
/// Size of the VT-d register page.
pub const VTD_SIZE: u64 = 0x1000;
/// The VT-d unit's maximum guest address width minus one, as CAP.MGAW and the DMAR say.
pub const VTD_HOST_ADDRESS_WIDTH: u8 = 38;
/// AMD-Vi unit register window base (where QEMU's amd-iommu puts it), 16 KiB aligned as
/// the IOMMU capability's base address register requires.
pub const AMDVI_ADDR: u64 = 0xfed8_0000;
/// Size of the AMD-Vi register window (no performance counters, so Linux maps 16 KiB).
pub const AMDVI_SIZE: u64 = virtual_iommu::amd::regs::AMDVI_MMIO_SIZE;
/// Guest-physical address width the AMD-Vi unit and the IVRS report (PAsize, VAsize).
pub const AMDVI_ADDRESS_BITS: u8 = 48;
/// PCI device number (bus 0, function 0) of the AMD-Vi unit's own function.
pub const AMDVI_PCI_DEVICE: u8 = 0x1e;
/// PCI device number (bus 0, function 0) whose requester ID the IOAPIC's messages carry
/// under AMD-Vi: 00:14.0, where Linux expects the southbridge IOAPIC (`IOAPIC_SB_DEVID`,
/// without which it disables interrupt remapping). No function is placed there.
pub const AMDVI_IOAPIC_PCI_DEVICE: u8 = 0x14;
/// Bus-0 device numbers the platform keeps for itself, whatever `--iommu` says, so
/// `--device` numbering does not depend on it: never handed to a `--device`.
pub const RESERVED_PCI_DEVICES: [u8; 2] = [AMDVI_IOAPIC_PCI_DEVICE, AMDVI_PCI_DEVICE];
/// Local APIC / MSI window.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// TSS area KVM needs on Intel hosts (three pages just below 4 GiB's BIOS area).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// First address above the 32-bit hole.
pub const HIGH_RAM_BASE: u64 = 0x1_0000_0000;

/// COM1 port base and its ISA IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA IRQ (IOAPIC pin).
pub const COM1_IRQ: u8 = 4;
/// Number of COM1 ports.
pub const COM1_PORT_COUNT: u64 = 8;
/// QEMU `isa-debug-exit,iobase=0x501,iosize=2`.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// Number of debug-exit ports.
pub const DEBUG_EXIT_PORT_COUNT: u64 = 2;
/// ACPI PM registers, where q35 has them: the PM1a event block (PM1_STS, PM1_EN) at +0 and
/// the PM1a control block (PM1_CNT) at +4.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The FADT's PM1a_EVT_BLK (4 ports).
pub const ACPI_PM1A_EVT_PORT: u16 = ACPI_PM_PORT;
/// The FADT's PM1a_CNT_BLK (2 ports).
pub const ACPI_PM1A_CNT_PORT: u16 = ACPI_PM_PORT + 4;
/// Number of ports of the ACPI PM registers.
pub const ACPI_PM_PORT_COUNT: u64 = 6;
/// Reset control register (also the FADT reset register).
pub const RESET_PORT: u16 = 0xcf9;
/// Value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x06;
/// QEMU's ISA pvpanic device (`-device pvpanic`, default `ioport`).
pub const PVPANIC_PORT: u16 = 0x505;
/// Number of ports of the pvpanic device.
pub const PVPANIC_PORT_COUNT: u64 = 1;

/// PCI configuration mechanism #1: address register.
pub const PCI_CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// PCI configuration mechanism #1: data window.
pub const PCI_CONFIG_DATA_PORT: u64 = 0xcfc;
/// Number of data-window ports.
pub const PCI_CONFIG_DATA_PORT_COUNT: u64 = 4;

/// Number of IOAPIC pins, which are also the first GSIs.
pub const IOAPIC_PINS: usize = 24;
/// The IOAPIC's ID as given in the MADT.
pub const IOAPIC_ID: u8 = 0;
