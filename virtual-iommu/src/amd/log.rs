//! The event log and the guest virtual APIC (GA) log: ring buffers in guest memory that the
//! unit appends to and software consumes.
//!
//! Both logs are a base address register (base 51:12, length code 59:56) plus head and tail
//! pointer registers holding byte offsets. The unit writes an entry at the tail and
//! advances it (wrapping at the log's size); software reads from the head and advances it.
//! The log is full when advancing the tail would make it equal the head. Then the entry is
//! lost, the log's overflow status bit is set and the log stops (its `Run` status bit
//! clears) until software re-enables it by writing its enable bit 0 then 1, which is how
//! Linux's `amd_iommu_restart_log` recovers. A head or tail pointer beyond the log's size
//! (software may write any value into bits 18:4) counts as a full log: the unit never
//! writes outside the log and reports the condition as an overflow.
//!
//! * Event log: 16-byte entries, 2^EventLen entries (EventLen 1000b..1111b, 256 to 32768;
//!   smaller codes are reserved and read as 256 entries).
//! * GA log: 8-byte entries, 2^(GALogLen + 1) entries (Linux programs 1000b for 512
//!   entries in 4 KiB; smaller codes read as 512 entries). An entry is the 32-bit GATag in
//!   bits 31:0, the device ID in bits 47:32 and the request type in bits 63:60 (1 =
//!   GUEST_NR: an interrupt for a vCPU that was not running).
//!
//! Event log entries (16 bytes): device ID in bits 15:0, PASID/domain in bits 31:16 and
//! 47:32, flags in 59:48, the event code in 63:60, and an address in the second qword,
//! which is how Linux's `iommu_print_event` decodes them.

use crate::memory::{GuestMemoryReader, MemError};

use super::regs::{BASE_ADDR_MASK, LEN_MASK, LEN_SHIFT};

/// Event code: ILLEGAL_DEV_TABLE_ENTRY.
pub const EVENT_ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
/// Event code: IO_PAGE_FAULT.
pub const EVENT_IO_PAGE_FAULT: u8 = 0x2;
/// Event code: DEV_TAB_HARDWARE_ERROR.
pub const EVENT_DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
/// Event code: PAGE_TAB_HARDWARE_ERROR.
pub const EVENT_PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
/// Event code: ILLEGAL_COMMAND_ERROR.
pub const EVENT_ILLEGAL_COMMAND_ERROR: u8 = 0x5;
/// Event code: COMMAND_HARDWARE_ERROR.
pub const EVENT_COMMAND_HARDWARE_ERROR: u8 = 0x6;

/// Event flag GN (guest/nested).
pub const EVENT_FLAG_GN: u16 = 0x001;
/// Event flag I: the request was an interrupt.
pub const EVENT_FLAG_I: u16 = 0x008;
/// Event flag PR: the entry was present.
pub const EVENT_FLAG_PR: u16 = 0x010;
/// Event flag RW: the access was a write.
pub const EVENT_FLAG_RW: u16 = 0x020;
/// Event flag RZ: reserved bits were not zero.
pub const EVENT_FLAG_RZ: u16 = 0x080;
/// Event flag TR: a translation request.
pub const EVENT_FLAG_TR: u16 = 0x100;

/// Size in bytes of an event log entry.
pub const EVENT_SIZE: usize = 16;
/// Size in bytes of a GA log entry.
pub const GA_ENTRY_SIZE: usize = 8;
/// GA log request type GUEST_NR.
pub const GA_GUEST_NR: u64 = 0x1;

/// Event entry: shift of the domain ID / PASID low bits in the first qword (47:32).
const EVENT_DOMAIN_SHIFT: u32 = 32;
/// Event entry: shift of the flags in the first qword (59:48).
const EVENT_FLAGS_SHIFT: u32 = 48;
/// Event entry: mask of the 12-bit flags.
const EVENT_FLAGS_MASK: u64 = 0xfff;
/// Event entry: shift of the event code (63:60).
const EVENT_CODE_SHIFT: u32 = 60;
/// GA log entry: shift of the device ID (47:32).
const GA_DEVICE_ID_SHIFT: u32 = 32;
/// GA log entry: shift of the request type (63:60).
const GA_TYPE_SHIFT: u32 = 60;
/// Smallest length code of the event log (256 entries) and the GA log (512 entries).
const MIN_LEN_CODE: u64 = 8;

/// An event the unit logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// ILLEGAL_DEV_TABLE_ENTRY.
    IllegalDevTableEntry {
        /// Requester.
        device_id: u16,
        /// Request address.
        address: u64,
        /// Flags (I, RZ, ...).
        flags: u16,
    },
    /// IO_PAGE_FAULT (with I = 1: an interrupt-remapping fault).
    IoPageFault {
        /// Requester.
        device_id: u16,
        /// Domain ID from the DTE.
        domain_id: u16,
        /// Request address.
        address: u64,
        /// Flags.
        flags: u16,
    },
    /// DEV_TAB_HARDWARE_ERROR.
    DevTabHardwareError {
        /// Requester.
        device_id: u16,
        /// Address of the DTE that could not be read.
        address: u64,
        /// Flags.
        flags: u16,
    },
    /// PAGE_TAB_HARDWARE_ERROR (here: an interrupt table or vAPIC backing page access).
    PageTabHardwareError {
        /// Requester.
        device_id: u16,
        /// Domain ID from the DTE.
        domain_id: u16,
        /// Address that could not be accessed.
        address: u64,
        /// Flags.
        flags: u16,
    },
    /// ILLEGAL_COMMAND_ERROR: the command at `address` is unknown or malformed.
    IllegalCommand {
        /// Address of the command.
        address: u64,
    },
    /// COMMAND_HARDWARE_ERROR: a command fetch or completion-wait store failed, or the
    /// command buffer pointers are beyond the buffer.
    CommandHardwareError {
        /// Address that could not be accessed.
        address: u64,
    },
}

impl Event {
    /// The event code (bits 63:60 of the first qword).
    pub fn code(&self) -> u8 {
        match self {
            Event::IllegalDevTableEntry { .. } => EVENT_ILLEGAL_DEV_TABLE_ENTRY,
            Event::IoPageFault { .. } => EVENT_IO_PAGE_FAULT,
            Event::DevTabHardwareError { .. } => EVENT_DEV_TAB_HARDWARE_ERROR,
            Event::PageTabHardwareError { .. } => EVENT_PAGE_TAB_HARDWARE_ERROR,
            Event::IllegalCommand { .. } => EVENT_ILLEGAL_COMMAND_ERROR,
            Event::CommandHardwareError { .. } => EVENT_COMMAND_HARDWARE_ERROR,
        }
    }

    /// The flags field.
    pub fn flags(&self) -> u16 {
        match *self {
            Event::IllegalDevTableEntry { flags, .. }
            | Event::IoPageFault { flags, .. }
            | Event::DevTabHardwareError { flags, .. }
            | Event::PageTabHardwareError { flags, .. } => flags,
            Event::IllegalCommand { .. } | Event::CommandHardwareError { .. } => 0,
        }
    }

    /// The requester, for device events.
    pub fn device_id(&self) -> Option<u16> {
        match *self {
            Event::IllegalDevTableEntry { device_id, .. }
            | Event::IoPageFault { device_id, .. }
            | Event::DevTabHardwareError { device_id, .. }
            | Event::PageTabHardwareError { device_id, .. } => Some(device_id),
            Event::IllegalCommand { .. } | Event::CommandHardwareError { .. } => None,
        }
    }

    /// The event's two qwords.
    pub fn to_qwords(&self) -> [u64; 2] {
        let (device_id, domain_id, address) = match *self {
            Event::IllegalDevTableEntry {
                device_id, address, ..
            }
            | Event::DevTabHardwareError {
                device_id, address, ..
            } => (device_id, 0, address),
            Event::IoPageFault {
                device_id,
                domain_id,
                address,
                ..
            }
            | Event::PageTabHardwareError {
                device_id,
                domain_id,
                address,
                ..
            } => (device_id, domain_id, address),
            Event::IllegalCommand { address } | Event::CommandHardwareError { address } => {
                (0, 0, address)
            }
        };
        let qw0 = u64::from(device_id)
            | (u64::from(domain_id) << EVENT_DOMAIN_SHIFT)
            | ((u64::from(self.flags()) & EVENT_FLAGS_MASK) << EVENT_FLAGS_SHIFT)
            | (u64::from(self.code()) << EVENT_CODE_SHIFT);
        [qw0, address]
    }

    /// The event's 16 bytes as they go into the log.
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let [qw0, qw1] = self.to_qwords();
        let mut b = [0u8; EVENT_SIZE];
        b[..8].copy_from_slice(&qw0.to_le_bytes());
        b[8..].copy_from_slice(&qw1.to_le_bytes());
        b
    }
}

/// A GA log entry: GATag (exactly as the IRTE holds it), device ID, type GUEST_NR.
pub fn ga_log_entry(ga_tag: u32, device_id: u16) -> u64 {
    u64::from(ga_tag)
        | (u64::from(device_id) << GA_DEVICE_ID_SHIFT)
        | (GA_GUEST_NR << GA_TYPE_SHIFT)
}

/// The outcome of one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Append {
    /// Written; the tail advanced.
    Written,
    /// The log is disabled or stopped: the entry is dropped without a trace.
    Dropped,
    /// The log was full (or its pointers beyond its size): the entry is lost, the overflow
    /// latch is set and the log stopped.
    Overflow,
    /// The entry could not be written to guest memory: it is lost, the log keeps running.
    WriteFailed(MemError),
}

/// One log ring: its base register, pointers and overflow latch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRing {
    entry_size: u32,
    /// The length code gives 2^(code + bias) entries.
    len_bias: u32,
    ptr_mask: u64,
    base_reg: u64,
    head: u64,
    tail: u64,
    stopped: bool,
}

impl LogRing {
    /// An event log ring in its reset state.
    pub fn event_log() -> Self {
        LogRing::new(EVENT_SIZE as u32, 0, super::regs::PTR16_MASK)
    }

    /// A GA log ring in its reset state.
    pub fn ga_log() -> Self {
        LogRing::new(GA_ENTRY_SIZE as u32, 1, super::regs::PTR8_MASK)
    }

    fn new(entry_size: u32, len_bias: u32, ptr_mask: u64) -> Self {
        LogRing {
            entry_size,
            len_bias,
            ptr_mask,
            base_reg: 0,
            head: 0,
            tail: 0,
            stopped: false,
        }
    }

    /// The base register as stored.
    pub fn base_register(&self) -> u64 {
        self.base_reg
    }

    /// Stores a base register value and resets both pointers, as a base write does (the
    /// caller refuses the write while the log is enabled).
    pub fn write_base_register(&mut self, value: u64) {
        self.base_reg = value & (BASE_ADDR_MASK | (LEN_MASK << LEN_SHIFT));
        self.head = 0;
        self.tail = 0;
    }

    /// Guest-physical base of the log.
    pub fn base(&self) -> u64 {
        self.base_reg & BASE_ADDR_MASK
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        let code = ((self.base_reg >> LEN_SHIFT) & LEN_MASK).max(MIN_LEN_CODE);
        1u64 << (code + u64::from(self.len_bias))
    }

    /// Size of the log in bytes.
    pub fn size(&self) -> u64 {
        self.entries() * u64::from(self.entry_size)
    }

    /// The head pointer register (byte offset).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The tail pointer register (byte offset).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Software writes the head pointer (reserved bits dropped).
    pub fn write_head(&mut self, value: u64) {
        self.head = value & self.ptr_mask;
    }

    /// Software writes the tail pointer (the caller allows it only while the log is
    /// disabled).
    pub fn write_tail(&mut self, value: u64) {
        self.tail = value & self.ptr_mask;
    }

    /// True after an overflow, until [`LogRing::restart`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The log was (re-)enabled: logging resumes.
    pub fn restart(&mut self) {
        self.stopped = false;
    }

    /// True when no entry is waiting for software (head equals tail).
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Appends `entry` (exactly one entry's bytes) if `enabled` and not stopped.
    pub fn append(&mut self, mem: &dyn GuestMemoryReader, enabled: bool, entry: &[u8]) -> Append {
        if !enabled || self.stopped {
            return Append::Dropped;
        }
        let size = self.size();
        let next = self.tail + u64::from(self.entry_size);
        let next = if next >= size { 0 } else { next };
        if self.head >= size || self.tail >= size || next == self.head {
            self.stopped = true;
            return Append::Overflow;
        }
        let Some(gpa) = self.base().checked_add(self.tail) else {
            return Append::WriteFailed(MemError::Unmapped {
                gpa: self.base(),
                len: entry.len(),
            });
        };
        if let Err(e) = mem.write(gpa, entry) {
            return Append::WriteFailed(e);
        }
        self.tail = next;
        Append::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_matches_linux_decoding() {
        let e = Event::IoPageFault {
            device_id: 0x0018,
            domain_id: 0x0042,
            address: 0xfee0_0000,
            flags: EVENT_FLAG_I,
        };
        let [qw0, qw1] = e.to_qwords();
        let event = [
            qw0 as u32,
            (qw0 >> 32) as u32,
            qw1 as u32,
            (qw1 >> 32) as u32,
        ];
        // iommu_print_event: type = event[1] >> 28, devid = event[0] & 0xffff,
        // flags = (event[1] >> 16) & 0xfff, domain = event[1] & 0xffff.
        assert_eq!(event[1] >> 28, 2);
        assert_eq!(event[0] & 0xffff, 0x18);
        assert_eq!((event[1] >> 16) & 0xfff, 0x008);
        assert_eq!(event[1] & 0xffff, 0x42);
        assert_eq!(u64::from(event[3]) << 32 | u64::from(event[2]), 0xfee0_0000);
        let c = Event::IllegalCommand { address: 0x1230 }.to_qwords();
        assert_eq!(c, [5 << 60, 0x1230]);
        assert_eq!(Event::IllegalCommand { address: 1 }.device_id(), None);
    }

    #[test]
    fn ga_entry_layout() {
        // GA_TAG(x) = x & 0xffffffff, GA_DEVID(x) = (x >> 32) & 0xffff,
        // GA_REQ_TYPE(x) = (x >> 60) & 0xf.
        let e = ga_log_entry(0xdead_beef, 0xff00);
        assert_eq!(e as u32, 0xdead_beef);
        assert_eq!((e >> 32) & 0xffff, 0xff00);
        assert_eq!(e >> 60, 1);
    }

    #[test]
    fn sizes_from_length_codes() {
        let mut r = LogRing::event_log();
        assert_eq!(r.entries(), 256, "reserved codes read as the minimum");
        r.write_base_register(0x1000 | 9 << 56);
        assert_eq!(r.entries(), 512);
        assert_eq!(r.size(), 8192);
        let mut g = LogRing::ga_log();
        g.write_base_register(0x2000 | 8 << 56);
        assert_eq!(g.entries(), 512, "Linux's GA_LOG_SIZE_512");
        assert_eq!(g.size(), 4096);
        r.write_head(0xffff_ffff);
        assert_eq!(r.head(), 0x7_fff0);
        g.write_head(0xffff_ffff);
        assert_eq!(g.head(), 0x7_fff8);
        r.write_base_register(0xffff_ffff_ffff_ffff);
        assert_eq!(r.base(), 0x000f_ffff_ffff_f000);
        assert_eq!(r.head(), 0, "base write resets the pointers");
    }
}
