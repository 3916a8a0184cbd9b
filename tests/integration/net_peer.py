#!/usr/bin/env python3
"""The host side of the probe's virtio-net scenarios: run inside the network namespace
that holds the tap (`ip netns exec NS python3 net_peer.py --tap NAME`).

It waits for the tap (irvmm may create it), gives it 10.0.0.1/24 and sets it up, opens
its sockets, prints `PEER READY`, then answers the probe:

* test frames (EtherType 0x88b5, `IRVMMNET`, kind, sequence number, pattern; see
  tests/probe-guest/src/scenarios/virtio_net_common.rs): a PING gets a PONG of the same
  length and sequence number with the pong pattern, addressed to the sender; the first
  PING's source becomes the guest's MAC address (a permanent neighbour entry for
  10.0.0.2);
* UDP to 10.0.0.1:4001 starting `IRVMM-UDP` gets `IRVMM-UDP-REPLY` + the rest back
  through the host's stack (the guest's checksum offload on the way in, the tap's on the
  way out);
* a TCP connection to 10.0.0.1:5001: 3000 bytes in (checked), 3000 bytes out in one send;
  a packet socket with PACKET_VNET_HDR notes whether the guest's bytes arrived as one
  segmentation-offload frame (`gso_seen=1`);
* BYE: prints `PEER OK pings=N udp=N tcp_in=N tcp_out=N gso_seen=0|1 bad=N` and keeps its
  sockets open (so the host sends the guest nothing more) until killed or --linger ends.

Bench mode (`--bench`): BENCH_TX frames from the guest are counted; BENCH_RX N makes it
send N 64-byte BENCH_DATA frames to the guest as fast as it can until BENCH_STOP;
prints `PEER BENCH rx_frames=N tx_frames=N` at BYE.

Any mismatch is printed as `PEER BAD ...` and counted; --timeout ends it with status 1.
"""

import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import time

ETHERTYPE = 0x88B5
ETH_P_IP = 0x0800
MAGIC = b"IRVMMNET"
K_PING, K_PONG, K_BYE = 1, 2, 3
K_BENCH_TX, K_BENCH_RX, K_BENCH_DATA, K_BENCH_STOP = 4, 5, 6, 7
KIND_AT = 14 + 8
SEQ_AT = KIND_AT + 1
BODY_AT = SEQ_AT + 2
PEER_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
UDP_PORT, TCP_PORT = 4001, 5001
TCP_BYTES = 3000
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_VNET_HDR = 15
VNET_HDR = struct.Struct("<BBHHHH")
GSO_TCPV4 = 1


def pattern(seq, i, pong):
    base = seq * 13 + 0x5A if pong else seq * 7
    return (base + i) & 0xFF


def guest_stream(i):
    return i % 251


def peer_stream(i):
    return (i % 249) ^ 0x55


def log(line):
    print(line, flush=True)


def wait_for_tap(name, deadline):
    while time.monotonic() < deadline:
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            time.sleep(0.01)
    return False


def ip(*args):
    subprocess.run(["ip", *args], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def configure(tap):
    try:
        with open(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass
    ip("addr", "replace", f"{PEER_IP}/24", "dev", tap)
    ip("link", "set", tap, "up")
    with open(f"/sys/class/net/{tap}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def test_frame(dst, src, kind, seq, length, fill=None):
    head = dst + src + struct.pack("!H", ETHERTYPE) + MAGIC + bytes([kind]) + struct.pack("!H", seq)
    body = bytes(fill(i) for i in range(max(0, length - len(head)))) if fill else bytes(max(0, length - len(head)))
    return head + body


class Peer:
    def __init__(self, args):
        self.args = args
        self.tap = args.tap
        self.guest = None
        self.counts = dict(pings=0, udp=0, tcp_in=0, tcp_out=0, gso_seen=0, bad=0)
        self.bench = dict(rx_frames=0, tx_frames=0)
        self.tcp_conn = None
        self.tcp_got = b""
        self.flood = 0
        self.flood_frame = None

    def bad(self, why):
        self.counts["bad"] += 1
        log(f"PEER BAD {why}")

    def open(self):
        tap = self.tap
        self.mac = configure(tap)
        self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        self.raw.bind((tap, ETHERTYPE))
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.ipraw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.ipraw.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        self.ipraw.bind((tap, ETH_P_IP))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((PEER_IP, UDP_PORT))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((PEER_IP, TCP_PORT))
        self.tcp.listen(1)
        log(f"PEER READY tap={tap} mac={self.mac.hex(':')}")

    def on_test_frame(self, frame):
        if len(frame) < BODY_AT or frame[14:22] != MAGIC:
            return False
        kind = frame[KIND_AT]
        seq = struct.unpack_from("!H", frame, SEQ_AT)[0]
        src = frame[6:12]
        if kind == K_PING:
            if any(frame[i] != pattern(seq, i - BODY_AT, False) for i in range(BODY_AT, len(frame))):
                self.bad(f"ping {seq}: pattern")
            if self.guest is None:
                self.guest = src
                ip("neigh", "replace", GUEST_IP, "lladdr", src.hex(":"), "dev", self.tap, "nud", "permanent")
            self.counts["pings"] += 1
            self.raw.send(test_frame(src, self.mac, K_PONG, seq, len(frame), lambda i: pattern(seq, i, True)))
        elif kind == K_BENCH_TX:
            self.bench["tx_frames"] += 1
        elif kind == K_BENCH_RX:
            self.guest = src
            self.flood = struct.unpack_from("!I", frame, BODY_AT)[0]
            self.flood_frame = test_frame(src, self.mac, K_BENCH_DATA, 0, 64)
        elif kind == K_BENCH_STOP:
            self.flood = 0
        elif kind == K_BYE:
            return True
        return False

    def on_ip_frame(self, data, addr):
        if addr[2] == PACKET_OUTGOING or len(data) < VNET_HDR.size + 34 + 20:
            return
        flags, gso_type, hdr_len, gso_size, _, _ = VNET_HDR.unpack_from(data)
        frame = data[VNET_HDR.size:]
        if frame[23] != 6 or struct.unpack_from("!H", frame, 36)[0] != TCP_PORT:
            return
        ihl = (frame[14] & 0xF) * 4
        doff = (frame[14 + ihl + 12] >> 4) * 4
        payload = len(frame) - 14 - ihl - doff
        if payload == TCP_BYTES and gso_type & 0x7F == GSO_TCPV4 and gso_size == 1000:
            self.counts["gso_seen"] = 1

    def on_tcp_data(self):
        data = self.tcp_conn.recv(65536)
        if not data:
            return
        self.tcp_got += data
        if len(self.tcp_got) == TCP_BYTES:
            self.counts["tcp_in"] = len(self.tcp_got)
            if any(b != guest_stream(i) for i, b in enumerate(self.tcp_got)):
                self.bad("TCP stream from the guest differs")
            self.tcp_conn.sendall(bytes(peer_stream(i) for i in range(TCP_BYTES)))
            self.counts["tcp_out"] = TCP_BYTES
        elif len(self.tcp_got) > TCP_BYTES:
            self.bad(f"{len(self.tcp_got)} TCP bytes from the guest")

    def summary(self):
        if self.args.bench:
            log("PEER BENCH " + " ".join(f"{k}={v}" for k, v in self.bench.items()))
        log("PEER OK " + " ".join(f"{k}={v}" for k, v in self.counts.items()))

    def run(self):
        deadline = time.monotonic() + self.args.timeout
        if not wait_for_tap(self.tap, deadline):
            log(f"PEER FAIL tap {self.tap} never appeared")
            return 1
        try:
            return self.serve(deadline)
        except OSError as e:
            log(f"PEER FAIL {e} " + " ".join(f"{k}={v}" for k, v in self.counts.items()))
            return 1

    def serve(self, deadline):
        self.open()
        while time.monotonic() < deadline:
            socks = [self.raw, self.ipraw, self.udp, self.tcp] + ([self.tcp_conn] if self.tcp_conn else [])
            wout = [self.raw] if self.flood else []
            readable, writable, _ = select.select(socks, wout, [], 0.2)
            done = False
            for s in readable:
                if s is self.raw:
                    done |= self.on_test_frame(self.raw.recv(65536))
                elif s is self.ipraw:
                    data, addr = self.ipraw.recvfrom(65536)
                    self.on_ip_frame(data, addr)
                elif s is self.udp:
                    data, addr = self.udp.recvfrom(65536)
                    if data.startswith(b"IRVMM-UDP"):
                        self.counts["udp"] += 1
                        self.udp.sendto(b"IRVMM-UDP-REPLY" + data[len(b"IRVMM-UDP"):], addr)
                elif s is self.tcp:
                    self.tcp_conn, _ = self.tcp.accept()
                    self.tcp_conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                elif s is self.tcp_conn:
                    self.on_tcp_data()
            if writable and self.flood:
                for _ in range(min(self.flood, 256)):
                    try:
                        self.raw.send(self.flood_frame)
                    except (BlockingIOError, OSError):
                        break
                    self.bench["rx_frames"] += 1
                    self.flood -= 1
            if done:
                self.summary()
                # Keep the sockets (and the TCP connection) open: closing would send the
                # guest frames it does not expect.
                time.sleep(self.args.linger)
                return 0 if self.counts["bad"] == 0 else 1
        log("PEER FAIL timed out " + " ".join(f"{k}={v}" for k, v in self.counts.items()))
        return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--linger", type=float, default=30, help="seconds to stay after BYE")
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    sys.exit(Peer(args).run())


if __name__ == "__main__":
    main()
