//! The control queue: `struct virtio_net_ctrl_hdr` (class, command) and the command's data
//! in the readable buffers, the one-byte ack in the last writable byte.
//!
//! Served: `VIRTIO_NET_CTRL_MQ` / `VQ_PAIRS_SET` (with `MQ` negotiated, 1 to the device's
//! pairs) and `VIRTIO_NET_CTRL_GUEST_OFFLOADS` / `SET` (with `CTRL_GUEST_OFFLOADS`, a subset
//! of the negotiated receive offloads). Everything else, and anything short or out of
//! range, gets `VIRTIO_NET_ERR`. A chain without a writable byte is used with length 0.

use virtio_bindings::virtio_net::*;
use vm_memory::{Bytes, GuestMemory};

use super::offload::GUEST_OFFLOADS;
use crate::segments::{Cursor, Segments};
use crate::spec::feature;

/// What a command asks of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Use this many queue pairs.
    SetPairs(u16),
    /// Take these receive offloads (feature bits).
    SetOffloads(u64),
    /// Not served.
    Unsupported {
        /// `class`.
        class: u8,
        /// `cmd`.
        cmd: u8,
    },
    /// Too short for its class and command.
    Malformed,
}

/// Reads the command of a control chain.
pub fn parse<M: GuestMemory>(segs: &Segments, mem: &M, features: u64) -> Command {
    let mut r = Cursor::new(&segs.readable);
    let mut hdr = [0u8; 2];
    if !matches!(r.read(mem, &mut hdr), Ok(2)) {
        return Command::Malformed;
    }
    let [class, cmd] = hdr;
    let has = |f: u32| features & feature(f) != 0;
    match (u32::from(class), u32::from(cmd)) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if has(VIRTIO_NET_F_MQ) => {
            let mut v = [0u8; 2];
            match r.read(mem, &mut v) {
                Ok(2) => Command::SetPairs(u16::from_le_bytes(v)),
                _ => Command::Malformed,
            }
        }
        (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)
            if has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) =>
        {
            let mut v = [0u8; 8];
            match r.read(mem, &mut v) {
                Ok(8) => Command::SetOffloads(u64::from_le_bytes(v)),
                _ => Command::Malformed,
            }
        }
        _ => Command::Unsupported { class, cmd },
    }
}

/// Whether `cmd` is acceptable for a device with `pairs` pairs and negotiated `features`
/// (before any effect is attempted).
pub fn valid(cmd: Command, pairs: usize, features: u64) -> bool {
    match cmd {
        Command::SetPairs(n) => n >= 1 && usize::from(n) <= pairs,
        Command::SetOffloads(o) => o & !(features & GUEST_OFFLOADS) == 0,
        Command::Unsupported { .. } | Command::Malformed => false,
    }
}

/// Serves one control chain: `execute` applies a valid command and says whether it took
/// effect. Returns the used length.
pub fn serve<M, F>(mut segs: Segments, mem: &M, pairs: usize, features: u64, execute: F) -> u32
where
    M: GuestMemory,
    F: FnOnce(Command) -> bool,
{
    let Some(ack_at) = segs.pop_last_writable_byte() else {
        return 0;
    };
    let cmd = parse(&segs, mem, features);
    let ok = valid(cmd, pairs, features) && execute(cmd);
    let ack = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
    match mem.write_obj(ack, ack_at) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}
