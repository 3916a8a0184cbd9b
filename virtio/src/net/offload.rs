//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes before every frame in both
//! directions) and the offloads it carries: which features map onto which tap offloads,
//! and which headers each side may send given what was negotiated.
//!
//! * Guest → tap: `NEEDS_CSUM` needs `VIRTIO_NET_F_CSUM`; TCP segmentation (`GSO_TCPV4`,
//!   `GSO_TCPV6`, with or without `GSO_ECN`) needs `HOST_TSO4`/`HOST_TSO6` (and
//!   `HOST_ECN`). UDP fragmentation offload is not offered. A frame breaking these rules is
//!   dropped; the tap checks the offsets of the rest.
//! * Tap → guest: the tap is told (`TUNSETOFFLOAD`) exactly the guest offloads in force
//!   (negotiated, or later set through the control queue), so it checksums and segments
//!   everything else itself. A frame that still carries an offload the guest did not take
//!   (one queued before a change) is dropped; `DATA_VALID` is cleared for a guest without
//!   `GUEST_CSUM`.

use libc::c_uint;
use thiserror::Error;
use virtio_bindings::virtio_net::*;

use crate::spec::feature;

/// Offset of `flags`.
pub const HDR_FLAGS: usize = 0;
/// Offset of `gso_type`.
pub const HDR_GSO_TYPE: usize = 1;
/// Offset of `num_buffers` (le16).
pub const HDR_NUM_BUFFERS: usize = 10;

/// Header flags as bytes.
const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const F_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// GSO types as bytes.
const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

/// Offloads of frames the guest receives.
pub const GUEST_OFFLOADS: u64 = feature(VIRTIO_NET_F_GUEST_CSUM)
    | feature(VIRTIO_NET_F_GUEST_TSO4)
    | feature(VIRTIO_NET_F_GUEST_TSO6)
    | feature(VIRTIO_NET_F_GUEST_ECN);
/// Offloads of frames the guest sends.
pub const HOST_OFFLOADS: u64 = feature(VIRTIO_NET_F_CSUM)
    | feature(VIRTIO_NET_F_HOST_TSO4)
    | feature(VIRTIO_NET_F_HOST_TSO6)
    | feature(VIRTIO_NET_F_HOST_ECN);

/// Why a frame's header is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the header.
    #[error("frame of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    /// A partial checksum the receiver did not agree to complete.
    #[error("partial checksum without the checksum offload")]
    Checksum,
    /// A segmentation type the receiver did not agree to.
    #[error("segmentation type {0:#x} not negotiated")]
    Gso(u8),
}

/// The `TUN_F_*` flags for guest offload features `offloads` (a subset of
/// [`GUEST_OFFLOADS`]): checksum first, since the tap segments only with it.
pub fn tap_offloads(offloads: u64) -> c_uint {
    if offloads & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if offloads & feature(VIRTIO_NET_F_GUEST_TSO4) != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if offloads & feature(VIRTIO_NET_F_GUEST_TSO6) != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    if flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        && offloads & feature(VIRTIO_NET_F_GUEST_ECN) != 0
    {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// Whether `gso_type` may be sent to a receiver holding offload features `have`, given
/// the features that allow TCPv4, TCPv6 and ECN segments in that direction.
fn gso_allowed(gso_type: u8, have: u64, tso4: u32, tso6: u32, ecn: u32) -> bool {
    let ecn_ok = gso_type & GSO_ECN == 0 || have & feature(ecn) != 0;
    let base_ok = match gso_type & !GSO_ECN {
        GSO_NONE => gso_type == GSO_NONE,
        GSO_TCPV4 => have & feature(tso4) != 0,
        GSO_TCPV6 => have & feature(tso6) != 0,
        _ => false,
    };
    base_ok && ecn_ok
}

/// Checks the header of a frame the guest sends, given the negotiated features.
pub fn check_tx(frame: &[u8], features: u64) -> Result<(), HeaderError> {
    let (Some(&flags), Some(&gso)) = (frame.get(HDR_FLAGS), frame.get(HDR_GSO_TYPE)) else {
        return Err(HeaderError::Short(frame.len()));
    };
    if frame.len() < super::tap::VNET_HDR_LEN {
        return Err(HeaderError::Short(frame.len()));
    }
    if flags & F_NEEDS_CSUM != 0 && features & feature(VIRTIO_NET_F_CSUM) == 0 {
        return Err(HeaderError::Checksum);
    }
    if !gso_allowed(
        gso,
        features,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
    ) {
        return Err(HeaderError::Gso(gso));
    }
    Ok(())
}

/// Checks and adjusts the header of a frame from the tap for a guest whose receive
/// offloads are `offloads`; sets `num_buffers` to 1 (mergeable buffers rewrite it).
pub fn fix_rx(frame: &mut [u8], offloads: u64) -> Result<(), HeaderError> {
    let len = frame.len();
    let Some(hdr) = frame.get_mut(..super::tap::VNET_HDR_LEN) else {
        return Err(HeaderError::Short(len));
    };
    let csum = offloads & feature(VIRTIO_NET_F_GUEST_CSUM) != 0;
    if hdr[HDR_FLAGS] & F_NEEDS_CSUM != 0 && !csum {
        return Err(HeaderError::Checksum);
    }
    if !csum {
        hdr[HDR_FLAGS] &= !F_DATA_VALID;
    }
    let gso = hdr[HDR_GSO_TYPE];
    if !gso_allowed(
        gso,
        offloads,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
    ) {
        return Err(HeaderError::Gso(gso));
    }
    hdr[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8) -> Vec<u8> {
        let mut h = vec![0u8; 14];
        h[HDR_FLAGS] = flags;
        h[HDR_GSO_TYPE] = gso;
        h[HDR_NUM_BUFFERS] = 0xee;
        h
    }

    #[test]
    fn offloads_map_onto_tun_flags() {
        assert_eq!(tap_offloads(0), 0);
        // TSO without checksumming is meaningless to the tap.
        assert_eq!(tap_offloads(feature(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(
            tap_offloads(feature(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            tap_offloads(GUEST_OFFLOADS),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offloads(feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_ECN)),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn guest_headers_need_their_features() {
        let all = HOST_OFFLOADS;
        assert_eq!(check_tx(&hdr(0, 0), 0), Ok(()));
        assert_eq!(check_tx(&hdr(0, 0)[..11], all), Err(HeaderError::Short(11)));
        assert_eq!(check_tx(&[], all), Err(HeaderError::Short(0)));
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, 0), 0),
            Err(HeaderError::Checksum)
        );
        assert_eq!(check_tx(&hdr(F_NEEDS_CSUM, GSO_TCPV4), all), Ok(()));
        assert_eq!(
            check_tx(&hdr(F_NEEDS_CSUM, GSO_TCPV6), feature(VIRTIO_NET_F_CSUM)),
            Err(HeaderError::Gso(GSO_TCPV6))
        );
        assert_eq!(
            check_tx(
                &hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN),
                all & !feature(VIRTIO_NET_F_HOST_ECN)
            ),
            Err(HeaderError::Gso(GSO_TCPV4 | GSO_ECN))
        );
        for bad in [3u8, 5, 0x7f, GSO_ECN] {
            assert_eq!(
                check_tx(&hdr(0, bad), all),
                Err(HeaderError::Gso(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn tap_headers_are_checked_and_fixed() {
        let mut h = hdr(F_DATA_VALID, 0);
        fix_rx(&mut h, 0).unwrap();
        assert_eq!(h[HDR_FLAGS], 0, "DATA_VALID needs GUEST_CSUM");
        assert_eq!(&h[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2], &[1, 0]);
        let mut h = hdr(F_DATA_VALID, 0);
        fix_rx(&mut h, GUEST_OFFLOADS).unwrap();
        assert_eq!(h[HDR_FLAGS], F_DATA_VALID);
        assert_eq!(
            fix_rx(&mut hdr(F_NEEDS_CSUM, 0), 0),
            Err(HeaderError::Checksum)
        );
        assert_eq!(
            fix_rx(
                &mut hdr(F_NEEDS_CSUM, GSO_TCPV4),
                feature(VIRTIO_NET_F_GUEST_CSUM)
            ),
            Err(HeaderError::Gso(GSO_TCPV4))
        );
        assert_eq!(
            fix_rx(&mut hdr(F_NEEDS_CSUM, GSO_TCPV6), GUEST_OFFLOADS),
            Ok(())
        );
        assert_eq!(
            fix_rx(&mut [0u8; 5], GUEST_OFFLOADS),
            Err(HeaderError::Short(5))
        );
    }
}
