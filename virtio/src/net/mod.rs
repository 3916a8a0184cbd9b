//! virtio-net on a Linux tap (`--net tap=NAME[,mac=MAC][,queues=N]`).
//!
//! # The device
//!
//! * Queues: `N` receive/transmit pairs (receiveq `2p`, transmitq `2p + 1`) and a control
//!   queue (index `2N`); 256 entries each.
//! * Configuration: the MAC address (`mac=`, or a random locally administered one), link
//!   status (always up) and `max_virtqueue_pairs`.
//! * Offered features: `MAC`, `STATUS`, `MRG_RXBUF`, `CTRL_VQ`, `CTRL_GUEST_OFFLOADS`, `MQ`
//!   with more than one pair, and, when the tap takes them, the checksum and TCP
//!   segmentation offloads both ways (`CSUM`, `HOST_TSO4/6`, `HOST_ECN`; `GUEST_CSUM`,
//!   `GUEST_TSO4/6`, `GUEST_ECN`). Not offered: UDP fragmentation and segmentation (UFO,
//!   USO), receive filtering (`CTRL_RX`, `CTRL_VLAN`, `CTRL_MAC_ADDR`: a tap hands the
//!   guest whatever reaches it), `MTU`, `GUEST_ANNOUNCE`, RSS and hash reports.
//! * Mergeable receive buffers: offered, because a guest taking TCP segmentation offload
//!   otherwise has to post 64 KiB buffers for every frame; without them a frame that does
//!   not fit the next chain is dropped.
//! * Control queue: `MQ_VQ_PAIRS_SET` (the tap steers frames to the pairs in use only:
//!   the others are detached from a multi-queue tap) and `GUEST_OFFLOADS_SET` (mapped onto
//!   the tap's offloads at once); anything else is answered `VIRTIO_NET_ERR`.
//!
//! # Where the work happens
//!
//! Everything runs on the device's I/O thread ([`crate::worker`]): transmit on the
//! transmitq's notification, receive when the tap queue is readable and on the receiveq's
//! notification after the guest ran out of buffers. Backpressure, never a busy loop: with
//! no receive buffers the frame in hand waits and the tap is not watched until the guest
//! adds buffers; when the tap cannot take a frame, transmission waits for it to become
//! writable. Each event serves at most one ring's worth, so one busy queue cannot starve
//! the others.
//!
//! Frames from the guest that break the rules (shorter than the header, longer than
//! 64 KiB plus headers, buffers outside RAM, offloads not negotiated) are dropped and
//! counted; a malformed ring sets `DEVICE_NEEDS_RESET`. The host side ([`tap`]) is opened
//! before the VM exists, so a tap irvmm cannot use stops it with one line (exit 2).

pub mod backend;
pub mod ctrl;
pub mod handler;
pub mod mac;
pub mod offload;
pub mod rx;
pub mod tap;
pub mod tx;

use std::mem::offset_of;

use log::{info, warn};
use thiserror::Error;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;

use crate::spec::feature;
use crate::transport::DeviceSpec;
use crate::worker::QueueHandler;
pub use backend::{NetBackend, TapQueues};
pub use handler::{NetHandler, NetStats};
pub use mac::{MacAddr, MacError};
pub use tap::{Tap, TapError};

/// Entries per queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Entries of the control queue.
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Most queue pairs a device may have.
pub const MAX_QUEUE_PAIRS: u16 = 64;
/// PCI class code: network, Ethernet (what QEMU's virtio-net-pci says).
pub const NET_CLASS_CODE: u32 = 0x02_0000;
/// Bytes of the configuration structure the device offers (up to `mtu`, not offered).
pub const NET_CONFIG_SIZE: usize = offset_of!(virtio_net_config, mtu);

/// Features every device offers, whatever the tap supports.
pub const BASE_FEATURES: u64 = feature(VIRTIO_NET_F_MAC)
    | feature(VIRTIO_NET_F_STATUS)
    | feature(VIRTIO_NET_F_MRG_RXBUF)
    | feature(VIRTIO_NET_F_CTRL_VQ)
    | feature(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name (created when missing).
    pub tap: String,
    /// The guest's MAC address; random when `None`.
    pub mac: Option<MacAddr>,
    /// Queue pairs (1..=64).
    pub queues: u16,
}

impl NetConfig {
    /// One queue pair on tap `name` with a random MAC address.
    pub fn new(name: impl Into<String>) -> Self {
        NetConfig {
            tap: name.into(),
            mac: None,
            queues: 1,
        }
    }
}

/// Why a network device cannot be used (user input: the command line or the host).
#[derive(Debug, Error)]
pub enum NetError {
    /// The tap.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// `queues=` out of range.
    #[error("queues={0}: must be 1 to {MAX_QUEUE_PAIRS}")]
    Queues(u16),
    /// No random MAC address.
    #[error("random MAC address: {0}")]
    RandomMac(std::io::Error),
}

/// An opened tap, ready to become a device.
#[derive(Debug)]
pub struct Net {
    name: String,
    taps: Vec<Tap>,
    mac: MacAddr,
    offloads: bool,
}

impl Net {
    /// Checks `config` and opens its tap (one queue per pair), creating and bringing up
    /// the interface when it does not exist; `name` is for logs (`net0`, ...).
    pub fn open(config: &NetConfig, name: &str) -> Result<Self, NetError> {
        if config.queues == 0 || config.queues > MAX_QUEUE_PAIRS {
            return Err(NetError::Queues(config.queues));
        }
        let mac = match config.mac {
            Some(m) => m,
            None => MacAddr::random().map_err(NetError::RandomMac)?,
        };
        let existed = tap::exists(&config.tap);
        let multi = config.queues > 1;
        let taps = (0..config.queues)
            .map(|_| Tap::open(&config.tap, multi))
            .collect::<Result<Vec<_>, _>>()?;
        let first = taps.first().ok_or(NetError::Queues(config.queues))?;
        // Offer the offloads only if the tap takes them; leave it taking none until a
        // driver asks.
        let offloads = first.set_offload(tap::TAP_OFFLOADS).is_ok();
        if let Err(e) = first.set_offload(0) {
            warn!("{name}: tap {}: clearing offloads: {e}", config.tap);
        }
        if !existed {
            if let Err(e) = first.set_up() {
                warn!("{name}: tap {}: setting it up: {e}", config.tap);
            }
        }
        info!(
            "{name}: tap {} ({}, {} queue pair(s), offloads {}), MAC {mac}",
            config.tap,
            if existed { "existing" } else { "created" },
            config.queues,
            if offloads { "on" } else { "off" },
        );
        Ok(Net {
            name: name.to_string(),
            taps,
            mac,
            offloads,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Queue pairs.
    pub fn pairs(&self) -> u16 {
        // At most MAX_QUEUE_PAIRS, checked when opened.
        self.taps.len() as u16
    }

    /// Device-type features.
    pub fn features(&self) -> u64 {
        features(self.pairs(), self.offloads)
    }

    /// What the transport needs to know.
    pub fn spec(&self) -> DeviceSpec {
        spec(&self.name, self.mac, self.pairs(), self.offloads)
    }

    /// The device's I/O-thread side.
    pub fn into_handler(self) -> Box<dyn QueueHandler> {
        let pairs = usize::from(self.pairs());
        Box::new(NetHandler::new(self.name, TapQueues::new(self.taps), pairs))
    }
}

/// Device-type features of a device with `pairs` queue pairs, with the offloads when
/// the host side takes them.
pub fn features(pairs: u16, offloads: bool) -> u64 {
    let mut f = BASE_FEATURES;
    if pairs > 1 {
        f |= feature(VIRTIO_NET_F_MQ);
    }
    if offloads {
        f |= offload::GUEST_OFFLOADS | offload::HOST_OFFLOADS;
    }
    f
}

/// The `virtio_net_config` structure, up to `mtu`.
pub fn config_space(mac: MacAddr, pairs: u16) -> Vec<u8> {
    let mut c = vec![0u8; NET_CONFIG_SIZE];
    let mut put = |off: usize, bytes: &[u8]| {
        if let Some(dst) = c.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(offset_of!(virtio_net_config, mac), &mac.octets());
    put(
        offset_of!(virtio_net_config, status),
        &(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes(),
    );
    put(
        offset_of!(virtio_net_config, max_virtqueue_pairs),
        &pairs.to_le_bytes(),
    );
    c
}

/// The transport's description of a device with these parameters (also for tests and
/// the fuzzer, which run the handler on a fake back end).
pub fn spec(name: &str, mac: MacAddr, pairs: u16, offloads: bool) -> DeviceSpec {
    let mut queue_sizes = vec![NET_QUEUE_SIZE; 2 * usize::from(pairs)];
    queue_sizes.push(CTRL_QUEUE_SIZE);
    DeviceSpec {
        name: name.to_string(),
        device_type: VIRTIO_ID_NET,
        class_code: NET_CLASS_CODE,
        features: features(pairs, offloads),
        queue_sizes,
        config: config_space(mac, pairs),
    }
}

#[cfg(test)]
mod tests;
