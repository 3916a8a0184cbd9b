//! `probe=dma-basic`: the edu device's DMA through a second-level table into remapped
//! buffers, both directions.
//!
//! The unit is brought up as Linux does ([`dma_common::bring_up`]); edu's context points
//! at an empty table of the deepest kind the unit supports (4 levels with 48-bit SAGAW).
//! A source page filled with a pattern is mapped read-only at [`IOVA_SOURCE`], a zeroed
//! target page read-write at [`IOVA_TARGET`] (each followed by its page-selective
//! invalidation); IOVAs far from the pages' guest-physical addresses, beyond 4 GiB and
//! with a non-zero top-level index, so an IOMMU that did not translate would reach no RAM.
//! edu copies the source into its buffer (memory → device), then the buffer into the
//! target (device → memory): the target must hold the pattern, the source be unchanged,
//! and no fault be recorded. The second DMA asks for the completion interrupt status
//! (0x100), which must be set afterwards. Last, with ECAP.PT, edu's context becomes
//! pass-through (+ device-selective context-cache and domain IOTLB invalidations): a DMA
//! to a page's guest-physical address lands there. `PROBE PASS dma-basic levels=4
//! iova=0x123456789000 bytes=4096 to_device=ok to_memory=ok pass_through=ok`
//! (`pass_through=unsupported` without ECAP.PT).

use super::dma_common::{self, bring_up, DMA_BYTES, DMA_TIMEOUT_NS, DOMAIN_ID};
use super::Context;
use crate::edu::{self, DmaDirection, Edu, DMA_IRQ};
use crate::report::Outcome;
use crate::vtd::dma::{PAGE_4K, SL_READ, SL_WRITE};
use crate::vtd::fault::FSTS_PPF;
use crate::{irq, text};

/// Where the source page is mapped (4-level tables; PML4 index 0x24).
const IOVA_SOURCE: u64 = 0x0000_1234_5678_9000;
/// Where the target page is mapped.
const IOVA_TARGET: u64 = 0x0000_1234_5678_b000;
/// The same for 3-level tables (39 bits).
const IOVA_SOURCE_39: u64 = 0x0000_0012_3456_7000;
const IOVA_TARGET_39: u64 = 0x0000_0012_3456_9000;
/// The pattern's seed.
const SEED: u64 = 0xd3a_0001;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let mut rig = bring_up(ctx, "dma-basic", edu.function)?;
    let (src_iova, dst_iova) = if rig.domain.levels == 4 {
        (IOVA_SOURCE, IOVA_TARGET)
    } else {
        (IOVA_SOURCE_39, IOVA_TARGET_39)
    };
    let source = rig.page()?;
    let target = rig.page()?;
    dma_common::fill(source, SEED);
    rig.map(src_iova, source, PAGE_4K, SL_READ)?;
    rig.map(dst_iova, target, PAGE_4K, SL_READ | SL_WRITE)?;
    let clock = rig.clock();
    edu.dma(
        &clock,
        DmaDirection::ToDevice,
        src_iova,
        0,
        DMA_BYTES,
        DMA_TIMEOUT_NS,
    )?;
    edu.ack(DMA_IRQ);
    edu.start_dma(DmaDirection::ToMemory, dst_iova, 0, DMA_BYTES, true);
    let deadline = clock.now_ns() + DMA_TIMEOUT_NS;
    while edu.dma_busy() && clock.now_ns() < deadline {
        crate::x86::pause();
    }
    if edu.status() & DMA_IRQ == 0 {
        return Err(text!(
            "no completion status 0x{:x} after the DMA (status 0x{:x}, busy {})",
            DMA_IRQ,
            edu.status(),
            edu.dma_busy()
        ));
    }
    edu.ack(DMA_IRQ);
    dma_common::expect_pattern("target page after the round trip", target, SEED)?;
    dma_common::expect_pattern("source page", source, SEED)?;
    let fsts = rig.vtd.fsts();
    if fsts & FSTS_PPF != 0 {
        return Err(text!("a fault was recorded (FSTS 0x{:x})", fsts));
    }
    let pass_through = if rig.caps.pass_through {
        let page = rig.page()?;
        rig.roots.pass_through(rig.sid, DOMAIN_ID)?;
        rig.vtd.flush_context_device(DOMAIN_ID, rig.sid)?;
        rig.vtd.flush_iotlb_domain(DOMAIN_ID)?;
        edu.dma(
            &clock,
            DmaDirection::ToMemory,
            page,
            0,
            DMA_BYTES,
            DMA_TIMEOUT_NS,
        )?;
        dma_common::expect_pattern("page reached through the pass-through context", page, SEED)?;
        "ok"
    } else {
        "unsupported"
    };
    irq::stop_tick();
    Ok(text!(
        "levels={} iova=0x{:x} bytes={} to_device=ok to_memory=ok pass_through={}",
        rig.domain.levels,
        src_iova,
        DMA_BYTES,
        pass_through
    ))
}
