//! `probe=dma-inval`: a remapped page reaches the device only after its page-selective
//! IOTLB invalidation.
//!
//! Set up as `dma-basic`. IOVA [`IOVA_P`] maps page X; a DMA (device → memory) of pattern
//! 1 lands in X, which also lets the unit cache the translation. The entry is rewritten
//! to page Y without invalidation and pattern 2 is DMAed: a unit may still use its cached
//! translation, so pattern 2 must land in exactly one of X ("old") or Y ("new"), and a
//! third page Z must stay untouched. After a page-selective invalidation of IOVA_P,
//! pattern 3 must land in Y and nowhere else. The patterns reach the device buffer
//! through a read-only source page. irvmm caches (its IOTLB): "old" there is required.
//! `PROBE PASS dma-inval before_invalidation=old|new after=new`.

use super::dma_common::{self, bring_up, Rig, DMA_BYTES, DMA_TIMEOUT_NS};
use super::Context;
use crate::edu::{self, DmaDirection, Edu};
use crate::report::{Outcome, Text};
use crate::vtd::dma::{PAGE_4K, SL_READ, SL_WRITE};
use crate::{irq, sprintln, text};

/// The remapped IOVA.
const IOVA_P: u64 = 0x7_0000_0000;
/// The source page the patterns come from.
const IOVA_SOURCE: u64 = 0x7_0001_0000;
/// Seeds of the three patterns.
const SEEDS: [u64; 3] = [0x1a7a_0001, 0x1a7a_0002, 0x1a7a_0003];
/// What Z holds.
const SENTINEL: u32 = 0x2222_2222;

/// Loads pattern `seed` into the device buffer through the source page, then DMAs it to
/// IOVA_P.
fn send(rig: &Rig, edu: &Edu, source: u64, seed: u64) -> Result<(), Text> {
    dma_common::fill(source, seed);
    let clock = rig.clock();
    edu.dma(
        &clock,
        DmaDirection::ToDevice,
        IOVA_SOURCE,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    edu.dma(
        &clock,
        DmaDirection::ToMemory,
        IOVA_P,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let mut rig = bring_up(ctx, "dma-inval", edu.function)?;
    let source = rig.page()?;
    let (x, y, z) = (rig.page()?, rig.page()?, rig.page()?);
    dma_common::fill_with(z, SENTINEL);
    rig.map(IOVA_SOURCE, source, PAGE_4K, SL_READ)?;
    rig.map(IOVA_P, x, PAGE_4K, SL_READ | SL_WRITE)?;
    send(&rig, &edu, source, SEEDS[0])?;
    dma_common::expect_pattern("X after the first DMA", x, SEEDS[0])?;

    // Remapped to Y, not invalidated.
    rig.domain
        .map(&mut rig.arena, IOVA_P, y, PAGE_4K, SL_READ | SL_WRITE)?;
    send(&rig, &edu, source, SEEDS[1])?;
    let (in_x, in_y) = (
        dma_common::holds(x, SEEDS[1]),
        dma_common::holds(y, SEEDS[1]),
    );
    let before = match (in_x, in_y) {
        (true, false) => "old",
        (false, true) => "new",
        _ => {
            return Err(text!(
                "before the invalidation pattern 2 is in X: {}, in Y: {} (exactly one expected)",
                in_x,
                in_y
            ))
        }
    };
    sprintln!(
        "dma-inval: without invalidation the DMA used the {} page",
        before
    );
    if !dma_common::holds_value(z, SENTINEL) {
        return Err(text!("a third page changed"));
    }
    if rig.irvmm() && before != "old" {
        return Err(text!(
            "irvmm's IOTLB must keep the old translation until invalidated"
        ));
    }
    let x_before = if in_x { SEEDS[1] } else { SEEDS[0] };

    rig.invalidate(IOVA_P, PAGE_4K)?;
    send(&rig, &edu, source, SEEDS[2])?;
    dma_common::expect_pattern("Y after the invalidation", y, SEEDS[2])?;
    dma_common::expect_pattern("X after the invalidation (unchanged)", x, x_before)?;
    if !dma_common::holds_value(z, SENTINEL) {
        return Err(text!("a third page changed"));
    }
    irq::stop_tick();
    Ok(text!("before_invalidation={} after=new", before))
}
