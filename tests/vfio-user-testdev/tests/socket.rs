//! Drives the real binary over its socket with the `vfio_user` crate's client.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vfio_user::Client;
use vm_memory::{MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-user-testdev");
const DEADLINE: Duration = Duration::from_secs(30);

const BAR0: u32 = 0;
const CONFIG: u32 = 7;
const ID: u64 = 0x000;
const SCRATCH: u64 = 0x008;
const DOORBELL: u64 = 0x010;
const SIGNALS: u64 = 0x014;
const TIMER_VECTOR: u64 = 0x020;
const TIMER_PERIOD: u64 = 0x024;
const TIMER_COUNT: u64 = 0x028;
const TIMER_FIRED: u64 = 0x02c;
const INTX: u64 = 0x030;
const INTX_SIGNALS: u64 = 0x034;
const MSI_DOORBELL: u64 = 0x038;
const MSI_SIGNALS: u64 = 0x03c;
const DMA_SRC: u64 = 0x040;
const DMA_DST: u64 = 0x048;
const DMA_COUNT: u64 = 0x050;
const DMA_CMD: u64 = 0x054;
const DMA_STATUS: u64 = 0x05c;
const DMA_DONE: u64 = 0x060;
const CONTROL: u64 = 0x07c;
const DMA_BUFFER: u64 = 0xc000;

const SET_EVENTFD_TRIGGER: u32 = 0x24;
const UNMASK: u32 = 0x11;

/// A running server on a fresh socket path; killed and cleaned up on drop.
struct Served {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("vfio-user-testdev-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let dir = scratch_dir();
        let socket = dir.join("sock");
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.lock().unwrap().push(line);
            }
        });
        let want = format!("vfio-user-testdev: listening on {}", socket.display());
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == want => break,
                Ok(_) => {}
                Err(e) => panic!("no listening line ({e}); stderr: {:?}", stderr.lock()),
            }
        }
        Served {
            child,
            socket,
            dir,
            stderr,
        }
    }

    fn connect(&self) -> Client {
        Client::new(&self.socket).unwrap()
    }

    fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns true or the deadline passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn read32(c: &mut Client, region: u32, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, offset, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn write32(c: &mut Client, offset: u64, value: u32) {
    c.region_write(BAR0, offset, &value.to_le_bytes()).unwrap();
}

fn write64(c: &mut Client, offset: u64, value: u64) {
    c.region_write(BAR0, offset, &value.to_le_bytes()).unwrap();
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// Signals accumulated on `e` since the last call (0 if none).
fn take(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

/// Waits until `e` has been signalled `n` times in all (reading it as it goes).
fn expect_signals(e: &EventFd, n: u64, what: &str) {
    let mut seen = 0;
    eventually(what, || {
        seen += take(e);
        seen >= n
    });
    assert_eq!(seen, n, "{what}");
}

/// A regular file of `len` bytes standing in for guest memory.
fn guest_memory(dir: &Path, len: u64) -> File {
    let path = dir.join("guest-ram");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(len).unwrap();
    f
}

fn dma(c: &mut Client, src: u64, dst: u64, count: u32, cmd: u32) -> u32 {
    write64(c, DMA_SRC, src);
    write64(c, DMA_DST, dst);
    write32(c, DMA_COUNT, count);
    write32(c, DMA_CMD, cmd | 1);
    eventually("DMA completion", || read32(c, BAR0, DMA_CMD) & 1 == 0);
    read32(c, BAR0, DMA_STATUS)
}

#[test]
fn serves_registers_dma_interrupts_and_reset() {
    let mut served = Served::start(&["--vectors", "8", "--poll-us", "100"]);
    let mut c = served.connect();

    assert_eq!(read32(&mut c, BAR0, ID), 0x7e57_d001);
    assert_eq!(read32(&mut c, CONFIG, 0), 0x11ea_1234);
    assert_eq!(read32(&mut c, CONFIG, 0x40) & 0x07ff_ffff, 0x0007_5011);
    let bar0 = c.region(BAR0).unwrap();
    assert_eq!(bar0.size, 0x10000);
    assert_eq!(bar0.flags & 7, 7);
    assert_eq!(bar0.sparse_areas.len(), 1);
    assert_eq!(
        (bar0.sparse_areas[0].offset, bar0.sparse_areas[0].size),
        (0, 0x10000)
    );
    let bar_fd = bar0.file_offset.clone().unwrap();
    assert_eq!(c.get_irq_info(0).unwrap().flags, 7);
    assert_eq!(c.get_irq_info(2).unwrap().count, 8);

    // DMA both ways through a mapped "guest RAM" file.
    let ram = guest_memory(&served.dir, 0x10000);
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 13 + 1) as u8).collect();
    ram.write_at(&pattern, 0x1000).unwrap();
    c.dma_map(0, 0x1_0000_0000, 0x10000, ram.as_raw_fd())
        .unwrap();
    assert_eq!(dma(&mut c, 0x1_0000_1000, 0x40000, 256, 0), 1);
    let mut got = vec![0u8; 256];
    c.region_read(BAR0, DMA_BUFFER, &mut got).unwrap();
    assert_eq!(got, pattern);
    let back: Vec<u8> = pattern.iter().map(|b| !b).collect();
    c.region_write(BAR0, DMA_BUFFER + 0x100, &back).unwrap();
    assert_eq!(dma(&mut c, 0x40100, 0x1_0000_2000, 256, 2), 1);
    ram.read_at(&mut got, 0x2000).unwrap();
    assert_eq!(got, back);
    assert_eq!(dma(&mut c, 0x2_0000_0000, 0x40000, 16, 0), 2);
    assert_eq!(read32(&mut c, BAR0, DMA_DONE), 2);
    c.dma_unmap(0x1_0000_0000, 0x10000).unwrap();
    assert_eq!(dma(&mut c, 0x1_0000_1000, 0x40000, 16, 0), 2);

    // MSI-X: one eventfd per SET_IRQS message, then a burst doorbell.
    let vectors: Vec<EventFd> = (0..8).map(|_| eventfd()).collect();
    for (k, e) in vectors.iter().enumerate() {
        c.set_irqs(2, SET_EVENTFD_TRIGGER, k as u32, 1, &[e.as_raw_fd()])
            .unwrap();
    }
    write32(&mut c, DOORBELL, 1 << 31 | 1 << 16 | 3);
    expect_signals(&vectors[3], 1, "vector 3");
    expect_signals(&vectors[4], 1, "vector 4");
    assert_eq!(read32(&mut c, BAR0, DOORBELL), 0);
    assert_eq!(read32(&mut c, BAR0, SIGNALS), 2);
    assert_eq!(take(&vectors[2]) + take(&vectors[5]), 0);

    // A doorbell written straight into the mapped BAR is found by the poller.
    let map = MmapRegion::<()>::from_file(bar_fd, 0x10000).unwrap();
    let doorbell = map.get_atomic_ref::<AtomicU32>(DOORBELL as usize).unwrap();
    doorbell.store(1 << 31 | 5, Ordering::SeqCst);
    expect_signals(&vectors[5], 1, "vector 5 via the mapping");
    eventually("doorbell clear", || doorbell.load(Ordering::SeqCst) == 0);
    let id = map.get_atomic_ref::<AtomicU32>(ID as usize).unwrap();
    id.store(0, Ordering::SeqCst);
    eventually("ID restored", || id.load(Ordering::SeqCst) == 0x7e57_d001);

    // Timer: three fires of vector 6, a millisecond apart.
    write32(&mut c, TIMER_VECTOR, 6);
    write32(&mut c, TIMER_PERIOD, 1000);
    write32(&mut c, TIMER_COUNT, 3);
    expect_signals(&vectors[6], 3, "timer fires");
    eventually("timer done", || read32(&mut c, BAR0, TIMER_FIRED) == 3);
    assert_eq!(read32(&mut c, BAR0, TIMER_COUNT), 0);

    // INTx: assert, automask, deassert, unmask; an unmask with the level held re-signals.
    let intx = eventfd();
    c.set_irqs(0, SET_EVENTFD_TRIGGER, 0, 1, &[intx.as_raw_fd()])
        .unwrap();
    write32(&mut c, INTX, 1);
    expect_signals(&intx, 1, "INTx assert");
    write32(&mut c, INTX, 0);
    c.set_irqs(0, UNMASK, 0, 1, &[]).unwrap();
    assert_eq!(read32(&mut c, BAR0, INTX_SIGNALS), 1);
    write32(&mut c, INTX, 1);
    expect_signals(&intx, 1, "INTx second assert");
    c.set_irqs(0, UNMASK, 0, 1, &[]).unwrap();
    expect_signals(&intx, 1, "INTx unmask with the level held");
    assert_eq!(read32(&mut c, BAR0, INTX_SIGNALS), 3);
    write32(&mut c, INTX, 0);
    c.set_irqs(0, UNMASK, 0, 1, &[]).unwrap();

    // MSI.
    let msi = eventfd();
    c.set_irqs(1, SET_EVENTFD_TRIGGER, 0, 1, &[msi.as_raw_fd()])
        .unwrap();
    write32(&mut c, MSI_DOORBELL, 1 << 31);
    expect_signals(&msi, 1, "MSI");
    assert_eq!(read32(&mut c, BAR0, MSI_SIGNALS), 1);

    // Reset clears registers and counters; the eventfds stay.
    write32(&mut c, SCRATCH, 0x5555);
    c.reset().unwrap();
    assert_eq!(read32(&mut c, BAR0, SCRATCH), 0);
    assert_eq!(read32(&mut c, BAR0, SIGNALS), 0);
    assert_eq!(read32(&mut c, BAR0, INTX_SIGNALS), 0);
    assert_eq!(read32(&mut c, BAR0, DMA_DONE), 0);
    assert_eq!(read32(&mut c, BAR0, ID), 0x7e57_d001);
    write32(&mut c, DOORBELL, 1 << 31 | 7);
    expect_signals(&vectors[7], 1, "vector 7 after reset");
    assert_eq!(read32(&mut c, BAR0, SIGNALS), 1);

    c.shutdown().unwrap();
    drop(c);
    let status = served.wait();
    assert_eq!(status.code(), Some(0), "stderr: {:?}", served.stderr.lock());
}

#[test]
fn no_mmap_offers_no_fd() {
    let mut served = Served::start(&["--no-mmap"]);
    let mut c = served.connect();
    let bar0 = c.region(BAR0).unwrap();
    assert_eq!(bar0.flags & 7, 3);
    assert!(bar0.file_offset.is_none());
    assert!(bar0.sparse_areas.is_empty());
    assert_eq!(read32(&mut c, BAR0, ID), 0x7e57_d001);
    assert_eq!(c.get_irq_info(2).unwrap().count, 256);
    drop(c);
    assert_eq!(served.wait().code(), Some(0));
}

#[test]
fn broken_layouts_still_serve() {
    for args in [
        ["--vectors", "4096", "--layout", "beyond", "--direct-msix"],
        ["--vectors", "0", "--layout", "overlap", "--direct-msix"],
    ] {
        let mut served = Served::start(&args);
        let mut c = served.connect();
        let vectors: u32 = args[1].parse().unwrap();
        assert_eq!(c.get_irq_info(2).unwrap().count, vectors);
        let control = read32(&mut c, CONFIG, 0x40) >> 16;
        assert_eq!(control, vectors.wrapping_sub(1) & 0x7ff);
        c.region_write(CONFIG, 0x43, &[0x80]).unwrap();
        write32(&mut c, DOORBELL, 1 << 31 | 0x7fff << 16);
        c.reset().unwrap();
        assert_eq!(read32(&mut c, BAR0, ID), 0x7e57_d001);
        drop(c);
        assert_eq!(served.wait().code(), Some(0));
    }
}

#[test]
fn control_exit_ends_the_process() {
    let mut served = Served::start(&[]);
    let mut c = served.connect();
    // The reply never comes; the client sees the socket close.
    let _ = c.region_write(BAR0, CONTROL, &0xdead_0001u32.to_le_bytes());
    assert_eq!(served.wait().code(), Some(3));
}

#[test]
fn control_hang_stops_replies_but_not_the_process() {
    let mut served = Served::start(&[]);
    let mut c = served.connect();
    let writer = thread::spawn(move || {
        let _ = c.region_write(BAR0, CONTROL, &0xdead_0002u32.to_le_bytes());
    });
    // A negative check: the process stays and the reply stays away for a while.
    thread::sleep(Duration::from_millis(300));
    assert!(served.child.try_wait().unwrap().is_none());
    assert!(!writer.is_finished());
    served.child.kill().unwrap();
    writer.join().unwrap();
}

fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_and_existing_socket() {
    let dir = scratch_dir();
    let sock = dir.join("sock");
    let sock = sock.to_str().unwrap();
    for args in [
        vec!["--socket", sock, "--vectors", "4097"],
        vec!["--socket", sock, "--layout", "sideways"],
        vec!["--socket", sock, "--poll-us", "0"],
        vec!["--vectors", "8"],
    ] {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    std::fs::write(dir.join("sock"), b"").unwrap();
    let (code, stderr) = run_to_exit(&["--socket", sock]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A vfio-user header: message id, command, size, flags, error.
fn header(id: u16, command: u16, size: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Reads one reply; returns (flags, payload after the header).
fn reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let flags = u32::from_le_bytes(h[8..12].try_into().unwrap());
    let mut rest = vec![0u8; size - 16];
    s.read_exact(&mut rest).unwrap();
    (flags, rest)
}

fn region_read_raw(
    s: &mut UnixStream,
    id: u16,
    region: u32,
    offset: u64,
    count: u32,
) -> (u32, Vec<u8>) {
    let mut m = header(id, 9, 32);
    m.extend_from_slice(&offset.to_le_bytes());
    m.extend_from_slice(&region.to_le_bytes());
    m.extend_from_slice(&count.to_le_bytes());
    s.write_all(&m).unwrap();
    reply(s)
}

/// Bad region accesses get error replies (flags Reply | Error) and the server carries on.
#[test]
fn bad_accesses_get_error_replies() {
    let mut served = Served::start(&[]);
    let mut s = UnixStream::connect(&served.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let caps = b"{\"capabilities\":{}}\0";
    let mut m = header(0, 1, 20 + caps.len() as u32);
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&1u16.to_le_bytes());
    m.extend_from_slice(caps);
    s.write_all(&m).unwrap();
    let (flags, _) = reply(&mut s);
    assert_eq!(flags, 1);

    const ERROR_REPLY: u32 = 0x21;
    for (region, offset, count) in [
        (0, 0xfffc, 8),
        (0, 0x10000, 4),
        (0, u64::MAX, 4),
        (1, 0, 4),
        (6, 0x1000, 1),
        (7, 0xfe, 4),
        (9, 0, 4),
    ] {
        let (flags, _) = region_read_raw(&mut s, 1, region, offset, count);
        assert_eq!(flags, ERROR_REPLY, "region {region} offset {offset:#x}");
    }
    let (flags, payload) = region_read_raw(&mut s, 2, 0, 0, 4);
    assert_eq!(flags, 1);
    assert_eq!(payload[16..20], 0x7e57_d001u32.to_le_bytes());
    drop(s);
    assert_eq!(served.wait().code(), Some(0));
}
