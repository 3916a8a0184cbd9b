//! The probe's virtio-net driver, shared by the `virtio-net*` scenarios: the device found
//! by PCI ID (1af4:1041), up to [`MAX_PAIRS`] queue pairs (more than one through the
//! control queue's `VQ_PAIRS_SET`), receive buffers posted on every receive queue (1 KiB
//! each with mergeable buffers, so larger frames span several), one frame sent at a time,
//! and the frame formats the host-side peer (`tests/integration/net_peer.py`) speaks.
//!
//! MSI-X vectors: 0 configuration, `1 + 2p` receiveq p, `2 + 2p` transmitq p, then the
//! control queue. A network device may signal once for several used buffers, and where
//! vectors share a CPU and IDT vector (no remapping: all go to the BSP) the local APIC
//! merges interrupts that arrive together, so counts per completion are not fixed: every
//! completion (frame sent, frame received, control command) must be covered by an
//! interrupt on its vector's CPU seen after its used entry was published (an interrupt
//! seen while the entry was already visible covers it, for every queue whose vector goes
//! to that CPU), and no interrupt may arrive anywhere else. Interrupts are claimed as they
//! come ([`Irqs::claim`]).
//!
//! Test frames have EtherType [`ETHERTYPE`] and start with [`MAGIC`], a kind byte and a
//! big-endian sequence number; the rest is a pattern of the sequence number.

use super::virtio_common::Irqs;
use crate::report::Text;
use crate::virtio::{self, Buf, Device, Virtq, QUEUE_ENTRIES};
use crate::{sprintln, text};

/// Feature bits.
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_MQ: u64 = 1 << 22;
/// Configuration fields.
const CFG_MAC: u64 = 0;
const CFG_STATUS: u64 = 6;
const CFG_MAX_PAIRS: u64 = 8;
const S_LINK_UP: u16 = 1;
/// Control commands.
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
pub const CTRL_OK: u8 = 0;
/// Header flags and GSO types.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const HDR_F_DATA_VALID: u8 = 2;
pub const GSO_TCPV4: u8 = 1;
/// The virtio-net header.
pub const HDR_LEN: usize = 12;

/// Most pairs the probe drives.
pub const MAX_PAIRS: usize = 2;
/// Data arena layout: the frame being sent (header first), control request, received
/// frame assembled, receive buffers.
pub const TX_AT: usize = 0;
const TX_MAX: usize = 0x2000;
const CTRL_AT: usize = 0x2000;
const CTRL_ACK_AT: usize = 0x2100;
pub const RX_FRAME_AT: usize = 0x3000;
const RX_FRAME_MAX: usize = 0x2000;
const RX_BUFS_AT: usize = 0x10000;
/// Receive buffer size with and without mergeable buffers.
const RX_BUF_MERGEABLE: usize = 1024;
const RX_BUF_WHOLE: usize = 2048;

/// Test frames' EtherType (IEEE local experimental).
pub const ETHERTYPE: u16 = 0x88b5;
/// What test frames start with.
pub const MAGIC: &[u8; 8] = b"IRVMMNET";
/// Offset of the kind byte and the sequence number in a test frame.
pub const KIND_AT: usize = 14 + 8;
pub const SEQ_AT: usize = KIND_AT + 1;
/// First pattern byte.
pub const BODY_AT: usize = SEQ_AT + 2;
/// Kinds.
pub const K_PING: u8 = 1;
pub const K_PONG: u8 = 2;
pub const K_BYE: u8 = 3;
pub const K_BENCH_TX: u8 = 4;
pub const K_BENCH_RX: u8 = 5;
pub const K_BENCH_DATA: u8 = 6;
pub const K_BENCH_STOP: u8 = 7;
/// Broadcast.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Pattern byte `i` of a ping (`pong` false) or pong with sequence number `seq`.
pub fn pattern(seq: u16, i: usize, pong: bool) -> u8 {
    let base = if pong {
        usize::from(seq) * 13 + 0x5a
    } else {
        usize::from(seq) * 7
    };
    (base + i) as u8
}

/// A received frame, copied to [`RX_FRAME_AT`] (header first).
#[derive(Clone, Copy, Debug)]
pub struct Rx {
    /// Queue pair it came on.
    pub pair: usize,
    /// Bytes after the header.
    pub len: usize,
    /// Buffers it spanned.
    pub buffers: u16,
}

impl Rx {
    /// Byte `i` of the frame (after the header).
    pub fn byte(&self, i: usize) -> u8 {
        if i < self.len {
            virtio::data_read(RX_FRAME_AT + HDR_LEN + i)
        } else {
            0
        }
    }

    /// Big-endian u16 at frame offset `i`.
    pub fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.byte(i), self.byte(i + 1)])
    }

    /// Header byte `i`.
    pub fn hdr(&self, i: usize) -> u8 {
        virtio::data_read(RX_FRAME_AT + i)
    }

    /// Little-endian header field at `i`.
    pub fn hdr16(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.hdr(i), self.hdr(i + 1)])
    }

    /// True for a test frame of `kind` (and sequence number `seq`, if given).
    pub fn is(&self, kind: u8, seq: Option<u16>) -> bool {
        self.len >= BODY_AT
            && self.be16(12) == ETHERTYPE
            && (0..8).all(|i| self.byte(14 + i) == MAGIC[i])
            && self.byte(KIND_AT) == kind
            && seq.is_none_or(|s| self.be16(SEQ_AT) == s)
    }

    /// The source MAC address.
    pub fn source(&self) -> [u8; 6] {
        core::array::from_fn(|i| self.byte(6 + i))
    }
}

/// A started virtio-net device.
pub struct Nic {
    /// The device.
    pub dev: Device,
    /// Accepted features.
    pub features: u64,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Pairs in use.
    pub pairs: usize,
    /// Pairs the device has.
    pub max_pairs: u16,
    rx: [Option<Virtq>; MAX_PAIRS],
    tx: [Option<Virtq>; MAX_PAIRS],
    ctrl: Option<(Virtq, usize)>,
    buf_len: usize,
    /// Frames received per pair.
    pub rx_frames: [u32; MAX_PAIRS],
    /// Frames sent per pair.
    pub tx_frames: [u32; MAX_PAIRS],
    /// Frames that were not what the scenario waited for.
    pub stray: u32,
    /// Per queue (receiveq and transmitq of each pair, then the control queue): the used
    /// index the device had published when the last interrupt claimed on its vector's CPU
    /// was seen; entries before it are covered.
    covered: [u16; 2 * MAX_PAIRS + 1],
}

/// Waits up to the request timeout for `q`'s next used entry: (entry index, head, length).
fn wait_used(q: &mut Virtq, irqs: &Irqs) -> Option<(u16, u16, u32)> {
    let mut got = None;
    super::ir_common::wait(&irqs.clock, super::virtio_common::REQUEST_TIMEOUT_NS, || {
        let entry = q.used_seen();
        got = q.pop_used().map(|(h, l)| (entry, h, l));
        got.is_some()
    });
    got
}

/// MSI-X vectors to program for up to `pairs` pairs on `dev` (config, pairs, control).
pub fn vectors(dev: &Device, pairs: usize) -> usize {
    (2 + 2 * pairs).min(usize::from(dev.msix.vectors()))
}

impl Nic {
    /// Initialises `dev` asking for `wanted` features (VERSION_1, MAC and STATUS are always
    /// asked), with up to `want_pairs` pairs as the `irqs` vectors allow; posts receive
    /// buffers everywhere.
    pub fn open(dev: Device, irqs: &mut Irqs, wanted: u64, want_pairs: usize) -> Result<Nic, Text> {
        let mut nic = Self::open_with(dev, irqs, wanted, want_pairs)?;
        for p in 0..nic.pairs {
            nic.post_rx(p, 0);
        }
        Ok(nic)
    }

    /// [`Nic::open`] without posting receive buffers.
    pub fn open_with(dev: Device, irqs: &mut Irqs, wanted: u64, want_pairs: usize) -> Result<Nic, Text> {
        // Without mergeable buffers only whole frames fit: no large receive offloads.
        let mut wanted = wanted | F_MAC | F_STATUS;
        if irqs.count < 4 {
            wanted &= !(F_CTRL_VQ | F_MQ);
        }
        let offered = dev.device_features();
        if offered & F_MRG_RXBUF == 0 || wanted & F_MRG_RXBUF == 0 {
            wanted &= !F_GUEST_TSO4;
        }
        if offered & F_CTRL_VQ == 0 {
            wanted &= !F_MQ;
        }
        let features = dev.init(&irqs.clock, wanted)?;
        let mac = core::array::from_fn(|i| dev.config8(CFG_MAC + i as u64));
        if features & F_STATUS != 0 && dev.config16(CFG_STATUS) & S_LINK_UP == 0 {
            return Err(text!("{}: link down (status {})", dev.function, dev.config16(CFG_STATUS)));
        }
        let max_pairs = if features & F_MQ != 0 {
            dev.config16(CFG_MAX_PAIRS).max(1)
        } else {
            1
        };
        let with_ctrl = features & F_CTRL_VQ != 0;
        let vector_pairs = irqs.count.saturating_sub(if with_ctrl { 2 } else { 1 }) / 2;
        let pairs = want_pairs
            .min(usize::from(max_pairs))
            .min(vector_pairs)
            .clamp(1, MAX_PAIRS);
        dev.set_config_vector(0);
        let mut rx: [Option<Virtq>; MAX_PAIRS] = Default::default();
        let mut tx: [Option<Virtq>; MAX_PAIRS] = Default::default();
        for p in 0..pairs {
            let q = 2 * p as u16;
            rx[p] = Some(dev.setup_queue(q, q + 1)?);
            tx[p] = Some(dev.setup_queue(q + 1, q + 2)?);
        }
        let ctrl = if with_ctrl {
            let vector = 1 + 2 * pairs;
            Some((dev.setup_queue(2 * max_pairs, vector as u16)?, vector))
        } else {
            None
        };
        dev.driver_ok();
        let buf_len = if features & F_MRG_RXBUF != 0 {
            RX_BUF_MERGEABLE
        } else {
            RX_BUF_WHOLE
        };
        let mut nic = Nic {
            dev,
            features,
            mac,
            pairs: 1,
            max_pairs,
            rx,
            tx,
            ctrl,
            buf_len,
            rx_frames: [0; MAX_PAIRS],
            tx_frames: [0; MAX_PAIRS],
            stray: 0,
            covered: [0; 2 * MAX_PAIRS + 1],
        };
        if pairs > 1 {
            let ack = nic.control(irqs, CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, &(pairs as u16).to_le_bytes())?;
            if ack != CTRL_OK {
                return Err(text!("VQ_PAIRS_SET {} answered {}", pairs, ack));
            }
        }
        nic.pairs = pairs;
        sprintln!(
            "virtio-net: {} MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, features 0x{:x}, {} of {} pairs",
            nic.dev.function,
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            features,
            pairs,
            max_pairs
        );
        Ok(nic)
    }

    /// Posts receive buffers `from..` (descriptor i, buffer i) on pair `p` and kicks.
    pub fn post_rx(&mut self, p: usize, from: u16) {
        let buf_len = self.buf_len;
        if let Some(q) = self.rx.get_mut(p).and_then(Option::as_mut) {
            for i in from..q.size {
                q.submit(i, &[rx_buf(p, i, buf_len)]);
            }
            q.kick();
        }
    }

    /// Queue slot `slot`: receiveq of pair `slot / 2` when even, else its transmitq.
    pub fn queue(&mut self, slot: usize) -> Option<&mut Virtq> {
        let pair = if slot % 2 == 0 { &mut self.rx } else { &mut self.tx };
        pair.get_mut(slot / 2).and_then(Option::as_mut)
    }

    /// Waits for the next used entry of queue slot `slot` and its interrupt: (head, length).
    pub fn complete_raw(&mut self, irqs: &mut Irqs, slot: usize, what: &str) -> Result<(u16, u32), Text> {
        let q = self.queue(slot).ok_or_else(|| text!("no queue slot {}", slot))?;
        let (entry, head, len) = wait_used(q, irqs).ok_or_else(|| text!("{}: not completed", what))?;
        self.account(irqs, slot, slot + 1, entry, what)?;
        Ok((head, len))
    }

    /// True when every bit of `f` was accepted.
    pub fn has(&self, f: u64) -> bool {
        self.features & f == f
    }

    /// Sends a control command; returns the ack byte.
    pub fn control(&mut self, irqs: &mut Irqs, class: u8, cmd: u8, data: &[u8]) -> Result<u8, Text> {
        let (q, vector) = self
            .ctrl
            .as_mut()
            .ok_or_else(|| text!("no control queue"))?;
        virtio::data_write(CTRL_AT, class);
        virtio::data_write(CTRL_AT + 1, cmd);
        for (i, &b) in data.iter().enumerate() {
            virtio::data_write(CTRL_AT + 2 + i, b);
        }
        virtio::data_write(CTRL_ACK_AT, 0xee);
        q.submit(
            0,
            &[
                Buf {
                    addr: virtio::data_addr(CTRL_AT),
                    len: 2,
                    write: false,
                },
                Buf {
                    addr: virtio::data_addr(CTRL_AT + 2),
                    len: data.len() as u32,
                    write: false,
                },
                Buf {
                    addr: virtio::data_addr(CTRL_ACK_AT),
                    len: 1,
                    write: true,
                },
            ],
        );
        q.kick();
        let vector = *vector;
        let (entry, _, _) = wait_used(q, irqs).ok_or_else(|| text!("control command not completed"))?;
        self.account(irqs, 2 * MAX_PAIRS, vector, entry, "virtio-net control command")?;
        Ok(virtio::data_read(CTRL_ACK_AT))
    }

    /// Sends a control command with no writable byte for the ack (a driver bug); returns
    /// the used length.
    pub fn control_without_ack(&mut self, irqs: &mut Irqs) -> Result<u32, Text> {
        let (q, vector) = self
            .ctrl
            .as_mut()
            .ok_or_else(|| text!("no control queue"))?;
        virtio::data_write(CTRL_AT, CTRL_MQ);
        virtio::data_write(CTRL_AT + 1, CTRL_MQ_VQ_PAIRS_SET);
        q.submit(
            0,
            &[Buf {
                addr: virtio::data_addr(CTRL_AT),
                len: 4,
                write: false,
            }],
        );
        q.kick();
        let vector = *vector;
        let (entry, _, len) = wait_used(q, irqs).ok_or_else(|| text!("control command not completed"))?;
        self.account(irqs, 2 * MAX_PAIRS, vector, entry, "virtio-net control command")?;
        Ok(len)
    }

    /// Sends the `len`-byte frame at [`TX_AT`] + [`HDR_LEN`] with header `hdr` on pair `p`
    /// and waits for its completion and interrupt.
    pub fn send(&mut self, irqs: &mut Irqs, p: usize, hdr: &[u8; HDR_LEN], len: usize) -> Result<(), Text> {
        if len + HDR_LEN > TX_MAX {
            return Err(text!("frame of {} bytes too long for the probe", len));
        }
        for (i, &b) in hdr.iter().enumerate() {
            virtio::data_write(TX_AT + i, b);
        }
        let q = self
            .tx
            .get_mut(p)
            .and_then(Option::as_mut)
            .ok_or_else(|| text!("no transmit queue {}", p))?;
        q.submit(
            0,
            &[Buf {
                addr: virtio::data_addr(TX_AT),
                len: (HDR_LEN + len) as u32,
                write: false,
            }],
        );
        q.kick();
        let (entry, _, _) = wait_used(q, irqs).ok_or_else(|| text!("transmit on pair {} not completed", p))?;
        self.account(irqs, 2 * p + 1, 2 + 2 * p, entry, "virtio-net transmit")?;
        self.tx_frames[p] += 1;
        Ok(())
    }

    /// Waits up to `timeout_ns` for the next frame on any receive queue, copies it to
    /// [`RX_FRAME_AT`], gives its buffers back and waits for its interrupt.
    pub fn recv(&mut self, irqs: &mut Irqs, timeout_ns: u64) -> Result<Option<Rx>, Text> {
        let mut first = None;
        let pairs = self.pairs;
        let rx = &mut self.rx;
        super::ir_common::wait(&irqs.clock, timeout_ns, || {
            for (p, q) in rx.iter_mut().enumerate().take(pairs) {
                if let Some(q) = q.as_mut() {
                    let entry = q.used_seen();
                    if let Some(u) = q.pop_used() {
                        first = Some((p, entry, u));
                        return true;
                    }
                }
            }
            false
        });
        let Some((p, entry, (head, len))) = first else {
            return Ok(None);
        };
        let buf_len = self.buf_len;
        let q = self.rx[p].as_mut().ok_or_else(|| text!("receive queue {}", p))?;
        let mut total = copy_in(p, head, len as usize, 0, buf_len)?;
        let mergeable = self.features & F_MRG_RXBUF != 0;
        let buffers = if mergeable {
            u16::from_le_bytes([virtio::data_read(RX_FRAME_AT + 10), virtio::data_read(RX_FRAME_AT + 11)])
        } else {
            1
        };
        if buffers == 0 || usize::from(buffers) > usize::from(QUEUE_ENTRIES) {
            return Err(text!("frame claims {} buffers", buffers));
        }
        q.submit(head, &[rx_buf(p, head, buf_len)]);
        for _ in 1..buffers {
            let mut next = None;
            super::ir_common::wait(&irqs.clock, super::virtio_common::REQUEST_TIMEOUT_NS, || {
                next = q.pop_used();
                next.is_some()
            });
            let (h, l) = next.ok_or_else(|| text!("buffer {} of a frame never came", buffers))?;
            total = copy_in(p, h, l as usize, total, buf_len)?;
            q.submit(h, &[rx_buf(p, h, buf_len)]);
        }
        q.kick();
        self.account(irqs, 2 * p, 1 + 2 * p, entry, "virtio-net receive")?;
        self.rx_frames[p] += 1;
        if total < HDR_LEN {
            return Err(text!("received {} bytes, less than the header", total));
        }
        Ok(Some(Rx {
            pair: p,
            len: total - HDR_LEN,
            buffers,
        }))
    }

    /// Checks that used entry `entry` of queue slot `slot` (2p receive, 2p + 1 transmit,
    /// `2 * MAX_PAIRS` control), whose interrupts go to MSI-X vector `vector`, is covered
    /// by an interrupt, waiting for one if needed.
    fn account(&mut self, irqs: &mut Irqs, slot: usize, vector: usize, entry: u16, what: &str) -> Result<(), Text> {
        if self.covered[slot].wrapping_sub(entry) as i16 > 0 {
            return Ok(());
        }
        irqs.claim(vector, true, what)?;
        let target = irqs.targets[vector];
        for p in 0..MAX_PAIRS {
            if let Some(q) = self.rx[p].as_ref().filter(|_| irqs.targets[1 + 2 * p] == target) {
                self.covered[2 * p] = q.used_published();
            }
            if let Some(q) = self.tx[p].as_ref().filter(|_| irqs.targets[2 + 2 * p] == target) {
                self.covered[2 * p + 1] = q.used_published();
            }
        }
        if let Some((q, v)) = self.ctrl.as_ref() {
            if irqs.targets[*v] == target {
                self.covered[2 * MAX_PAIRS] = q.used_published();
            }
        }
        Ok(())
    }

    /// Lets late interrupts come and claims them (before [`Irqs::check_all`], which then
    /// checks that none went anywhere else).
    pub fn settle(&mut self, irqs: &mut Irqs) -> Result<(), Text> {
        super::ir_common::settle(&irqs.clock, super::ir_common::SETTLE_NS);
        for v in 1..irqs.count {
            irqs.claim(v, false, "virtio-net")?;
        }
        Ok(())
    }

    /// Receives until a frame satisfying `want` arrives (others are counted as strays).
    pub fn recv_matching(
        &mut self,
        irqs: &mut Irqs,
        timeout_ns: u64,
        what: &str,
        mut want: impl FnMut(&Rx) -> bool,
    ) -> Result<Rx, Text> {
        let end = irqs.clock.now_ns() + timeout_ns;
        loop {
            let now = irqs.clock.now_ns();
            if now >= end {
                return Err(text!("no {} within {} ms", what, timeout_ns / 1_000_000));
            }
            match self.recv(irqs, end - now)? {
                Some(rx) if want(&rx) => return Ok(rx),
                Some(_) => self.stray += 1,
                None => {}
            }
        }
    }
}

/// Receive buffer `i` of pair `p`.
pub fn rx_buf(p: usize, i: u16, len: usize) -> Buf {
    Buf {
        addr: virtio::data_addr(RX_BUFS_AT + (p * usize::from(QUEUE_ENTRIES) + usize::from(i)) * len),
        len: len as u32,
        write: true,
    }
}

/// Appends `len` bytes of buffer `head` of pair `p` to the frame at [`RX_FRAME_AT`] (which
/// holds `at` bytes); returns the new length.
fn copy_in(p: usize, head: u16, len: usize, at: usize, buf_len: usize) -> Result<usize, Text> {
    if head >= QUEUE_ENTRIES || len > buf_len || at + len > RX_FRAME_MAX {
        return Err(text!("used entry {} of {} bytes (frame at {})", head, len, at));
    }
    let src = RX_BUFS_AT + (p * usize::from(QUEUE_ENTRIES) + usize::from(head)) * buf_len;
    for i in 0..len {
        virtio::data_write(RX_FRAME_AT + at + i, virtio::data_read(src + i));
    }
    Ok(at + len)
}

/// Writes frame byte `i` (after the header) of the frame being sent.
pub fn put(i: usize, b: u8) {
    virtio::data_write(TX_AT + HDR_LEN + i, b);
}

/// Writes `bytes` at frame offset `i`.
pub fn put_all(i: usize, bytes: &[u8]) {
    for (k, &b) in bytes.iter().enumerate() {
        put(i + k, b);
    }
}

/// Frame byte `i` of the frame being sent.
pub fn get(i: usize) -> u8 {
    virtio::data_read(TX_AT + HDR_LEN + i)
}

/// Writes the Ethernet header and, for a test frame, magic, kind and sequence number.
pub fn put_test_header(dst: &[u8; 6], src: &[u8; 6], kind: u8, seq: u16) {
    put_all(0, dst);
    put_all(6, src);
    put_all(12, &ETHERTYPE.to_be_bytes());
    put_all(14, MAGIC);
    put(KIND_AT, kind);
    put_all(SEQ_AT, &seq.to_be_bytes());
}

/// The one's-complement sum of frame bytes `from..to` of the frame being sent (or, with
/// `rx`, of a received one), added to `sum`.
pub fn ones_sum(mut sum: u32, from: usize, to: usize, rx: Option<&Rx>) -> u32 {
    let byte = |i: usize| match rx {
        Some(r) => r.byte(i),
        None => get(i),
    };
    let mut i = from;
    while i < to {
        let hi = u32::from(byte(i));
        let lo = if i + 1 < to { u32::from(byte(i + 1)) } else { 0 };
        sum += hi << 8 | lo;
        i += 2;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
