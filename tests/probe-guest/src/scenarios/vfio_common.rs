//! Shared parts of the passthrough scenarios (`vfio-*`), which drive the vfio-user test
//! device ([`crate::testdev`]) irvmm passes through: opening its MSI-X capability, picking
//! target CPUs, compatibility-format messages, firing vectors through the doorbell and
//! checking that each arrived exactly once where it was sent.

use super::ir_common::{self, NS_PER_MS};
use crate::clock::Clock;
use crate::msi::MsiX;
use crate::pvh::StartInfo;
use crate::report::Text;
use crate::tally::DEVICE;
use crate::testdev::Testdev;
use crate::{irq, text};

/// The vector every device message delivers (counted in [`DEVICE`] by APIC ID).
pub const VECTOR: u8 = irq::TEST_VECTOR_A;
/// MSI-X vectors the multi-CPU scenarios spread across the APIC IDs.
pub const SPREAD_VECTORS: usize = 64;
/// Vectors fired per doorbell write.
pub const BURST: usize = 16;
/// How long an interrupt that should arrive gets.
pub const DELIVERY_TIMEOUT_NS: u64 = 3_000_000_000;
/// After the expected interrupts arrived, how long to watch for stray ones.
pub const SETTLE_NS: u64 = 30_000_000;
/// Address of the interrupt window (compatibility format: bits 31:20 = 0xfee).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
/// Compatibility MSI address: destination ID bits 7:0 in address bits 19:12.
const MSI_DEST_SHIFT: u32 = 12;
/// Compatibility MSI address: extended destination ID (APIC ID bits 14:8) in bits 11:5.
const MSI_EXT_DEST_SHIFT: u32 = 5;
/// Width of the extended destination ID.
const EXT_DEST_BITS: u32 = 7;
/// Highest APIC ID the extended destination ID reaches (15 bits).
pub const MAX_EXT_DEST_ID: u32 = (1 << (8 + EXT_DEST_BITS)) - 1;
/// Highest APIC ID a plain compatibility-format address names.
const MAX_XAPIC_ID: u32 = 0xff;
/// PVH memory map type of usable RAM.
const MEMMAP_RAM: u32 = 1;

/// The device's MSI-X capability, which must have at least `needed` vectors.
pub fn msix(dev: &Testdev, needed: usize) -> Result<MsiX, Text> {
    let msix = MsiX::find(dev.function)?;
    if usize::from(msix.vectors()) < needed {
        return Err(text!(
            "{} has {} MSI-X vectors, needs {}",
            dev.function,
            msix.vectors(),
            needed
        ));
    }
    Ok(msix)
}

/// A compatibility-format MSI address for physical APIC ID `dest` (fixed delivery, no
/// redirection hint): bits 7:0 in address bits 19:12, and with `extended` bits 14:8 in
/// address bits 11:5 (KVM's extended destination ID). `None` when `dest` does not fit.
pub fn compat_address(dest: u32, extended: bool) -> Option<u32> {
    let max = if extended {
        MAX_EXT_DEST_ID
    } else {
        MAX_XAPIC_ID
    };
    if dest > max {
        return None;
    }
    Some(
        MSI_ADDRESS_BASE
            | ((dest & MAX_XAPIC_ID) << MSI_DEST_SHIFT)
            | ((dest >> 8) << MSI_EXT_DEST_SHIFT),
    )
}

/// Fills `out` with APIC IDs picked evenly from the sorted `ids`, lowest and highest
/// included (distinct when there are at least as many IDs as slots).
pub fn spread(ids: &[u32], out: &mut [u32]) {
    let (n, last) = (out.len(), ids.len().saturating_sub(1));
    for (j, t) in out.iter_mut().enumerate() {
        let at = if n > 1 { j * last / (n - 1) } else { last };
        *t = ids.get(at).copied().unwrap_or(0);
    }
}

/// How many of `targets` name `id`.
fn share(targets: &[u32], id: u32) -> u32 {
    targets.iter().filter(|&&t| t == id).count() as u32
}

/// Fires MSI-X vector j for every j in `targets` (where vector j was sent), [`BURST`] per
/// doorbell, waiting after each burst until every target of it has its interrupts; then
/// watches for strays and checks that each target took exactly its share and nobody else
/// took anything. Returns the milliseconds from the first doorbell to the last arrival.
pub fn fire_each_once(dev: &Testdev, clock: &Clock, targets: &[u32]) -> Result<u64, Text> {
    let begin = clock.now_ns();
    let base = DEVICE.total();
    let mut first = 0;
    while first < targets.len() {
        let end = (first + BURST).min(targets.len());
        dev.ring(clock, first as u16, (end - first) as u16)?;
        let fired = &targets[..end];
        let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || {
            targets[first..end]
                .iter()
                .all(|&t| DEVICE.hits(t) >= share(fired, t))
        });
        if !arrived {
            let (j, t) = targets[first..end]
                .iter()
                .enumerate()
                .map(|(i, &t)| (first + i, t))
                .find(|&(_, t)| DEVICE.hits(t) < share(fired, t))
                .unwrap_or((first, targets[first]));
            return Err(text!(
                "MSI-X vector {} not on APIC ID {} within {} ms; {} of {} arrived, {}",
                j,
                t,
                DELIVERY_TIMEOUT_NS / NS_PER_MS,
                DEVICE.total() - base,
                end,
                ir_common::Takers(&DEVICE)
            ));
        }
        first = end;
    }
    let elapsed_ms = clock.now_ns().saturating_sub(begin) / NS_PER_MS;
    ir_common::settle(clock, SETTLE_NS);
    for (j, &t) in targets.iter().enumerate() {
        if DEVICE.hits(t) != share(targets, t) {
            return Err(text!(
                "APIC ID {} (vector {}) took {} interrupts, expected {}",
                t,
                j,
                DEVICE.hits(t),
                share(targets, t)
            ));
        }
    }
    if (DEVICE.total() - base) as usize != targets.len() {
        return Err(text!(
            "{} interrupts for {} vectors; {}",
            DEVICE.total() - base,
            targets.len(),
            ir_common::Takers(&DEVICE)
        ));
    }
    Ok(elapsed_ms)
}

/// Fires vector `vector` once and checks that exactly one interrupt arrives, on `to`, and
/// none anywhere else; `what` names the step in the failure.
pub fn fire_one(
    dev: &Testdev,
    clock: &Clock,
    vector: u16,
    to: u32,
    what: &str,
) -> Result<(), Text> {
    let (before_total, before_to) = (DEVICE.total(), DEVICE.hits(to));
    dev.ring(clock, vector, 1)?;
    let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() > before_total);
    ir_common::settle(clock, SETTLE_NS);
    let (total, at_to) = (DEVICE.total() - before_total, DEVICE.hits(to) - before_to);
    if !arrived || total != 1 || at_to != 1 {
        return Err(text!(
            "{}: vector {} gave {} interrupts, {} of them on APIC ID {} (expected one there); {}",
            what,
            vector,
            total,
            at_to,
            to,
            ir_common::Takers(&DEVICE)
        ));
    }
    Ok(())
}

/// The end of the highest usable RAM range in the PVH memory map (where DMA must fail).
pub fn ram_end(start_info: &StartInfo) -> Result<u64, Text> {
    let mut end = 0u64;
    let mut index = 0;
    while let Some(e) = start_info.memmap_entry(index) {
        if e.kind == MEMMAP_RAM {
            end = end.max(e.addr.saturating_add(e.size));
        }
        index += 1;
    }
    if end == 0 {
        return Err(text!("the PVH memory map lists no RAM"));
    }
    Ok(end)
}
