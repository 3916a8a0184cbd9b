//! `probe=dma-faults`: edu DMAs the unit must refuse, each recorded with its reason and
//! signalled once, none moving data; FPD suppresses recording.
//!
//! Set up as `dma-basic`. The device's buffer is first loaded with a known pattern
//! through a mapped page. Cases (one DMA each; the record must name edu's SID, the
//! faulting page and the direction in FRCD.T; exactly one fault event on the BSP):
//!
//! | case | DMA | reason |
//! |---|---|---|
//! | not present, write | device → memory at an unmapped IOVA equal to a sentinel page's guest-physical address | 0x5 |
//! | not present, read | memory → device from an unmapped IOVA equal to a page holding another pattern | 0x6 |
//! | read-only | device → memory at a page mapped read-only | 0x5 |
//! | beyond the width | device → memory at 2^48 (2^39 with 3 levels) | 0x4 |
//! | context not present | device → memory with edu's context cleared (+ device-selective context-cache and domain IOTLB invalidations, as Linux does) | 0x2 |
//!
//! Written pages must be unchanged; after the refused read the device buffer must not
//! hold the other pattern (irvmm: unchanged). Then the context gets FPD (+ device-selective
//! context-cache invalidation): a refused DMA records nothing and signals nothing within
//! 300 ms; without FPD again the same DMA records 0x5. `PROBE PASS dma-faults
//! reasons=5,6,5,4,2 fpd=ok`.

use super::dma_common::{self, bring_up, Rig, DMA_BYTES, DMA_TIMEOUT_NS};
use super::Context;
use crate::edu::{self, DmaDirection, Edu};
use crate::report::{Outcome, Text};
use crate::tally::EVENT;
use crate::vtd::dma::{PAGE_4K, SL_READ, SL_WRITE};
use crate::vtd::fault::{
    FR_DMA_BEYOND_WIDTH, FR_DMA_CONTEXT_NOT_PRESENT, FR_DMA_READ, FR_DMA_WRITE,
};
use crate::{irq, text};

/// A mapped read-write page for loading and reading back the device buffer.
const IOVA_WINDOW: u64 = 0x4000_0000;
/// A page mapped read-only.
const IOVA_READ_ONLY: u64 = 0x4000_2000;
/// What sentinel pages hold.
const SENTINEL: u32 = 0x5e57_1ae1;
/// Seeds: what the buffer is loaded with, and the other pattern.
const SEED_BUFFER: u64 = 0xfa17_0001;
const SEED_OTHER: u64 = 0xfa17_0002;
/// How long the FPD case watches for a record or event that must not come.
const FPD_WATCH_NS: u64 = 300_000_000;

struct Faults<'a> {
    rig: &'a mut Rig,
    edu: Edu,
    window: u64,
}

impl Faults<'_> {
    /// Runs one DMA that must fault with `reason` at `iova`.
    fn refused(&self, what: &str, dir: DmaDirection, iova: u64, reason: u8) -> Result<(), Text> {
        let events0 = EVENT.total();
        self.edu
            .dma(&self.rig.clock(), dir, iova, 0, DMA_BYTES, DMA_TIMEOUT_NS)?;
        self.rig
            .expect_fault(what, events0, reason, iova, dir == DmaDirection::ToDevice)
    }

    /// Reads the device buffer back into the window page.
    fn buffer(&self) -> Result<u64, Text> {
        dma_common::fill_with(self.window, 0);
        self.edu.dma(
            &self.rig.clock(),
            DmaDirection::ToMemory,
            IOVA_WINDOW,
            0,
            DMA_BYTES,
            DMA_TIMEOUT_NS,
        )?;
        Ok(self.window)
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let mut rig = bring_up(ctx, "dma-faults", edu.function)?;
    let window = rig.page()?;
    let sentinel = rig.page()?;
    let other = rig.page()?;
    let read_only = rig.page()?;
    dma_common::fill_with(sentinel, SENTINEL);
    dma_common::fill_with(read_only, SENTINEL);
    dma_common::fill(other, SEED_OTHER);
    rig.map(IOVA_WINDOW, window, PAGE_4K, SL_READ | SL_WRITE)?;
    rig.map(IOVA_READ_ONLY, read_only, PAGE_4K, SL_READ)?;
    let beyond = 1u64 << (if rig.domain.levels == 4 { 48 } else { 39 });
    let irvmm = rig.irvmm();
    let f = Faults {
        rig: &mut rig,
        edu,
        window,
    };
    // Load the buffer.
    dma_common::fill(window, SEED_BUFFER);
    f.edu.dma(
        &f.rig.clock(),
        DmaDirection::ToDevice,
        IOVA_WINDOW,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;

    f.refused(
        "not present, write",
        DmaDirection::ToMemory,
        sentinel,
        FR_DMA_WRITE,
    )?;
    if !dma_common::holds_value(sentinel, SENTINEL) {
        return Err(text!(
            "the refused write changed the page at its IOVA's physical address"
        ));
    }
    f.refused(
        "not present, read",
        DmaDirection::ToDevice,
        other,
        FR_DMA_READ,
    )?;
    let buffer = f.buffer()?;
    if dma_common::holds(buffer, SEED_OTHER) {
        return Err(text!(
            "the refused read brought the unmapped page into the device"
        ));
    }
    if irvmm {
        dma_common::expect_pattern("device buffer after the refused read", buffer, SEED_BUFFER)?;
    }
    f.refused(
        "read-only",
        DmaDirection::ToMemory,
        IOVA_READ_ONLY,
        FR_DMA_WRITE,
    )?;
    if !dma_common::holds_value(read_only, SENTINEL) {
        return Err(text!("the refused write changed the read-only page"));
    }
    f.refused(
        "beyond the width",
        DmaDirection::ToMemory,
        beyond,
        FR_DMA_BEYOND_WIDTH,
    )?;
    // Context not present.
    f.rig.roots.clear(f.rig.sid, false)?;
    f.rig
        .vtd
        .flush_context_device(dma_common::DOMAIN_ID, f.rig.sid)?;
    f.rig.vtd.flush_iotlb_domain(dma_common::DOMAIN_ID)?;
    f.refused(
        "context not present",
        DmaDirection::ToMemory,
        IOVA_WINDOW,
        FR_DMA_CONTEXT_NOT_PRESENT,
    )?;
    // FPD: nothing recorded or signalled; then without FPD the same DMA faults.
    f.rig.set_fpd(true)?;
    let events0 = EVENT.total();
    f.edu.dma(
        &f.rig.clock(),
        DmaDirection::ToMemory,
        sentinel,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    f.rig.expect_no_fault("FPD set", events0, FPD_WATCH_NS)?;
    f.rig.set_fpd(false)?;
    f.refused(
        "FPD clear again",
        DmaDirection::ToMemory,
        sentinel,
        FR_DMA_WRITE,
    )?;
    if !dma_common::holds_value(sentinel, SENTINEL) {
        return Err(text!("a refused write changed the sentinel page"));
    }
    irq::stop_tick();
    Ok(text!("reasons=5,6,5,4,2 fpd=ok"))
}
