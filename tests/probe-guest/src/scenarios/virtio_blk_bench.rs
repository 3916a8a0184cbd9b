//! `probe=virtio-blk-bench`: virtio-blk throughput as a driver that polls sees it (no
//! interrupts: `VRING_AVAIL_F_NO_INTERRUPT`, the used ring is polled), for `benches/`.
//!
//! Phase 1: `probe.ops=N` (default 2000) 4 KiB reads at random 4 KiB-aligned offsets, up
//! to `probe.qd=Q` (default 8, at most 8) in flight on queue 0. Phase 2: `probe.seq_mib=M`
//! (default 16) MiB of sequential 64 KiB reads (wrapping at the capacity), same depth.
//! Passes with `iops=N seq_kibs=N qd=Q ops=N seq_mib=M` (integers: no floating point here).

use super::Context;
use crate::clock::Clock;
use crate::prng::Rng;
use crate::pvh;
use crate::report::{Outcome, Text};
use crate::virtio::{self, Buf, Device, Virtq, NO_VECTOR, TYPE_BLOCK};
use crate::{sprintln, text};

const T_IN: u32 = 0;
const CFG_CAPACITY: u64 = 0;
const MAX_QD: u32 = 8;
const SLOT_DESCS: u16 = 3;
const STATUS_AT: usize = 2048;
const DATA_AT: usize = 4096;
const SLOT_DATA: usize = 64 * 1024;
const TIMEOUT_NS: u64 = 60_000_000_000;
const SECTORS_4K: u64 = 8;
const SECTORS_64K: u64 = 128;

fn submit(q: &mut Virtq, slot: u16, sector: u64, bytes: u32) {
    let s = usize::from(slot);
    for (i, b) in T_IN
        .to_le_bytes()
        .iter()
        .chain(&[0u8; 4])
        .chain(&sector.to_le_bytes())
        .enumerate()
    {
        virtio::data_write(s * 32 + i, *b);
    }
    virtio::data_write(STATUS_AT + s, 0xee);
    q.submit(
        slot * SLOT_DESCS,
        &[
            Buf {
                addr: virtio::data_addr(s * 32),
                len: 16,
                write: false,
            },
            Buf {
                addr: virtio::data_addr(DATA_AT + s * SLOT_DATA),
                len: bytes,
                write: true,
            },
            Buf {
                addr: virtio::data_addr(STATUS_AT + s),
                len: 1,
                write: true,
            },
        ],
    );
}

/// Runs `ops` reads of `bytes` at sectors from `next`, `qd` in flight; returns nanoseconds.
fn phase(
    q: &mut Virtq,
    clock: &Clock,
    qd: u32,
    ops: u32,
    bytes: u32,
    mut next: impl FnMut() -> u64,
) -> Result<u64, Text> {
    let begin = clock.now_ns();
    let (mut submitted, mut done) = (0u32, 0u32);
    while submitted < qd.min(ops) {
        submit(q, submitted as u16, next(), bytes);
        submitted += 1;
    }
    q.kick();
    while done < ops {
        let Some((head, _)) = q.pop_used() else {
            if clock.now_ns() - begin > TIMEOUT_NS {
                return Err(text!(
                    "{} of {} reads done after {} s",
                    done,
                    ops,
                    TIMEOUT_NS / 1_000_000_000
                ));
            }
            core::hint::spin_loop();
            continue;
        };
        let slot = head / SLOT_DESCS;
        let status = virtio::data_read(STATUS_AT + usize::from(slot));
        if status != 0 {
            return Err(text!("read failed with status {}", status));
        }
        done += 1;
        if submitted < ops {
            submit(q, slot, next(), bytes);
            submitted += 1;
            q.kick();
        }
    }
    Ok(clock.now_ns().saturating_sub(begin).max(1))
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let ops = pvh::cmdline_u32(ctx.cmdline, "probe.ops", 2000)?;
    let qd = pvh::cmdline_u32(ctx.cmdline, "probe.qd", MAX_QD)?.clamp(1, MAX_QD);
    let seq_mib = pvh::cmdline_u32(ctx.cmdline, "probe.seq_mib", 16)?;
    let clock = Clock::start()?;
    let dev = Device::find(TYPE_BLOCK)?;
    dev.init(&clock, 0)?;
    let capacity = dev.config64(CFG_CAPACITY);
    if capacity < SECTORS_64K * 2 {
        return Err(text!("capacity {} sectors is too small", capacity));
    }
    let mut q = dev.setup_queue(0, NO_VECTOR)?;
    if u32::from(q.size) < qd * u32::from(SLOT_DESCS) {
        return Err(text!(
            "queue of {} entries cannot hold {} requests",
            q.size,
            qd
        ));
    }
    q.set_no_interrupt(true);
    dev.driver_ok();
    let mut rng = Rng::new(0x5eed_b10c);
    let blocks = capacity / SECTORS_4K;
    let random_ns = phase(&mut q, &clock, qd, ops, 4096, || {
        rng.below(blocks) * SECTORS_4K
    })?;
    let seq_ops = seq_mib * 16;
    let mut at = 0u64;
    let seq_ns = phase(&mut q, &clock, qd, seq_ops, 64 * 1024, || {
        if at + SECTORS_64K > capacity {
            at = 0;
        }
        let s = at;
        at += SECTORS_64K;
        s
    })?;
    let iops = u64::from(ops) * 1_000_000_000 / random_ns;
    let seq_kibs = u64::from(seq_ops) * 64 * 1_000_000_000 / seq_ns;
    sprintln!(
        "virtio-blk-bench: {} random 4 KiB reads in {} us, {} KiB sequential in {} us",
        ops,
        random_ns / 1000,
        u64::from(seq_ops) * 64,
        seq_ns / 1000
    );
    Ok(text!(
        "iops={} seq_kibs={} qd={} ops={} seq_mib={}",
        iops,
        seq_kibs,
        qd,
        ops,
        seq_mib
    ))
}
