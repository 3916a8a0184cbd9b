//! `probe=virtio-net-bad`: a hostile driver against the virtio-net device (1af4:1041), with
//! the host peer on its tap; the VMM must keep running, answer as the virtio specification
//! says, and let nothing malformed reach the tap. For irvmm (QEMU makes other choices:
//! it marks the device broken on some of these).
//!
//! 1. queue 0 enabled with 12 entries (not a power of two): DEVICE_NEEDS_RESET; reset;
//! 2. device-configuration writes of 1, 2, 4 and 8 bytes: ignored (MAC unchanged);
//! 3. notifies of queue 40, which does not exist, and of the receiveq before DRIVER_OK:
//!    nothing;
//! 4. no offloads negotiated; receive buffers: a device-readable one, then one outside
//!    RAM, then good ones. Pings until the first two come back with length 0 (the first
//!    holds no header, the second drops the frame), then a ping whose pong arrives whole;
//! 5. transmit chains each used with length 0 and never seen by the peer (which would
//!    answer a ping it received): a header of 8 bytes, a buffer outside RAM, a partial
//!    checksum without `VIRTIO_NET_F_CSUM`, a UDP fragmentation GSO type, a chain that loops;
//!    then a good ping;
//! 6. control commands: an unknown class, `VQ_PAIRS_SET` without `MQ`, and one without an
//!    ack byte (used with length 0); each acked `VIRTIO_NET_ERR`;
//! 7. a transmit available index 100 entries ahead of its ring: DEVICE_NEEDS_RESET with a
//!    configuration interrupt;
//! 8. reset, re-initialise, one ping.
//!
//! Passes with `bad_size=needs_reset rx_readonly=0 rx_outside=0 tx_bad=5 ctrl=err
//! runaway=needs_reset stray=0`.

use super::virtio_common::{self, Irqs, REQUEST_TIMEOUT_NS};
use super::virtio_net_common::*;
use super::Context;
use crate::report::{Outcome, Text};
use crate::virtio::{self, Device, DESC_NEXT, DESC_WRITE, S_FEATURES_OK, TYPE_NET};
use crate::{sprintln, text};

const S_NEEDS_RESET: u8 = 0x40;
/// Far beyond the probe's 128 MiB and any MMIO.
const OUTSIDE_RAM: u64 = 0x7fff_0000_0000;
/// A queue index no device here has.
const NO_SUCH_QUEUE: u16 = 40;
/// Sequence numbers of hostile pings (the peer would answer them).
const HOSTILE_SEQ: u16 = 0x7f00;
const PING_LEN: usize = 100;
const HELLO_TRIES: u32 = 30;
const HELLO_WAIT_NS: u64 = 1_000_000_000;
/// Slot of the receiveq and transmitq of pair 0.
const RXQ: usize = 0;
const TXQ: usize = 1;

fn wait_status(dev: &Device, irqs: &Irqs, bit: u8, what: &str) -> Result<(), Text> {
    if super::ir_common::wait(&irqs.clock, REQUEST_TIMEOUT_NS, || dev.status() & bit != 0) {
        return Ok(());
    }
    Err(text!(
        "{}: status 0x{:x}, expected bit 0x{:x}",
        what,
        dev.status(),
        bit
    ))
}

/// Writes a ping with sequence number `seq` at the transmit area.
fn ping_frame(mac: &[u8; 6], seq: u16) {
    put_test_header(&BROADCAST, mac, K_PING, seq);
    for i in BODY_AT..PING_LEN {
        put(i, pattern(seq, i - BODY_AT, false));
    }
}

/// A ping and its pong.
fn ping(nic: &mut Nic, irqs: &mut Irqs, seq: u16) -> Result<(), Text> {
    let mac = nic.mac;
    ping_frame(&mac, seq);
    nic.send(irqs, 0, &[0; HDR_LEN], PING_LEN)?;
    nic.recv_matching(irqs, 10 * REQUEST_TIMEOUT_NS, "pong", |r| {
        r.is(K_PONG, Some(seq)) && r.len == PING_LEN
    })?;
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_NET)?;
    let (_smp, mut irqs) = virtio_common::setup(ctx, &dev, 4)?;

    // 1. A queue size that is not a power of two.
    dev.init(&irqs.clock, 0)?;
    dev.setup_queue_sized(0, 1, 12)?;
    wait_status(&dev, &irqs, S_NEEDS_RESET, "queue of 12 entries")?;
    dev.reset(&irqs.clock)?;

    // 2. Device-configuration writes of every size.
    let mac: [u8; 6] = core::array::from_fn(|i| dev.config8(i as u64));
    for (off, size) in [(0u64, 1u64), (2, 2), (4, 4), (0, 8), (6, 2), (8, 2)] {
        dev.config_write(off, u64::MAX, size);
    }
    if (0..6).any(|i| dev.config8(i as u64) != mac[i]) {
        return Err(text!("configuration writes changed the MAC address"));
    }

    // 3. Notifies of a queue that does not exist and of one not yet running.
    dev.init(&irqs.clock, 0)?;
    dev.set_config_vector(0);
    dev.setup_queue(0, 1)?;
    dev.notify_raw(NO_SUCH_QUEUE)?;
    dev.notify_raw(0)?;
    if dev.status() & S_FEATURES_OK == 0 || dev.status() & S_NEEDS_RESET != 0 {
        return Err(text!("status 0x{:x} after stray notifies", dev.status()));
    }

    // 4. Bad receive buffers first.
    let mut nic = Nic::open_with(dev, &mut irqs, F_MRG_RXBUF | F_CTRL_VQ, 1)?;
    let mac = nic.mac;
    let good = rx_buf(0, 2, 1024);
    {
        let q = nic.queue(RXQ).ok_or_else(|| text!("no receiveq"))?;
        q.write_desc(0, good.addr, 1024, 0, 0);
        q.write_desc(1, OUTSIDE_RAM, 1024, DESC_WRITE, 0);
        q.push_head(0);
        q.push_head(1);
        q.kick();
    }
    let mut bad_rx = [None; 2];
    for _ in 0..HELLO_TRIES {
        ping_frame(&mac, 0);
        nic.send(&mut irqs, 0, &[0; HDR_LEN], PING_LEN)?;
        let end = irqs.clock.now_ns() + HELLO_WAIT_NS;
        while bad_rx[1].is_none() && irqs.clock.now_ns() < end {
            let q = nic.queue(RXQ).ok_or_else(|| text!("no receiveq"))?;
            if q.used_published() == q.used_seen() {
                super::ir_common::wait(&irqs.clock, 1_000_000, || false);
                continue;
            }
            let used = nic.complete_raw(&mut irqs, RXQ, "bad receive buffer")?;
            let slot = if bad_rx[0].is_none() { 0 } else { 1 };
            bad_rx[slot] = Some(used);
        }
        if bad_rx[1].is_some() {
            break;
        }
    }
    let (ro, out) = match bad_rx {
        [Some(a), Some(b)] => (a, b),
        _ => return Err(text!("the bad receive buffers never came back: {:?}", bad_rx)),
    };
    if ro != (0, 0) || out != (1, 0) {
        return Err(text!(
            "bad receive buffers came back as {:?} and {:?}",
            ro,
            out
        ));
    }
    nic.post_rx(0, 2);
    ping(&mut nic, &mut irqs, 1)?;

    // 5. Bad transmit chains.
    let tx = virtio::data_addr(TX_AT);
    let (hdr_at, frame_at) = (TX_AT, TX_AT + HDR_LEN);
    let mut bad_tx = 0;
    for case in 0..5u16 {
        let seq = HOSTILE_SEQ + case;
        ping_frame(&mac, seq);
        for i in 0..HDR_LEN {
            virtio::data_write(hdr_at + i, 0);
        }
        let q = nic.queue(TXQ).ok_or_else(|| text!("no transmitq"))?;
        let len = (HDR_LEN + PING_LEN) as u32;
        match case {
            // A header of 8 bytes.
            0 => q.write_desc(0, tx, 8, 0, 0),
            // The frame outside RAM.
            1 => {
                q.write_desc(0, tx, HDR_LEN as u32, DESC_NEXT, 1);
                q.write_desc(1, OUTSIDE_RAM, PING_LEN as u32, 0, 0);
            }
            // A partial checksum without VIRTIO_NET_F_CSUM.
            2 => {
                virtio::data_write(hdr_at, HDR_F_NEEDS_CSUM);
                virtio::data_write(hdr_at + 6, 14);
                virtio::data_write(hdr_at + 8, 2);
                q.write_desc(0, tx, len, 0, 0);
            }
            // UDP fragmentation offload, never offered.
            3 => {
                virtio::data_write(hdr_at + 1, 3);
                q.write_desc(0, tx, len, 0, 0);
            }
            // A chain that loops.
            _ => {
                q.write_desc(0, tx, len, DESC_NEXT, 1);
                q.write_desc(1, virtio::data_addr(frame_at), 16, DESC_NEXT, 0);
            }
        }
        q.push_head(0);
        q.kick();
        let (_, used) = nic.complete_raw(&mut irqs, TXQ, "bad transmit chain")?;
        if used != 0 {
            return Err(text!("bad transmit chain {} used with length {}", case, used));
        }
        bad_tx += 1;
    }
    ping(&mut nic, &mut irqs, 2)?;

    // 6. Bad control commands.
    let unknown = nic.control(&mut irqs, 0x7f, 0, &[0])?;
    let pairs = nic.control(&mut irqs, 4, 0, &2u16.to_le_bytes())?;
    if unknown == CTRL_OK || pairs == CTRL_OK {
        return Err(text!(
            "unknown class acked {}, VQ_PAIRS_SET without MQ acked {}",
            unknown,
            pairs
        ));
    }
    let no_ack = nic.control_without_ack(&mut irqs)?;
    if no_ack != 0 {
        return Err(text!("control command without an ack byte used with {}", no_ack));
    }

    // 7. A runaway available index.
    {
        let q = nic.queue(TXQ).ok_or_else(|| text!("no transmitq"))?;
        q.runaway_avail(100);
        q.kick();
    }
    wait_status(&nic.dev, &irqs, S_NEEDS_RESET, "runaway available index")?;
    irqs.expect_interrupt(0, "configuration interrupt for DEVICE_NEEDS_RESET")?;

    // 8. Reset and a good ping.
    let dev = nic.dev;
    dev.reset(&irqs.clock)?;
    let stray_before = nic.stray;
    let mut nic = Nic::open(dev, &mut irqs, F_MRG_RXBUF, 1)?;
    nic.stray += stray_before;
    ping(&mut nic, &mut irqs, 3)?;
    put_test_header(&BROADCAST, &mac, K_BYE, 0);
    nic.send(&mut irqs, 0, &[0; HDR_LEN], BODY_AT)?;
    nic.settle(&mut irqs)?;
    let total = irqs.check_all()?;
    if nic.stray != 0 {
        return Err(text!("{} frames that were not answers to good pings", nic.stray));
    }
    sprintln!("virtio-net-bad: {} interrupts, each where expected", total);
    Ok(text!(
        "bad_size=needs_reset rx_readonly={} rx_outside={} tx_bad={} ctrl=err runaway=needs_reset stray={}",
        ro.1,
        out.1,
        bad_tx,
        nic.stray
    ))
}
