//! The virtio-net handler on a fake back end, driven through real split rings in guest
//! memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use libc::c_uint;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::offload::{HDR_FLAGS, HDR_GSO_TYPE, HDR_NUM_BUFFERS};
use super::*;
use crate::interrupt::VirtioInterrupt;
use crate::queue::QueueRegs;
use crate::worker::{Activation, Interest, QueueHandler};

/// What the fake back end saw and holds.
#[derive(Default)]
struct State {
    inbox: Vec<VecDeque<Vec<u8>>>,
    sent: Vec<Vec<Vec<u8>>>,
    offloads: Vec<c_uint>,
    enabled: Vec<bool>,
    full: bool,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn new(queues: usize) -> Fake {
        Fake(Arc::new(Mutex::new(State {
            inbox: vec![VecDeque::new(); queues],
            sent: vec![Vec::new(); queues],
            enabled: vec![true; queues],
            ..State::default()
        })))
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn push(&self, q: usize, frame: Vec<u8>) {
        self.st().inbox[q].push_back(frame);
    }
}

impl NetBackend for Fake {
    fn queues(&self) -> usize {
        self.st().inbox.len()
    }

    fn recv(&mut self, q: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.st().inbox[q].pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }

    fn send(&mut self, q: usize, frame: &[u8]) -> io::Result<bool> {
        let mut s = self.st();
        if s.full {
            return Ok(false);
        }
        s.sent[q].push(frame.to_vec());
        Ok(true)
    }

    fn set_offloads(&mut self, flags: c_uint) -> io::Result<()> {
        self.st().offloads.push(flags);
        Ok(())
    }

    fn set_queue_enabled(&mut self, q: usize, on: bool) -> io::Result<()> {
        self.st().enabled[q] = on;
        Ok(())
    }

    fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const DATA: u64 = 0x10_0000;
const RAM: usize = 0x20_0000;

/// A driver's view of one split ring.
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new(q: usize, size: u16) -> Ring {
        let desc = 0x1_0000 * (q as u64 + 1);
        Ring {
            size,
            desc,
            avail: desc + 0x1000,
            used: desc + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn regs(&self, max: u16) -> QueueRegs {
        QueueRegs {
            size: self.size,
            enabled: true,
            desc: self.desc,
            driver: self.avail,
            device: self.used,
            ..QueueRegs::new(max)
        }
    }

    /// Makes `bufs` (address, length, device-writable) available as one chain.
    fn add(&mut self, m: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if write { W } else { 0 };
            if k + 1 < bufs.len() {
                flags |= NEXT;
            }
            let d = self.desc + 16 * u64::from(i);
            m.write_obj(addr, GuestAddress(d)).unwrap();
            m.write_obj(len, GuestAddress(d + 8)).unwrap();
            m.write_obj(flags, GuestAddress(d + 12)).unwrap();
            m.write_obj(self.next_desc, GuestAddress(d + 14)).unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// New used entries: (id, len).
    fn take_used(&mut self, m: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = m.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            out.push((
                m.read_obj(GuestAddress(e)).unwrap(),
                m.read_obj(GuestAddress(e + 4)).unwrap(),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A started device: handler, fake back end, guest memory and the driver's rings.
struct Rig {
    h: NetHandler<Fake>,
    fake: Fake,
    mem: GuestMemoryMmap,
    active: Activation,
    rings: Vec<Ring>,
}

impl Rig {
    fn new(pairs: usize, features: u64) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let fake = Fake::new(pairs);
        let mut h = NetHandler::new("net-test".into(), fake.clone(), pairs);
        let nq = 2 * pairs + 1;
        let rings: Vec<Ring> = (0..nq).map(|q| Ring::new(q, 16)).collect();
        let queues = rings
            .iter()
            .map(|r| Some(r.regs(NET_QUEUE_SIZE).build(false, &mem).unwrap()))
            .collect();
        let vectors = (0..=nq)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect();
        let interrupt = Arc::new(VirtioInterrupt::new(vectors, nq));
        h.activate(features);
        Rig {
            h,
            fake,
            mem: mem.clone(),
            active: Activation {
                queues,
                mem: mem.into(),
                interrupt,
                features,
            },
            rings,
        }
    }

    fn kick(&mut self, q: usize) -> bool {
        self.h.process_queue(q, &mut self.active).unwrap()
    }

    fn tap_event(&mut self, q: usize) {
        self.h.process_source(q, Some(&mut self.active)).unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

const ALL: u64 = BASE_FEATURES | offload::GUEST_OFFLOADS | offload::HOST_OFFLOADS;

/// A frame with header `flags`/`gso` and `len` bytes of payload.
fn frame(flags: u8, gso: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; tap::VNET_HDR_LEN];
    f[HDR_FLAGS] = flags;
    f[HDR_GSO_TYPE] = gso;
    f.extend((0..len).map(|i| (i * 7 + 3) as u8));
    f
}

#[test]
fn transmits_frames_split_over_descriptors() {
    let mut r = Rig::new(1, ALL);
    let f = frame(0, 0, 100);
    r.mem.write_slice(&f, GuestAddress(DATA)).unwrap();
    r.rings[1].add(&r.mem, &[(DATA, 12, false), (DATA + 12, 100, false)]);
    assert!(!r.kick(1));
    assert_eq!(r.fake.st().sent[0], vec![f]);
    assert_eq!(r.rings[1].take_used(&r.mem), vec![(0, 0)]);
    assert_eq!(r.h.stats().tx, 1);
    assert!(r.active.interrupt.signalled() == 0, "no vector assigned");
}

#[test]
fn bad_transmit_chains_are_dropped_not_fatal() {
    let mut r = Rig::new(1, BASE_FEATURES);
    // Too short for the header.
    r.mem.write_slice(&[0u8; 8], GuestAddress(DATA)).unwrap();
    r.rings[1].add(&r.mem, &[(DATA, 8, false)]);
    // A partial checksum without VIRTIO_NET_F_CSUM.
    let f = frame(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 60);
    r.mem.write_slice(&f, GuestAddress(DATA + 0x100)).unwrap();
    r.rings[1].add(&r.mem, &[(DATA + 0x100, f.len() as u32, false)]);
    // Outside RAM.
    r.rings[1].add(&r.mem, &[(RAM as u64 - 8, 64, false)]);
    // Too long.
    r.rings[1].add(&r.mem, &[(DATA, 0x10000, false), (DATA, 0x10000, false)]);
    // A chain that loops: descriptor 12 points back to itself.
    let looped = r.rings[1].add(&r.mem, &[(DATA + 0x200, 64, false)]);
    let d = r.rings[1].desc + 16 * u64::from(looped);
    r.mem.write_obj(NEXT, GuestAddress(d + 12)).unwrap();
    r.mem.write_obj(looped, GuestAddress(d + 14)).unwrap();
    // Fine.
    let ok = frame(0, 0, 60);
    r.mem.write_slice(&ok, GuestAddress(DATA + 0x200)).unwrap();
    r.rings[1].add(&r.mem, &[(DATA + 0x200, ok.len() as u32, false)]);
    r.kick(1);
    assert_eq!(r.fake.st().sent[0], vec![ok]);
    assert_eq!(r.rings[1].take_used(&r.mem).len(), 6);
    assert_eq!(r.h.stats().tx_dropped, 5);
}

#[test]
fn a_full_tap_holds_the_chain_until_writable() {
    let mut r = Rig::new(1, ALL);
    let f = frame(0, 0, 60);
    r.mem.write_slice(&f, GuestAddress(DATA)).unwrap();
    r.rings[1].add(&r.mem, &[(DATA, f.len() as u32, false)]);
    r.fake.st().full = true;
    r.kick(1);
    assert!(r.rings[1].take_used(&r.mem).is_empty());
    assert!(r.h.source_interest(0).write);
    // Kicks do nothing while blocked.
    r.kick(1);
    assert!(r.fake.st().sent[0].is_empty());
    r.fake.st().full = false;
    r.tap_event(0);
    assert_eq!(r.fake.st().sent[0], vec![f]);
    assert_eq!(r.rings[1].take_used(&r.mem), vec![(0, 0)]);
    assert!(!r.h.source_interest(0).write);
}

#[test]
fn mergeable_buffers_take_large_frames() {
    let mut r = Rig::new(1, ALL);
    for k in 0..4u64 {
        r.rings[0].add(&r.mem, &[(DATA + k * 0x1000, 1024, true)]);
    }
    let mut f = frame(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        2500,
    );
    r.fake.push(0, f.clone());
    r.tap_event(0);
    let used = r.rings[0].take_used(&r.mem);
    assert_eq!(used, vec![(0, 1024), (1, 1024), (2, 2512 - 2048)]);
    f[HDR_NUM_BUFFERS] = 3;
    let mut got = r.read(DATA, 1024);
    got.extend(r.read(DATA + 0x1000, 1024));
    got.extend(r.read(DATA + 0x2000, 2512 - 2048));
    assert_eq!(got, f);
    assert_eq!(r.h.stats().rx, 1);
}

#[test]
fn without_buffers_the_frame_waits_and_the_tap_is_not_watched() {
    let mut r = Rig::new(1, ALL);
    r.fake.push(0, frame(0, 0, 1500));
    r.fake.push(0, frame(0, 0, 60));
    r.rings[0].add(&r.mem, &[(DATA, 1024, true)]);
    assert_eq!(r.h.source_interest(0), Interest::READ);
    r.tap_event(0);
    assert!(r.rings[0].take_used(&r.mem).is_empty(), "nothing partial");
    assert_eq!(r.h.source_interest(0), Interest::NONE);
    r.rings[0].add(&r.mem, &[(DATA + 0x1000, 1024, true)]);
    r.rings[0].add(&r.mem, &[(DATA + 0x2000, 1024, true)]);
    r.kick(0);
    let used = r.rings[0].take_used(&r.mem);
    assert_eq!(used, vec![(0, 1024), (1, 1512 - 1024), (2, 72)]);
    assert_eq!(r.read(DATA + HDR_NUM_BUFFERS as u64, 2), vec![2, 0]);
    assert_eq!(
        r.read(DATA + 0x2000 + HDR_NUM_BUFFERS as u64, 2),
        vec![1, 0]
    );
    assert_eq!(r.h.source_interest(0), Interest::READ);
}

#[test]
fn without_mergeable_buffers_a_frame_fits_one_chain_or_is_dropped() {
    let mut r = Rig::new(1, ALL & !(1 << VIRTIO_NET_F_MRG_RXBUF));
    r.rings[0].add(&r.mem, &[(DATA, 1000, true)]);
    r.fake.push(0, frame(0, 0, 1500));
    r.fake.push(0, frame(0, 0, 100));
    r.tap_event(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(0, 112)]);
    assert_eq!(r.read(DATA + HDR_NUM_BUFFERS as u64, 2), vec![1, 0]);
    assert_eq!(r.h.stats().rx_dropped, 1);
}

#[test]
fn frames_with_offloads_the_guest_did_not_take_are_dropped() {
    let mut r = Rig::new(1, BASE_FEATURES);
    assert_eq!(r.fake.st().offloads, vec![0]);
    r.rings[0].add(&r.mem, &[(DATA, 4096, true)]);
    r.fake
        .push(0, frame(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 60));
    r.fake.push(0, frame(0, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 60));
    r.fake
        .push(0, frame(VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 60));
    r.tap_event(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(0, 72)]);
    assert_eq!(r.read(DATA, 1), vec![0], "DATA_VALID cleared");
    assert_eq!(r.h.stats().rx_dropped, 2);
}

#[test]
fn buffers_too_small_or_outside_ram() {
    let mut r = Rig::new(1, ALL);
    // Cannot hold the header: returned empty; then one outside RAM.
    r.rings[0].add(&r.mem, &[(DATA, 4, true)]);
    r.rings[0].add(&r.mem, &[(RAM as u64 - 16, 1024, true)]);
    r.rings[0].add(&r.mem, &[(DATA + 0x1000, 1024, true)]);
    r.fake.push(0, frame(0, 0, 60));
    r.fake.push(0, frame(0, 0, 60));
    r.tap_event(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(0, 0), (1, 0), (2, 72)]);
    assert_eq!(r.h.stats().rx_dropped, 1);
    assert_eq!(r.h.stats().rx, 1);
}

/// Sends control command (class, cmd, data); returns (used length, ack).
fn control(r: &mut Rig, class: u32, cmd: u32, data: &[u8]) -> (u32, u8) {
    let ctrl = r.rings.len() - 1;
    let mut req = vec![class as u8, cmd as u8];
    req.extend_from_slice(data);
    r.mem.write_slice(&req, GuestAddress(DATA)).unwrap();
    r.mem.write_obj(0xeeu8, GuestAddress(DATA + 0x100)).unwrap();
    r.rings[ctrl].add(
        &r.mem,
        &[
            (DATA, 2, false),
            (DATA + 2, data.len() as u32, false),
            (DATA + 0x100, 1, true),
        ],
    );
    r.kick(ctrl);
    let used = r.rings[ctrl].take_used(&r.mem);
    assert_eq!(used.len(), 1);
    (used[0].1, r.read(DATA + 0x100, 1)[0])
}

const OK: (u32, u8) = (1, VIRTIO_NET_OK as u8);
const ERR: (u32, u8) = (1, VIRTIO_NET_ERR as u8);

#[test]
fn control_queue_sets_pairs_and_offloads() {
    let mut r = Rig::new(2, ALL | 1 << VIRTIO_NET_F_MQ);
    assert_eq!(
        r.fake.st().enabled,
        vec![true, false],
        "one pair until told"
    );
    assert_eq!(r.h.source_interest(1), Interest::NONE);
    assert_eq!(
        control(
            &mut r,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        ),
        OK
    );
    assert_eq!(r.fake.st().enabled, vec![true, true]);
    assert_eq!(r.h.source_interest(1), Interest::READ);
    for bad in [0u16, 3] {
        assert_eq!(
            control(
                &mut r,
                VIRTIO_NET_CTRL_MQ,
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                &bad.to_le_bytes()
            ),
            ERR
        );
    }
    assert_eq!(
        control(
            &mut r,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &[1]
        ),
        ERR,
        "short"
    );
    let csum = 1u64 << VIRTIO_NET_F_GUEST_CSUM;
    assert_eq!(
        control(
            &mut r,
            VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            &csum.to_le_bytes()
        ),
        OK
    );
    assert_eq!(r.fake.st().offloads.last(), Some(&libc::TUN_F_CSUM));
    assert_eq!(
        control(
            &mut r,
            VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            &(1u64 << VIRTIO_NET_F_GUEST_UFO).to_le_bytes()
        ),
        ERR
    );
    assert_eq!(
        control(&mut r, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
        ERR
    );
    // No ack byte: used with length 0.
    let ctrl = r.rings.len() - 1;
    let head = r.rings[ctrl].add(&r.mem, &[(DATA, 4, false)]);
    r.kick(ctrl);
    assert_eq!(r.rings[ctrl].take_used(&r.mem), vec![(u32::from(head), 0)]);
}

#[test]
fn mq_needs_negotiation() {
    let mut r = Rig::new(2, BASE_FEATURES);
    assert_eq!(
        control(
            &mut r,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        ),
        ERR
    );
    assert_eq!(r.fake.st().enabled, vec![true, false]);
}

#[test]
fn activation_maps_offloads_and_reset_clears_them() {
    let mut r = Rig::new(1, ALL);
    assert_eq!(
        r.fake.st().offloads,
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN]
    );
    r.h.reset();
    assert_eq!(r.fake.st().offloads.last(), Some(&0));
    assert_eq!(r.h.source_interest(0), Interest::NONE);
    r.h.activate(BASE_FEATURES | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(
        r.fake.st().offloads.last(),
        Some(&(libc::TUN_F_CSUM | libc::TUN_F_TSO6))
    );
}

#[test]
fn a_broken_device_stops_watching_the_tap() {
    let mut r = Rig::new(1, ALL);
    r.h.process_source(0, None).unwrap();
    assert_eq!(r.h.source_interest(0), Interest::NONE);
}

#[test]
fn runaway_available_index_needs_a_reset() {
    let mut r = Rig::new(1, ALL);
    r.mem
        .write_obj(100u16, GuestAddress(r.rings[1].avail + 2))
        .unwrap();
    assert!(r.h.process_queue(1, &mut r.active).is_err());
    r.mem
        .write_obj(100u16, GuestAddress(r.rings[0].avail + 2))
        .unwrap();
    r.fake.push(0, frame(0, 0, 60));
    assert!(r.h.process_source(0, Some(&mut r.active)).is_err());
}

#[test]
fn spec_and_config() {
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let s = spec("net0", mac, 2, true);
    assert_eq!(s.device_type, VIRTIO_ID_NET);
    assert_eq!(s.queue_sizes, vec![256, 256, 256, 256, 64]);
    assert_eq!(s.vectors(), 6);
    assert_eq!(s.config, vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 2, 0]);
    assert_ne!(s.features & 1 << VIRTIO_NET_F_MQ, 0);
    assert_ne!(s.features & 1 << VIRTIO_NET_F_HOST_TSO4, 0);
    let s = spec("net0", mac, 1, false);
    assert_eq!(s.features, BASE_FEATURES);
    assert!(matches!(
        Net::open(
            &NetConfig {
                queues: 0,
                ..NetConfig::new("tap0")
            },
            "net0"
        ),
        Err(NetError::Queues(0))
    ));
    assert!(matches!(
        Net::open(
            &NetConfig {
                queues: 65,
                ..NetConfig::new("tap0")
            },
            "net0"
        ),
        Err(NetError::Queues(65))
    ));
    assert!(matches!(
        Net::open(&NetConfig::new("no/slash"), "net0"),
        Err(NetError::Tap(TapError::Name(_)))
    ));
}

/// Through an IOMMU that maps all of RAM one to one except the pages the test unmaps: a
/// receive buffer or transmit buffer on an unmapped page drops the frame (the chain comes
/// back with length 0) and leaves the page alone; an unmapped ring is reported by the
/// ring check the I/O thread runs before each event.
#[test]
fn through_the_iommu_unmapped_buffers_drop_frames_and_unmapped_rings_are_errors() {
    use crate::test_dma::{PageTable, FAULT_READ, FAULT_WRITE, PAGE, R};
    let mut r = Rig::new(1, ALL);
    let table = PageTable::new();
    table.map_range(0, 0, RAM as u64 / PAGE, R | crate::test_dma::W);
    r.active.mem = table.memory(&r.mem);
    table.unmap(DATA);
    r.mem
        .write_slice(&[0x55; 0x1000], GuestAddress(DATA))
        .unwrap();

    // Receive into the unmapped page: dropped; into a mapped one: delivered.
    r.rings[0].add(&r.mem, &[(DATA, 2048, true)]);
    r.fake.push(0, frame(0, 0, 100));
    r.tap_event(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(0, 0)]);
    assert!(r.read(DATA, 0x1000).iter().all(|&b| b == 0x55));
    assert_eq!(table.last_fault(), Some((FAULT_WRITE, DATA)));
    let f = frame(0, 0, 100);
    r.rings[0].add(&r.mem, &[(DATA + 0x1000, 2048, true)]);
    r.fake.push(0, f.clone());
    r.tap_event(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(1, f.len() as u32)]);
    let mut want = f;
    want[HDR_NUM_BUFFERS] = 1;
    assert_eq!(r.read(DATA + 0x1000, want.len()), want);

    // Transmit from the unmapped page: nothing reaches the tap.
    r.rings[1].add(&r.mem, &[(DATA, 112, false)]);
    r.kick(1);
    assert_eq!(r.rings[1].take_used(&r.mem), vec![(0, 0)]);
    assert!(r.fake.st().sent[0].is_empty());
    assert_eq!(table.last_fault(), Some((FAULT_READ, DATA)));
    assert!(r.active.check_rings().is_ok());

    // The transmit queue's used ring unmapped.
    table.unmap(r.rings[1].used);
    assert!(matches!(
        r.active.check_rings(),
        Err(crate::worker::DeviceError::Unreachable { queue: 1 })
    ));
}
