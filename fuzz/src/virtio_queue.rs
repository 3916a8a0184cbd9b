//! The `virtio_queue` harness: a split virtqueue whose registers, rings, descriptors and
//! buffers the fuzzer writes, served by the virtio-blk handler (on a small writable image),
//! the virtio-rng handler and the virtio-console transmit and receive paths.
//!
//! Input: byte 0 picks the device (blk, rng, console: the queue as transmit queue, then
//! as receive queue with input waiting; with bit 0x40 virtio-net, see
//! [`crate::virtio_net_queue`]; with bit 0x08 every device address is an IOVA translated by
//! a page table in guest RAM, see [`crate::virtio_iommu`]), bytes 1-2 the queue size the
//! driver programmed (any value: invalid sizes must be refused), bytes 3-8 the ring
//! offsets (descriptor table, available and used ring, each a 16-bit page-relative
//! choice), the rest is copied into guest memory from address 0.
//!
//! Invariants: no panic, whatever the chains (loops, lengths past RAM, indirect tables,
//! head indices beyond the queue); a queue is only built from a valid programming (power
//! of two size up to the maximum, aligned rings inside RAM); the used index advances by at
//! most the queue size per pass; every used length fits the chain's writable bytes; the
//! image keeps its size; translated, the device writes only pages the IOMMU mapped for it
//! (and rings it cannot reach stop it, as the I/O thread's check does).

use std::sync::{Arc, Mutex, OnceLock};

use virtio::block::{Block, DiskConfig, QUEUE_SIZE};
use virtio::interrupt::VirtioInterrupt;
use virtio::queue::QueueRegs;
use virtio::worker::{Activation, QueueHandler};
use virtio::{Console, ConsoleInput, DeviceMemory, Rng};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio_iommu::{self, TableIommu};

/// Guest RAM size.
const RAM: usize = 0x10000;
/// Image size in sectors.
const IMAGE_SECTORS: u64 = 64;

struct Handlers {
    blk: Box<dyn QueueHandler>,
    rng: Box<dyn QueueHandler>,
    console: Box<dyn QueueHandler>,
    console_input: Arc<ConsoleInput>,
    image: std::path::PathBuf,
}

fn handlers() -> &'static Mutex<Handlers> {
    static H: OnceLock<Mutex<Handlers>> = OnceLock::new();
    H.get_or_init(|| {
        let image = std::env::temp_dir().join(format!("irvmm-fuzz-virtio-{}.img", std::process::id()));
        std::fs::write(&image, vec![0u8; (IMAGE_SECTORS * 512) as usize]).expect("image");
        let blk = Block::open(&DiskConfig::new(&image), "fuzz-blk").expect("open image");
        let rng = Rng::open().expect("urandom");
        let console_input = Arc::new(ConsoleInput::new(4096).expect("console input"));
        let console =
            Console::new(Box::new(std::io::sink()), Some(console_input.clone())).into_handler();
        Mutex::new(Handlers {
            blk: blk.into_handler(),
            rng: rng.into_handler(),
            console,
            console_input,
            image,
        })
    })
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([data.get(i).copied().unwrap_or(0), data.get(i + 1).copied().unwrap_or(0)])
}

/// Runs one input.
pub fn run(data: &[u8]) {
    run_observed(data);
}

/// Runs one input; returns the IOMMU of a translated one (for tests to look at).
pub fn run_observed(data: &[u8]) -> Option<Arc<TableIommu>> {
    if data.len() < 9 {
        return None;
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    let body = &data[9..];
    let n = body.len().min(RAM);
    mem.write_slice(&body[..n], GuestAddress(0)).expect("fill RAM");
    let iommu = (data[0] & 0x08 != 0).then(|| TableIommu::new(mem.clone()));
    let dev_mem = match &iommu {
        Some(i) => i.memory(),
        None => DeviceMemory::physical(mem.clone()),
    };
    let before = virtio_iommu::snapshot(&mem, RAM);
    if data[0] & 0x40 != 0 {
        crate::virtio_net_queue::run(data, &dev_mem, &body[..n]);
    } else {
        run_device(data, &dev_mem);
    }
    if let Some(i) = &iommu {
        virtio_iommu::assert_writes_mapped(
            &before,
            &virtio_iommu::snapshot(&mem, RAM),
            i.written(),
        );
    }
    iommu
}

/// Runs one blk, rng or console input over `mem` (the device's view).
fn run_device(data: &[u8], mem: &DeviceMemory) {
    let regs = QueueRegs {
        size: u16_at(data, 1),
        enabled: true,
        // Page-relative offsets anywhere in (and a little past) RAM.
        desc: u64::from(u16_at(data, 3)) * 2,
        driver: u64::from(u16_at(data, 5)) * 2,
        device: u64::from(u16_at(data, 7)) * 2,
        ..QueueRegs::new(QUEUE_SIZE)
    };
    let event_idx = data[0] & 0x80 != 0;
    let Ok(queue) = regs.build(event_idx, mem) else {
        return;
    };
    assert!(regs.size.is_power_of_two() && regs.size <= QUEUE_SIZE);
    let size = regs.size;
    let mut active = Activation {
        queues: vec![Some(queue)],
        mem: mem.clone(),
        interrupt: Arc::new(VirtioInterrupt::new(Vec::new(), 1)),
        features: 0,
    };
    let mut h = handlers().lock().unwrap_or_else(|p| p.into_inner());
    let used_before: u16 = mem.read_obj(GuestAddress(regs.device + 2)).unwrap_or(0);
    for _ in 0..2 {
        // The I/O thread checks the rings before each event.
        if active.check_rings().is_err() {
            break;
        }
        let result = match data[0] % 3 {
            0 => h.blk.process_queue(0, &mut active),
            1 => h.rng.process_queue(0, &mut active),
            // The console's transmit queue is queue 1: give it the same queue, then serve
            // it as the receive queue (queue 0) with input waiting.
            _ => {
                active.queues.insert(0, None);
                let r = h.console.process_queue(1, &mut active);
                active.queues.remove(0);
                h.console_input.push(data);
                r.and_then(|_| h.console.process_queue(0, &mut active))
            }
        };
        if result.is_err() {
            break;
        }
    }
    let used_after: u16 = mem.read_obj(GuestAddress(regs.device + 2)).unwrap_or(0);
    // The device counts used entries from 0 and consumes at most one ring's worth (the
    // available index may not run more than the queue size ahead); untouched otherwise.
    assert!(
        used_after == used_before || used_after <= size,
        "used index {used_before} -> {used_after} with {size} entries"
    );
    let len = std::fs::metadata(&h.image).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, IMAGE_SECTORS * 512, "the image changed size");
}
