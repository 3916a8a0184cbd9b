//! The virtio-console handler driven through real split rings in guest memory: input in
//! order across buffers, byte for byte, kept while the driver offers nothing (or resets),
//! hostile buffers that cost input nothing, and the transmit path.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::interrupt::VirtioInterrupt;
use crate::queue::QueueRegs;

const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const DATA: u64 = 0x10_0000;
const RAM: usize = 0x20_0000;
const SIZE: u16 = 16;

/// A driver's view of one split ring.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new(q: usize) -> Ring {
        let desc = 0x1_0000 * (q as u64 + 1);
        Ring {
            desc,
            avail: desc + 0x1000,
            used: desc + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn regs(&self) -> QueueRegs {
        QueueRegs {
            size: SIZE,
            enabled: true,
            desc: self.desc,
            driver: self.avail,
            device: self.used,
            ..QueueRegs::new(CONSOLE_QUEUE_SIZE)
        }
    }

    /// Makes `bufs` (address, length, flags without NEXT) available as one chain.
    fn add(&mut self, m: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) {
        let head = self.next_desc;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % SIZE;
            let flags = if k + 1 < bufs.len() {
                flags | NEXT
            } else {
                flags
            };
            let d = self.desc + 16 * u64::from(i);
            m.write_obj(addr, GuestAddress(d)).unwrap();
            m.write_obj(len, GuestAddress(d + 8)).unwrap();
            m.write_obj(flags, GuestAddress(d + 12)).unwrap();
            m.write_obj(self.next_desc, GuestAddress(d + 14)).unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % SIZE);
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The lengths of the new used entries.
    fn used_lens(&mut self, m: &GuestMemoryMmap) -> Vec<u32> {
        let idx: u16 = m.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % SIZE);
            out.push(m.read_obj(GuestAddress(e + 4)).unwrap());
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Output the transmit path wrote.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A started console with input: handler, input, memory, rings, output.
struct Rig {
    h: Box<dyn QueueHandler>,
    input: Arc<ConsoleInput>,
    mem: GuestMemoryMmap,
    active: Activation,
    rx: Ring,
    tx: Ring,
    out: Sink,
}

impl Rig {
    fn new(capacity: usize) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let input = Arc::new(ConsoleInput::new(capacity).unwrap());
        let out = Sink::default();
        let h = Console::new(Box::new(out.clone()), Some(input.clone())).into_handler();
        let (rx, tx) = (Ring::new(0), Ring::new(1));
        let queues = [&rx, &tx]
            .iter()
            .map(|r| Some(r.regs().build(false, &mem).unwrap()))
            .collect();
        let vectors = (0..3)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect();
        Rig {
            h,
            input,
            mem: mem.clone(),
            active: Activation {
                queues,
                mem: mem.into(),
                interrupt: Arc::new(VirtioInterrupt::new(vectors, 2)),
                features: 0,
            },
            rx,
            tx,
            out,
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Every byte value, escape byte included, and then some.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 1) as u8).collect()
}

#[test]
fn input_fills_buffers_in_order_byte_for_byte() {
    let mut r = Rig::new(INPUT_CAPACITY);
    let data = pattern(300);
    assert_eq!(r.input.push(&data), 300);
    r.rx.add(&r.mem, &[(DATA, 100, W)]);
    r.rx.add(&r.mem, &[(DATA + 100, 30, W), (DATA + 130, 70, W)]);
    r.rx.add(&r.mem, &[(DATA + 200, 500, W)]);
    assert!(!r.h.process_queue(RECEIVEQ, &mut r.active).unwrap());
    assert_eq!(r.rx.used_lens(&r.mem), vec![100, 100, 100]);
    assert_eq!(r.read(DATA, 300), data);
    assert!(r.input.is_empty());
    assert!(r.input.room_event().read().is_ok(), "the producer is told");
}

#[test]
fn input_waits_for_buffers_and_survives_a_reset() {
    let mut r = Rig::new(8);
    assert_eq!(r.h.sources(), vec![r.input.ready_event().as_raw_fd()]);
    assert_eq!(r.input.push(b"\x01\x03hello\r"), 8);
    assert_eq!(r.input.push(b"x"), 0, "full");
    // Not started yet: nothing moves.
    assert!(r.h.process_source(0, None).unwrap());
    assert_eq!(r.input.len(), 8);
    r.h.reset();
    assert_eq!(r.input.len(), 8, "a reset keeps the input");
    // Started, no buffer yet: still waits.
    assert!(r.h.process_source(0, Some(&mut r.active)).unwrap());
    assert_eq!(r.input.len(), 8);
    // A 5-byte buffer, then the rest when the next one comes.
    r.rx.add(&r.mem, &[(DATA, 5, W)]);
    r.h.process_queue(RECEIVEQ, &mut r.active).unwrap();
    assert_eq!(r.rx.used_lens(&r.mem), vec![5]);
    assert_eq!(r.input.push(b"!"), 1);
    r.rx.add(&r.mem, &[(DATA + 5, 64, W)]);
    assert!(r.h.process_source(0, Some(&mut r.active)).unwrap());
    assert_eq!(r.rx.used_lens(&r.mem), vec![4]);
    assert_eq!(r.read(DATA, 9), b"\x01\x03hello\r!");
}

#[test]
fn hostile_buffers_cost_no_input() {
    let mut r = Rig::new(INPUT_CAPACITY);
    assert_eq!(r.input.push(b"abc"), 3);
    // Read-only, outside RAM, then a good one.
    r.rx.add(&r.mem, &[(DATA, 64, 0)]);
    r.rx.add(&r.mem, &[(RAM as u64 - 1, 64, W)]);
    r.rx.add(&r.mem, &[(DATA + 64, 64, W)]);
    r.h.process_queue(RECEIVEQ, &mut r.active).unwrap();
    assert_eq!(r.rx.used_lens(&r.mem), vec![0, 0, 3]);
    assert_eq!(r.read(DATA + 64, 3), b"abc");
}

#[test]
fn a_ring_of_useless_buffers_does_not_hold_the_thread() {
    let mut r = Rig::new(INPUT_CAPACITY);
    assert_eq!(r.input.push(b"abc"), 3);
    for _ in 0..SIZE {
        r.rx.add(&r.mem, &[(DATA, 64, 0)]);
    }
    assert!(
        r.h.process_queue(RECEIVEQ, &mut r.active).unwrap(),
        "one ring's worth, then it comes back"
    );
    assert_eq!(r.rx.used_lens(&r.mem).len(), usize::from(SIZE));
    assert_eq!(r.input.len(), 3);
}

#[test]
fn a_runaway_available_index_needs_a_reset() {
    let mut r = Rig::new(INPUT_CAPACITY);
    assert_eq!(r.input.push(b"abc"), 3);
    r.mem
        .write_obj(100u16, GuestAddress(r.rx.avail + 2))
        .unwrap();
    assert!(r.h.process_queue(RECEIVEQ, &mut r.active).is_err());
    assert!(r.h.process_source(0, Some(&mut r.active)).is_err());
    assert_eq!(r.input.len(), 3);
}

#[test]
fn output_goes_out_as_it_comes() {
    let mut r = Rig::new(INPUT_CAPACITY);
    r.mem
        .write_slice(b"hello, world", GuestAddress(DATA))
        .unwrap();
    r.tx.add(&r.mem, &[(DATA, 7, 0), (DATA + 7, 5, 0)]);
    assert!(!r.h.process_queue(TRANSMITQ, &mut r.active).unwrap());
    assert_eq!(r.tx.used_lens(&r.mem), vec![0]);
    assert_eq!(*r.out.0.lock().unwrap(), b"hello, world");
}

#[test]
fn without_input_the_receive_side_is_idle() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let mut h = Console::new(Box::new(std::io::sink()), None).into_handler();
    assert!(h.sources().is_empty());
    let mut rx = Ring::new(0);
    rx.add(&mem, &[(DATA, 64, W)]);
    let mut active = Activation {
        queues: vec![Some(rx.regs().build(false, &mem).unwrap()), None],
        mem: mem.clone().into(),
        interrupt: Arc::new(VirtioInterrupt::new(Vec::new(), 2)),
        features: 0,
    };
    assert!(!h.process_queue(RECEIVEQ, &mut active).unwrap());
    assert!(
        rx.used_lens(&mem).is_empty(),
        "the buffer stays with the device"
    );
}
