//! Shared helpers for irvmm's integration tests: locating the binary and guest assets,
//! deciding whether this host can run a tier, and running a guest with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The irvmm binary under test.
pub fn irvmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_irvmm"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// True when missing assets or /dev/kvm must fail the test instead of skipping it
/// (set by `.ci/run`, which prepares both).
fn strict() -> bool {
    std::env::var_os("IRVMM_REQUIRE_ASSETS").is_some()
}

/// Prints why a test does not run here, where `cargo test` and nextest both show it.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// The path of guest asset `name` under `target/guests/`, or why it is unavailable.
/// With `IRVMM_REQUIRE_ASSETS` set, a missing asset panics.
pub fn asset(name: &str) -> Result<PathBuf, String> {
    let p = repo_root().join("target/guests").join(name);
    if p.is_file() {
        return Ok(p);
    }
    let why = format!(
        "guest asset {} is missing; run resources/fetch-assets.sh",
        p.display()
    );
    assert!(!strict(), "{why}");
    Err(why)
}

/// Whether /dev/kvm can be opened read/write.
pub fn kvm_available() -> Result<(), String> {
    let r = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = format!("/dev/kvm cannot be opened ({e})");
            assert!(!strict(), "{why}");
            Err(why)
        }
    }
}

/// QEMU 7.2 (Debian's `qemu-system-x86`) on PATH, or why it cannot run here.
pub fn find_qemu() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".to_string()
        })
}

/// QEMU's `isa-debug-exit` status for a probe pass: (0 << 1) | 1.
pub const QEMU_PASS: Option<i32> = Some(1);

/// QEMU 7.2 under KVM running the probe guest with `cmdline`: q35 with the split irqchip,
/// `extra` (CPU model, vCPUs, devices), 128 MiB, no default devices, the serial port on
/// standard output and the debug-exit port; stopped after 120 s. Its exit status, standard
/// output and standard error, or why it cannot run here.
pub fn run_qemu_probe(
    cmdline: &str,
    extra: &[&str],
) -> Result<(Option<i32>, String, String), String> {
    kvm_available()?;
    let probe = asset("probe.elf")?;
    let qemu = find_qemu()?;
    let out = Command::new("timeout")
        .arg("120")
        .arg(qemu)
        .args(["-accel", "kvm", "-M", "q35,kernel-irqchip=split"])
        .args(extra)
        .args([
            "-m",
            "128M",
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-nodefaults",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=2",
            "-kernel",
        ])
        .arg(probe)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Whether the host CPU has hardware virtualization (VT-x or AMD-V), which a full Linux
/// boot needs (see the build-machine notes: the emulating KVM there cannot run `int3`).
pub fn hardware_virtualization() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(|e| e.to_string())?;
    let has = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has {
        Ok(())
    } else {
        Err("the host CPU has no hardware virtualization (no vmx/svm flag in /proc/cpuinfo); this KVM cannot boot Linux to user space".into())
    }
}

/// What a guest run produced.
#[derive(Debug)]
pub struct GuestRun {
    /// Exit status, `None` when the run was stopped (deadline or `stop_when`).
    pub status: Option<ExitStatus>,
    /// Serial console (stdout) lines.
    pub lines: Vec<String>,
    /// Standard error.
    pub stderr: String,
    /// True when the deadline passed.
    pub timed_out: bool,
    /// Wall time until exit or stop.
    pub elapsed: Duration,
}

impl GuestRun {
    /// True when some console line contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// The exit code, if the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// A dump for assertion messages.
    pub fn dump(&self) -> String {
        let tail: Vec<&String> = self.lines.iter().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        format!(
            "status={:?} timed_out={} elapsed={:?}\n--- console (last 40 lines) ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.timed_out,
            self.elapsed,
            tail.join("\n"),
            self.stderr
        )
    }
}

/// A predicate over the console lines seen so far that ends a run early.
pub type StopWhen<'a> = &'a dyn Fn(&[String]) -> bool;

/// Runs irvmm with `args` until it exits, `deadline` passes, or a console line satisfies
/// `stop_when` (then the VM is killed).
pub fn run_guest(args: &[&str], deadline: Duration, stop_when: Option<StopWhen>) -> GuestRun {
    run_guest_env(args, &[], deadline, stop_when)
}

/// [`run_guest`] with extra environment variables for irvmm (e.g. `RUST_LOG`).
pub fn run_guest_env(
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
    stop_when: Option<StopWhen>,
) -> GuestRun {
    let start = Instant::now();
    let mut child = Command::new(irvmm())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irvmm");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut stopped = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => {
                lines.push(l);
                if stop_when.is_some_and(|f| f(&lines)) {
                    stopped = true;
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > deadline {
            timed_out = true;
            break;
        }
    }
    let status = if stopped || timed_out {
        let _ = child.kill();
        let _ = child.wait();
        None
    } else {
        Some(child.wait().expect("wait irvmm"))
    };
    // Drain what is left on the console.
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    GuestRun {
        status,
        lines,
        stderr: err_thread.join().unwrap_or_default(),
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// Boots the probe guest with `probe=<scenario>` and `extra` irvmm arguments, or returns
/// why it cannot run here (no /dev/kvm, no probe.elf).
pub fn run_probe(scenario: &str, extra: &[&str]) -> Result<GuestRun, String> {
    run_probe_cmdline(&format!("probe={scenario}"), extra)
}

/// Boots the probe guest with the full kernel command line `cmdline` (scenario and its
/// `probe.*` parameters) and `extra` irvmm arguments.
pub fn run_probe_cmdline(cmdline: &str, extra: &[&str]) -> Result<GuestRun, String> {
    kvm_available()?;
    let probe = asset("probe.elf")?;
    let mut args = vec![
        "--kernel",
        probe.to_str().expect("utf-8 path"),
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    Ok(run_guest(&args, Duration::from_secs(300), None))
}

/// Boots the probe guest with `probe=<scenario>`, `extra` irvmm arguments and `env` for
/// irvmm, stopping it after `deadline`.
pub fn run_probe_env(
    scenario: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> Result<GuestRun, String> {
    kvm_available()?;
    let probe = asset("probe.elf")?;
    let cmdline = format!("probe={scenario}");
    let mut args = vec![
        "--kernel",
        probe.to_str().expect("utf-8 path"),
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    Ok(run_guest_env(&args, env, deadline, None))
}

/// Asserts that the probe's last console line is `PROBE PASS <scenario>` followed by the
/// expected `key=value` fields, and that irvmm exited with status 0.
pub fn assert_probe_pass(run: &GuestRun, scenario: &str, fields: &[&str]) {
    let last = run.lines.last().cloned().unwrap_or_default();
    let head = format!("PROBE PASS {scenario}");
    assert!(
        last == head || last.starts_with(&format!("{head} ")),
        "last line must be {head}\n{}",
        run.dump()
    );
    for f in fields {
        assert!(
            last.split_whitespace().any(|w| w == *f),
            "{f} missing from '{last}'\n{}",
            run.dump()
        );
    }
    assert_eq!(run.code(), Some(0), "exit status\n{}", run.dump());
}

/// The line the test device prints to stderr once it listens.
const TESTDEV_LISTENING: &str = "vfio-user-testdev: listening on ";
/// How long the test device may take to start listening.
const TESTDEV_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Test devices started by this process (part of each socket's unique name).
static TESTDEV_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The `vfio-user-testdev` binary: next to irvmm (the same build), else under
/// `$CARGO_TARGET_DIR` or `<repo>/target`, debug before release. The workspace's test build
/// builds it (the testdev crate has integration tests of its own); `cargo test -p cli` alone
/// does not. Missing: why, or a panic with `IRVMM_REQUIRE_ASSETS` set.
pub fn testdev_binary() -> Result<PathBuf, String> {
    const NAME: &str = "vfio-user-testdev";
    let mut candidates = Vec::new();
    if let Some(dir) = irvmm().parent() {
        candidates.push(dir.join(NAME));
    }
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        roots.push(if dir.is_absolute() {
            dir
        } else {
            repo_root().join(dir)
        });
    }
    roots.push(repo_root().join("target"));
    for root in roots {
        for profile in ["debug", "release"] {
            candidates.push(root.join(profile).join(NAME));
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let why = format!(
        "the vfio-user test device is not built (looked for {}); run `cargo build -p vfio-user-testdev`",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(!strict(), "{why}");
    Err(why)
}

/// A running `vfio-user-testdev` on a socket of its own; killed (and its socket removed)
/// when dropped, so no test leaves one running.
pub struct TestDevice {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl TestDevice {
    /// Starts the device with `args` (after `--socket`) and waits for its listening line.
    /// `Err` (a skip reason) only when the binary is missing; a device that does not come
    /// up is a test failure (panic).
    pub fn start(args: &[&str]) -> Result<TestDevice, String> {
        let binary = testdev_binary()?;
        let n = TESTDEV_COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("irvmm-testdev-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test device socket directory");
        let socket = dir.join("dev.sock");
        let mut child = Command::new(&binary)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let collected = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = collected.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let listening = line.starts_with(TESTDEV_LISTENING);
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
                if listening {
                    let _ = tx.send(line);
                }
            }
        });
        let mut device = TestDevice {
            child,
            dir,
            socket,
            stderr: collected,
            status: None,
        };
        let expected = format!("{TESTDEV_LISTENING}{}", device.socket.display());
        match rx.recv_timeout(TESTDEV_START_TIMEOUT) {
            Ok(line) if line == expected => Ok(device),
            Ok(line) => panic!("test device said '{line}', expected '{expected}'"),
            Err(_) => {
                let status = device.wait_exit(Duration::from_millis(100));
                panic!(
                    "test device {args:?} did not listen within {TESTDEV_START_TIMEOUT:?} (status {status:?}); stderr:\n{}",
                    device.stderr()
                )
            }
        }
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The irvmm `--device` value for it, with `msix=<msix>` when given.
    pub fn device_arg(&self, msix: Option<&str>) -> String {
        let mut arg = format!("vfio-user,socket={}", self.socket.display());
        if let Some(m) = msix {
            arg.push_str(",msix=");
            arg.push_str(m);
        }
        arg
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit by itself; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
