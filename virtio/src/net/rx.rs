//! Receive: one frame (virtio-net header first) into the guest's receive buffers.
//!
//! With mergeable buffers the frame spans as many chains as it needs and the header's
//! `num_buffers` says how many; without, it must fit the next chain or it is dropped
//! (the chain stays for the next frame). When the available chains cannot hold it, none is
//! consumed: the available index is put back and the frame waits for more buffers.
//!
//! A chain that cannot even hold the header is returned at once with length 0 (a driver
//! bug; it is not counted as part of a frame). A buffer outside RAM drops the frame: its
//! chains come back with length 0.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::offload::HDR_NUM_BUFFERS;
use super::tap::VNET_HDR_LEN;
use crate::segments::{Cursor, Segments};
use crate::worker::pop_chain;

/// What happened to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// Not enough buffers: nothing consumed, the frame waits.
    NoBuffers,
    /// Dropped: too large for the next chain (no mergeable buffers) or for the whole
    /// ring, or a buffer outside RAM.
    Dropped,
}

/// The outcome of [`deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The frame's fate.
    pub delivery: Delivery,
    /// True when used entries were added (the driver may need an interrupt).
    pub used: bool,
}

/// Puts `frame` (header included, header already checked) into `queue`'s buffers.
pub fn deliver<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &mut [u8],
    mergeable: bool,
) -> Result<Outcome, virtio_queue::Error> {
    let need = frame.len() as u64;
    let mut start = queue.next_avail();
    let mut used = false;
    let mut chains: Vec<(u16, Segments)> = Vec::new();
    let mut room = 0u64;
    let most = usize::from(queue.size());
    let mut pops = 0usize;
    while room < need {
        // At most a ring's worth of chains, counting those returned unused: with rings
        // that overlap, the device's own used entries can look like new buffers.
        if pops >= most {
            queue.set_next_avail(start);
            return Ok(Outcome {
                delivery: Delivery::Dropped,
                used,
            });
        }
        pops += 1;
        let Some((head, segs)) = pop_chain(queue, mem)? else {
            queue.set_next_avail(start);
            return Ok(Outcome {
                delivery: Delivery::NoBuffers,
                used,
            });
        };
        let cap = segs.writable_len();
        if chains.is_empty() && cap < VNET_HDR_LEN as u64 {
            queue.add_used(mem, head, 0)?;
            used = true;
            start = queue.next_avail();
            continue;
        }
        if !mergeable && cap < need {
            queue.set_next_avail(start);
            return Ok(Outcome {
                delivery: Delivery::Dropped,
                used,
            });
        }
        room += cap;
        chains.push((head, segs));
    }
    if mergeable {
        // At most the queue size (a u16), checked above.
        let n = chains.len() as u16;
        if let Some(f) = frame.get_mut(HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2) {
            f.copy_from_slice(&n.to_le_bytes());
        }
    }
    let mut off = 0usize;
    let mut lens = Vec::with_capacity(chains.len());
    let mut ok = true;
    for (_, segs) in &chains {
        let rest = frame.get(off..).unwrap_or_default();
        let take = usize::try_from(segs.writable_len())
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let piece = rest.get(..take).unwrap_or_default();
        match Cursor::new(&segs.writable).write(mem, piece) {
            // `take` fits the chain's length, a u32.
            Ok(n) => lens.push(n as u32),
            Err(_) => {
                ok = false;
                break;
            }
        }
        off += take;
    }
    for (i, (head, _)) in chains.iter().enumerate() {
        let len = if ok {
            lens.get(i).copied().unwrap_or(0)
        } else {
            0
        };
        queue.add_used(mem, *head, len)?;
    }
    Ok(Outcome {
        delivery: if ok {
            Delivery::Delivered
        } else {
            Delivery::Dropped
        },
        used: true,
    })
}
