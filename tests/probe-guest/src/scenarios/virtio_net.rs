//! `probe=virtio-net`: the virtio-net device found by PCI ID (1af4:1041) exchanging frames
//! with the host-side peer (`tests/integration/net_peer.py`) on the other end of its tap,
//! every completion covered by an interrupt on its vector's CPU (remapped to the highest
//! APIC IDs when there is a DMAR; see `virtio_net_common` for the counting).
//!
//! 1. Pings: `probe.pings=N` (default 8) test frames of assorted sizes (60 to 1514 bytes),
//!    alternating over `probe.net_pairs=P` (default 2, when the device has them, set
//!    through the control queue); each must come back as the peer's pong with the same
//!    length and the pong pattern (any receive queue: the tap chooses). The first ping is
//!    repeated once a second until the peer answers (it may start after the guest).
//! 2. Checksum offload (with `CSUM` and `GUEST_CSUM`): a UDP datagram to the peer's
//!    address (10.0.0.2:4000 -> 10.0.0.1:4001) with only the pseudo-header checksum
//!    (`NEEDS_CSUM`); the host's UDP socket receives it only if the checksum got completed,
//!    and answers through the host's stack: the reply must arrive with a partial checksum
//!    the probe checks (`csum_rx=partial`), or a complete valid one (`csum_rx=full`).
//! 3. TCP segmentation, over a real TCP connection to the peer (10.0.0.2:5000 ->
//!    10.0.0.1:5001; the probe's SYN announces an MSS of 1000): 3000 bytes out as one
//!    `GSO_TCPV4` frame when `HOST_TSO4` was negotiated (else three segments), which the
//!    peer's socket must receive; then the peer's 3000 bytes back, which arrive as one
//!    3054-byte `GSO_TCPV4` frame (`gso_size` 1000, three or more buffers) when the tap took
//!    the guest's `GUEST_TSO4` (`tso_rx=1`), else as segments (`tso_rx=0`).
//! 4. A bye frame, which makes the peer print its summary.
//!
//! Passes with `mac=M pairs=P pings=N txq=A+B rxq=C+D csum_tx=0|1 csum_rx=partial|full
//! tso_tx=0|1 tso_rx=0|1 stray=S irqs=N remapped=0|1`.

use super::virtio_common;
use super::virtio_net_common::*;
use super::Context;
use crate::report::{Outcome, Text};
use crate::virtio::{Device, TYPE_NET};
use crate::{pvh, sprintln, text};

/// Frame lengths of the pings, in turn.
const SIZES: [usize; 8] = [60, 1514, 128, 1000, 61, 1513, 512, 1024];
/// How often and how long the first ping waits for the peer.
const HELLO_TRIES: u32 = 30;
const HELLO_WAIT_NS: u64 = 1_000_000_000;
/// How long any other answer may take.
const ANSWER_NS: u64 = 10_000_000_000;
/// Addresses of the offload steps.
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const PEER_IP: [u8; 4] = [10, 0, 0, 1];
const UDP_PORT_GUEST: u16 = 4000;
const UDP_PORT_PEER: u16 = 4001;
const TCP_PORT_GUEST: u16 = 5000;
const TCP_PORT_PEER: u16 = 5001;
/// The segmentation step: bytes each way, the MSS the probe announces, its initial
/// sequence number, TCP flags.
const TCP_BYTES: usize = 3000;
const MSS: u16 = 1000;
const ISS: u32 = 0x0100_0000;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const TCP_RST: u8 = 0x04;
/// Header layout offsets.
const ETH_LEN: usize = 14;
const IP_AT: usize = ETH_LEN;
const L4_AT: usize = IP_AT + 20;
const UDP_PAYLOAD_AT: usize = L4_AT + 8;
const TCP_PAYLOAD_AT: usize = L4_AT + 20;
const TCP_OPTIONS_AT: usize = L4_AT + 20;
const UDP_CSUM_OFFSET: u16 = 6;
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_MESSAGE: &[u8] = b"IRVMM-UDP";
const UDP_REPLY: &[u8] = b"IRVMM-UDP-REPLY";
const UDP_PATTERN: usize = 55;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_NET)?;
    sprintln!("virtio-net: {} found", dev.function);
    let want_pairs = pvh::cmdline_u32(ctx.cmdline, "probe.net_pairs", 2)? as usize;
    let pings = pvh::cmdline_u32(ctx.cmdline, "probe.pings", 8)?.clamp(1, 1000) as u16;
    let (_smp, mut irqs) = virtio_common::setup(ctx, &dev, vectors(&dev, want_pairs))?;
    let mut nic = Nic::open(
        dev,
        &mut irqs,
        F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4 | F_CTRL_VQ | F_MQ,
        want_pairs,
    )?;

    // 1. Pings.
    let mut peer = None;
    for seq in 0..pings {
        let p = usize::from(seq) % nic.pairs;
        let len = SIZES[usize::from(seq) % SIZES.len()];
        put_test_header(&BROADCAST, &nic.mac, K_PING, seq);
        for i in BODY_AT..len {
            put(i, pattern(seq, i - BODY_AT, false));
        }
        let (tries, wait) = if seq == 0 {
            (HELLO_TRIES, HELLO_WAIT_NS)
        } else {
            (1, ANSWER_NS)
        };
        let mut pong = None;
        for _ in 0..tries {
            nic.send(&mut irqs, p, &[0; HDR_LEN], len)?;
            match nic.recv_matching(&mut irqs, wait, "pong", |r| r.is(K_PONG, Some(seq))) {
                Ok(rx) => {
                    pong = Some(rx);
                    break;
                }
                Err(e) if tries == 1 => return Err(text!("ping {}: {}", seq, e)),
                Err(_) => {}
            }
        }
        let rx = pong.ok_or_else(|| text!("the peer never answered the first ping"))?;
        check_pong(&rx, seq, len, &nic.mac)?;
        peer = Some(rx.source());
    }
    let peer = peer.ok_or_else(|| text!("no peer"))?;

    // 2. Checksum offload.
    let csum_tx = nic.has(F_CSUM);
    let csum_rx = udp_exchange(&mut nic, &mut irqs, &peer)?;

    // 3. TCP segmentation offload.
    let (tso_tx, tso_rx) = tcp_exchange(&mut nic, &mut irqs, &peer)?;

    // 4. Bye.
    put_test_header(&peer, &nic.mac, K_BYE, 0);
    nic.send(&mut irqs, 0, &[0; HDR_LEN], BODY_AT)?;

    nic.settle(&mut irqs)?;
    let total = irqs.check_all()?;
    let m = nic.mac;
    Ok(text!(
        "mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} pairs={} pings={} txq={}+{} rxq={}+{} csum_tx={} csum_rx={} tso_tx={} tso_rx={} stray={} irqs={} remapped={}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        nic.pairs,
        pings,
        nic.tx_frames[0],
        nic.tx_frames[1],
        nic.rx_frames[0],
        nic.rx_frames[1],
        u8::from(csum_tx),
        csum_rx,
        u8::from(tso_tx),
        u8::from(tso_rx),
        nic.stray,
        total,
        u8::from(irqs.remapped)
    ))
}

/// Checks a pong: length, addressed to us, the pong pattern, no offload flags.
fn check_pong(rx: &Rx, seq: u16, len: usize, mac: &[u8; 6]) -> Result<(), Text> {
    if rx.len != len {
        return Err(text!("pong {}: {} bytes, expected {}", seq, rx.len, len));
    }
    if (0..6).any(|i| rx.byte(i) != mac[i]) {
        return Err(text!("pong {} is not addressed to the device's MAC", seq));
    }
    if let Some(i) = (BODY_AT..len).find(|&i| rx.byte(i) != pattern(seq, i - BODY_AT, true)) {
        return Err(text!("pong {}: byte {} is 0x{:x}", seq, i, rx.byte(i)));
    }
    if rx.hdr(1) != 0 {
        return Err(text!("pong {}: gso_type {}", seq, rx.hdr(1)));
    }
    Ok(())
}

/// Writes an Ethernet + IPv4 header for `l4_len` bytes of protocol `proto`, with its
/// checksum.
fn put_ipv4(dst_mac: &[u8; 6], src_mac: &[u8; 6], dst: &[u8; 4], proto: u8, l4_len: usize, id: u16) {
    put_all(0, dst_mac);
    put_all(6, src_mac);
    put_all(12, &ETHERTYPE_IPV4.to_be_bytes());
    put_all(IP_AT, &[0x45, 0]);
    put_all(IP_AT + 2, &((20 + l4_len) as u16).to_be_bytes());
    put_all(IP_AT + 4, &id.to_be_bytes());
    put_all(IP_AT + 6, &[0x40, 0, 64, proto, 0, 0]);
    put_all(IP_AT + 12, &GUEST_IP);
    put_all(IP_AT + 16, dst);
    let c = !fold(ones_sum(0, IP_AT, L4_AT, None));
    put_all(IP_AT + 10, &c.to_be_bytes());
}

/// The pseudo-header sum of an IPv4 segment.
fn pseudo(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: usize) -> u32 {
    let w = |a: &[u8; 4]| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]));
    w(src) + w(dst) + u32::from(proto) + len as u32
}

/// Step 2: a UDP datagram to the peer's stack and its reply; returns how the reply's
/// checksum came (`partial` or `full`).
fn udp_exchange(nic: &mut Nic, irqs: &mut virtio_common::Irqs, peer: &[u8; 6]) -> Result<&'static str, Text> {
    let payload = UDP_MESSAGE.len() + UDP_PATTERN;
    let udp_len = 8 + payload;
    put_ipv4(peer, &nic.mac, &PEER_IP, PROTO_UDP, udp_len, 0x1234);
    put_all(L4_AT, &UDP_PORT_GUEST.to_be_bytes());
    put_all(L4_AT + 2, &UDP_PORT_PEER.to_be_bytes());
    put_all(L4_AT + 4, &(udp_len as u16).to_be_bytes());
    put_all(UDP_PAYLOAD_AT, UDP_MESSAGE);
    for i in 0..UDP_PATTERN {
        put(UDP_PAYLOAD_AT + UDP_MESSAGE.len() + i, i as u8 ^ 0x3c);
    }
    let ps = pseudo(&GUEST_IP, &PEER_IP, PROTO_UDP, udp_len);
    let mut hdr = [0u8; HDR_LEN];
    if nic.has(F_CSUM) {
        put_all(L4_AT + 6, &fold(ps).to_be_bytes());
        hdr[0] = HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&(L4_AT as u16).to_le_bytes());
        hdr[8..10].copy_from_slice(&UDP_CSUM_OFFSET.to_le_bytes());
    } else {
        put_all(L4_AT + 6, &[0, 0]);
        let mut c = !fold(ones_sum(ps, L4_AT, L4_AT + udp_len, None));
        if c == 0 {
            c = 0xffff;
        }
        put_all(L4_AT + 6, &c.to_be_bytes());
    }
    nic.send(irqs, 0, &hdr, L4_AT + udp_len)?;
    let rx = nic.recv_matching(irqs, ANSWER_NS, "UDP reply", |r| {
        r.len >= UDP_PAYLOAD_AT
            && r.be16(12) == ETHERTYPE_IPV4
            && r.byte(IP_AT + 9) == PROTO_UDP
            && r.be16(L4_AT) == UDP_PORT_PEER
            && r.be16(L4_AT + 2) == UDP_PORT_GUEST
    })?;
    let reply_len = usize::from(rx.be16(L4_AT + 4));
    if reply_len < 8 + UDP_REPLY.len() || L4_AT + reply_len > rx.len {
        return Err(text!("UDP reply of {} bytes in a {}-byte frame", reply_len, rx.len));
    }
    if (0..UDP_REPLY.len()).any(|i| rx.byte(UDP_PAYLOAD_AT + i) != UDP_REPLY[i]) {
        return Err(text!("UDP reply does not start with IRVMM-UDP-REPLY"));
    }
    let ps = pseudo(&PEER_IP, &GUEST_IP, PROTO_UDP, reply_len);
    let field = rx.be16(L4_AT + 6);
    if rx.hdr(0) & HDR_F_NEEDS_CSUM != 0 {
        let (start, offset) = (rx.hdr16(6), rx.hdr16(8));
        if usize::from(start) != L4_AT || offset != UDP_CSUM_OFFSET {
            return Err(text!("UDP reply: partial checksum at {}+{}", start, offset));
        }
        // A partial checksum holds the pseudo-header sum.
        if fold(u32::from(field)) != fold(ps) && !(field == 0xffff && fold(ps) == 0) {
            return Err(text!("UDP reply: partial checksum 0x{:x}, pseudo-header 0x{:x}", field, fold(ps)));
        }
        Ok("partial")
    } else {
        if fold(ones_sum(ps, L4_AT, L4_AT + reply_len, Some(&rx))) != 0xffff {
            return Err(text!("UDP reply: bad checksum 0x{:x} (flags {})", field, rx.hdr(0)));
        }
        Ok("full")
    }
}

/// The byte the probe sends at stream offset `i`.
fn guest_stream(i: usize) -> u8 {
    (i % 251) as u8
}

/// The byte the peer sends at stream offset `i`.
pub fn peer_stream(i: usize) -> u8 {
    ((i % 249) as u8) ^ 0x55
}

/// Sends a TCP segment to the peer with `flags`, `seq`, `ack`, `options`, and `payload`
/// bytes of the probe's stream from stream offset `from` (one frame; with `gso` a
/// `GSO_TCPV4` frame the device segments at [`MSS`]).
#[allow(clippy::too_many_arguments)]
fn send_tcp(
    nic: &mut Nic,
    irqs: &mut virtio_common::Irqs,
    peer: &[u8; 6],
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[u8],
    from: usize,
    payload: usize,
    gso: bool,
) -> Result<(), Text> {
    let tcp_hdr = 20 + options.len();
    let tcp_len = tcp_hdr + payload;
    let mac = nic.mac;
    put_ipv4(peer, &mac, &PEER_IP, PROTO_TCP, tcp_len, seq as u16);
    put_all(L4_AT, &TCP_PORT_GUEST.to_be_bytes());
    put_all(L4_AT + 2, &TCP_PORT_PEER.to_be_bytes());
    put_all(L4_AT + 4, &seq.to_be_bytes());
    put_all(L4_AT + 8, &ack.to_be_bytes());
    put_all(L4_AT + 12, &[((tcp_hdr / 4) as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    put_all(TCP_OPTIONS_AT, options);
    for i in 0..payload {
        put(L4_AT + tcp_hdr + i, guest_stream(from + i));
    }
    let ps = pseudo(&GUEST_IP, &PEER_IP, PROTO_TCP, tcp_len);
    let mut hdr = [0u8; HDR_LEN];
    if nic.has(F_CSUM) {
        put_all(L4_AT + 16, &fold(ps).to_be_bytes());
        hdr[0] = HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&(L4_AT as u16).to_le_bytes());
        hdr[8..10].copy_from_slice(&TCP_CSUM_OFFSET.to_le_bytes());
    } else {
        let c = !fold(ones_sum(ps, L4_AT, L4_AT + tcp_len, None));
        put_all(L4_AT + 16, &c.to_be_bytes());
    }
    if gso {
        hdr[1] = GSO_TCPV4;
        hdr[2..4].copy_from_slice(&((L4_AT + tcp_hdr) as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&MSS.to_le_bytes());
    }
    nic.send(irqs, 0, &hdr, L4_AT + tcp_len)
}

/// A received TCP segment from the peer: (flags, seq, ack, payload offset, payload length).
fn tcp_of(rx: &Rx) -> Option<(u8, u32, u32, usize, usize)> {
    if rx.len < L4_AT + 20
        || rx.be16(12) != ETHERTYPE_IPV4
        || rx.byte(IP_AT + 9) != PROTO_TCP
        || rx.be16(L4_AT) != TCP_PORT_PEER
        || rx.be16(L4_AT + 2) != TCP_PORT_GUEST
    {
        return None;
    }
    let ihl = usize::from(rx.byte(IP_AT) & 0xf) * 4;
    let l4 = IP_AT + ihl;
    let doff = usize::from(rx.byte(l4 + 12) >> 4) * 4;
    let total = usize::from(rx.be16(IP_AT + 2));
    let be32 = |i: usize| u32::from(rx.be16(i)) << 16 | u32::from(rx.be16(i + 2));
    let payload = total.checked_sub(ihl + doff)?;
    if IP_AT + total > rx.len {
        return None;
    }
    Some((rx.byte(l4 + 13), be32(l4 + 4), be32(l4 + 8), l4 + doff, payload))
}

/// Step 3: a TCP connection to the peer, 3000 bytes each way; returns whether the probe's
/// bytes went out as one segmentation-offload frame and whether the peer's came in as one.
fn tcp_exchange(nic: &mut Nic, irqs: &mut virtio_common::Irqs, peer: &[u8; 6]) -> Result<(bool, bool), Text> {
    let mss = [2, 4, (MSS >> 8) as u8, MSS as u8];
    send_tcp(nic, irqs, peer, TCP_SYN, ISS, 0, &mss, 0, 0, false)?;
    let syn_ack = nic.recv_matching(irqs, ANSWER_NS, "SYN-ACK", |r| tcp_of(r).is_some())?;
    let (flags, irs, ack, _, _) = tcp_of(&syn_ack).ok_or_else(|| text!("SYN-ACK"))?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK || ack != ISS + 1 {
        return Err(text!("SYN answered with flags 0x{:x} ack 0x{:x}", flags, ack));
    }
    let (snd, mut rcv) = (ISS + 1, irs.wrapping_add(1));
    send_tcp(nic, irqs, peer, TCP_ACK, snd, rcv, &[], 0, 0, false)?;
    let tso_tx = nic.has(F_CSUM | F_HOST_TSO4);
    if tso_tx {
        send_tcp(nic, irqs, peer, TCP_ACK | TCP_PSH, snd, rcv, &[], 0, TCP_BYTES, true)?;
    } else {
        for k in 0..TCP_BYTES / usize::from(MSS) {
            let from = k * usize::from(MSS);
            send_tcp(nic, irqs, peer, TCP_ACK | TCP_PSH, snd + from as u32, rcv, &[], from, usize::from(MSS), false)?;
        }
    }
    let (mut got, mut whole) = (0usize, false);
    while got < TCP_BYTES {
        let rx = nic.recv_matching(irqs, ANSWER_NS, "the peer's bytes", |r| tcp_of(r).is_some())?;
        let (flags, seq, _, at, n) = tcp_of(&rx).ok_or_else(|| text!("TCP"))?;
        if flags & TCP_RST != 0 {
            return Err(text!("the peer reset the connection"));
        }
        if n == 0 {
            continue;
        }
        if seq != rcv || got + n > TCP_BYTES {
            return Err(text!("segment seq 0x{:x} of {} bytes, expected seq 0x{:x}", seq, n, rcv));
        }
        if let Some(i) = (0..n).find(|&i| rx.byte(at + i) != peer_stream(got + i)) {
            return Err(text!("stream byte {} is 0x{:x}", got + i, rx.byte(at + i)));
        }
        if n == TCP_BYTES {
            let (gso, size) = (rx.hdr(1), rx.hdr16(4));
            if gso != GSO_TCPV4 || size != MSS || rx.buffers < 3 {
                return Err(text!(
                    "{} bytes in one frame with gso_type {}, gso_size {}, {} buffers",
                    n,
                    gso,
                    size,
                    rx.buffers
                ));
            }
            whole = true;
        }
        got += n;
        rcv = rcv.wrapping_add(n as u32);
    }
    send_tcp(nic, irqs, peer, TCP_ACK, snd + TCP_BYTES as u32, rcv, &[], 0, 0, false)?;
    Ok((tso_tx, whole))
}
