//! `probe=dma-superpage`: edu DMA through 2 MiB and 1 GiB second-level pages (CAP.SLLPS).
//!
//! Set up as `dma-basic`. A 2 MiB-aligned 2 MiB region of the arena is mapped by one
//! level-2 entry (PS) at [`IOVA_2M`] (+ a page-selective invalidation of 512 pages); a
//! pattern DMAed to IOVA_2M + [`OFFSET_2M`] must land at the region's base + OFFSET_2M,
//! and be read back from there. With 1 GiB support, the first GiB of guest-physical memory
//! is mapped by one level-3 entry at [`IOVA_1G`]; a pattern DMAed to IOVA_1G + the
//! guest-physical address of a page must land in that page. `PROBE PASS dma-superpage
//! two_mib=ok one_gib=ok` (`one_gib=unsupported` without SLLPS bit 1).

use super::dma_common::{self, bring_up, DMA_BYTES, DMA_TIMEOUT_NS};
use super::Context;
use crate::edu::{self, DmaDirection, Edu};
use crate::report::Outcome;
use crate::vtd::dma::{PAGE_1G, PAGE_2M, PAGE_4K, SLLPS_1G, SLLPS_2M, SL_READ, SL_WRITE};
use crate::{irq, text};

/// The 2 MiB page's IOVA (below 2^39, so 3-level tables reach it too).
const IOVA_2M: u64 = 0x20_0060_0000;
/// Where in the 2 MiB page the DMA goes.
const OFFSET_2M: u64 = 0x12_3000;
/// The 1 GiB page's IOVA.
const IOVA_1G: u64 = 0x40_0000_0000;
/// Seeds.
const SEED_2M: u64 = 0x5b_0002;
const SEED_1G: u64 = 0x5b_0003;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let mut rig = bring_up(ctx, "dma-superpage", edu.function)?;
    if rig.caps.sllps & SLLPS_2M == 0 {
        return Err(text!(
            "the unit offers no 2 MiB pages (CAP.SLLPS 0x{:x})",
            rig.caps.sllps
        ));
    }
    let clock = rig.clock();
    let region = rig.arena.raw(PAGE_2M, PAGE_2M)?;
    let source = rig.page()?;
    let check = rig.page()?;
    let iova_source = 0x6000_0000;
    rig.map(iova_source, source, PAGE_4K, SL_READ)?;
    rig.map(IOVA_2M, region, PAGE_2M, SL_READ | SL_WRITE)?;
    dma_common::fill(source, SEED_2M);
    dma_common::fill_with(region + OFFSET_2M, 0);
    edu.dma(
        &clock,
        DmaDirection::ToDevice,
        iova_source,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    edu.dma(
        &clock,
        DmaDirection::ToMemory,
        IOVA_2M + OFFSET_2M,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    dma_common::expect_pattern("2 MiB page at the offset", region + OFFSET_2M, SEED_2M)?;
    // And back out of the superpage into another page.
    let check_iova = 0x6000_1000;
    rig.map(check_iova, check, PAGE_4K, SL_READ | SL_WRITE)?;
    dma_common::fill(source, 0);
    edu.dma(
        &clock,
        DmaDirection::ToDevice,
        IOVA_2M + OFFSET_2M,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    edu.dma(
        &clock,
        DmaDirection::ToMemory,
        check_iova,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    dma_common::expect_pattern("read back from the 2 MiB page", check, SEED_2M)?;

    let one_gib = if rig.caps.sllps & SLLPS_1G != 0 {
        let target = rig.page()?;
        rig.map(IOVA_1G, 0, PAGE_1G, SL_READ | SL_WRITE)?;
        dma_common::fill(source, SEED_1G);
        edu.dma(
            &clock,
            DmaDirection::ToDevice,
            iova_source,
            0,
            DMA_BYTES,
            DMA_TIMEOUT_NS,
        )?;
        edu.dma(
            &clock,
            DmaDirection::ToMemory,
            IOVA_1G + target,
            0,
            DMA_BYTES,
            DMA_TIMEOUT_NS,
        )?;
        dma_common::expect_pattern("page reached through the 1 GiB page", target, SEED_1G)?;
        "ok"
    } else {
        "unsupported"
    };
    irq::stop_tick();
    Ok(text!("two_mib=ok one_gib={}", one_gib))
}
