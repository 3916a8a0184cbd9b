//! The command buffer: 512 commands of 128 bits (ComLen 9, 8 KiB), the commands the probe
//! issues, and submission through the tail register with a COMPLETION_WAIT whose store is
//! polled, as Linux's `iommu_completion_wait` / `wait_on_sem` do.
//!
//! A command is two qwords with the opcode in bits 63:60 of the first (Linux's
//! `CMD_SET_TYPE` on dword 1):
//!
//! | opcode | command | fields |
//! |---|---|---|
//! | 1 | COMPLETION_WAIT | qw0: S (store) 0, I (interrupt) 1, store address 51:3; qw1: store data |
//! | 2 | INVALIDATE_DEVTAB_ENTRY | qw0 15:0 device ID |
//! | 5 | INVALIDATE_INTERRUPT_TABLE | qw0 15:0 device ID |
//! | 8 | INVALIDATE_IOMMU_ALL | - |
//!
//! The software side tracks the tail and its last view of the head, and reads the head
//! register only when the buffer looks full, so a submission costs one register access
//! (the tail write) when the unit finishes during it, as both VMMs do. The head and tail
//! registers hold byte offsets in bits 18:4; Linux writes them with 32-bit accesses.

use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};

use super::{mem, regs};
use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::report::Text;
use crate::{text, x86};

/// Bytes of one command.
pub const COMMAND_BYTES: u32 = 16;
/// Commands in the buffer.
pub const ENTRIES: u32 = (mem::COMMAND_BUFFER_BYTES / COMMAND_BYTES as u64) as u32;
/// ComLen for [`ENTRIES`] (2^9), in bits 59:56 of the base register.
const LEN_CODE: u64 = 9;
/// Shift of the length code in the base registers.
pub const LEN_SHIFT: u32 = 56;
/// Head/tail pointer bits (byte offsets 18:4).
pub const PTR_MASK: u32 = 0x7_fff0;

/// Shift of the opcode in qword 0.
const OPCODE_SHIFT: u32 = 60;
/// Opcodes.
pub const OP_COMPLETION_WAIT: u64 = 0x1;
pub const OP_INVALIDATE_DEVTAB_ENTRY: u64 = 0x2;
pub const OP_INVALIDATE_INTERRUPT_TABLE: u64 = 0x5;
pub const OP_INVALIDATE_IOMMU_ALL: u64 = 0x8;
/// COMPLETION_WAIT: store (S) and interrupt (I).
const CW_STORE: u64 = 1 << 0;
const CW_INTERRUPT: u64 = 1 << 1;
/// COMPLETION_WAIT: store address bits 51:3.
const CW_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_fff8;

/// How long a COMPLETION_WAIT gets to store (both VMMs store during the tail write; this
/// only bounds a broken one).
const WAIT_TIMEOUT_NS: u64 = 1_000_000_000;

/// One command: (qword 0, qword 1).
pub type Command = (u64, u64);

/// COMPLETION_WAIT storing `data` at `store` (8-byte aligned), interrupting when `interrupt`.
pub fn completion_wait(store: u64, data: u64, interrupt: bool) -> Command {
    let mut qw0 = (OP_COMPLETION_WAIT << OPCODE_SHIFT) | CW_STORE | (store & CW_ADDRESS_MASK);
    if interrupt {
        qw0 |= CW_INTERRUPT;
    }
    (qw0, data)
}

/// INVALIDATE_INTERRUPT_TABLE for `device_id`.
pub fn invalidate_interrupt_table(device_id: u16) -> Command {
    (
        (OP_INVALIDATE_INTERRUPT_TABLE << OPCODE_SHIFT) | u64::from(device_id),
        0,
    )
}

/// INVALIDATE_DEVTAB_ENTRY for `device_id`.
pub fn invalidate_devtab_entry(device_id: u16) -> Command {
    (
        (OP_INVALIDATE_DEVTAB_ENTRY << OPCODE_SHIFT) | u64::from(device_id),
        0,
    )
}

/// INVALIDATE_IOMMU_ALL.
pub fn invalidate_all() -> Command {
    (OP_INVALIDATE_IOMMU_ALL << OPCODE_SHIFT, 0)
}

/// A command with opcode `opcode` and nothing else (opcode 0 and 9..15 are illegal).
pub fn raw(opcode: u64) -> Command {
    (opcode << OPCODE_SHIFT, 0)
}

/// The semaphore the probe's COMPLETION_WAITs store to (8-byte aligned by its type).
static SEMAPHORE: AtomicU64 = AtomicU64::new(0);

/// The software side of the buffer.
pub struct CommandBuffer {
    base: u64,
    /// Byte offset of the next command.
    tail: u32,
    /// The head as last read: everything before it was consumed.
    head: u32,
    token: u64,
}

impl CommandBuffer {
    /// The buffer at its fixed place, empty.
    pub fn new() -> CommandBuffer {
        CommandBuffer {
            base: mem::address(mem::COMMAND_BUFFER),
            tail: 0,
            head: 0,
            token: 0,
        }
    }

    /// The base register value: base | ComLen.
    pub fn register(&self) -> u64 {
        self.base | (LEN_CODE << LEN_SHIFT)
    }

    /// Physical address of the command at byte offset `offset`.
    pub fn address_of(&self, offset: u32) -> u64 {
        self.base + u64::from(offset)
    }

    /// The tail as the probe tracks it.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Head and tail back to 0 (the unit's pointers were just zeroed, or moved there).
    pub fn rewind(&mut self, head: u32) {
        self.head = head;
        self.tail = head;
    }

    /// The unit was told to fetch from byte offset `head` (the commands from there to the
    /// tail stay queued).
    pub fn set_head(&mut self, head: u32) {
        self.head = head;
    }

    /// Places `cmd` at the tail (advancing it); fails when the buffer is full.
    fn push(&mut self, regs: &Mmio, cmd: Command) -> Result<(), Text> {
        let size = ENTRIES * COMMAND_BYTES;
        let next = (self.tail + COMMAND_BYTES) % size;
        if next == self.head {
            self.head = regs.read32(regs::CMD_HEAD) & PTR_MASK;
            if next == self.head {
                return Err(text!(
                    "command buffer full (head 0x{:x}, tail 0x{:x})",
                    self.head,
                    self.tail
                ));
            }
        }
        let at = self.address_of(self.tail);
        mem::write64(at, cmd.0);
        mem::write64(at + 8, cmd.1);
        self.tail = next;
        Ok(())
    }

    /// Queues `cmds` and writes the tail once; the unit may process them at any time after.
    pub fn submit(&mut self, regs: &Mmio, cmds: &[Command]) -> Result<(), Text> {
        for &c in cmds {
            self.push(regs, c)?;
        }
        // The commands must be in memory before the unit is told to fetch them.
        compiler_fence(Ordering::SeqCst);
        regs.write32(regs::CMD_TAIL, self.tail);
        Ok(())
    }

    /// Queues `cmds` plus a COMPLETION_WAIT with a fresh token, writes the tail once and
    /// polls the store; fails when the buffer stops (CmdBufRun clear) or the store does not
    /// come in time.
    pub fn submit_and_wait(
        &mut self,
        regs: &Mmio,
        clock: &Clock,
        cmds: &[Command],
    ) -> Result<(), Text> {
        self.token = self.token.wrapping_add(1).max(1);
        let token = self.token;
        for &c in cmds {
            self.push(regs, c)?;
        }
        self.submit(
            regs,
            &[completion_wait(SEMAPHORE.as_ptr() as u64, token, false)],
        )?;
        // Both VMMs finish during the tail write: the store (memory) is checked first.
        if SEMAPHORE.load(Ordering::Acquire) == token {
            return Ok(());
        }
        let deadline = clock.now_ns() + WAIT_TIMEOUT_NS;
        loop {
            let status = regs.read32(regs::STATUS);
            if SEMAPHORE.load(Ordering::Acquire) == token {
                return Ok(());
            }
            if status & regs::STATUS_CMDBUF_RUN == 0 {
                return Err(text!(
                    "command buffer stopped before COMPLETION_WAIT {}: status 0x{:x} head 0x{:x} tail 0x{:x}",
                    token,
                    status,
                    regs.read32(regs::CMD_HEAD),
                    regs.read32(regs::CMD_TAIL)
                ));
            }
            if clock.now_ns() >= deadline {
                return Err(text!(
                    "COMPLETION_WAIT {} not stored within {} ms (status 0x{:x} head 0x{:x} tail 0x{:x})",
                    token,
                    WAIT_TIMEOUT_NS / 1_000_000,
                    status,
                    regs.read32(regs::CMD_HEAD),
                    regs.read32(regs::CMD_TAIL)
                ));
            }
            x86::pause();
        }
    }

    /// The semaphore's current value (the last token a COMPLETION_WAIT stored).
    pub fn semaphore() -> u64 {
        SEMAPHORE.load(Ordering::Acquire)
    }

    /// The semaphore's address (for hand-built COMPLETION_WAITs).
    pub fn semaphore_address() -> u64 {
        SEMAPHORE.as_ptr() as u64
    }
}
