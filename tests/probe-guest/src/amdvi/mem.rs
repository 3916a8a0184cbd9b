//! Where the AMD-Vi structures live: the memory of the `.ir_table` section (1 MiB, page
//! aligned, not file-backed, not cleared at boot), which the VT-d driver uses as its
//! interrupt remapping table. A platform has one IOMMU kind or the other, and a scenario
//! drives one unit, so the two drivers never share it in one run.
//!
//! Fixed places for the unit-wide structures, then a bump allocator for interrupt tables
//! (128-byte aligned, Linux's `IRQ_TABLE_ALIGNMENT`) and vAPIC backing pages (4 KiB):
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0x00000 | 8 KiB | device table: 256 DTEs (bus 0), size field 1 |
//! | 0x02000 | 8 KiB | command buffer: 512 commands (ComLen 9) |
//! | 0x04000 | 8 KiB | event log: 512 entries (EventLen 9) |
//! | 0x06000 | 4 KiB | GA log: 512 entries (GALogLen 8) |
//! | 0x07000 | 8 B | GA log tail mirror (the unit copies its tail pointer here) |
//! | 0x08000 | rest | interrupt tables and backing pages |
//!
//! Everything handed out is zeroed first, with `rep stosq`: the build machines' KVM runs
//! string instructions one iteration at a time.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::report::Text;
use crate::text;
use crate::vtd::irte::{table_address, TABLE_LOG2_MAX};

/// Bytes of the section (the VT-d table's 2^16 entries of 16 bytes).
pub const ARENA_BYTES: u64 = 16 << TABLE_LOG2_MAX;
/// Device table offset and size (256 entries of 32 bytes).
pub const DEVICE_TABLE: u64 = 0x0000;
pub const DEVICE_TABLE_BYTES: u64 = 0x2000;
/// Command buffer offset and size.
pub const COMMAND_BUFFER: u64 = 0x2000;
pub const COMMAND_BUFFER_BYTES: u64 = 0x2000;
/// Event log offset and size.
pub const EVENT_LOG: u64 = 0x4000;
pub const EVENT_LOG_BYTES: u64 = 0x2000;
/// GA log offset and size.
pub const GA_LOG: u64 = 0x6000;
pub const GA_LOG_BYTES: u64 = 0x1000;
/// GA log tail mirror offset.
pub const GA_LOG_TAIL: u64 = 0x7000;
/// First byte the allocator hands out.
const HEAP: u64 = 0x8000;
/// Bytes per `rep stosq` store.
const QWORD: u64 = 8;

/// The allocator's next free offset.
static NEXT: AtomicU64 = AtomicU64::new(HEAP);

/// Physical (identity-mapped) address of `offset` in the section.
pub fn address(offset: u64) -> u64 {
    table_address() + offset
}

/// Zeroes `bytes` (a multiple of 8) at `offset`.
pub fn zero(offset: u64, bytes: u64) {
    assert!(offset + bytes <= ARENA_BYTES && bytes.is_multiple_of(QWORD));
    // SAFETY: inside the section (asserted), which only the probe's IOMMU driver of this run
    // uses; DF is clear (the ABI requires it).
    unsafe {
        asm!("rep stosq", inout("rcx") bytes / QWORD => _, inout("rdi") address(offset) => _,
             in("rax") 0u64, options(nostack, preserves_flags))
    }
}

/// Zeroes the fixed structures and forgets every allocation (a unit being enabled).
pub fn reset() {
    zero(0, HEAP);
    NEXT.store(HEAP, Ordering::Relaxed);
}

/// `bytes` of zeroed memory aligned to `align` (a power of two); returns its physical
/// address.
pub fn alloc(bytes: u64, align: u64) -> Result<u64, Text> {
    let start = NEXT.load(Ordering::Relaxed).next_multiple_of(align);
    let end = start + bytes.next_multiple_of(QWORD);
    if end > ARENA_BYTES {
        return Err(text!(
            "AMD-Vi structures need more than the {} KiB of the table section",
            ARENA_BYTES >> 10
        ));
    }
    NEXT.store(end, Ordering::Relaxed);
    zero(start, end - start);
    Ok(address(start))
}

/// Reads the qword at physical address `addr` (in the section) with one volatile load.
pub fn read64(addr: u64) -> u64 {
    check(addr);
    // SAFETY: inside the section (checked), 8-byte aligned; the unit writes it concurrently
    // only with aligned 8-byte stores (log entries, mirrors), so the load sees one of them.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Writes the qword at physical address `addr` (in the section) with one volatile store.
pub fn write64(addr: u64, value: u64) {
    check(addr);
    // SAFETY: as in `read64`; the unit reads what the probe writes here only as the
    // scenarios intend (tables, commands).
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Panics (a probe bug, reported as the scenario's failure) unless `addr` is an aligned
/// qword inside the section.
fn check(addr: u64) {
    let base = table_address();
    assert!(
        addr >= base && addr + QWORD <= base + ARENA_BYTES && addr.is_multiple_of(QWORD),
        "AMD-Vi memory access at 0x{:x} outside the table section",
        addr
    );
}
