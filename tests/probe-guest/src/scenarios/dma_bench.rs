//! `probe=dma-bench`: edu DMA throughput with translation off, through 4 KiB mappings and
//! through one 2 MiB mapping (run by `benches/dma_throughput.py`).
//!
//! Command line: `probe.iters=K` (default [`DEFAULT_ITERS`], at most [`MAX_ITERS`]) DMAs
//! per mode, each `probe.bytes=B` (default 2048, at most 4096; QEMU 7.2's edu aborts on
//! 4096, see [`DMA_BYTES`]) device → memory into one of min([`PAGES`], K) consecutive
//! pages in turn (the cached translations of all of them fit any IOTLB), polled to
//! completion. Modes, in
//! this order: `4k` (IOVAs mapped page by page), `2m` (the same pages inside one 2 MiB
//! mapping), `off` (translation disabled: IOVA = guest-physical address). Each mode starts
//! with one untimed pass over its pages. Reports bytes per second (decimal MB/s to a
//! tenth) and microseconds per DMA. The guest's own work is included; compare VMMs on one
//! host. `PROBE PASS dma-bench iters=K bytes=B mbps_4k=X us_4k=Y mbps_2m=...
//! mbps_off=...`.

use super::dma_common::{bring_up, Rig, DMA_BYTES, DMA_TIMEOUT_NS};
use super::Context;
use crate::edu::{self, DmaDirection, Edu};
use crate::pvh;
use crate::report::{Outcome, Text};
use crate::vtd::dma::{PAGE_2M, PAGE_4K, SL_READ, SL_WRITE};
use crate::{irq, sprintln, text};

/// DMAs per mode by default.
const DEFAULT_ITERS: u32 = 2000;
/// Most DMAs per mode.
const MAX_ITERS: u32 = 1_000_000;
/// Pages the DMAs cycle through.
const PAGES: u64 = 64;
/// IOVA of the 4 KiB mappings.
const IOVA_4K: u64 = 0x10_0000_0000;
/// IOVA of the 2 MiB mapping.
const IOVA_2M: u64 = 0x20_0000_0000;

/// One mode's result.
struct Rate {
    mbps_tenths: u64,
    ns_per_dma: u64,
}

fn run_mode(rig: &Rig, edu: &Edu, base: u64, iters: u32, bytes: u64) -> Result<Rate, Text> {
    let clock = rig.clock();
    let pages = PAGES.min(u64::from(iters));
    for p in 0..pages {
        edu.dma(
            &clock,
            DmaDirection::ToMemory,
            base + p * PAGE_4K,
            0,
            bytes,
            DMA_TIMEOUT_NS,
        )?;
    }
    let start = clock.now_ns();
    for i in 0..u64::from(iters) {
        let iova = base + (i % pages) * PAGE_4K;
        edu.dma(
            &clock,
            DmaDirection::ToMemory,
            iova,
            0,
            bytes,
            DMA_TIMEOUT_NS,
        )?;
    }
    let ns = clock.now_ns().saturating_sub(start).max(1);
    let total = u64::from(iters) * bytes;
    Ok(Rate {
        // bytes/ns * 1000 = MB/s; tenths.
        mbps_tenths: total * 10_000 / ns,
        ns_per_dma: ns / u64::from(iters.max(1)),
    })
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let iters = pvh::cmdline_u32(ctx.cmdline, "probe.iters", DEFAULT_ITERS)?;
    if iters == 0 || iters > MAX_ITERS {
        return Err(text!("probe.iters={} outside 1..={}", iters, MAX_ITERS));
    }
    let bytes = u64::from(pvh::cmdline_u32(
        ctx.cmdline,
        "probe.bytes",
        DMA_BYTES as u32,
    )?);
    if bytes == 0 || bytes > PAGE_4K {
        return Err(text!("probe.bytes={} outside 1..={}", bytes, PAGE_4K));
    }
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let mut rig = bring_up(ctx, "dma-bench", edu.function)?;
    let region = rig.arena.raw(PAGE_2M, PAGE_2M)?;
    for p in 0..PAGES {
        rig.map(
            IOVA_4K + p * PAGE_4K,
            region + p * PAGE_4K,
            PAGE_4K,
            SL_READ | SL_WRITE,
        )?;
    }
    rig.map(IOVA_2M, region, PAGE_2M, SL_READ | SL_WRITE)?;
    let r4k = run_mode(&rig, &edu, IOVA_4K, iters, bytes)?;
    let r2m = run_mode(&rig, &edu, IOVA_2M, iters, bytes)?;
    rig.vtd.disable_translation()?;
    let off = run_mode(&rig, &edu, region, iters, bytes)?;
    irq::stop_tick();
    let show = |r: &Rate| {
        (
            r.mbps_tenths / 10,
            r.mbps_tenths % 10,
            r.ns_per_dma / 1000,
            (r.ns_per_dma % 1000) / 100,
        )
    };
    let (a, b, c, d) = show(&r4k);
    let (e, f, g, h) = show(&r2m);
    let (i, j, k, l) = show(&off);
    sprintln!(
        "dma-bench: {} DMAs of {} bytes per mode ({})",
        iters,
        bytes,
        rig.platform.vmm.name()
    );
    Ok(text!(
        "iters={} bytes={} mbps_4k={}.{} us_4k={}.{} mbps_2m={}.{} us_2m={}.{} mbps_off={}.{} us_off={}.{}",
        iters,
        bytes,
        a,
        b,
        c,
        d,
        e,
        f,
        g,
        h,
        i,
        j,
        k,
        l
    ))
}
