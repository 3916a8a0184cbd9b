//! Network namespaces for the virtio-net tests: a namespace the test creates (and removes
//! on drop) holding the tap, the host-side peer (`net_peer.py`) running in it, and a VMM
//! (irvmm or QEMU) started in it with `ip netns exec`.
//!
//! Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and python3. Where they are
//! missing the tests skip with the reason; with `IRVMM_REQUIRE_ASSETS` set (CI, as root)
//! they fail instead.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{repo_root, GuestRun};

/// How long the peer waits for the tap and the guest.
const PEER_TIMEOUT_S: u32 = 240;
/// How long the peer may take to open its sockets on an existing tap.
const PEER_READY: Duration = Duration::from_secs(30);

fn strict() -> bool {
    std::env::var_os("IRVMM_REQUIRE_ASSETS").is_some()
}

/// `Err(why)`, or a panic in strict mode.
fn unavailable<T>(why: String) -> Result<T, String> {
    assert!(!strict(), "{why}");
    Err(why)
}

/// A unique short tag (tap names have at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} {:?}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted (with its taps) on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with IPv6 off (so the host stack sends the guest nothing of its
    /// own), or says why it cannot.
    pub fn create(tag: &str) -> Result<NetNs, String> {
        if Command::new("python3").arg("--version").output().is_err() {
            return unavailable("python3 is not installed (the host-side peer needs it)".into());
        }
        let name = unique(&format!("irvmm-{tag}-"));
        if let Err(e) = run(Command::new("ip").args(["netns", "add", &name])) {
            return unavailable(format!(
                "cannot create a network namespace (needs root and iproute2): {e}"
            ));
        }
        let ns = NetNs { name };
        run(ns.exec("sysctl").args([
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command running `program` in the namespace.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Creates a persistent tap (`ip tuntap add`), multi-queue when asked.
    pub fn add_tap(&self, tap: &str, multi_queue: bool) -> Result<(), String> {
        let mut c = self.exec("ip");
        c.args(["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
        if multi_queue {
            c.arg("multi_queue");
        }
        run(&mut c)
    }

    /// Creates a tun (not tap) device called `name`.
    pub fn add_tun(&self, name: &str) -> Result<(), String> {
        run(self
            .exec("ip")
            .args(["tuntap", "add", "dev", name, "mode", "tun"]))
    }

    /// True when an interface called `name` exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        self.exec("ip")
            .args(["link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the peer on tap `tap` (it waits for the tap to exist); `extra` are more
    /// `net_peer.py` arguments.
    pub fn peer(&self, tap: &str, extra: &[&str]) -> Result<Peer, String> {
        let script = repo_root().join("tests/integration/net_peer.py");
        let mut child = self
            .exec("python3")
            .arg(&script)
            .args(["--tap", tap, "--timeout", &PEER_TIMEOUT_S.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 {}: {e}", script.display()))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().ok_or("peer stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().ok_or("peer stderr")?;
        let err_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Peer {
            child,
            rx,
            lines: Vec::new(),
            err_thread: Some(err_thread),
        })
    }

    /// Runs `program args` in the namespace (stdin closed, `env` added) until it exits or
    /// `deadline` passes (then it is killed).
    pub fn run_vmm(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
        deadline: Duration,
    ) -> GuestRun {
        let start = Instant::now();
        let mut child = self
            .exec(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the VMM in the namespace");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let err_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut lines = Vec::new();
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => lines.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if start.elapsed() > deadline {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        let status = if timed_out {
            let _ = child.kill();
            let _ = child.wait();
            None
        } else {
            Some(child.wait().expect("wait for the VMM"))
        };
        lines.extend(rx.try_iter());
        GuestRun {
            status,
            lines,
            stderr: err_thread.join().unwrap_or_default(),
            timed_out,
            elapsed: start.elapsed(),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The host-side peer, killed when dropped.
pub struct Peer {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
    err_thread: Option<thread::JoinHandle<String>>,
}

impl Peer {
    /// Waits until the peer has opened its sockets (`PEER READY`).
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let end = Instant::now() + PEER_READY;
        while Instant::now() < end {
            if let Ok(l) = self.rx.recv_timeout(Duration::from_millis(50)) {
                let ready = l.starts_with("PEER READY");
                self.lines.push(l);
                if ready {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the peer exited ({status}): {}",
                    self.lines.join("\n")
                ));
            }
        }
        Err(format!("the peer is not ready: {}", self.lines.join("\n")))
    }

    /// Waits up to `wait` for the peer's `PEER OK|FAIL` line, stops it, and returns its
    /// output (stdout, then stderr).
    pub fn finish(mut self, wait: Duration) -> String {
        let end = Instant::now() + wait;
        while Instant::now() < end && !self.lines.iter().any(|l| is_final(l)) {
            if let Ok(l) = self.rx.recv_timeout(Duration::from_millis(50)) {
                self.lines.push(l);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.extend(self.rx.try_iter());
        let err = self
            .err_thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        format!("{}\n{err}", self.lines.join("\n"))
    }
}

fn is_final(l: &str) -> bool {
    l.starts_with("PEER OK") || l.starts_with("PEER FAIL")
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's script (for messages).
pub fn peer_script() -> PathBuf {
    repo_root().join("tests/integration/net_peer.py")
}
