//! The command buffer: decoding of 128-bit commands and the fetch loop.
//!
//! Commands are two little-endian qwords with the opcode in bits 63:60 of the first. The
//! unit implements:
//!
//! | opcode | command | fields (qword.bits) | effect here |
//! |--------|---------|---------------------|-------------|
//! | 0x1 | COMPLETION_WAIT | 0.0 S (store), 0.1 I (interrupt), 0.2 F, 0.51:3 store address, 1 store data | 8-byte store and/or ComWaitInt |
//! | 0x2 | INVALIDATE_DEVTAB_ENTRY | 0.15:0 device ID | routes of that device re-translated |
//! | 0x3 | INVALIDATE_IOMMU_PAGES | PASID, domain, S/PDE/GN, address | accepted, no effect (no DMA translation, nothing cached) |
//! | 0x4 | INVALIDATE_IOTLB_PAGES | device ID, PASID, MaxPend, queue ID, S/GN, address | accepted, no effect |
//! | 0x5 | INVALIDATE_INTERRUPT_TABLE | 0.15:0 device ID | routes of that device re-translated |
//! | 0x8 | INVALIDATE_IOMMU_ALL | – | every route re-translated |
//!
//! Everything else (opcode 0, PREFETCH_IOMMU_PAGES and COMPLETE_PPR_REQUEST, whose
//! features the unit does not report, and 0x9..0xf) and any command with a reserved bit
//! set is illegal: the unit logs ILLEGAL_COMMAND_ERROR with the command's address and stops
//! fetching (`CmdBufRun` = 0) with the head on the offending command, as the specification
//! says. A command that cannot be fetched, a completion-wait store that cannot be written,
//! or a head or tail pointer beyond the buffer stops the buffer the same way with
//! COMMAND_HARDWARE_ERROR. Software restarts the buffer by clearing and setting
//! `CmdBufEn` (after moving the head or fixing the command).
//!
//! The buffer holds 2^ComLen commands (ComLen 1000b..1111b: 256 to 32768; smaller codes are
//! reserved and read as 256). One tail write processes at most one buffer's worth of
//! commands, so a guest cannot make the unit loop.

use thiserror::Error;

use crate::memory::{GuestMemoryReader, MemError};

use super::regs::{BASE_ADDR_MASK, LEN_MASK, LEN_SHIFT, PTR16_MASK};

/// Size in bytes of one command.
pub const COMMAND_SIZE: usize = 16;

/// Opcode COMPLETION_WAIT.
pub const CMD_COMPLETION_WAIT: u8 = 0x1;
/// Opcode INVALIDATE_DEVTAB_ENTRY.
pub const CMD_INV_DEVTAB_ENTRY: u8 = 0x2;
/// Opcode INVALIDATE_IOMMU_PAGES.
pub const CMD_INV_IOMMU_PAGES: u8 = 0x3;
/// Opcode INVALIDATE_IOTLB_PAGES.
pub const CMD_INV_IOTLB_PAGES: u8 = 0x4;
/// Opcode INVALIDATE_INTERRUPT_TABLE.
pub const CMD_INV_IRT: u8 = 0x5;
/// Opcode PREFETCH_IOMMU_PAGES (not supported).
pub const CMD_PREFETCH_PAGES: u8 = 0x6;
/// Opcode COMPLETE_PPR_REQUEST (not supported).
pub const CMD_COMPLETE_PPR: u8 = 0x7;
/// Opcode INVALIDATE_IOMMU_ALL.
pub const CMD_INV_ALL: u8 = 0x8;

/// Shift of the opcode in the first qword.
const CMD_OPCODE_SHIFT: u32 = 60;
/// Mask of a 16-bit device ID.
const DEVICE_ID_MASK: u64 = 0xffff;
/// COMPLETION_WAIT: store.
const CW_STORE: u64 = 1 << 0;
/// COMPLETION_WAIT: interrupt.
const CW_INTERRUPT: u64 = 1 << 1;
/// COMPLETION_WAIT: flush queue.
const CW_FLUSH: u64 = 1 << 2;
/// COMPLETION_WAIT: store address bits 51:3.
const CW_ADDR_MASK: u64 = 0x000f_ffff_ffff_fff8;
/// COMPLETION_WAIT: reserved bits 59:52.
const CW_RESERVED: u64 = 0xff << 52;
/// INVALIDATE_DEVTAB_ENTRY / INVALIDATE_INTERRUPT_TABLE: reserved bits 59:16.
const DEVID_CMD_RESERVED: u64 = 0x0fff_ffff_ffff_0000;
/// INVALIDATE_IOMMU_PAGES: reserved bits 31:20 and 59:48 of the first qword.
const INV_PAGES_QW0_RESERVED: u64 = (0xfff << 20) | (0xfff << 48);
/// INVALIDATE_IOMMU_PAGES / INVALIDATE_IOTLB_PAGES: reserved bits 11:3 of the second qword.
const INV_PAGES_QW1_RESERVED: u64 = 0x1ff << 3;
/// INVALIDATE_IOTLB_PAGES: reserved bits 59:56 of the first qword.
const INV_IOTLB_QW0_RESERVED: u64 = 0xf << 56;
/// INVALIDATE_IOTLB_PAGES: reserved bit 1 of the second qword.
const INV_IOTLB_QW1_RESERVED: u64 = 1 << 1;
/// INVALIDATE_IOMMU_ALL: reserved bits 59:0.
const INV_ALL_RESERVED: u64 = (1 << 60) - 1;
/// Smallest ComLen code (256 commands).
const MIN_LEN_CODE: u64 = 8;

/// What a COMPLETION_WAIT asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionWait {
    /// Store `data` (8 bytes) at `address` once every earlier command is complete.
    pub store: Option<(u64, u64)>,
    /// Set ComWaitInt (and interrupt when enabled).
    pub interrupt: bool,
    /// F: flush the queue. Every earlier command is complete when the wait is processed,
    /// so this changes nothing here.
    pub flush: bool,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// COMPLETION_WAIT.
    CompletionWait(CompletionWait),
    /// INVALIDATE_DEVTAB_ENTRY.
    InvalidateDeviceTableEntry {
        /// The device whose DTE changed.
        device_id: u16,
    },
    /// INVALIDATE_IOMMU_PAGES (no effect).
    InvalidateIommuPages,
    /// INVALIDATE_IOTLB_PAGES (no effect).
    InvalidateIotlbPages,
    /// INVALIDATE_INTERRUPT_TABLE.
    InvalidateInterruptTable {
        /// The device whose interrupt table changed.
        device_id: u16,
    },
    /// INVALIDATE_IOMMU_ALL.
    InvalidateAll,
}

/// Why a command is illegal.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    /// The opcode is unknown or names an unsupported feature.
    #[error("unsupported opcode {0:#x}")]
    Opcode(u8),
    /// A reserved field is not zero.
    #[error("reserved bits set in command {opcode:#x}")]
    Reserved {
        /// The opcode.
        opcode: u8,
    },
}

/// The opcode of a command whose first qword is `qw0`.
pub fn opcode(qw0: u64) -> u8 {
    (qw0 >> CMD_OPCODE_SHIFT) as u8
}

fn reserved(opcode: u8, bits: u64) -> Result<(), CommandError> {
    if bits != 0 {
        Err(CommandError::Reserved { opcode })
    } else {
        Ok(())
    }
}

/// Decodes the command `qw0`, `qw1`.
pub fn decode_command(qw0: u64, qw1: u64) -> Result<Command, CommandError> {
    let op = opcode(qw0);
    match op {
        CMD_COMPLETION_WAIT => {
            reserved(op, qw0 & CW_RESERVED)?;
            Ok(Command::CompletionWait(CompletionWait {
                store: (qw0 & CW_STORE != 0).then_some((qw0 & CW_ADDR_MASK, qw1)),
                interrupt: qw0 & CW_INTERRUPT != 0,
                flush: qw0 & CW_FLUSH != 0,
            }))
        }
        CMD_INV_DEVTAB_ENTRY => {
            reserved(op, (qw0 & DEVID_CMD_RESERVED) | qw1)?;
            Ok(Command::InvalidateDeviceTableEntry {
                device_id: (qw0 & DEVICE_ID_MASK) as u16,
            })
        }
        CMD_INV_IOMMU_PAGES => {
            reserved(
                op,
                (qw0 & INV_PAGES_QW0_RESERVED) | (qw1 & INV_PAGES_QW1_RESERVED),
            )?;
            Ok(Command::InvalidateIommuPages)
        }
        CMD_INV_IOTLB_PAGES => {
            reserved(
                op,
                (qw0 & INV_IOTLB_QW0_RESERVED)
                    | (qw1 & (INV_PAGES_QW1_RESERVED | INV_IOTLB_QW1_RESERVED)),
            )?;
            Ok(Command::InvalidateIotlbPages)
        }
        CMD_INV_IRT => {
            reserved(op, (qw0 & DEVID_CMD_RESERVED) | qw1)?;
            Ok(Command::InvalidateInterruptTable {
                device_id: (qw0 & DEVICE_ID_MASK) as u16,
            })
        }
        CMD_INV_ALL => {
            reserved(op, (qw0 & INV_ALL_RESERVED) | qw1)?;
            Ok(Command::InvalidateAll)
        }
        other => Err(CommandError::Opcode(other)),
    }
}

/// Why the command buffer stopped.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum StopReason {
    /// The command at `address` is illegal (ILLEGAL_COMMAND_ERROR).
    #[error("illegal command at {address:#x}: {source}")]
    Illegal {
        /// Guest-physical address of the command.
        address: u64,
        /// What is wrong with it.
        source: CommandError,
    },
    /// A command could not be fetched (COMMAND_HARDWARE_ERROR).
    #[error("command fetch at {address:#x} failed: {source}")]
    Fetch {
        /// Guest-physical address of the command.
        address: u64,
        /// The memory error.
        source: MemError,
    },
    /// A completion-wait store could not be written (COMMAND_HARDWARE_ERROR).
    #[error("completion-wait store to {address:#x} failed: {source}")]
    Store {
        /// The store address.
        address: u64,
        /// The memory error.
        source: MemError,
    },
    /// The head or tail pointer is beyond the buffer (COMMAND_HARDWARE_ERROR at the address
    /// the pointer names).
    #[error("command pointer {offset:#x} beyond a buffer of {size:#x} bytes")]
    PointerBeyondBuffer {
        /// The offending byte offset.
        offset: u64,
        /// The buffer size in bytes.
        size: u64,
        /// The address the pointer names.
        address: u64,
    },
}

impl StopReason {
    /// The event the unit logs for this stop.
    pub fn event(&self) -> super::log::Event {
        use super::log::Event;
        match *self {
            StopReason::Illegal { address, .. } => Event::IllegalCommand { address },
            StopReason::Fetch { address, .. }
            | StopReason::Store { address, .. }
            | StopReason::PointerBeyondBuffer { address, .. } => {
                Event::CommandHardwareError { address }
            }
        }
    }
}

/// What one run of the command buffer did, in command order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandRun {
    /// The commands executed (invalidations and waits), in order.
    pub executed: Vec<Command>,
    /// Number of commands consumed.
    pub processed: usize,
    /// Why the run stopped early (the head stays on the offending command).
    pub stopped: Option<StopReason>,
}

/// The command buffer registers and the fetch loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandBuffer {
    base_reg: u64,
    head: u64,
    tail: u64,
    stopped: bool,
}

impl CommandBuffer {
    /// The reset state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The base register as stored.
    pub fn base_register(&self) -> u64 {
        self.base_reg
    }

    /// Stores a base register value and resets head and tail (the caller refuses the
    /// write while the buffer is enabled).
    pub fn write_base_register(&mut self, value: u64) {
        self.base_reg = value & (BASE_ADDR_MASK | (LEN_MASK << LEN_SHIFT));
        self.head = 0;
        self.tail = 0;
    }

    /// Number of commands the buffer holds.
    pub fn entries(&self) -> u64 {
        1u64 << ((self.base_reg >> LEN_SHIFT) & LEN_MASK).max(MIN_LEN_CODE)
    }

    /// Size of the buffer in bytes.
    pub fn size(&self) -> u64 {
        self.entries() * COMMAND_SIZE as u64
    }

    /// The head pointer (byte offset).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The tail pointer (byte offset).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Software writes the head (the caller allows it only while the buffer is not
    /// running).
    pub fn write_head(&mut self, value: u64) {
        self.head = value & PTR16_MASK;
    }

    /// Software writes the tail.
    pub fn write_tail(&mut self, value: u64) {
        self.tail = value & PTR16_MASK;
    }

    /// True after an error stopped the buffer, until [`CommandBuffer::restart`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// `CmdBufEn` was cleared: the error latch is released.
    pub fn restart(&mut self) {
        self.stopped = false;
    }

    /// True when commands wait (head differs from tail).
    pub fn has_work(&self) -> bool {
        self.head != self.tail
    }

    fn address(&self, offset: u64) -> u64 {
        (self.base_reg & BASE_ADDR_MASK).wrapping_add(offset)
    }

    /// Fetches and executes commands from head to tail, at most one buffer's worth.
    /// Completion-wait stores go to `mem` as they are reached; everything else is returned
    /// for the caller to act on.
    pub fn run(&mut self, mem: &dyn GuestMemoryReader) -> CommandRun {
        let mut run = CommandRun::default();
        if self.stopped {
            return run;
        }
        let size = self.size();
        for offset in [self.head, self.tail] {
            if offset >= size {
                self.stopped = true;
                run.stopped = Some(StopReason::PointerBeyondBuffer {
                    offset,
                    size,
                    address: self.address(offset),
                });
                return run;
            }
        }
        let limit = usize::try_from(self.entries()).unwrap_or(usize::MAX);
        while self.head != self.tail && run.processed < limit {
            let address = self.address(self.head);
            let mut bytes = [0u8; COMMAND_SIZE];
            if let Err(source) = mem.read(address, &mut bytes) {
                self.stopped = true;
                run.stopped = Some(StopReason::Fetch { address, source });
                return run;
            }
            let mut qw = [0u8; 8];
            qw.copy_from_slice(&bytes[..8]);
            let qw0 = u64::from_le_bytes(qw);
            qw.copy_from_slice(&bytes[8..]);
            let qw1 = u64::from_le_bytes(qw);
            let command = match decode_command(qw0, qw1) {
                Ok(c) => c,
                Err(source) => {
                    self.stopped = true;
                    run.stopped = Some(StopReason::Illegal { address, source });
                    return run;
                }
            };
            if let Command::CompletionWait(CompletionWait {
                store: Some((store_address, data)),
                ..
            }) = command
            {
                if let Err(source) = mem.write(store_address, &data.to_le_bytes()) {
                    self.stopped = true;
                    run.stopped = Some(StopReason::Store {
                        address: store_address,
                        source,
                    });
                    return run;
                }
            }
            run.executed.push(command);
            run.processed += 1;
            let next = self.head + COMMAND_SIZE as u64;
            self.head = if next >= size { 0 } else { next };
        }
        run
    }
}

/// Builders for commands, for tests here and in the VMM (the layouts of Linux's
/// `build_*` helpers in `drivers/iommu/amd/iommu.c`).
pub mod build {
    use super::*;

    fn op(opcode: u8) -> u64 {
        u64::from(opcode) << CMD_OPCODE_SHIFT
    }

    /// COMPLETION_WAIT storing `data` at `store` (8-byte aligned) and/or interrupting.
    pub fn completion_wait(store: Option<(u64, u64)>, interrupt: bool) -> (u64, u64) {
        let mut qw0 = op(CMD_COMPLETION_WAIT);
        let mut qw1 = 0;
        if let Some((address, data)) = store {
            qw0 |= CW_STORE | (address & CW_ADDR_MASK);
            qw1 = data;
        }
        if interrupt {
            qw0 |= CW_INTERRUPT;
        }
        (qw0, qw1)
    }

    /// INVALIDATE_DEVTAB_ENTRY for `device_id`.
    pub fn invalidate_dte(device_id: u16) -> (u64, u64) {
        (op(CMD_INV_DEVTAB_ENTRY) | u64::from(device_id), 0)
    }

    /// INVALIDATE_INTERRUPT_TABLE for `device_id`.
    pub fn invalidate_irt(device_id: u16) -> (u64, u64) {
        (op(CMD_INV_IRT) | u64::from(device_id), 0)
    }

    /// INVALIDATE_IOMMU_ALL.
    pub fn invalidate_all() -> (u64, u64) {
        (op(CMD_INV_ALL), 0)
    }

    /// INVALIDATE_IOMMU_PAGES of the whole address space of `domain_id` (PDE and S set,
    /// as Linux flushes a domain).
    pub fn invalidate_pages_all(domain_id: u16) -> (u64, u64) {
        let qw0 = op(CMD_INV_IOMMU_PAGES) | (u64::from(domain_id) << 32);
        (qw0, 0x7fff_ffff_ffff_f000 | 0x3)
    }

    /// INVALIDATE_IOTLB_PAGES of everything for `device_id` with queue depth `qdep`.
    pub fn invalidate_iotlb_all(device_id: u16, qdep: u8) -> (u64, u64) {
        let qw0 = op(CMD_INV_IOTLB_PAGES)
            | u64::from(device_id)
            | (u64::from(qdep) << 24)
            | (u64::from(device_id) << 32);
        (qw0, 0x7fff_ffff_ffff_f000 | 0x1)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn dec(c: (u64, u64)) -> Result<Command, CommandError> {
        decode_command(c.0, c.1)
    }

    #[test]
    fn linux_commands_decode() {
        assert_eq!(
            dec(completion_wait(Some((0x1000, 7)), false)),
            Ok(Command::CompletionWait(CompletionWait {
                store: Some((0x1000, 7)),
                interrupt: false,
                flush: false
            }))
        );
        // Linux: data[0] = lower_32_bits(paddr) | 1; data[1] = upper | (1 << 28).
        let (qw0, qw1) = completion_wait(Some((0x1_2345_6788, 9)), true);
        assert_eq!(qw0, 0x1000_0001_2345_678b);
        assert_eq!(qw1, 9);
        assert_eq!(
            dec(invalidate_dte(0x18)),
            Ok(Command::InvalidateDeviceTableEntry { device_id: 0x18 })
        );
        assert_eq!(invalidate_irt(0xff00).0, 0x5000_0000_0000_ff00);
        assert_eq!(
            dec(invalidate_irt(0xff00)),
            Ok(Command::InvalidateInterruptTable { device_id: 0xff00 })
        );
        assert_eq!(dec(invalidate_all()), Ok(Command::InvalidateAll));
        assert_eq!(
            dec(invalidate_pages_all(5)),
            Ok(Command::InvalidateIommuPages)
        );
        assert_eq!(
            dec(invalidate_iotlb_all(0x18, 32)),
            Ok(Command::InvalidateIotlbPages)
        );
        // Linux's PASID flush: data[0] = pasid, GN and PDE set.
        assert_eq!(
            decode_command(op_pasid(), 0x1000 | 0x6),
            Ok(Command::InvalidateIommuPages)
        );
    }

    fn op_pasid() -> u64 {
        (u64::from(CMD_INV_IOMMU_PAGES) << 60) | (7 << 32) | 0xf_ffff
    }

    #[test]
    fn reserved_fields_are_illegal() {
        let bad = [
            (completion_wait(None, true).0 | 1 << 52, 0),
            (invalidate_dte(1).0 | 1 << 16, 0),
            (invalidate_dte(1).0, 1),
            (invalidate_irt(1).0 | 1 << 59, 0),
            (invalidate_irt(1).0, 1 << 63),
            (invalidate_all().0 | 1, 0),
            (invalidate_all().0, 2),
            (invalidate_pages_all(1).0 | 1 << 20, 0),
            (invalidate_pages_all(1).0, 1 << 3),
            (invalidate_iotlb_all(1, 1).0 | 1 << 56, 1),
            (invalidate_iotlb_all(1, 1).0, 1 << 1),
        ];
        for (qw0, qw1) in bad {
            assert!(
                matches!(decode_command(qw0, qw1), Err(CommandError::Reserved { .. })),
                "{qw0:#x} {qw1:#x}"
            );
        }
    }

    #[test]
    fn unsupported_opcodes() {
        for op in [0u8, 6, 7, 9, 0xa, 0xf] {
            assert_eq!(
                decode_command(u64::from(op) << 60, 0),
                Err(CommandError::Opcode(op))
            );
        }
    }

    #[test]
    fn registers() {
        let mut b = CommandBuffer::new();
        assert_eq!(b.entries(), 256);
        b.write_base_register(0xffff_ffff_ffff_ffff);
        assert_eq!(b.base_register(), 0x0f0f_ffff_ffff_f000);
        assert_eq!(b.entries(), 32768);
        b.write_tail(0xffff_ffff);
        assert_eq!(b.tail(), 0x7_fff0);
        b.write_base_register(0x9 << 56);
        assert_eq!((b.head(), b.tail()), (0, 0));
        assert_eq!(b.size(), 8192);
    }
}
