//! The VM lifecycle seen from outside: every exit status irvmm documents (pvpanic, reset,
//! `--timeout`, SIGTERM/SIGINT/SIGHUP, `Ctrl-a x`), restarts with `--on-reset restart`, the
//! console's input path (pipes and files, with flow control) and the terminal's raw mode
//! and escape keys, restored on the way out (through a pseudo-terminal, so no real TTY is
//! needed), for both consoles: COM1 (`--serial stdio`) and the virtio console
//! (`--console virtio`, probe scenario `virtio-console-in`).

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{asset, irvmm, kvm_available, run_probe, skip, GuestRun};

/// Exit statuses (README "Command line").
const EXIT_CRASH_LOADED_AND_PANIC: i32 = 123;
const EXIT_RESET: i32 = 122;
const EXIT_TIMEOUT: i32 = 124;
const EXIT_USER_QUIT: i32 = 125;
const EXIT_SIGNAL_BASE: i32 = 128;

/// How long a guest may take to reach its idle loop.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long irvmm may take to stop after being asked.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The line `probe=idle` prints once every AP is up.
const IDLING: &str = "idling";

/// The probe guest's path, or why this test cannot run here.
fn probe() -> Result<String, String> {
    kvm_available()?;
    Ok(asset("probe.elf")?
        .to_str()
        .expect("utf-8 path")
        .to_string())
}

macro_rules! probe_or_skip {
    ($test:expr) => {
        match probe() {
            Ok(p) => p,
            Err(why) => return skip($test, &why),
        }
    };
}

/// Waits for `child` to exit within `timeout`; kills it (and fails) if it does not.
fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: irvmm did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Console lines of a running irvmm, read on a thread.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(out: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Everything seen, after waiting a little for the rest.
    fn drain(&mut self) -> Vec<String> {
        while let Ok(l) = self.rx.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        self.seen.clone()
    }
}

/// Starts irvmm on `probe=idle` with `extra` arguments, stdin null, console piped.
fn start_idle(probe: &str, extra: &[&str]) -> (Child, Lines) {
    let mut child = Command::new(irvmm())
        .args([
            "--kernel",
            probe,
            "--cmdline",
            "probe=idle",
            "--memory",
            "64M",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irvmm");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    (child, lines)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Sends `signal` to irvmm once the idle guest runs; expects 128 + signal.
fn signal_stops_in_order(test: &str, signal: i32) {
    let probe = probe_or_skip!(test);
    let (mut child, mut lines) = start_idle(&probe, &["--cpus", "4"]);
    assert!(
        lines.wait_for(IDLING, READY_TIMEOUT),
        "{test}: no idle line: {:?}",
        lines.drain()
    );
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: sends a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let status = wait_exit(&mut child, STOP_TIMEOUT, test);
    let stderr = stderr_of(&mut child);
    assert_eq!(
        status.code(),
        Some(EXIT_SIGNAL_BASE + signal),
        "{test}: {status:?} stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("irvmm: stopped on signal {signal}")),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_the_vm_with_143() {
    signal_stops_in_order("sigterm_stops_the_vm_with_143", libc::SIGTERM);
}

#[test]
fn sigint_stops_the_vm_with_130() {
    signal_stops_in_order("sigint_stops_the_vm_with_130", libc::SIGINT);
}

#[test]
fn sighup_stops_the_vm_with_129() {
    signal_stops_in_order("sighup_stops_the_vm_with_129", libc::SIGHUP);
}

#[test]
fn timeout_stops_an_idle_guest_with_124() {
    let test = "timeout_stops_an_idle_guest_with_124";
    let probe = probe_or_skip!(test);
    let start = Instant::now();
    let (mut child, mut lines) = start_idle(&probe, &["--cpus", "4", "--timeout", "2.5"]);
    let status = wait_exit(&mut child, READY_TIMEOUT, test);
    let elapsed = start.elapsed();
    let seen = lines.drain();
    let stderr = stderr_of(&mut child);
    assert_eq!(
        status.code(),
        Some(EXIT_TIMEOUT),
        "{status:?} {seen:?} {stderr}"
    );
    assert!(stderr.contains("--timeout expired"), "{stderr}");
    assert!(
        seen.iter().any(|l| l.contains(IDLING)),
        "the guest ran: {seen:?}"
    );
    assert!(elapsed >= Duration::from_millis(2500), "{elapsed:?}");
}

#[test]
fn timeout_that_does_not_expire_changes_nothing() {
    let test = "timeout_that_does_not_expire_changes_nothing";
    let run = match run_probe("poweroff", &["--timeout", "600"]) {
        Ok(r) => r,
        Err(why) => return skip(test, &why),
    };
    assert_eq!(run.code(), Some(0), "{}", run.dump());
}

fn assert_panic_exit(run: &GuestRun, scenario: &str) {
    let last = run.lines.last().cloned().unwrap_or_default();
    assert_eq!(
        last,
        format!("PROBE PASS {scenario} requesting panic"),
        "{}",
        run.dump()
    );
    assert!(
        run.saw("pvpanic: CRASH_LOADED sent, still running"),
        "{}",
        run.dump()
    );
    assert_eq!(
        run.code(),
        Some(EXIT_CRASH_LOADED_AND_PANIC),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("starting its crash kernel; it keeps running"),
        "the crash-loaded event is logged: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the guest panicked (pvpanic)"),
        "{}",
        run.stderr
    );
}

#[test]
fn pvpanic_isa_device_from_the_dsdt_exits_123() {
    let run = match run_probe("pvpanic", &["--cpus", "2"]) {
        Ok(r) => r,
        Err(why) => return skip("pvpanic_isa_device_from_the_dsdt_exits_123", &why),
    };
    assert_panic_exit(&run, "pvpanic");
    assert!(
        run.saw("ISA port 0x505 supports events 0x3"),
        "{}",
        run.dump()
    );
}

#[test]
fn pvpanic_pci_function_exits_123() {
    let run = match run_probe("pvpanic-pci", &["--pvpanic", "pci", "--device", "edu"]) {
        Ok(r) => r,
        Err(why) => return skip("pvpanic_pci_function_exits_123", &why),
    };
    assert_panic_exit(&run, "pvpanic-pci");
    // After the --device list: edu is 00:01.0, pvpanic 00:02.0.
    assert!(run.saw("PCI 00:02.0 BAR0"), "{}", run.dump());
}

#[test]
fn pvpanic_off_leaves_no_device() {
    let test = "pvpanic_off_leaves_no_device";
    for (scenario, why) in [
        ("pvpanic", "no device with _HID \"QEMU0001\""),
        ("pvpanic-pci", "no PCI function 1b36:0011"),
    ] {
        let run = match run_probe(scenario, &["--pvpanic", "off"]) {
            Ok(r) => r,
            Err(why) => return skip(test, &why),
        };
        assert!(run.saw(why), "{}", run.dump());
        assert_eq!(run.code(), Some(1), "{}", run.dump());
    }
}

#[test]
fn reset_with_on_reset_exit_exits_122() {
    let run = match run_probe("reset", &["--on-reset", "exit"]) {
        Ok(r) => r,
        Err(why) => return skip("reset_with_on_reset_exit_exits_122", &why),
    };
    let last = run.lines.last().cloned().unwrap_or_default();
    assert_eq!(last, "PROBE PASS reset requesting reset", "{}", run.dump());
    assert_eq!(run.code(), Some(EXIT_RESET), "{}", run.dump());
    assert!(
        run.stderr.contains("irvmm: the guest reset the machine"),
        "{}",
        run.stderr
    );
}

/// `--on-reset restart`: the probe resets at once on every boot, so the guest boots again
/// and again (each boot prints its banner and its `requesting reset` line) until
/// `--timeout` stops it; no boot may fail (the 2 s `still running` check of `probe=reset`
/// would print `PROBE FAIL`).
#[test]
fn on_reset_restart_boots_the_guest_again() {
    let test = "on_reset_restart_boots_the_guest_again";
    let probe = probe_or_skip!(test);
    let mut child = Command::new(irvmm())
        .args([
            "--kernel",
            &probe,
            "--cmdline",
            "probe=reset",
            "--memory",
            "64M",
        ])
        .args(["--cpus", "4", "--on-reset", "restart", "--timeout", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn irvmm");
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));
    let status = wait_exit(&mut child, READY_TIMEOUT, test);
    let seen = lines.drain();
    let stderr = stderr_of(&mut child);
    let boots = seen
        .iter()
        .filter(|l| l.contains("PROBE PASS reset requesting reset"))
        .count();
    let banners = seen
        .iter()
        .filter(|l| l.starts_with("probe: entry=pvh"))
        .count();
    assert_eq!(status.code(), Some(EXIT_TIMEOUT), "{status:?} {stderr}");
    assert!(boots >= 2, "only {boots} boots: {seen:?}");
    assert!(banners >= boots, "{banners} banners, {boots} resets");
    assert!(!seen.iter().any(|l| l.contains("PROBE FAIL")), "{seen:?}");
    assert!(
        stderr.contains("guest reset: building the VM again (boot 2)"),
        "{stderr}"
    );
}

/// FNV-1a (32 bits), as `probe=serial-in` reports it.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The console sent through a pipe or a file: the escape keys first (`Ctrl-a x`,
/// `Ctrl-a h`, `Ctrl-a Ctrl-a`, which must reach the guest as bytes), then every byte value,
/// far more than the UART's 64-byte FIFO, the virtio console's buffers and irvmm's backlog
/// for piped input, so flow control must work end to end.
fn console_input() -> Vec<u8> {
    let mut data = b"\x01x\x01h\x01\x01".to_vec();
    data.extend((0..20_000u32).map(|i| ((i * 7 + 3) % 256) as u8));
    data
}

/// Which console a test feeds.
#[derive(Clone, Copy)]
enum Console {
    /// COM1 (`--serial stdio`), probe scenario `serial-in`.
    Serial,
    /// The virtio console (`--console virtio`), probe scenario `virtio-console-in`.
    Virtio,
}

impl Console {
    /// The probe scenario that reads it.
    fn scenario(self) -> &'static str {
        match self {
            Console::Serial => "serial-in",
            Console::Virtio => "virtio-console-in",
        }
    }

    /// irvmm's arguments for it.
    fn args(self) -> &'static [&'static str] {
        match self {
            Console::Serial => &[],
            Console::Virtio => &["--console", "virtio"],
        }
    }
}

/// The probe's PASS line after reading `data` from `console`.
fn input_pass_line(console: Console, data: &[u8]) -> String {
    format!(
        "PROBE PASS {} bytes={} fnv=0x{:08x}",
        console.scenario(),
        data.len(),
        fnv1a(data)
    )
}

fn check_console_in(test: &str, console: Console, stdin: Stdio, feed: Option<Vec<u8>>) {
    let probe = probe_or_skip!(test);
    let data = console_input();
    let cmdline = format!("probe={} probe.bytes={}", console.scenario(), data.len());
    let mut child = Command::new(irvmm())
        .args(["--kernel", &probe, "--cmdline", &cmdline, "--memory", "64M"])
        .args(console.args())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irvmm");
    if let Some(bytes) = feed {
        let mut w = child.stdin.take().expect("stdin");
        // The guest takes it a FIFO or a few buffers at a time: write from a thread, which
        // blocks while irvmm leaves the pipe unread.
        thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));
    let status = wait_exit(&mut child, READY_TIMEOUT, test);
    let seen = lines.drain();
    let want = input_pass_line(console, &data);
    assert_eq!(
        seen.last(),
        Some(&want),
        "{seen:?} {}",
        stderr_of(&mut child)
    );
    assert_eq!(status.code(), Some(0));
}

fn check_console_in_from_a_file(test: &str, console: Console) {
    let path = std::env::temp_dir().join(format!(
        "irvmm-{}-in-{}",
        console.scenario(),
        std::process::id()
    ));
    std::fs::write(&path, console_input()).expect("input file");
    let file = File::open(&path).expect("open input");
    check_console_in(test, console, Stdio::from(file), None);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn serial_input_from_a_pipe_arrives_whole() {
    check_console_in(
        "serial_input_from_a_pipe_arrives_whole",
        Console::Serial,
        Stdio::piped(),
        Some(console_input()),
    );
}

#[test]
fn serial_input_from_a_file_arrives_whole() {
    check_console_in_from_a_file("serial_input_from_a_file_arrives_whole", Console::Serial);
}

#[test]
fn virtio_console_input_from_a_pipe_arrives_whole() {
    check_console_in(
        "virtio_console_input_from_a_pipe_arrives_whole",
        Console::Virtio,
        Stdio::piped(),
        Some(console_input()),
    );
}

#[test]
fn virtio_console_input_from_a_file_arrives_whole() {
    check_console_in_from_a_file(
        "virtio_console_input_from_a_file_arrives_whole",
        Console::Virtio,
    );
}

/// A pseudo-terminal: irvmm gets the slave as stdin, stdout and stderr.
struct Pty {
    master: File,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Option<Pty> {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname as documented, every result checked;
        // the descriptors are new and owned here.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                return None;
            }
            let master = File::from_raw_fd(master);
            if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
                return None;
            }
            let name = libc::ptsname(master.as_raw_fd());
            if name.is_null() {
                return None;
            }
            let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                return None;
            }
            Some(Pty {
                master,
                slave: OwnedFd::from_raw_fd(slave),
            })
        }
    }

    /// The slave's local-mode flags.
    fn lflag(&self) -> libc::tcflag_t {
        // SAFETY: tcgetattr fills the zeroed termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut t), 0);
            t.c_lflag
        }
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup pty slave"))
    }
}

/// Starts irvmm on a pty with `cmdline` and `extra` arguments; returns it and the console
/// lines (read from the master) once a line contains `ready` (the terminal is raw by then:
/// the console is opened before the guest runs).
fn start_on_pty(
    test: &str,
    probe: &str,
    pty: &Pty,
    cmdline: &str,
    extra: &[&str],
    ready: &str,
) -> (Child, Lines) {
    let mut child = Command::new(irvmm())
        .args(["--kernel", probe, "--cmdline", cmdline, "--memory", "64M"])
        .args(["--cpus", "2"])
        .args(extra)
        .stdin(pty.stdio())
        .stdout(pty.stdio())
        .stderr(pty.stdio())
        .spawn()
        .expect("spawn irvmm");
    let mut lines = Lines::new(pty.master.try_clone().expect("dup pty master"));
    if !lines.wait_for(ready, READY_TIMEOUT) {
        let _ = child.kill();
        panic!("{test}: no {ready:?} line: {:?}", lines.drain());
    }
    (child, lines)
}

/// [`start_on_pty`] with the idle guest.
fn start_idle_on_pty(test: &str, probe: &str, pty: &Pty, console: Console) -> (Child, Lines) {
    start_on_pty(test, probe, pty, "probe=idle", console.args(), IDLING)
}

fn ctrl_a_x_quits_with_125_and_restores(test: &str, console: Console) {
    let probe = probe_or_skip!(test);
    let Some(mut pty) = Pty::open() else {
        return skip(test, "no pseudo-terminal available");
    };
    let cooked = pty.lflag();
    assert_ne!(
        cooked & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );
    let (mut child, _lines) = start_idle_on_pty(test, &probe, &pty, console);
    let raw = pty.lflag();
    assert_eq!(
        raw & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw while the guest runs"
    );
    // Ctrl-c goes to the guest (no SIGINT in raw mode); Ctrl-a x quits.
    pty.master.write_all(b"\x03hello\x01x").expect("type");
    let status = wait_exit(&mut child, STOP_TIMEOUT, test);
    assert_eq!(status.code(), Some(EXIT_USER_QUIT));
    assert_eq!(pty.lflag(), cooked, "terminal settings restored");
}

#[test]
fn ctrl_a_x_on_a_terminal_quits_with_125_and_restores_it() {
    ctrl_a_x_quits_with_125_and_restores(
        "ctrl_a_x_on_a_terminal_quits_with_125_and_restores_it",
        Console::Serial,
    );
}

#[test]
fn virtio_console_ctrl_a_x_on_a_terminal_quits_with_125_and_restores_it() {
    ctrl_a_x_quits_with_125_and_restores(
        "virtio_console_ctrl_a_x_on_a_terminal_quits_with_125_and_restores_it",
        Console::Virtio,
    );
}

fn sigterm_restores(test: &str, console: Console) {
    let probe = probe_or_skip!(test);
    let Some(pty) = Pty::open() else {
        return skip(test, "no pseudo-terminal available");
    };
    let cooked = pty.lflag();
    let (mut child, _lines) = start_idle_on_pty(test, &probe, &pty, console);
    assert_eq!(pty.lflag() & libc::ICANON, 0);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: signals the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child, STOP_TIMEOUT, test);
    assert_eq!(status.code(), Some(EXIT_SIGNAL_BASE + libc::SIGTERM));
    assert_eq!(pty.lflag(), cooked, "terminal settings restored");
}

#[test]
fn sigterm_on_a_terminal_restores_it() {
    sigterm_restores("sigterm_on_a_terminal_restores_it", Console::Serial);
}

#[test]
fn virtio_console_sigterm_on_a_terminal_restores_it() {
    sigterm_restores(
        "virtio_console_sigterm_on_a_terminal_restores_it",
        Console::Virtio,
    );
}

/// `--timeout` on a terminal with the virtio console: 124, the terminal restored.
#[test]
fn virtio_console_timeout_on_a_terminal_restores_it() {
    let test = "virtio_console_timeout_on_a_terminal_restores_it";
    let probe = probe_or_skip!(test);
    let Some(pty) = Pty::open() else {
        return skip(test, "no pseudo-terminal available");
    };
    let cooked = pty.lflag();
    let extra = ["--console", "virtio", "--timeout", "3"];
    let (mut child, _lines) = start_on_pty(test, &probe, &pty, "probe=idle", &extra, IDLING);
    assert_eq!(pty.lflag() & libc::ICANON, 0, "raw while the guest runs");
    let status = wait_exit(&mut child, READY_TIMEOUT, test);
    assert_eq!(status.code(), Some(EXIT_TIMEOUT));
    assert_eq!(pty.lflag(), cooked, "terminal settings restored");
}

/// Keys typed on a terminal reach the guest as typed, `Ctrl-c` included, except the escape
/// key's: `Ctrl-a Ctrl-a` sends one `Ctrl-a`, `Ctrl-a h` prints the help (nothing for the
/// guest), `Ctrl-a` + another key sends nothing.
fn typed_keys_reach_the_guest(test: &str, console: Console) {
    let probe = probe_or_skip!(test);
    let Some(mut pty) = Pty::open() else {
        return skip(test, "no pseudo-terminal available");
    };
    let cooked = pty.lflag();
    let typed = b"\x03a\x01\x01\x01h\x01qb\r\x7f";
    let guest = b"\x03a\x01b\r\x7f";
    let cmdline = format!("probe={} probe.bytes={}", console.scenario(), guest.len());
    let ready = format!("{}: ready for {} bytes", console.scenario(), guest.len());
    let (mut child, mut lines) = start_on_pty(test, &probe, &pty, &cmdline, console.args(), &ready);
    pty.master.write_all(typed).expect("type");
    // The probe's verdict: `PROBE PASS` or `PROBE FAIL`.
    let verdict = lines.wait_for("PROBE ", READY_TIMEOUT);
    let status = wait_exit(&mut child, STOP_TIMEOUT, test);
    let seen = lines.drain();
    let want = input_pass_line(console, guest);
    assert!(
        verdict && seen.iter().any(|l| l.contains(&want)),
        "{test}: no {want:?}: {seen:?}"
    );
    assert_eq!(status.code(), Some(0));
    assert!(
        seen.iter()
            .any(|l| l.contains("Ctrl-a x  quit (exit status 125)")),
        "Ctrl-a h printed the keys: {seen:?}"
    );
    assert_eq!(pty.lflag(), cooked, "terminal settings restored");
}

#[test]
fn typed_keys_reach_the_serial_console() {
    typed_keys_reach_the_guest("typed_keys_reach_the_serial_console", Console::Serial);
}

#[test]
fn typed_keys_reach_the_virtio_console() {
    typed_keys_reach_the_guest("typed_keys_reach_the_virtio_console", Console::Virtio);
}
