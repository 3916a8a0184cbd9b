//! `probe=vfio-dma-remap`: the passed-through vfio-user test device's DMA under the guest's
//! VT-d DMA remapping. The device's DMA goes through the host side (the server maps what
//! irvmm DMA_MAPs), so this checks that irvmm shadows the guest's mappings there: a page
//! the guest mapped is reachable at its IOVA with the guest's permissions, nothing else is.
//!
//! Set up as `dma-basic`, for the test device (1234:11ea). Caching mode is required
//! (CAP.CM: the guest invalidates after mapping, which is when irvmm maps on the host).
//! Steps, each a 4 KiB transfer (DMA_STATUS 1 = done, 2 = failed, copying nothing):
//!
//! 1. translation on, nothing mapped: device → guest at a page's guest-physical address
//!    fails (all of RAM was mapped before TE), the page is unchanged;
//! 2. a source page mapped read-only at [`IOVA_SOURCE`] (+ page-selective invalidation):
//!    guest → device succeeds and the device buffer holds its pattern; device → guest
//!    into it fails (read-only) and it is unchanged;
//! 3. a target page mapped read-write at [`IOVA_TARGET`]: device → guest succeeds and lands
//!    in the target page;
//! 4. the target unmapped (+ invalidation): device → guest at IOVA_TARGET fails, the page
//!    keeps what it had;
//! 5. translation disabled: all of RAM is mapped again, device → guest at the target
//!    page's guest-physical address succeeds.
//!
//! `PROBE PASS vfio-dma-remap unmapped=failed mapped=ok readonly=failed after_unmap=failed
//! te_off=identity`.

use super::dma_common::{self, bring_up, Rig, DMA_BYTES};
use super::Context;
use crate::report::{Outcome, Text};
use crate::testdev::{self, Direction, Testdev, Transfer, DMA_FAILED, DMA_OK};
use crate::vtd::dma::{PAGE_4K, SL_READ, SL_WRITE};
use crate::{irq, sprintln, text};

/// Where the source page is mapped.
const IOVA_SOURCE: u64 = 0x0000_0055_0000_0000;
/// Where the target page is mapped.
const IOVA_TARGET: u64 = 0x0000_0055_0000_3000;
/// Seeds: the source page's pattern, what the device buffer's second area holds.
const SEED_SOURCE: u64 = 0xf10_0001;
const SEED_DEVICE: u64 = 0xf10_0002;
/// What untouched pages hold.
const SENTINEL: u32 = 0x0bad_d0a0;
/// Device buffer areas.
const AREA_IN: u64 = 0;
const AREA_OUT: u64 = 0x1000;

/// One transfer; checks its status.
fn transfer(dev: &Testdev, rig: &Rig, what: &str, t: Transfer, want: u32) -> Result<(), Text> {
    let got = dev.dma(&rig.clock(), t)?;
    sprintln!(
        "vfio-dma-remap: {}: DMA 0x{:x} -> 0x{:x}: status {}",
        what,
        t.src,
        t.dst,
        got
    );
    if got != want {
        return Err(text!("{}: DMA status {}, expected {}", what, got, want));
    }
    Ok(())
}

fn to_guest(iova: u64) -> Transfer {
    Transfer {
        src: Testdev::buffer_device_addr(AREA_OUT),
        dst: iova,
        count: DMA_BYTES as u32,
        direction: Direction::ToGuest,
        vector: None,
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Testdev::find()?;
    let mut rig = bring_up(ctx, "vfio-dma-remap", dev.function)?;
    if !rig.caps.caching_mode {
        return Err(text!(
            "the unit does not report caching mode (CAP.CM), which shadowing needs"
        ));
    }
    let (source, target, probe_page) = (rig.page()?, rig.page()?, rig.page()?);
    dma_common::fill(source, SEED_SOURCE);
    dma_common::fill_with(target, SENTINEL);
    dma_common::fill_with(probe_page, SENTINEL);
    for (i, v) in dma_common::pattern(SEED_DEVICE).enumerate() {
        dev.write(testdev::BUFFER + AREA_OUT + 4 * i as u64, v);
    }

    // 1. Nothing mapped.
    transfer(
        &dev,
        &rig,
        "nothing mapped",
        to_guest(probe_page),
        DMA_FAILED,
    )?;
    if !dma_common::holds_value(probe_page, SENTINEL) {
        return Err(text!("the refused DMA changed memory"));
    }
    // 2. Read-only source.
    rig.map(IOVA_SOURCE, source, PAGE_4K, SL_READ)?;
    let to_device = Transfer {
        src: IOVA_SOURCE,
        dst: Testdev::buffer_device_addr(AREA_IN),
        count: DMA_BYTES as u32,
        direction: Direction::ToDevice,
        vector: None,
    };
    transfer(
        &dev,
        &rig,
        "read-only page to the device",
        to_device,
        DMA_OK,
    )?;
    for (i, want) in dma_common::pattern(SEED_SOURCE).enumerate() {
        let got = dev.read(testdev::BUFFER + AREA_IN + 4 * i as u64);
        if got != want {
            return Err(text!(
                "device buffer dword {} reads 0x{:08x}, expected 0x{:08x}",
                i,
                got,
                want
            ));
        }
    }
    transfer(
        &dev,
        &rig,
        "write to the read-only page",
        to_guest(IOVA_SOURCE),
        DMA_FAILED,
    )?;
    dma_common::expect_pattern("read-only page", source, SEED_SOURCE)?;
    // 3. Read-write target.
    rig.map(IOVA_TARGET, target, PAGE_4K, SL_READ | SL_WRITE)?;
    transfer(
        &dev,
        &rig,
        "into the mapped page",
        to_guest(IOVA_TARGET),
        DMA_OK,
    )?;
    dma_common::expect_pattern("target page", target, SEED_DEVICE)?;
    // 4. Unmapped again.
    dma_common::fill_with(target, SENTINEL);
    rig.unmap(IOVA_TARGET, PAGE_4K)?;
    transfer(
        &dev,
        &rig,
        "into the unmapped page",
        to_guest(IOVA_TARGET),
        DMA_FAILED,
    )?;
    if !dma_common::holds_value(target, SENTINEL) {
        return Err(text!("a DMA after the unmap changed the page"));
    }
    // 5. Translation off: identity.
    rig.vtd.disable_translation()?;
    transfer(
        &dev,
        &rig,
        "translation off, identity",
        to_guest(target),
        DMA_OK,
    )?;
    dma_common::expect_pattern("target page with translation off", target, SEED_DEVICE)?;
    irq::stop_tick();
    Ok(text!(
        "unmapped=failed mapped=ok readonly=failed after_unmap=failed te_off=identity"
    ))
}
