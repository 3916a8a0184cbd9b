//! The virtio-net part of the `virtio_queue` harness (inputs whose first byte has bit 0x40
//! set): one fuzzer-programmed queue served by the virtio-net handler over a fake tap.
//!
//! First byte: bit 7 event index, bit 6 net, bits 5-4 the queue (0 receive with mergeable
//! buffers, 1 transmit, 2 control, 3 receive without mergeable buffers), bit 0 the
//! checksum and segmentation offloads negotiated, bit 1 a tap that is full at first,
//! bit 2 `CTRL_GUEST_OFFLOADS` and `MQ` (two queue pairs). The fake tap holds four frames
//! carved from guest RAM (lengths from the words at [`FRAME_LENGTHS`], contents from
//! [`FRAME_DATA`]): whatever their headers say.
//!
//! With bit 3 set the device's addresses are IOVAs ([`crate::virtio_iommu`]); the rings are
//! checked before every pass as the I/O thread does.
//!
//! Invariants: no panic; the used index advances by at most the queue size; every frame
//! the device writes to the tap is at least a header long, at most the device's maximum,
//! and carries only offloads the guest negotiated.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio::interrupt::VirtioInterrupt;
use virtio::net::offload::{check_tx, GUEST_OFFLOADS, HOST_OFFLOADS};
use virtio::net::tap::VNET_HDR_LEN;
use virtio::net::tx::TX_FRAME_MAX;
use virtio::net::{NetBackend, NetHandler, BASE_FEATURES, CTRL_QUEUE_SIZE, NET_QUEUE_SIZE};
use virtio::queue::QueueRegs;
use virtio::worker::{Activation, QueueHandler};
use virtio::DeviceMemory;
use vm_memory::{Bytes, GuestAddress};

/// Where the fake tap's frame lengths and contents come from (guest RAM offsets).
pub const FRAME_LENGTHS: usize = 0x1f00;
pub const FRAME_DATA: usize = 0x1000;
/// Frames the fake tap holds.
const FRAMES: usize = 4;
/// `VIRTIO_NET_F_MRG_RXBUF`, `CTRL_GUEST_OFFLOADS`, `MQ`.
const F_MRG_RXBUF: u64 = 1 << 15;
const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
const F_MQ: u64 = 1 << 22;

struct FakeTap {
    inbox: VecDeque<Vec<u8>>,
    full: Arc<AtomicBool>,
    features: u64,
}

impl NetBackend for FakeTap {
    fn queues(&self) -> usize {
        2
    }

    fn recv(&mut self, _q: usize, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.inbox.pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }

    fn send(&mut self, _q: usize, frame: &[u8]) -> io::Result<bool> {
        assert!(
            (VNET_HDR_LEN..=TX_FRAME_MAX).contains(&frame.len()),
            "a frame of {} bytes reached the tap",
            frame.len()
        );
        assert_eq!(
            check_tx(frame, self.features),
            Ok(()),
            "a frame with offloads not negotiated reached the tap"
        );
        Ok(!self.full.load(Ordering::Relaxed))
    }

    fn set_offloads(&mut self, _flags: libc::c_uint) -> io::Result<()> {
        Ok(())
    }

    fn set_queue_enabled(&mut self, _q: usize, _on: bool) -> io::Result<()> {
        Ok(())
    }

    fn fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

fn u16_at(bytes: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([
        bytes.get(i).copied().unwrap_or(0),
        bytes.get(i + 1).copied().unwrap_or(0),
    ])
}

/// Runs one net input; `mem` already holds the input's RAM image.
pub fn run(data: &[u8], mem: &DeviceMemory, ram: &[u8]) {
    let sel = data[0];
    let queue_kind = (sel >> 4) & 3;
    let mut features = BASE_FEATURES | virtio::transport::TRANSPORT_FEATURES;
    if queue_kind == 3 {
        features &= !F_MRG_RXBUF;
    }
    if sel & 1 != 0 {
        features |= GUEST_OFFLOADS | HOST_OFFLOADS;
    }
    if sel & 4 == 0 {
        features &= !F_CTRL_GUEST_OFFLOADS;
    } else {
        features |= F_MQ;
    }
    let (index, max) = match queue_kind {
        1 => (1, NET_QUEUE_SIZE),
        2 => (4, CTRL_QUEUE_SIZE),
        _ => (0, NET_QUEUE_SIZE),
    };
    let regs = QueueRegs {
        size: u16_at(data, 1),
        enabled: true,
        desc: u64::from(u16_at(data, 3)) * 2,
        driver: u64::from(u16_at(data, 5)) * 2,
        device: u64::from(u16_at(data, 7)) * 2,
        ..QueueRegs::new(max)
    };
    let event_idx = sel & 0x80 != 0;
    let Ok(queue) = regs.build(event_idx, mem) else {
        return;
    };
    let size = regs.size;
    let inbox = (0..FRAMES)
        .map(|k| {
            let len = VNET_HDR_LEN + usize::from(u16_at(ram, FRAME_LENGTHS + 2 * k) % 2048);
            (0..len)
                .map(|i| {
                    ram.get((FRAME_DATA + 512 * k + i) % ram.len().max(1))
                        .copied()
                        .unwrap_or(0)
                })
                .collect()
        })
        .collect();
    let full = Arc::new(AtomicBool::new(sel & 2 != 0));
    let tap = FakeTap {
        inbox,
        full: full.clone(),
        features,
    };
    let mut slot = Some(queue);
    let queues = (0..5)
        .map(|i| if i == index { slot.take() } else { None })
        .collect();
    let mut active = Activation {
        queues,
        mem: mem.clone(),
        interrupt: Arc::new(VirtioInterrupt::new(Vec::new(), 5)),
        features,
    };
    let mut h = NetHandler::new("fuzz-net".into(), tap, 2);
    h.activate(features);
    let used_before: u16 = mem.read_obj(GuestAddress(regs.device + 2)).unwrap_or(0);
    // The I/O thread checks the rings before each event.
    let ok = active.check_rings().is_ok()
        && match queue_kind {
            1 => {
                h.process_queue(1, &mut active).is_ok()
                    && active.check_rings().is_ok()
                    && h.process_queue(1, &mut active).is_ok()
            }
            2 => {
                h.process_queue(4, &mut active).is_ok()
                    && active.check_rings().is_ok()
                    && h.process_queue(4, &mut active).is_ok()
            }
            _ => {
                h.process_source(0, Some(&mut active)).is_ok()
                    && active.check_rings().is_ok()
                    && h.process_queue(0, &mut active).is_ok()
                    && active.check_rings().is_ok()
                    && h.process_source(0, Some(&mut active)).is_ok()
            }
        };
    if ok && queue_kind == 1 && sel & 2 != 0 && active.check_rings().is_ok() {
        // The tap becomes writable again.
        full.store(false, Ordering::Relaxed);
        h.process_source(0, Some(&mut active)).ok();
    }
    let used_after: u16 = mem.read_obj(GuestAddress(regs.device + 2)).unwrap_or(0);
    assert!(
        used_after == used_before || used_after <= size,
        "used index {used_before} -> {used_after} with {size} entries"
    );
    h.reset();
}
