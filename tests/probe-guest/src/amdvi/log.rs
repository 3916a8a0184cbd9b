//! The event log and the guest virtual APIC (GA) log: rings in memory the unit appends to
//! at its tail; software reads from its head and moves the head register on, as Linux's
//! `iommu_poll_events` and `iommu_poll_ga_log` do.
//!
//! Event log entry (16 bytes; Linux's `iommu_print_event` decoding): device ID 15:0,
//! PASID/domain 31:16 and 47:32, flags 59:48, event code 63:60, then the address qword.
//! GA log entry (8 bytes): GATag 31:0, device ID 47:32, request type 63:60 (1 = GUEST_NR:
//! an interrupt for a vCPU that was not running).
//!
//! Pointer registers hold byte offsets (event log bits 18:4, GA log bits 18:3) and are
//! accessed with 32-bit reads and writes, as Linux does.

use super::{mem, regs};
use crate::mmio::Mmio;

/// Event codes.
pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
pub const IO_PAGE_FAULT: u8 = 0x2;
pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
/// Event flags: I (the request was an interrupt), PR (present), RW (write), RZ (reserved
/// bits not zero).
pub const FLAG_I: u16 = 0x008;
pub const FLAG_PR: u16 = 0x010;
pub const FLAG_RW: u16 = 0x020;
pub const FLAG_RZ: u16 = 0x080;
/// GA log request type GUEST_NR.
pub const GA_GUEST_NR: u8 = 0x1;

/// Bytes of an event and of a GA log entry.
const EVENT_BYTES: u32 = 16;
const GA_ENTRY_BYTES: u32 = 8;
/// Length codes: 2^9 events (8 KiB); GALogLen 8 gives 2^(8 + 1) = 512 entries (4 KiB).
const EVENT_LEN_CODE: u64 = 9;
const GA_LEN_CODE: u64 = 8;
/// Pointer bits.
const EVENT_PTR_MASK: u32 = 0x7_fff0;
const GA_PTR_MASK: u32 = 0x7_fff8;
/// Event qword 0 fields.
const DEVICE_ID_MASK: u64 = 0xffff;
const DOMAIN_SHIFT: u32 = 32;
const FLAGS_SHIFT: u32 = 48;
const FLAGS_MASK: u64 = 0xfff;
const CODE_SHIFT: u32 = 60;
/// GA entry fields.
const GA_DEVICE_ID_SHIFT: u32 = 32;
const GA_TYPE_SHIFT: u32 = 60;

/// One event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Event code (63:60).
    pub code: u8,
    /// Device ID (15:0).
    pub device_id: u16,
    /// Domain ID / PASID low bits (47:32).
    pub domain: u16,
    /// Flags (59:48).
    pub flags: u16,
    /// The address qword.
    pub address: u64,
}

impl Event {
    fn from_qwords(q0: u64, q1: u64) -> Event {
        Event {
            code: (q0 >> CODE_SHIFT) as u8,
            device_id: (q0 & DEVICE_ID_MASK) as u16,
            domain: (q0 >> DOMAIN_SHIFT) as u16,
            flags: ((q0 >> FLAGS_SHIFT) & FLAGS_MASK) as u16,
            address: q1,
        }
    }
}

/// One GA log entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaEntry {
    /// GATag, as the IRTE held it.
    pub tag: u32,
    /// The requester.
    pub device_id: u16,
    /// Request type (1 = GUEST_NR).
    pub kind: u8,
}

/// A log ring: where it is, its size and register offsets.
struct Ring {
    base: u64,
    bytes: u32,
    entry: u32,
    ptr_mask: u32,
    head_reg: u64,
    tail_reg: u64,
}

impl Ring {
    /// Visits every entry from the head register to the tail register (qwords at the entry's
    /// address), then writes the head register; returns how many there were.
    fn drain(&self, regs: &Mmio, mut visit: impl FnMut(u64)) -> usize {
        let mut head = regs.read32(self.head_reg) & self.ptr_mask;
        let tail = regs.read32(self.tail_reg) & self.ptr_mask;
        let mut n = 0;
        // A pointer beyond the ring (garbage) would never meet the other: stop at a full lap.
        while head != tail && head < self.bytes && n < (self.bytes / self.entry) as usize {
            visit(self.base + u64::from(head));
            head = (head + self.entry) % self.bytes;
            n += 1;
        }
        regs.write32(self.head_reg, head);
        n
    }

    fn pending(&self, regs: &Mmio) -> bool {
        regs.read32(self.head_reg) & self.ptr_mask != regs.read32(self.tail_reg) & self.ptr_mask
    }
}

/// The event log at its fixed place.
pub struct EventLog(Ring);

impl EventLog {
    /// The log, empty.
    pub fn new() -> EventLog {
        EventLog(Ring {
            base: mem::address(mem::EVENT_LOG),
            bytes: mem::EVENT_LOG_BYTES as u32,
            entry: EVENT_BYTES,
            ptr_mask: EVENT_PTR_MASK,
            head_reg: regs::EVT_HEAD,
            tail_reg: regs::EVT_TAIL,
        })
    }

    /// The base register value: base | EventLen.
    pub fn register(&self) -> u64 {
        self.0.base | (EVENT_LEN_CODE << super::cmd::LEN_SHIFT)
    }

    /// Reads every new event into `out` (as far as it holds them), moves the head on and
    /// returns how many there were.
    pub fn drain(&self, regs: &Mmio, out: &mut [Event]) -> usize {
        let mut i = 0;
        self.0.drain(regs, |at| {
            if let Some(slot) = out.get_mut(i) {
                *slot = Event::from_qwords(mem::read64(at), mem::read64(at + 8));
            }
            i += 1;
        })
    }

    /// Whether the tail is ahead of the head.
    pub fn pending(&self, regs: &Mmio) -> bool {
        self.0.pending(regs)
    }
}

/// The GA log at its fixed place.
pub struct GaLog(Ring);

impl GaLog {
    /// The log, empty.
    pub fn new() -> GaLog {
        GaLog(Ring {
            base: mem::address(mem::GA_LOG),
            bytes: mem::GA_LOG_BYTES as u32,
            entry: GA_ENTRY_BYTES,
            ptr_mask: GA_PTR_MASK,
            head_reg: regs::GA_HEAD,
            tail_reg: regs::GA_TAIL,
        })
    }

    /// The base register value: base | GALogLen.
    pub fn register(&self) -> u64 {
        self.0.base | (GA_LEN_CODE << super::cmd::LEN_SHIFT)
    }

    /// The tail mirror address register value (the unit copies its tail pointer there).
    pub fn tail_mirror_register() -> u64 {
        mem::address(mem::GA_LOG_TAIL)
    }

    /// The tail pointer as the unit last mirrored it.
    pub fn mirrored_tail() -> u64 {
        mem::read64(mem::address(mem::GA_LOG_TAIL))
    }

    /// Reads every new entry into `out` (as far as it holds them), moves the head on and
    /// returns how many there were.
    pub fn drain(&self, regs: &Mmio, out: &mut [GaEntry]) -> usize {
        let mut i = 0;
        self.0.drain(regs, |at| {
            let raw = mem::read64(at);
            if let Some(slot) = out.get_mut(i) {
                *slot = GaEntry {
                    tag: raw as u32,
                    device_id: (raw >> GA_DEVICE_ID_SHIFT) as u16,
                    kind: (raw >> GA_TYPE_SHIFT) as u8,
                };
            }
            i += 1;
        })
    }

    /// Whether the tail is ahead of the head.
    pub fn pending(&self, regs: &Mmio) -> bool {
        self.0.pending(regs)
    }
}
