//! The `vfio_user_client` harness: irvmm's vfio-user client ([`VfioUserDevice`]) against
//! a scripted device server on the other end of a socketpair, whose every answer the
//! fuzzer chooses: a correct reply built from a fuzzer-described device, a correct reply
//! with mangled header fields, size, payload or attached descriptors, raw bytes, an error
//! reply, silence, or a close (possibly mid-reply). The client opens the device and then
//! runs fuzzer-chosen backend calls. The pure decoders also get the input's raw bytes.
//!
//! Invariants asserted:
//!
//! * no panic, whatever the server sends;
//! * every call, the open included, returns within the client's timeout plus scheduling
//!   slack (one deadline per call, however the server dribbles or stalls);
//! * an open that succeeds describes at most 9 regions and 5 IRQ indices, and a mapping
//!   succeeds only inside one of the region's mmap areas;
//! * after a failure other than `Refused` or `Invalid` the connection is dead and every
//!   later call (but a local mmap) fails with `Gone`; `Refused` leaves it usable;
//! * no descriptor leaks: the process has as many open descriptors after the run as
//!   before.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use vfio::backend::BackendError;
use vfio::caps::build::{region_info, Cap};
use vfio::caps::{self, RawRegionInfo, SparseArea};
use vfio::user::protocol::{self as p, Command, Header, PayloadRange, RegionAccess};
use vfio::user::version::{parse_capabilities, parse_version};
use vfio::user::VfioUserDevice;
use vfio::{DmaRegion, VfioBackend};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::fuzz_type;

/// The client's per-call timeout in the harness.
pub const TIMEOUT: Duration = Duration::from_millis(30);
/// Slack on top of [`TIMEOUT`] for a loaded machine; a hang is unbounded, so it still shows.
pub const SLACK: Duration = Duration::from_secs(5);
/// Most backend calls per input.
const MAX_OPS: usize = 24;
/// Size of the memfd the server hands out for mmap-able regions.
const MEMFD_SIZE: i64 = 0x10000;

fuzz_type! {
    /// A sparse mmap area.
    pub struct Area {
        /// Offset in the region.
        pub offset: u32,
        /// Size.
        pub size: u32,
    }
}

fuzz_type! {
    /// One region of the described device.
    pub struct RegionSpec {
        /// Region flags (READ 1, WRITE 2, MMAP 4, CAPS 8).
        pub flags: u8,
        /// Size in bytes.
        pub size: u32,
        /// Offset in the region's descriptor.
        pub fd_offset: u32,
        /// SPARSE_MMAP areas (none: no capability).
        pub sparse: Vec<Area>,
        /// Add MSIX_MAPPABLE.
        pub msix_mappable: bool,
        /// Send the memfd with the final answer.
        pub send_fd: bool,
        /// Send the memfd with the first (short) answer too.
        pub fd_first: bool,
    }
}

fuzz_type! {
    /// The device the scripted server describes when it answers correctly.
    pub struct Setup {
        /// Version it answers.
        pub major: u16,
        /// Minor version.
        pub minor: u16,
        /// 0: capabilities JSON from the fields below; 1: no data; 2: `raw_json`.
        pub json_kind: u8,
        /// max_msg_fds it announces.
        pub max_msg_fds: u8,
        /// max_data_xfer_size it announces: `1 << (n % 22)`, or 0 when `n == 255`.
        pub xfer_shift: u8,
        /// Version data for `json_kind` 2.
        pub raw_json: Vec<u8>,
        /// Device flags (PCI is 2).
        pub device_flags: u32,
        /// Regions it claims.
        pub num_regions: u8,
        /// IRQ indices it claims.
        pub num_irqs: u8,
        /// Regions 0.. (missing ones have size 0).
        pub regions: Vec<RegionSpec>,
        /// Interrupt counts of IRQ indices 0.. (missing ones: 1).
        pub irq_counts: Vec<u8>,
    }
}

fuzz_type! {
    /// How the server answers one request.
    pub enum Answer {
        /// The correct reply.
        Valid {},
        /// The correct reply with fields replaced or shifted.
        Mangled {
            id_delta: u16,
            command: Option<u16>,
            flags: Option<u32>,
            size_delta: i32,
            error: u32,
            extra: Vec<u8>,
            cut: Option<u16>,
            fds: u8,
        },
        /// These bytes instead of a reply.
        Raw { bytes: Vec<u8> },
        /// An error reply.
        Error { errno: u32 },
        /// The first `keep` bytes of the correct reply, then close.
        CloseMid { keep: u16 },
        /// Close without answering.
        Close {},
        /// Never answer (the client times out).
        Stall {},
    }
}

fuzz_type! {
    /// A backend call.
    pub enum Op {
        Read { region: u8, offset: u16, len: u8 },
        Write { region: u8, offset: u16, len: u8, byte: u8 },
        Mmap { region: u8, offset: u32, size: u32 },
        SetIrqs { index: u8, start: u8, count: u8, present: u16 },
        Disable { index: u8 },
        Unmask {},
        Reset {},
        DmaMap { iova: u64, size: u32, offset: u16 },
        DmaUnmap { iova: u64, size: u32 },
    }
}

fuzz_type! {
    /// One input.
    pub struct Input {
        /// The described device.
        pub setup: Setup,
        /// Answers in request order (then correct answers).
        pub answers: Vec<Answer>,
        /// Calls after a successful open.
        pub ops: Vec<Op>,
        /// Bytes for the pure decoders.
        pub decode: Vec<u8>,
    }
}

/// Descriptors shared by all runs (created once, so the descriptor count is stable).
pub struct Shared {
    memfd: OwnedFd,
    eventfds: Vec<OwnedFd>,
}

/// The process-wide [`Shared`] descriptors (and SIGPIPE ignored).
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // SAFETY: ignoring SIGPIPE process-wide (libFuzzer's C main does not, unlike a
        // Rust main); the scripted server writes to sockets the client may have closed.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        // SAFETY: creating and sizing a fresh memfd that we then own.
        let memfd = unsafe {
            let fd = libc::memfd_create(c"fuzz-vfio-user".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, MEMFD_SIZE), 0);
            OwnedFd::from_raw_fd(fd)
        };
        let eventfds = (0..8)
            .map(|_| {
                // SAFETY: creating a fresh eventfd that we then own.
                unsafe {
                    let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
                    assert!(fd >= 0, "eventfd");
                    OwnedFd::from_raw_fd(fd)
                }
            })
            .collect();
        Shared { memfd, eventfds }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let shared = shared();
    decode_all(&input.decode);
    // Sessions in one process (tests run in parallel) take turns, so the count is ours.
    let _turn = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let before = open_fds();
    session(&input, shared);
    assert_eq!(open_fds(), before, "descriptor leak");
}

/// Serializes sessions for the descriptor count.
static SESSIONS: Mutex<()> = Mutex::new(());

/// What a session did (for the seed tests).
#[derive(Debug)]
pub struct Outcome {
    /// The open's error, as its message.
    pub open: Result<(), String>,
    /// Each call's error, as its message.
    pub ops: Vec<Result<(), String>>,
}

/// The pure decoders on raw bytes: none may panic.
fn decode_all(b: &[u8]) {
    if let Some(h) = b.get(..p::HEADER_SIZE) {
        let mut hb = [0u8; p::HEADER_SIZE];
        hb.copy_from_slice(h);
        let h = Header::parse(&hb);
        for cmd in COMMANDS {
            let arg = b.len();
            if let Ok(p::ReplyKind::Ok { payload } | p::ReplyKind::Error { payload, .. }) =
                p::check_reply(&h, h.id, cmd, cmd.reply_payload(arg))
            {
                let r = cmd.reply_payload(arg);
                assert!(payload <= r.max, "{cmd:?}: {payload} > {}", r.max);
            }
        }
        let _ = p::check_reply(&h, h.id, Command::Version, PayloadRange { min: 0, max: 0 });
    }
    if let Ok(v) = parse_version(b) {
        let _ = parse_capabilities(v.data);
    }
    let _ = parse_capabilities(b);
    let _ = p::parse_device_info(b);
    let _ = p::parse_irq_info(b);
    let _ = RegionAccess::parse(b);
    if let Ok(raw) = RawRegionInfo::parse(b) {
        let _ = caps::parse_chain(b, raw.cap_offset);
    }
}

const COMMANDS: [Command; 10] = [
    Command::Version,
    Command::DmaMap,
    Command::DmaUnmap,
    Command::DeviceGetInfo,
    Command::DeviceGetRegionInfo,
    Command::GetIrqInfo,
    Command::SetIrqs,
    Command::RegionRead,
    Command::RegionWrite,
    Command::DeviceReset,
];

/// Runs `input` against the scripted server and reports what happened.
pub fn session(input: &Input, shared: &'static Shared) -> Outcome {
    let (client, server) = UnixStream::pair().expect("socketpair");
    let setup = input.setup.clone();
    let answers = input.answers.clone();
    let memfd = shared.memfd.as_raw_fd();
    let thread = std::thread::spawn(move || serve(server, &setup, answers, memfd));

    let start = Instant::now();
    let opened = VfioUserDevice::from_stream(client, "fuzz.sock", TIMEOUT);
    bounded(start, "open");
    let mut outcome = Outcome {
        open: opened.as_ref().map(drop).map_err(|e| e.to_string()),
        ops: Vec::new(),
    };
    if let Ok(mut dev) = opened {
        check_open(&dev);
        for op in input.ops.iter().take(MAX_OPS) {
            let r = apply(&mut dev, op, shared);
            outcome.ops.push(r.map_err(|e| e.to_string()));
        }
    }
    thread.join().expect("scripted server");
    outcome
}

fn bounded(start: Instant, what: &str) {
    let took = start.elapsed();
    assert!(took < TIMEOUT + SLACK, "{what} took {took:?}");
}

fn check_open(dev: &VfioUserDevice) {
    assert!(dev.region(9).is_none());
    assert!(dev.irq(5).is_none());
    assert!(dev.max_data_xfer() >= 1 && dev.max_data_xfer() <= vfio::user::CLIENT_MAX_DATA_XFER);
    for i in 0..9 {
        if let Some(r) = dev.region(i) {
            assert_eq!(r.index, i);
            for a in r.mmap_areas() {
                assert!(a.offset.checked_add(a.size).is_some_and(|e| e <= r.size));
            }
        }
    }
}

fn apply(dev: &mut VfioUserDevice, op: &Op, shared: &Shared) -> Result<(), BackendError> {
    let was_connected = dev.is_connected();
    let start = Instant::now();
    let result = match *op {
        Op::Read {
            region,
            offset,
            len,
        } => {
            let mut buf = vec![0u8; usize::from(len)];
            dev.region_read(u32::from(region % 10), u64::from(offset), &mut buf)
        }
        Op::Write {
            region,
            offset,
            len,
            byte,
        } => {
            let buf = vec![byte; usize::from(len)];
            dev.region_write(u32::from(region % 10), u64::from(offset), &buf)
        }
        Op::Mmap {
            region,
            offset,
            size,
        } => {
            let index = u32::from(region % 10);
            let (offset, size) = (u64::from(offset), u64::from(size % (1 << 20)));
            let r = dev.mmap(index, offset, size);
            if r.is_ok() {
                let inside = dev.region(index).is_some_and(|reg| {
                    reg.mmap_areas()
                        .iter()
                        .any(|a| offset >= a.offset && offset + size <= a.offset + a.size)
                });
                assert!(inside, "mapped {size:#x} at {offset:#x} outside the areas");
            }
            // Mapping is local: it never touches the connection.
            r.map(drop)
        }
        Op::SetIrqs {
            index,
            start,
            count,
            present,
        } => {
            let fds: Vec<Option<RawFd>> = (0..usize::from(count % 9))
                .map(|i| {
                    (present & (1 << i) != 0)
                        .then(|| shared.eventfds.get(i).map(|e| e.as_raw_fd()))
                        .flatten()
                })
                .collect();
            dev.set_irq_eventfds(u32::from(index % 6), u32::from(start % 10), &fds)
        }
        Op::Disable { index } => dev.disable_irqs(u32::from(index % 6)),
        Op::Unmask {} => dev.unmask_intx(),
        Op::Reset {} => dev.reset(),
        Op::DmaMap { iova, size, offset } => dev.dma_map(&DmaRegion {
            iova,
            size: u64::from(size),
            host_addr: 0,
            fd: shared.memfd.as_raw_fd(),
            fd_offset: u64::from(offset),
        }),
        Op::DmaUnmap { iova, size } => dev.dma_unmap(iova, u64::from(size)),
    };
    bounded(start, "call");
    if matches!(op, Op::Mmap { .. }) {
        assert_eq!(dev.is_connected(), was_connected, "mmap is local");
        return result;
    }
    match &result {
        Ok(()) | Err(BackendError::Invalid { .. }) => {
            assert_eq!(dev.is_connected(), was_connected, "{op:?}: {result:?}");
        }
        Err(BackendError::Refused { .. }) => {
            assert!(was_connected && dev.is_connected(), "{op:?}: {result:?}")
        }
        Err(e) => assert!(!dev.is_connected(), "{op:?}: {e} left the connection up"),
    }
    if !was_connected {
        assert!(
            matches!(result, Err(BackendError::Gone)),
            "{op:?} on a dead connection: {result:?}"
        );
    }
    result
}

/// The scripted server: answers each request as the script says, correct answers once
/// the script runs out, until the client closes.
fn serve(mut s: UnixStream, setup: &Setup, answers: Vec<Answer>, memfd: RawFd) {
    let mut answers = answers.into_iter();
    loop {
        let mut hb = [0u8; p::HEADER_SIZE];
        if s.read_exact(&mut hb).is_err() {
            return;
        }
        let h = Header::parse(&hb);
        let len = (h.size as usize)
            .saturating_sub(p::HEADER_SIZE)
            .min(4 << 20);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let (reply, fds) = valid_reply(setup, &h, &payload, memfd);
        match answers.next().unwrap_or(Answer::Valid {}) {
            Answer::Valid {} => send(&s, &reply, &fds),
            Answer::Mangled {
                id_delta,
                command,
                flags,
                size_delta,
                error,
                extra,
                cut,
                fds: nfds,
            } => {
                let mut b = reply;
                let mut rh = [0u8; p::HEADER_SIZE];
                rh.copy_from_slice(&b[..p::HEADER_SIZE]);
                let mut rh = Header::parse(&rh);
                rh.id = rh.id.wrapping_add(id_delta);
                rh.command = command.unwrap_or(rh.command);
                rh.flags = flags.unwrap_or(rh.flags);
                rh.size = rh.size.wrapping_add_signed(size_delta);
                rh.error = error;
                b[..p::HEADER_SIZE].copy_from_slice(&rh.to_bytes());
                b.extend_from_slice(&extra);
                let fds = vec![memfd; usize::from(nfds % 12)];
                if let Some(cut) = cut {
                    b.truncate(usize::from(cut));
                    send(&s, &b, &fds);
                    return;
                }
                send(&s, &b, &fds);
            }
            Answer::Raw { bytes } => send(&s, &bytes, &[]),
            Answer::Error { errno } => {
                let e = Header {
                    id: h.id,
                    command: h.command,
                    size: p::HEADER_SIZE as u32,
                    flags: p::FLAG_TYPE_REPLY | p::FLAG_ERROR,
                    error: errno,
                };
                send(&s, &e.to_bytes(), &[]);
            }
            Answer::CloseMid { keep } => {
                let keep = usize::from(keep).min(reply.len());
                send(&s, &reply[..keep], &[]);
                return;
            }
            Answer::Close {} => return,
            Answer::Stall {} => {}
        }
    }
}

fn send(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    if bytes.is_empty() {
        return;
    }
    let sent = if fds.is_empty() {
        0
    } else {
        match s.send_with_fds(&[bytes], fds) {
            Ok(n) => n,
            Err(_) => return,
        }
    };
    let _ = (&*s).write_all(&bytes[sent..]);
}

fn put32(out: &mut Vec<u8>, v: &[u32]) {
    for x in v {
        out.extend_from_slice(&x.to_ne_bytes());
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
}

/// The correct reply to a request (header and payload) and the descriptors to attach.
fn valid_reply(setup: &Setup, h: &Header, req: &[u8], memfd: RawFd) -> (Vec<u8>, Vec<RawFd>) {
    let mut payload = Vec::new();
    let mut fds = Vec::new();
    match h.command {
        c if c == Command::Version as u16 => {
            payload.extend_from_slice(&setup.major.to_ne_bytes());
            payload.extend_from_slice(&setup.minor.to_ne_bytes());
            match setup.json_kind % 3 {
                0 => {
                    let xfer: u64 = if setup.xfer_shift == 255 {
                        0
                    } else {
                        1 << (setup.xfer_shift % 22)
                    };
                    let json = format!(
                        "{{\"capabilities\":{{\"max_msg_fds\":{},\"max_data_xfer_size\":{xfer},\"migration\":{{\"pgsize\":4096}}}}}}",
                        setup.max_msg_fds
                    );
                    payload.extend_from_slice(json.as_bytes());
                    payload.push(0);
                }
                1 => {}
                _ => payload.extend_from_slice(&setup.raw_json),
            }
        }
        c if c == Command::DeviceGetInfo as u16 => put32(
            &mut payload,
            &[
                16,
                setup.device_flags,
                u32::from(setup.num_regions),
                u32::from(setup.num_irqs),
            ],
        ),
        c if c == Command::DeviceGetRegionInfo as u16 => {
            let argsz = u32_at(req, 0) as usize;
            let index = u32_at(req, 8);
            let spec = setup.regions.get(index as usize);
            let (info, caps) = match spec {
                Some(r) => {
                    let mut caps = Vec::new();
                    if !r.sparse.is_empty() {
                        caps.push(Cap::Sparse(
                            r.sparse
                                .iter()
                                .map(|a| SparseArea {
                                    offset: u64::from(a.offset),
                                    size: u64::from(a.size),
                                })
                                .collect(),
                        ));
                    }
                    if r.msix_mappable {
                        caps.push(Cap::MsixMappable);
                    }
                    (
                        RawRegionInfo {
                            flags: u32::from(r.flags),
                            index,
                            size: u64::from(r.size),
                            offset: u64::from(r.fd_offset),
                            ..Default::default()
                        },
                        caps,
                    )
                }
                None => (
                    RawRegionInfo {
                        index,
                        ..Default::default()
                    },
                    Vec::new(),
                ),
            };
            let full = region_info(info, &caps);
            if argsz >= full.len() {
                payload = full;
                if spec.is_some_and(|r| r.send_fd) {
                    fds.push(memfd);
                }
            } else {
                payload = full[..caps::REGION_INFO_SIZE].to_vec();
                if spec.is_some_and(|r| r.fd_first) {
                    fds.push(memfd);
                }
            }
        }
        c if c == Command::GetIrqInfo as u16 => {
            let index = u32_at(req, 8);
            let count = setup
                .irq_counts
                .get(index as usize)
                .map_or(1, |&c| u32::from(c));
            put32(&mut payload, &[16, 1, index, count]);
        }
        c if c == Command::RegionRead as u16 => {
            payload.extend_from_slice(req.get(..16).unwrap_or_default());
            let count = u32_at(req, 12) as usize;
            payload.extend((0..count.min(1 << 20)).map(|i| i as u8));
        }
        c if c == Command::RegionWrite as u16 => {
            payload.extend_from_slice(req.get(..16).unwrap_or_default());
        }
        c if c == Command::DmaUnmap as u16 => payload.extend_from_slice(req),
        _ => {}
    }
    let header = Header {
        id: h.id,
        command: h.command,
        size: (p::HEADER_SIZE + payload.len()) as u32,
        flags: p::FLAG_TYPE_REPLY,
        error: 0,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&payload);
    (out, fds)
}

/// A device that opens cleanly: PCI, BAR 0 mmap-able with two sparse areas and
/// MSIX_MAPPABLE, BAR 2 and config space plain, five IRQ indices.
pub fn good_setup() -> Setup {
    let plain = |size| RegionSpec {
        flags: 3,
        size,
        fd_offset: 0,
        sparse: vec![],
        msix_mappable: false,
        send_fd: false,
        fd_first: false,
    };
    let mut regions: Vec<RegionSpec> = (0..9).map(|_| plain(0)).collect();
    regions[0] = RegionSpec {
        flags: 7,
        size: 0x4000,
        fd_offset: 0x1000,
        sparse: vec![
            Area {
                offset: 0,
                size: 0x1000,
            },
            Area {
                offset: 0x2000,
                size: 0x2000,
            },
        ],
        msix_mappable: true,
        send_fd: true,
        fd_first: false,
    };
    regions[2] = plain(0x1000);
    regions[7] = plain(0x100);
    Setup {
        major: 0,
        minor: 1,
        json_kind: 0,
        max_msg_fds: 2,
        xfer_shift: 6,
        raw_json: vec![],
        device_flags: 3,
        num_regions: 9,
        num_irqs: 5,
        regions,
        irq_counts: vec![1, 1, 8, 1, 1],
    }
}

/// Seed inputs: a clean session, and one per kind of bad answer.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::Encode;
    let ops = vec![
        Op::Read {
            region: 7,
            offset: 0,
            len: 4,
        },
        Op::Write {
            region: 2,
            offset: 0x10,
            len: 100,
            byte: 0xaa,
        },
        Op::Read {
            region: 2,
            offset: 0x20,
            len: 200,
        },
        Op::Mmap {
            region: 0,
            offset: 0x2000,
            size: 0x1000,
        },
        Op::SetIrqs {
            index: 2,
            start: 0,
            count: 5,
            present: 0b11011,
        },
        Op::Disable { index: 2 },
        Op::Unmask {},
        Op::DmaMap {
            iova: 0x10_0000,
            size: 0x1000,
            offset: 0,
        },
        Op::DmaUnmap {
            iova: 0x10_0000,
            size: 0x1000,
        },
        Op::Reset {},
    ];
    // Requests during a clean open: VERSION, GET_INFO, region 0 twice (its chain does
    // not fit the first answer), regions 1-8, 5 IRQ indices.
    const OPEN: usize = 2 + 10 + 5;
    let valid = |n: usize| (0..n).map(|_| Answer::Valid {}).collect::<Vec<_>>();
    let input = |setup: Setup, answers: Vec<Answer>| {
        Input {
            setup,
            answers,
            ops: ops.clone(),
            decode: vec![],
        }
        .to_bytes()
    };
    let after_open = |a: Answer| {
        let mut v = valid(OPEN + 1);
        v.push(a);
        v
    };
    let mut v1 = good_setup();
    v1.major = 1;
    v1.minor = 0;
    let mut bad_json = good_setup();
    bad_json.json_kind = 2;
    bad_json.raw_json = b"{\"capabilities\":{\"max_msg_fds\":\"x\"}}\0".to_vec();
    vec![
        ("clean", input(good_setup(), vec![])),
        ("version-1-0", input(v1, vec![])),
        ("bad-json", input(bad_json, vec![])),
        (
            "error-reply",
            input(good_setup(), after_open(Answer::Error { errno: 5 })),
        ),
        ("stall", input(good_setup(), after_open(Answer::Stall {}))),
        (
            "wrong-id",
            input(
                good_setup(),
                after_open(Answer::Mangled {
                    id_delta: 1,
                    command: None,
                    flags: None,
                    size_delta: 0,
                    error: 0,
                    extra: vec![],
                    cut: None,
                    fds: 0,
                }),
            ),
        ),
        (
            "close-mid-open",
            input(good_setup(), {
                let mut v = valid(3);
                v.push(Answer::CloseMid { keep: 20 });
                v
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str) -> Outcome {
        let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
        let input = Input::arbitrary(&mut Unstructured::new(&bytes)).unwrap();
        let _turn = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        session(&input, shared())
    }

    #[test]
    fn seeds_do_what_their_names_say() {
        let clean = outcome("clean");
        assert_eq!(clean.open, Ok(()));
        assert!(clean.ops.iter().all(Result::is_ok), "{clean:?}");
        assert!(outcome("version-1-0")
            .open
            .unwrap_err()
            .contains("speaks vfio-user 1.0"));
        assert!(outcome("bad-json").open.unwrap_err().contains("malformed"));
        assert!(outcome("close-mid-open")
            .open
            .unwrap_err()
            .contains("closed"));
        let o = outcome("error-reply");
        assert!(o.ops[1].as_ref().unwrap_err().contains("refused"), "{o:?}");
        assert!(o.ops[2].is_ok(), "{o:?}");
        for (name, first) in [("stall", "no reply within"), ("wrong-id", "malformed")] {
            let o = outcome(name);
            assert!(
                o.ops[1].as_ref().unwrap_err().contains(first),
                "{name}: {o:?}"
            );
            assert!(
                o.ops[2].as_ref().unwrap_err().contains("gone"),
                "{name}: {o:?}"
            );
        }
    }
}
