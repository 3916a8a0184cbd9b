//! `probe=virtio-net-bench`: virtio-net packet rates as a driver that polls sees them (no
//! interrupts: no MSI-X vectors, `VRING_AVAIL_F_NO_INTERRUPT`, used rings polled; kicks
//! only when the device has not turned notifications off), for `benches/virtio_net.py`,
//! with the host peer (`net_peer.py --bench`) on the tap.
//!
//! 1. A ping until the peer answers (it learns the guest's address).
//! 2. Guest -> tap: `probe.frames=N` (default 20000) 64-byte frames, up to `probe.qd=Q`
//!    (default 16, at most 32) in flight on the one transmit queue; the peer counts them.
//! 3. Tap -> guest: the peer floods 64-byte frames; the guest takes N of them, reposting
//!    each receive buffer (32 of 1 KiB, mergeable) at once; then tells the peer to stop.
//!
//! Passes with `frames=N qd=Q tx_pps=N rx_pps=N` (rates from the first frame to the last).

use super::virtio_net_common::*;
use super::Context;
use crate::clock::Clock;
use crate::report::{Outcome, Text};
use crate::virtio::{self, Buf, Device, Virtq, NO_VECTOR, QUEUE_ENTRIES, TYPE_NET};
use crate::{pvh, sprintln, text};

/// Frame size (without the virtio-net header).
const FRAME: usize = 64;
/// Most frames in flight.
const MAX_QD: u32 = 32;
/// Where the transmit slots live (header + frame each).
const SLOTS_AT: usize = 0x8000;
const SLOT: usize = 128;
/// Receive buffer size.
const RX_BUF: usize = 1024;
const RX_AT: usize = 0x10000;
/// How long a phase may take.
const TIMEOUT_NS: u64 = 120_000_000_000;
const HELLO_TRIES: u32 = 30;
const HELLO_WAIT_NS: u64 = 1_000_000_000;

/// Writes a test frame of `kind` into transmit slot `slot`.
fn slot_frame(slot: usize, dst: &[u8; 6], src: &[u8; 6], kind: u8, seq: u16, extra: &[u8]) {
    let at = SLOTS_AT + slot * SLOT;
    for i in 0..HDR_LEN {
        virtio::data_write(at + i, 0);
    }
    let mut frame = [0u8; FRAME];
    frame[..6].copy_from_slice(dst);
    frame[6..12].copy_from_slice(src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[14..22].copy_from_slice(MAGIC);
    frame[KIND_AT] = kind;
    frame[SEQ_AT..SEQ_AT + 2].copy_from_slice(&seq.to_be_bytes());
    for (i, &b) in extra.iter().enumerate() {
        if let Some(f) = frame.get_mut(BODY_AT + i) {
            *f = b;
        }
    }
    for (i, &b) in frame.iter().enumerate() {
        virtio::data_write(at + HDR_LEN + i, b);
    }
}

fn slot_buf(slot: usize) -> Buf {
    Buf {
        addr: virtio::data_addr(SLOTS_AT + slot * SLOT),
        len: (HDR_LEN + FRAME) as u32,
        write: false,
    }
}

fn rx_buf(i: u16) -> Buf {
    Buf {
        addr: virtio::data_addr(RX_AT + usize::from(i) * RX_BUF),
        len: RX_BUF as u32,
        write: true,
    }
}

/// Sends slot `slot` and waits for its completion (polling).
fn send_one(tx: &mut Virtq, clock: &Clock, slot: usize) -> Result<(), Text> {
    tx.submit(slot as u16, &[slot_buf(slot)]);
    tx.kick();
    let end = clock.now_ns() + TIMEOUT_NS;
    while tx.pop_used().is_none() {
        if clock.now_ns() > end {
            return Err(text!("a frame was not sent"));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// The kind byte of received buffer `head` (a single-buffer frame), or 0.
fn rx_kind(head: u16, len: u32) -> u8 {
    let at = RX_AT + usize::from(head) * RX_BUF + HDR_LEN;
    if (len as usize) < HDR_LEN + BODY_AT
        || (0..8).any(|i| virtio::data_read(at + 14 + i) != MAGIC[i])
    {
        return 0;
    }
    virtio::data_read(at + KIND_AT)
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let frames = pvh::cmdline_u32(ctx.cmdline, "probe.frames", 20_000)?.max(1);
    let qd = pvh::cmdline_u32(ctx.cmdline, "probe.qd", 16)?.clamp(1, MAX_QD);
    let clock = Clock::start()?;
    let dev = Device::find(TYPE_NET)?;
    dev.init(&clock, F_MRG_RXBUF | F_MAC)?;
    let mac: [u8; 6] = core::array::from_fn(|i| dev.config8(i as u64));
    dev.set_config_vector(NO_VECTOR);
    let mut rx = dev.setup_queue(0, NO_VECTOR)?;
    let mut tx = dev.setup_queue(1, NO_VECTOR)?;
    if u32::from(tx.size) < qd || rx.size != QUEUE_ENTRIES {
        return Err(text!("queues of {} and {} entries", rx.size, tx.size));
    }
    rx.set_no_interrupt(true);
    tx.set_no_interrupt(true);
    dev.driver_ok();
    for i in 0..rx.size {
        rx.submit(i, &[rx_buf(i)]);
    }
    rx.kick();

    // 1. Hello.
    let mut peer = None;
    for _ in 0..HELLO_TRIES {
        slot_frame(0, &BROADCAST, &mac, K_PING, 0, &[]);
        for i in BODY_AT..FRAME {
            virtio::data_write(SLOTS_AT + HDR_LEN + i, pattern(0, i - BODY_AT, false));
        }
        send_one(&mut tx, &clock, 0)?;
        let end = clock.now_ns() + HELLO_WAIT_NS;
        while peer.is_none() && clock.now_ns() < end {
            if let Some((head, len)) = rx.pop_used() {
                if rx_kind(head, len) == K_PONG {
                    let at = RX_AT + usize::from(head) * RX_BUF + HDR_LEN + 6;
                    peer = Some(core::array::from_fn::<u8, 6, _>(|i| {
                        virtio::data_read(at + i)
                    }));
                }
                rx.submit(head, &[rx_buf(head)]);
                rx.kick();
            }
        }
        if peer.is_some() {
            break;
        }
    }
    let peer = peer.ok_or_else(|| text!("the peer never answered"))?;

    // 2. Guest -> tap.
    for s in 0..qd as usize {
        slot_frame(s, &peer, &mac, K_BENCH_TX, s as u16, &[]);
    }
    let begin = clock.now_ns();
    let (mut submitted, mut done) = (0u32, 0u32);
    while submitted < qd.min(frames) {
        tx.submit(submitted as u16, &[slot_buf(submitted as usize)]);
        submitted += 1;
    }
    tx.kick();
    while done < frames {
        let Some((head, _)) = tx.pop_used() else {
            if clock.now_ns() - begin > TIMEOUT_NS {
                return Err(text!("{} of {} frames sent", done, frames));
            }
            core::hint::spin_loop();
            continue;
        };
        done += 1;
        if submitted < frames {
            tx.submit(head, &[slot_buf(usize::from(head))]);
            submitted += 1;
            if tx.wants_kick() {
                tx.kick();
            }
        }
    }
    let tx_ns = clock.now_ns().saturating_sub(begin).max(1);

    // 3. Tap -> guest.
    slot_frame(0, &peer, &mac, K_BENCH_RX, 0, &u32::MAX.to_be_bytes());
    send_one(&mut tx, &clock, 0)?;
    let (mut got, mut first) = (0u32, 0u64);
    let start = clock.now_ns();
    while got < frames {
        let Some((head, len)) = rx.pop_used() else {
            if clock.now_ns() - start > TIMEOUT_NS {
                return Err(text!("{} of {} frames received", got, frames));
            }
            core::hint::spin_loop();
            continue;
        };
        if rx_kind(head, len) == K_BENCH_DATA {
            if got == 0 {
                first = clock.now_ns();
            }
            got += 1;
        }
        rx.submit(head, &[rx_buf(head)]);
        if rx.wants_kick() {
            rx.kick();
        }
    }
    let rx_ns = clock.now_ns().saturating_sub(first).max(1);
    slot_frame(0, &peer, &mac, K_BENCH_STOP, 0, &[]);
    send_one(&mut tx, &clock, 0)?;
    slot_frame(0, &peer, &mac, K_BYE, 0, &[]);
    send_one(&mut tx, &clock, 0)?;

    let tx_pps = u64::from(frames) * 1_000_000_000 / tx_ns;
    // The first frame starts the clock: N - 1 intervals.
    let rx_pps = u64::from(frames - 1).max(1) * 1_000_000_000 / rx_ns;
    sprintln!(
        "virtio-net-bench: {} frames out in {} us, in in {} us",
        frames,
        tx_ns / 1000,
        rx_ns / 1000
    );
    Ok(text!(
        "frames={} qd={} tx_pps={} rx_pps={}",
        frames,
        qd,
        tx_pps,
        rx_pps
    ))
}
