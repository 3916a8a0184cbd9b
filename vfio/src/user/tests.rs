//! The client against fake servers on a socketpair: correct answers first, then every
//! kind of bad reply a broken or hostile server can send.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::*;
use super::sys;
use super::{UserOpenError, VfioUserDevice};
use crate::backend::*;
use crate::caps::build::{region_info, Cap};
use crate::caps::{
    RawRegionInfo, SparseArea, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE,
};

const TIMEOUT: Duration = Duration::from_millis(300);
/// What "bounded" means in these tests: the timeout plus scheduling slack.
const BOUND: Duration = Duration::from_secs(3);

/// The server end of a socketpair.
struct Fake {
    s: UnixStream,
}

/// A request as the fake received it.
struct Req {
    h: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Req {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.payload[at..at + 8].try_into().unwrap())
    }
}

impl Fake {
    fn read_exact(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> bool {
        let mut got = 0;
        while got < buf.len() {
            sys::poll_fd(self.s.as_raw_fd(), libc::POLLIN, -1).unwrap();
            match sys::recv_with_fds(self.s.as_raw_fd(), &mut buf[got..], fds) {
                Ok(0) => return false,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// The next request, or `None` at end of stream.
    fn request(&mut self) -> Option<Req> {
        let mut hb = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        if !self.read_exact(&mut hb, &mut fds) {
            return None;
        }
        let h = Header::parse(&hb);
        let mut payload = vec![0u8; h.size as usize - HEADER_SIZE];
        if !self.read_exact(&mut payload, &mut fds) {
            return None;
        }
        Some(Req { h, payload, fds })
    }

    /// The next request, which must be `command`.
    fn expect(&mut self, command: Command) -> Req {
        let r = self.request().expect("a request");
        assert_eq!(r.h.command, command as u16, "{:?}", r.h);
        assert_eq!(r.h.flags, 0);
        r
    }

    fn send(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut sent = 0;
        let mut fds = fds;
        while sent < bytes.len() {
            sys::poll_fd(self.s.as_raw_fd(), libc::POLLOUT, -1).unwrap();
            match sys::send_with_fds(self.s.as_raw_fd(), &bytes[sent..], fds) {
                Ok(n) => {
                    sent += n;
                    fds = &[];
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// A reply to `req` with `payload` and `fds`.
    fn ok(&mut self, req: &Req, payload: &[u8], fds: &[RawFd]) {
        let h = Header {
            id: req.h.id,
            command: req.h.command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        };
        let mut m = h.to_bytes().to_vec();
        m.extend_from_slice(payload);
        self.send(&m, fds);
    }

    /// An error reply to `req`.
    fn error(&mut self, req: &Req, errno: u32) {
        let h = Header {
            id: req.h.id,
            command: req.h.command,
            size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: errno,
        };
        self.send(&h.to_bytes(), &[]);
    }

    /// Answers the VERSION request with `major.minor` and `json`.
    fn version(&mut self, major: u16, minor: u16, json: &[u8]) {
        let r = self.expect(Command::Version);
        let json_sent = std::str::from_utf8(&r.payload[4..r.payload.len() - 1]).unwrap();
        assert!(json_sent.contains("\"max_msg_fds\":8"), "{json_sent}");
        let mut p = major.to_ne_bytes().to_vec();
        p.extend_from_slice(&minor.to_ne_bytes());
        p.extend_from_slice(json);
        self.ok(&r, &p, &[]);
    }

    fn device_info(&mut self, flags: u32, regions: u32, irqs: u32) {
        let r = self.expect(Command::DeviceGetInfo);
        let mut p = Vec::new();
        for v in [16, flags, regions, irqs] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        self.ok(&r, &p, &[]);
    }

    /// Answers region-info requests for `dev`'s regions the way libvfio-user does (a
    /// short answer with the needed argsz first when the chain does not fit).
    fn regions(&mut self, dev: &Dev) {
        for (i, (info, caps)) in dev.regions.iter().enumerate() {
            loop {
                let r = self.expect(Command::DeviceGetRegionInfo);
                assert_eq!(r.u32_at(8), i as u32);
                let argsz = r.u32_at(0) as usize;
                let full = region_info(*info, caps);
                let fds: Vec<RawFd> = if info.flags & REGION_FLAG_MMAP != 0 {
                    vec![dev.memfd.as_raw_fd()]
                } else {
                    vec![]
                };
                if argsz >= full.len() {
                    self.ok(&r, &full, &fds);
                    break;
                }
                self.ok(&r, &full[..32], &[]);
            }
        }
    }

    fn irqs(&mut self, dev: &Dev) {
        for (i, &(flags, count)) in dev.irqs.iter().enumerate() {
            let r = self.expect(Command::GetIrqInfo);
            assert_eq!(r.u32_at(8), i as u32);
            let mut p = Vec::new();
            for v in [16, flags, i as u32, count] {
                p.extend_from_slice(&v.to_ne_bytes());
            }
            self.ok(&r, &p, &[]);
        }
    }

    /// A whole correct open of `dev`.
    fn open(&mut self, dev: &Dev) {
        self.version(0, 1, dev.json.as_bytes());
        self.device_info(
            DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            dev.regions.len() as u32,
            dev.irqs.len() as u32,
        );
        self.regions(dev);
        self.irqs(dev);
    }
}

/// A fake device.
struct Dev {
    json: String,
    regions: Vec<(RawRegionInfo, Vec<Cap>)>,
    irqs: Vec<(u32, u32)>,
    memfd: OwnedFd,
}

fn memfd(size: i64) -> OwnedFd {
    // SAFETY: creating and sizing a fresh memfd.
    unsafe {
        let fd = libc::memfd_create(c"irvmm-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, size), 0);
        std::os::fd::FromRawFd::from_raw_fd(fd)
    }
}

/// The byte [`dev`] puts at file offset 0x3000 of its BAR 0 memfd (BAR offset 0x2000).
const MARKER: u8 = 0x5a;

fn dev(json: &str) -> Dev {
    let mut regions = Vec::new();
    for index in 0..9u32 {
        let (flags, size, caps) = match index {
            0 => (
                REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP,
                0x4000,
                vec![Cap::Sparse(vec![
                    SparseArea {
                        offset: 0,
                        size: 0x1000,
                    },
                    SparseArea {
                        offset: 0x2000,
                        size: 0x2000,
                    },
                ])],
            ),
            2 => (REGION_FLAG_READ | REGION_FLAG_WRITE, 0x100, vec![]),
            7 => (REGION_FLAG_READ | REGION_FLAG_WRITE, 0x100, vec![]),
            _ => (0, 0, vec![]),
        };
        regions.push((
            RawRegionInfo {
                flags,
                index,
                size,
                offset: if index == 0 { 0x1000 } else { 0 },
                ..Default::default()
            },
            caps,
        ));
    }
    Dev {
        json: json.to_string(),
        regions,
        irqs: vec![
            (
                IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
                1,
            ),
            (IRQ_INFO_EVENTFD, 1),
            (IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE, 8),
            (IRQ_INFO_EVENTFD, 1),
            (IRQ_INFO_EVENTFD, 1),
        ],
        memfd: {
            let m = memfd(0x8000);
            // SAFETY: writing one byte into our own memfd.
            let n =
                unsafe { libc::pwrite(m.as_raw_fd(), (&MARKER as *const u8).cast(), 1, 0x3000) };
            assert_eq!(n, 1);
            m
        },
    }
}

const CAPS_JSON: &str = "{\"capabilities\":{\"max_msg_fds\":2,\"max_data_xfer_size\":4}}\0";

/// Runs `server` on the far end of a socketpair; returns the near end.
fn spawn(server: impl FnOnce(&mut Fake) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server(&mut Fake { s: b }));
    (a, t)
}

/// A device opened against a fake that then runs `then`.
fn opened(
    json: &'static str,
    then: impl FnOnce(&mut Fake) + Send + 'static,
) -> (VfioUserDevice, JoinHandle<()>) {
    let (a, t) = spawn(move |f| {
        let d = dev(json);
        f.open(&d);
        then(f);
    });
    let d = VfioUserDevice::from_stream(a, "fake.sock", TIMEOUT).expect("open");
    (d, t)
}

fn open_err(server: impl FnOnce(&mut Fake) + Send + 'static) -> UserOpenError {
    let (a, t) = spawn(server);
    let e = VfioUserDevice::from_stream(a, "fake.sock", TIMEOUT).expect_err("refused");
    t.join().unwrap();
    let line = e.to_string();
    assert!(!line.contains('\n') && line.contains("fake.sock"), "{line}");
    e
}

#[test]
fn open_learns_regions_irqs_and_limits() {
    let (d, t) = opened(CAPS_JSON, |f| assert!(f.request().is_none()));
    assert_eq!(d.describe(), "fake.sock");
    assert_eq!(d.kind(), BackendKind::User);
    assert!(d.isolation().isolated);
    assert!(d.isolation().reason.contains("cannot write MSIs"));
    assert_eq!((d.max_msg_fds(), d.max_data_xfer()), (2, 4));
    let bar0 = d.region(0).unwrap();
    assert_eq!(bar0.size, 0x4000);
    assert_eq!(bar0.mmap_areas().len(), 2);
    assert_eq!(d.region(7).unwrap().size, 0x100);
    assert_eq!(d.region(8).unwrap().size, 0);
    assert!(d.region(9).is_none());
    assert_eq!(d.irq(IRQ_MSIX).unwrap().count, 8);
    assert!(d.irq(5).is_none());
    // mmap: only inside an area, through the region fd at its offset.
    let m = d.mmap(0, 0x2000, 0x1000).unwrap();
    let mut b = [0u8; 1];
    assert!(m.read(0, &mut b));
    assert_eq!(b[0], MARKER, "BAR offset 0x2000 is file offset 0x3000");
    for (off, size) in [(0x1000, 0x1000), (0x0, 0x2000), (0x3000, 0x2000), (0, 0)] {
        assert!(matches!(
            d.mmap(0, off, size),
            Err(BackendError::Invalid { .. })
        ));
    }
    assert!(matches!(d.mmap(7, 0, 4), Err(BackendError::Invalid { .. })));
    drop(d);
    t.join().unwrap();
}

#[test]
fn defaults_when_the_server_says_nothing() {
    let (d, t) = opened("", |_| {});
    assert_eq!(
        (d.max_msg_fds(), d.max_data_xfer()),
        (1, super::CLIENT_MAX_DATA_XFER)
    );
    drop(d);
    t.join().unwrap();
}

#[test]
fn version_1_0_is_refused_naming_both_versions() {
    let e = open_err(|f| f.version(1, 0, b"{}\0"));
    assert!(matches!(
        e,
        UserOpenError::Version {
            major: 1,
            minor: 0,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "the server at fake.sock speaks vfio-user 1.0; irvmm speaks 0.x"
    );
}

#[test]
fn malformed_version_data_is_refused() {
    for json in [
        &b"{\"capabilities\":\0"[..],
        b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0",
        b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0",
        b"\xff\0",
    ] {
        let e = open_err(move |f| f.version(0, 1, json));
        assert!(matches!(e, UserOpenError::Malformed { .. }), "{e}");
    }
    // A reply too short for the version numbers.
    let e = open_err(|f| {
        let r = f.expect(Command::Version);
        f.ok(&r, &[0, 0], &[]);
    });
    assert!(matches!(e, UserOpenError::Malformed { .. }), "{e}");
}

#[test]
fn not_pci_is_refused() {
    let e = open_err(|f| {
        f.version(0, 1, b"");
        f.device_info(DEVICE_FLAGS_RESET, 9, 5);
    });
    assert!(matches!(e, UserOpenError::NotPci { flags: 1, .. }));
    assert!(e.to_string().contains("is not a PCI device"));
}

#[test]
fn refused_device_info_is_an_open_error() {
    let e = open_err(|f| {
        f.version(0, 1, b"");
        let r = f.expect(Command::DeviceGetInfo);
        f.error(&r, libc::EPERM as u32);
    });
    assert!(matches!(e, UserOpenError::Refused { errno: 1, .. }), "{e}");
}

#[test]
fn looping_capability_chain_is_malformed() {
    let e = open_err(|f| {
        f.version(0, 1, b"");
        f.device_info(DEVICE_FLAGS_PCI, 1, 0);
        let r = f.expect(Command::DeviceGetRegionInfo);
        let mut full = region_info(
            RawRegionInfo {
                flags: REGION_FLAG_READ,
                size: 0x1000,
                ..Default::default()
            },
            &[Cap::MsixMappable, Cap::MsixMappable],
        );
        // The second capability points back at the first.
        full[40 + 4..40 + 8].copy_from_slice(&32u32.to_ne_bytes());
        let argsz = full.len();
        assert_eq!(r.u32_at(0), 32);
        f.ok(&r, &full[..32], &[]);
        let r = f.expect(Command::DeviceGetRegionInfo);
        assert_eq!(r.u32_at(0) as usize, argsz);
        f.ok(&r, &full, &[]);
    });
    assert!(
        matches!(&e, UserOpenError::Malformed { what, .. } if what.contains("capabilities")),
        "{e}"
    );
}

#[test]
fn region_info_that_keeps_growing_or_is_huge_is_malformed() {
    let e = open_err(|f| {
        f.version(0, 1, b"");
        f.device_info(DEVICE_FLAGS_PCI, 1, 0);
        let mut argsz = 64u32;
        for _ in 0..2 {
            let r = f.expect(Command::DeviceGetRegionInfo);
            let info = RawRegionInfo {
                argsz,
                ..Default::default()
            };
            f.ok(&r, &info.to_bytes(), &[]);
            argsz += 8;
        }
    });
    assert!(matches!(e, UserOpenError::Malformed { .. }), "{e}");
    let e = open_err(|f| {
        f.version(0, 1, b"");
        f.device_info(DEVICE_FLAGS_PCI, 1, 0);
        let r = f.expect(Command::DeviceGetRegionInfo);
        let info = RawRegionInfo {
            argsz: u32::MAX,
            ..Default::default()
        };
        f.ok(&r, &info.to_bytes(), &[]);
    });
    assert!(matches!(e, UserOpenError::Malformed { .. }), "{e}");
}

#[test]
fn refused_region_and_irq_info_mean_absent() {
    let (a, t) = spawn(|f| {
        f.version(0, 1, b"");
        f.device_info(DEVICE_FLAGS_PCI, 1, 1);
        let r = f.expect(Command::DeviceGetRegionInfo);
        f.error(&r, libc::EINVAL as u32);
        let r = f.expect(Command::GetIrqInfo);
        f.error(&r, libc::EINVAL as u32);
    });
    let d = VfioUserDevice::from_stream(a, "fake.sock", TIMEOUT).unwrap();
    assert_eq!(d.region(0).unwrap().size, 0);
    assert_eq!(d.irq(0).unwrap().count, 0);
    t.join().unwrap();
}

/// Opens a device whose server answers the first request after open with `bad`, then
/// checks that the call fails with a protocol error, every later call is `Gone` at once,
/// and the server sees the connection close.
fn poisoned(bad: impl FnOnce(&mut Fake, Req) + Send + 'static) -> BackendError {
    let (mut d, t) = opened(CAPS_JSON, move |f| {
        let r = f.request().expect("request");
        bad(f, r);
        // The client closes the connection after the violation.
        assert!(f.request().is_none());
    });
    let mut b = [0u8; 4];
    let e = d.region_read(7, 0, &mut b).expect_err("bad reply");
    assert!(!d.is_connected());
    let start = Instant::now();
    assert!(matches!(
        d.region_read(7, 0, &mut b),
        Err(BackendError::Gone)
    ));
    assert!(matches!(d.reset(), Err(BackendError::Gone)));
    assert!(matches!(d.unmask_intx(), Err(BackendError::Gone)));
    // Even calls that would send nothing, or carry bad arguments.
    assert!(matches!(
        d.region_read(7, 0, &mut []),
        Err(BackendError::Gone)
    ));
    assert!(matches!(
        d.set_irq_eventfds(2, 0, &[None]),
        Err(BackendError::Gone)
    ));
    assert!(matches!(
        d.region_write(99, 0, &[1]),
        Err(BackendError::Gone)
    ));
    assert!(start.elapsed() < Duration::from_millis(50));
    t.join().unwrap();
    e
}

fn raw_reply(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
    Header {
        id,
        command,
        size,
        flags,
        error: 0,
    }
    .to_bytes()
    .to_vec()
}

fn read_payload(r: &Req) -> Vec<u8> {
    let mut p = r.payload.clone();
    p.extend_from_slice(&[1, 2, 3, 4]);
    p
}

#[test]
fn wrong_id_is_a_protocol_violation() {
    let e = poisoned(|f, r| {
        let mut m = raw_reply(r.h.id.wrapping_add(1), r.h.command, 36, FLAG_TYPE_REPLY);
        m.extend_from_slice(&read_payload(&r));
        f.send(&m, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("id"), "{e}");
}

#[test]
fn wrong_command_is_a_protocol_violation() {
    let e = poisoned(|f, r| {
        let mut m = raw_reply(r.h.id, Command::RegionWrite as u16, 36, FLAG_TYPE_REPLY);
        m.extend_from_slice(&read_payload(&r));
        f.send(&m, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn a_command_instead_of_a_reply_is_a_protocol_violation() {
    let e = poisoned(|f, r| {
        let m = raw_reply(r.h.id, r.h.command, 16, FLAG_TYPE_COMMAND);
        f.send(&m, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn huge_size_is_refused_before_allocating() {
    let e = poisoned(|f, r| {
        let m = raw_reply(r.h.id, r.h.command, u32::MAX, FLAG_TYPE_REPLY);
        f.send(&m, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn short_payload_is_a_protocol_violation() {
    // Fewer data bytes than asked for (a consistent but short message).
    let e = poisoned(|f, r| {
        let mut m = raw_reply(r.h.id, r.h.command, 34, FLAG_TYPE_REPLY);
        m.extend_from_slice(&r.payload);
        m.extend_from_slice(&[1, 2]);
        f.send(&m, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn mismatched_region_access_is_a_protocol_violation() {
    let e = poisoned(|f, r| {
        let mut p = read_payload(&r);
        p[0] ^= 4; // another offset
        f.ok(&r, &p, &[]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn close_mid_reply_is_gone() {
    let e = poisoned(|f, r| {
        let m = raw_reply(r.h.id, r.h.command, 36, FLAG_TYPE_REPLY);
        f.send(&m[..10], &[]);
        // SAFETY: shutting down our own socket.
        unsafe { libc::shutdown(f.s.as_raw_fd(), libc::SHUT_WR) };
    });
    assert!(matches!(e, BackendError::Gone), "{e}");
}

#[test]
fn too_many_descriptors_in_a_reply_is_a_protocol_violation() {
    let e = poisoned(|f, r| {
        let fd = f.s.as_raw_fd();
        f.ok(&r, &read_payload(&r), &[fd; 12]);
    });
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
}

#[test]
fn error_reply_is_refused_and_the_stream_stays_usable() {
    let (mut d, t) = opened(CAPS_JSON, |f| {
        let r = f.expect(Command::RegionRead);
        f.error(&r, libc::EIO as u32);
        let r = f.expect(Command::RegionRead);
        f.ok(&r, &read_payload(&r), &[]);
    });
    let mut b = [0u8; 4];
    assert!(matches!(
        d.region_read(7, 0, &mut b),
        Err(BackendError::Refused {
            errno: libc::EIO,
            ..
        })
    ));
    assert!(d.is_connected());
    d.region_read(7, 0, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    drop(d);
    t.join().unwrap();
}

#[test]
fn silent_server_times_out_in_bounded_time_then_gone() {
    let (mut d, t) = opened(CAPS_JSON, |f| {
        let _r = f.expect(Command::DeviceReset);
        // Never answer; the client gives up and closes.
        assert!(f.request().is_none());
    });
    let start = Instant::now();
    let e = d.reset().unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(e, BackendError::Timeout { millis: 300, .. }),
        "{e}"
    );
    assert!(took >= TIMEOUT && took < BOUND, "{took:?}");
    let start = Instant::now();
    assert!(matches!(d.reset(), Err(BackendError::Gone)));
    assert!(start.elapsed() < Duration::from_millis(50));
    t.join().unwrap();
}

#[test]
fn silent_server_times_out_the_open() {
    let (a, b) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let e = VfioUserDevice::from_stream(a, "fake.sock", TIMEOUT).unwrap_err();
    assert!(matches!(e, UserOpenError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < BOUND);
    assert!(e.to_string().contains("VERSION"));
    drop(b);
}

#[test]
fn dribbling_server_cannot_stretch_a_call_past_the_deadline() {
    let (mut d, t) = opened(CAPS_JSON, |f| {
        let r = f.expect(Command::RegionRead);
        let mut m = raw_reply(r.h.id, r.h.command, 36, FLAG_TYPE_REPLY);
        m.extend_from_slice(&read_payload(&r));
        for b in m {
            std::thread::sleep(Duration::from_millis(40));
            f.send(&[b], &[]);
        }
    });
    let start = Instant::now();
    let mut b = [0u8; 4];
    let e = d.region_read(7, 0, &mut b).unwrap_err();
    assert!(matches!(e, BackendError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < TIMEOUT + Duration::from_millis(200));
    drop(d);
    t.join().unwrap();
}

#[test]
fn region_accesses_are_split_at_the_transfer_limit() {
    let (mut d, t) = opened(CAPS_JSON, |f| {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = f.expect(Command::RegionRead);
            let (off, region, count) = (r.u64_at(0), r.u32_at(8), r.u32_at(12));
            seen.push((off, region, count));
            let mut p = r.payload.clone();
            p.extend((0..count).map(|i| (off as u32 + i) as u8));
            f.ok(&r, &p, &[]);
        }
        assert_eq!(seen, vec![(0x10, 7, 4), (0x14, 7, 4), (0x18, 7, 2)]);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let r = f.expect(Command::RegionWrite);
            let count = r.u32_at(12) as usize;
            seen.push((r.u64_at(0), r.payload[16..16 + count].to_vec()));
            f.ok(&r, &r.payload[..16], &[]);
        }
        assert_eq!(
            seen,
            vec![(0x20, vec![9, 8, 7, 6]), (0x24, vec![5])],
            "write chunks"
        );
    });
    let mut b = [0u8; 10];
    d.region_read(7, 0x10, &mut b).unwrap();
    assert_eq!(
        b,
        [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19]
    );
    d.region_write(7, 0x20, &[9, 8, 7, 6, 5]).unwrap();
    // Out of range: refused locally, the connection stays up.
    assert!(matches!(
        d.region_read(7, 0xfe, &mut b),
        Err(BackendError::Invalid { .. })
    ));
    assert!(matches!(
        d.region_write(9, 0, &[0]),
        Err(BackendError::Invalid { .. })
    ));
    assert!(matches!(
        d.region_read(7, u64::MAX, &mut b),
        Err(BackendError::Invalid { .. })
    ));
    d.region_read(7, 0, &mut []).unwrap();
    assert!(d.is_connected());
    drop(d);
    t.join().unwrap();
}

fn eventfd() -> OwnedFd {
    // SAFETY: creating a fresh eventfd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: we own the fresh descriptor.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

fn eventfd_count(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reading 8 bytes from an eventfd into a u64.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

#[test]
fn irq_requests_split_runs_and_skip_none() {
    let (mut d, t) = opened(CAPS_JSON, |f| {
        // [Some, Some, Some, None, Some] from start 1, two descriptors per message.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = f.expect(Command::SetIrqs);
            assert_eq!(r.payload.len(), SET_IRQS_SIZE);
            let (argsz, flags, index, start, count) = (
                r.u32_at(0),
                r.u32_at(4),
                r.u32_at(8),
                r.u32_at(12),
                r.u32_at(16),
            );
            assert_eq!((argsz, flags, index), (20, 0x24, 2));
            assert_eq!(r.fds.len(), count as usize);
            for fd in &r.fds {
                // Signal it, as a device would.
                // SAFETY: writing 8 bytes to an eventfd.
                unsafe { libc::write(fd.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
            }
            seen.push((start, count));
            f.ok(&r, &[], &[]);
        }
        assert_eq!(seen, vec![(1, 2), (3, 1), (5, 1)]);
        let r = f.expect(Command::SetIrqs);
        assert_eq!(
            &r.payload[4..20],
            &[0x21, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        f.ok(&r, &[], &[]);
        let r = f.expect(Command::SetIrqs);
        assert_eq!(
            &r.payload[4..20],
            &[0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        f.ok(&r, &[], &[]);
        let r = f.expect(Command::DeviceReset);
        assert!(r.payload.is_empty());
        f.ok(&r, &[], &[]);
        let r = f.expect(Command::DmaMap);
        assert_eq!(r.payload.len(), DMA_MAP_SIZE);
        assert_eq!(r.fds.len(), 1);
        assert_eq!(
            (
                r.u32_at(0),
                r.u32_at(4),
                r.u64_at(8),
                r.u64_at(16),
                r.u64_at(24)
            ),
            (32, 3, 0x100, 0x8000_0000, 0x1000)
        );
        f.ok(&r, &[], &[]);
        let r = f.expect(Command::DmaUnmap);
        assert_eq!(
            (r.u32_at(0), r.u64_at(8), r.u64_at(16)),
            (24, 0x8000_0000, 0x1000)
        );
        f.ok(&r, &r.payload.clone(), &[]);
    });
    let efds: Vec<OwnedFd> = (0..5).map(|_| eventfd()).collect();
    let mut fds: Vec<Option<RawFd>> = efds.iter().map(|e| Some(e.as_raw_fd())).collect();
    fds[3] = None;
    d.set_irq_eventfds(IRQ_MSIX, 1, &fds).unwrap();
    let counts: Vec<u64> = efds.iter().map(|e| eventfd_count(e.as_raw_fd())).collect();
    assert_eq!(counts, vec![1, 1, 1, 0, 1]);
    // Past the index's 8 vectors, a negative fd, an unknown index: refused locally.
    assert!(matches!(
        d.set_irq_eventfds(IRQ_MSIX, 4, &fds),
        Err(BackendError::Invalid { .. })
    ));
    assert!(matches!(
        d.set_irq_eventfds(IRQ_MSIX, 0, &[Some(-1)]),
        Err(BackendError::Invalid { .. })
    ));
    assert!(matches!(
        d.set_irq_eventfds(9, 0, &[None]),
        Err(BackendError::Invalid { .. })
    ));
    d.set_irq_eventfds(IRQ_MSIX, 0, &[None, None]).unwrap();
    d.disable_irqs(IRQ_MSIX).unwrap();
    d.unmask_intx().unwrap();
    d.reset().unwrap();
    let mem = memfd(0x2000);
    d.dma_map(&DmaRegion {
        iova: 0x8000_0000,
        size: 0x1000,
        host_addr: 0,
        fd: mem.as_raw_fd(),
        fd_offset: 0x100,
    })
    .unwrap();
    assert!(matches!(
        d.dma_map(&DmaRegion {
            iova: u64::MAX,
            size: 2,
            host_addr: 0,
            fd: mem.as_raw_fd(),
            fd_offset: 0,
        }),
        Err(BackendError::Invalid { .. })
    ));
    d.dma_unmap(0x8000_0000, 0x1000).unwrap();
    assert!(d.is_connected());
    drop(d);
    t.join().unwrap();
}

#[test]
fn connect_errors_name_the_fix() {
    let dir = std::env::temp_dir().join(format!("irvmm-vu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("none.sock");
    let e = VfioUserDevice::connect(&path, TIMEOUT).unwrap_err();
    assert!(matches!(e, UserOpenError::NotListening { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "no vfio-user server is listening at {} (start the device server first)",
            path.display()
        )
    );
    // A socket file nobody listens on any more.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(matches!(
        VfioUserDevice::connect(&stale, TIMEOUT),
        Err(UserOpenError::NotListening { .. })
    ));
    let long = dir.join("x".repeat(120));
    assert!(matches!(
        VfioUserDevice::connect(&long, TIMEOUT),
        Err(UserOpenError::PathTooLong { .. })
    ));
    // A listener that never accepts: the connect queues, VERSION goes unanswered.
    let quiet = dir.join("quiet.sock");
    let _l = std::os::unix::net::UnixListener::bind(&quiet).unwrap();
    let start = Instant::now();
    assert!(matches!(
        VfioUserDevice::connect(&quiet, TIMEOUT),
        Err(UserOpenError::Timeout { .. })
    ));
    assert!(start.elapsed() < BOUND);
    std::fs::remove_dir_all(&dir).unwrap();
}
