//! The BAR0 register map: the contract between this device and the guest probe.
//!
//! All registers are little-endian dwords (DMA_SRC/DMA_DST are two dwords each) at the
//! offsets below; README.md documents what each one does.

/// Size of BAR0 (and of the memfd that backs it).
pub const BAR0_SIZE: usize = 0x1_0000;

/// Device identification, read-only.
pub const ID: usize = 0x000;
/// The value of [`ID`].
pub const ID_VALUE: u32 = 0x7e57_d001;
/// Number of MSI-X vectors (N), read-only.
pub const VECTORS: usize = 0x004;
/// Read/write scratch register with no side effects (the device never looks at it).
#[allow(dead_code)]
pub const SCRATCH: usize = 0x008;
/// Mode flags, read-only.
pub const FLAGS: usize = 0x00c;
/// [`FLAGS`] bit: the device honours its own MSI-X table and PBA.
pub const FLAGS_DIRECT_MSIX: u32 = 1 << 0;

/// MSI-X doorbell: GO | (count - 1) << 16 | first vector.
pub const DOORBELL: usize = 0x010;
/// [`DOORBELL`] bit that requests the burst; the device clears the register when done.
pub const DOORBELL_GO: u32 = 1 << 31;
/// Shift of the (count - 1) field in [`DOORBELL`].
pub const DOORBELL_COUNT_SHIFT: u32 = 16;
/// Mask of the (count - 1) field in [`DOORBELL`], after shifting.
pub const DOORBELL_COUNT_MASK: u32 = 0x7fff;
/// Mask of the first-vector field in [`DOORBELL`].
pub const DOORBELL_FIRST_MASK: u32 = 0xffff;

/// MSI-X eventfd signals since reset, read-only.
pub const SIGNALS: usize = 0x014;
/// MSI-X fires dropped since reset, read-only.
pub const DROPPED: usize = 0x018;
/// Direct mode: fires that found their vector masked, read-only.
pub const MASKED: usize = 0x01c;

/// Vector the timer fires.
pub const TIMER_VECTOR: usize = 0x020;
/// Microseconds between timer fires (0: back to back).
pub const TIMER_PERIOD: usize = 0x024;
/// Write K to start K timer fires (0 cancels); reads the fires still to come.
pub const TIMER_COUNT: usize = 0x028;
/// Timer fires done since reset, read-only.
pub const TIMER_FIRED: usize = 0x02c;

/// INTx level: write 1 to assert INTA, 0 to deassert.
pub const INTX: usize = 0x030;
/// [`INTX`] bit that carries the level.
pub const INTX_LEVEL: u32 = 1 << 0;
/// INTx eventfd signals since reset, read-only.
pub const INTX_SIGNALS: usize = 0x034;

/// MSI doorbell: write [`MSI_DOORBELL_GO`] to signal the MSI eventfd once.
pub const MSI_DOORBELL: usize = 0x038;
/// [`MSI_DOORBELL`] request bit; the device clears the register when done.
pub const MSI_DOORBELL_GO: u32 = 1 << 31;
/// MSI signals since reset, read-only.
pub const MSI_SIGNALS: usize = 0x03c;

/// DMA source address (64-bit, low dword first).
pub const DMA_SRC: usize = 0x040;
/// DMA destination address (64-bit, low dword first).
pub const DMA_DST: usize = 0x048;
/// DMA length in bytes, at most [`DMA_MAX_COUNT`].
pub const DMA_COUNT: usize = 0x050;
/// DMA command.
pub const DMA_CMD: usize = 0x054;
/// [`DMA_CMD`] bit: start the transfer; the device clears it when done.
pub const DMA_CMD_START: u32 = 1 << 0;
/// [`DMA_CMD`] bit: device buffer to guest memory (clear: guest memory to device buffer).
pub const DMA_CMD_TO_GUEST: u32 = 1 << 1;
/// [`DMA_CMD`] bit: fire MSI-X vector [`DMA_VECTOR`] when the transfer ends.
pub const DMA_CMD_IRQ: u32 = 1 << 2;
/// Vector fired at the end of a transfer that asked for it.
pub const DMA_VECTOR: usize = 0x058;
/// Outcome of the last transfer, read-only.
pub const DMA_STATUS: usize = 0x05c;
/// [`DMA_STATUS`]: no transfer since reset.
pub const DMA_STATUS_IDLE: u32 = 0;
/// [`DMA_STATUS`]: the last transfer completed.
pub const DMA_STATUS_DONE: u32 = 1;
/// [`DMA_STATUS`]: the last transfer failed and copied nothing.
pub const DMA_STATUS_FAILED: u32 = 2;
/// Completed transfers since reset, read-only.
pub const DMA_DONE: usize = 0x060;

/// Write-only control register for failure injection; reads as 0.
pub const CONTROL: usize = 0x07c;
/// [`CONTROL`] value: the server process exits at once.
pub const CONTROL_EXIT: u32 = 0xdead_0001;
/// [`CONTROL`] value: the server stops answering socket messages forever.
pub const CONTROL_HANG: u32 = 0xdead_0002;

/// Default MSI-X table offset in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x800;
/// MSI-X table offset with `--layout beyond`.
pub const MSIX_TABLE_OFFSET_BEYOND: u32 = 0xf800;
/// Default MSI-X PBA offset in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x9000;
/// PBA distance from the table with `--layout overlap`.
pub const MSIX_PBA_OVERLAP_DISTANCE: u32 = 16;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: usize = 16;
/// Offset of the vector control dword within an MSI-X table entry.
pub const MSIX_ENTRY_VECTOR_CONTROL: usize = 12;
/// Vector control bit: the vector is masked.
pub const MSIX_VECTOR_CONTROL_MASKED: u32 = 1 << 0;

/// Offset of the DMA buffer in BAR0.
pub const DMA_BUFFER_OFFSET: usize = 0xc000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: usize = 0x4000;
/// Device address that names the first byte of the DMA buffer in DMA_SRC/DMA_DST.
pub const DMA_BUFFER_DEVICE_ADDR: u64 = 0x4_0000;
/// Largest DMA_COUNT accepted.
pub const DMA_MAX_COUNT: u32 = 0x4000;

/// Registers the device restores from its own state whenever the guest overwrites them.
pub const READ_ONLY: [usize; 11] = [
    ID,
    VECTORS,
    FLAGS,
    SIGNALS,
    DROPPED,
    MASKED,
    TIMER_FIRED,
    INTX_SIGNALS,
    MSI_SIGNALS,
    DMA_STATUS,
    DMA_DONE,
];
