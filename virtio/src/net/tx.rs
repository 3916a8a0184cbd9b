//! Transmit: the guest's frames (virtio-net header first, in the chain's readable
//! buffers) to the tap, one `write` each.
//!
//! A chain is gathered into a bounce buffer, its header checked against the negotiated
//! features ([`super::offload::check_tx`]) and written. Frames that cannot be sent (a chain
//! that loops or is cut short, too long, a buffer outside RAM, an offload not negotiated,
//! refused by the tap) are dropped:
//! the chain is used with length 0, as every transmitted chain is. When the tap cannot take
//! a frame now, the chain goes back to the ring and transmission stops until the tap is
//! writable. At most one ring's worth is served per call.

use log::debug;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::backend::NetBackend;
use super::offload::check_tx;
use crate::segments::{Cursor, Segments};
use crate::worker::{Activation, DeviceError};

/// Largest frame accepted: the header, 64 KiB of IP packet, an Ethernet header with two
/// VLAN tags.
pub const TX_FRAME_MAX: usize = super::tap::VNET_HDR_LEN + 65535 + 14 + 8;

/// Frames sent and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCounts {
    /// Written to the tap.
    pub sent: u64,
    /// Dropped.
    pub dropped: u64,
}

/// How a pass over the transmit queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxEnd {
    /// Nothing left.
    Drained,
    /// A ring's worth served; more may wait.
    More,
    /// The tap cannot take the next frame: wait until it is writable.
    Blocked,
}

/// Takes the next available chain: its head, its buffers, and whether it ended properly
/// (its last descriptor has no `NEXT`: it neither loops nor runs into a bad index or
/// indirect table, where virtio-queue's walk stops early).
pub fn pop_whole_chain<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
) -> Result<Option<(u16, Segments, bool)>, virtio_queue::Error> {
    let Some(chain) = queue.iter(mem)?.next() else {
        return Ok(None);
    };
    let head = chain.head_index();
    let mut segs = Segments::default();
    let mut whole = false;
    for d in chain {
        whole = !d.has_next();
        if d.len() == 0 {
            continue;
        }
        if d.is_write_only() {
            segs.writable.push((d.addr(), d.len()));
        } else {
            segs.readable.push((d.addr(), d.len()));
        }
    }
    Ok(Some((head, segs, whole)))
}

/// Copies a chain's readable bytes into `buf`: the frame's length, or why not.
fn gather<M: GuestMemory>(segs: &Segments, mem: &M, buf: &mut [u8]) -> Result<usize, &'static str> {
    let len = usize::try_from(segs.readable_len()).unwrap_or(usize::MAX);
    let dst = buf.get_mut(..len).ok_or("frame too long")?;
    match Cursor::new(&segs.readable).read(mem, dst) {
        Ok(n) if n == len => Ok(len),
        _ => Err("buffer outside RAM"),
    }
}

/// Serves transmit queue `index` of `active`, writing to back-end queue `pair`.
pub fn transmit<B: NetBackend>(
    index: usize,
    pair: usize,
    active: &mut Activation,
    backend: &mut B,
    buf: &mut [u8],
    counts: &mut TxCounts,
) -> Result<TxEnd, DeviceError> {
    let mem = active.mem.clone();
    let features = active.features;
    let Some(Some(queue)) = active.queues.get_mut(index) else {
        return Ok(TxEnd::Drained);
    };
    let err = |source| DeviceError::Queue {
        queue: index,
        source,
    };
    let mut used = false;
    let mut budget = queue.size();
    let end = 'serve: loop {
        queue.disable_notification(&mem).map_err(err)?;
        loop {
            // Every pass counts, found chain or not: with rings that overlap, turning
            // notifications on and off rewrites the available index itself.
            if budget == 0 {
                break 'serve TxEnd::More;
            }
            budget -= 1;
            let Some((head, segs, whole)) = pop_whole_chain(queue, &mem).map_err(err)? else {
                break;
            };
            let gathered = if whole {
                gather(&segs, &mem, buf)
            } else {
                Err("chain loops or is cut short")
            };
            let sent = match gathered {
                Ok(n) => {
                    let frame = buf.get(..n).unwrap_or_default();
                    match check_tx(frame, features) {
                        Ok(()) => match backend.send(pair, frame) {
                            Ok(true) => Ok(()),
                            Ok(false) => {
                                queue.go_to_previous_position();
                                break 'serve TxEnd::Blocked;
                            }
                            Err(e) => {
                                debug!("net tx queue {index}: tap refused a frame: {e}");
                                Err(())
                            }
                        },
                        Err(e) => {
                            debug!("net tx queue {index}: {e}");
                            Err(())
                        }
                    }
                }
                Err(why) => {
                    debug!("net tx queue {index}: {why}");
                    Err(())
                }
            };
            match sent {
                Ok(()) => counts.sent += 1,
                Err(()) => counts.dropped += 1,
            }
            queue.add_used(&mem, head, 0).map_err(err)?;
            used = true;
        }
        if !queue.enable_notification(&mem).map_err(err)? {
            break TxEnd::Drained;
        }
    };
    if used {
        active.notify(index);
    }
    Ok(end)
}
