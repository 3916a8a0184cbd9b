//! Tier 2: virtio-pci devices driven by the probe guest: virtio-blk (read, write on every
//! queue, flush, discard, write-zeroes, IOERR past the end, reset; the image checked on the
//! host after exit), virtio-console (hvc0 out and in) and virtio-rng, with their MSI-X
//! vectors remapped to vCPUs with APIC IDs above 255 (`--iommu intel`, 288 vCPUs) and
//! delivered by KVM through irqfds; each alone on the bus too; bad `--disk` input; and the
//! same probe scenarios against QEMU's own virtio devices (QEMU 7.2, when installed), so
//! the probe's driver is checked against an implementation irvmm did not write.
//!
//! virtio-net: each test creates a network namespace with the tap (made beforehand, or
//! created by the VMM), runs the host-side peer `net_peer.py` and the VMM in it, and
//! checks both sides: frames both ways, checksum and TCP segmentation offloads both ways,
//! two queue pairs; a hostile driver; bad `--net` input.
//!
//! virtio-blk through the VT-d unit's DMA remapping (`VIRTIO_F_ACCESS_PLATFORM`): rings and
//! buffers at IOVAs, an unmapped buffer page and an unmapped ring, on irvmm and on QEMU 7.2's
//! intel-iommu with `iommu_platform=on`.

mod common;
mod netns;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{
    assert_probe_pass, asset, find_qemu, irvmm, kvm_available, run_guest_env, run_probe, skip,
    GuestRun, QEMU_PASS,
};

const IR_288: [&str; 6] = ["--cpus", "288", "--memory", "128M", "--iommu", "intel"];
const SECTOR: usize = 512;
const IMAGE_SECTORS: usize = 128;

/// The byte the probe expects at image offset `o` (`virtio_blk::pattern`).
fn pattern(o: usize) -> u8 {
    (o as u8) ^ ((o >> 9) as u8) ^ 0xa5
}

/// A raw image filled with [`pattern`], removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str) -> Image {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "irvmm-virtio-{tag}-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let data: Vec<u8> = (0..IMAGE_SECTORS * SECTOR).map(pattern).collect();
        fs::write(&path, data).expect("write image");
        Image(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    /// Checks what the virtio-blk-iommu scenario leaves: sectors 64..88 rewritten with
    /// `offset ^ 0x3c`, the rest untouched.
    fn check_after_blk_iommu(&self) {
        let d = fs::read(&self.0).expect("read image");
        assert_eq!(d.len(), IMAGE_SECTORS * SECTOR);
        for (o, &b) in d.iter().enumerate() {
            let want = match o / SECTOR {
                64..=87 => (o as u8) ^ 0x3c,
                _ => pattern(o),
            };
            assert_eq!(b, want, "image byte {o:#x} (sector {})", o / SECTOR);
        }
    }

    /// Checks what the virtio-blk scenario leaves: sectors 16..24 rewritten, sector 32 + q
    /// per queue, 48..56 zeroed, 40..48 zeroed when `discard_zeroes`, the rest untouched.
    fn check_after_blk(&self, queues: usize, discard_zeroes: bool) {
        let d = fs::read(&self.0).expect("read image");
        assert_eq!(d.len(), IMAGE_SECTORS * SECTOR);
        for (o, &b) in d.iter().enumerate() {
            let s = o / SECTOR;
            let want = match s {
                16..=23 => (o as u8) ^ 0x5a,
                32..=35 if s - 32 < queues => 0x30 + (s - 32) as u8,
                40..=47 if discard_zeroes => 0,
                48..=55 => 0,
                _ => pattern(o),
            };
            if (40..48).contains(&s) && !discard_zeroes {
                continue;
            }
            assert_eq!(b, want, "image byte {o:#x} (sector {s})");
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The exit log line irvmm prints for a device's irqfd vectors.
fn vectors_line<'a>(run: &'a GuestRun, name: &str) -> &'a str {
    run.stderr
        .lines()
        .find(|l| l.contains(&format!("irqfd vectors {name}:")))
        .unwrap_or_else(|| panic!("no irqfd line for {name}\n{}", run.dump()))
}

fn probe_with_log(scenario: &str, extra: &[&str]) -> Result<GuestRun, String> {
    kvm_available()?;
    let probe = asset("probe.elf")?;
    let cmdline = format!("probe={scenario}");
    let mut args = vec![
        "--kernel",
        probe.to_str().expect("utf-8"),
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    Ok(run_guest_env(
        &args,
        &[("RUST_LOG", "info")],
        Duration::from_secs(300),
        None,
    ))
}

#[test]
fn virtio_blk_288_vcpus_remapped_four_queues() {
    let img = Image::new("blk");
    let disk = format!("path={},queues=4,serial=irvmm-disk-1", img.path());
    let mut extra = IR_288.to_vec();
    extra.extend(["--disk", &disk]);
    let run = match probe_with_log("virtio-blk", &extra) {
        Ok(r) => r,
        Err(why) => return skip("virtio_blk_288", &why),
    };
    assert_probe_pass(
        &run,
        "virtio-blk",
        &[
            "capacity=128",
            "queues=4",
            "serial=irvmm-disk-1",
            "discard=1",
            "write_zeroes=1",
            "remapped=1",
            // Queue 0's vector moved from APIC ID 286 to 0 by an IRTE rewrite alone.
            "moved=286->0",
        ],
    );
    // Five vectors (config + 4 queues), all enabled and delivered by KVM.
    let line = vectors_line(&run, "virtio-blk0");
    assert!(line.contains("5 vectors, 5 enabled, 5 in KVM"), "{line}");
    img.check_after_blk(4, true);
}

/// `--iommu intel`: the disk offers ACCESS_PLATFORM; the probe maps its rings and
/// buffers at IOVAs far from their guest-physical pages through a 4-level table: reads and
/// writes land in the right pages; an unmapped and invalidated data page fails the request
/// with IOERR and one recorded write fault (reason 5, the disk's SID, that page) while the
/// page and its neighbours keep their bytes; an unmapped ring sets DEVICE_NEEDS_RESET with
/// a configuration interrupt and a read fault (reason 6); after a reset it works again.
#[test]
fn virtio_blk_iommu_access_platform_through_vtd() {
    let img = Image::new("blk-iommu");
    let disk = format!("path={}", img.path());
    let run = match probe_with_log(
        "virtio-blk-iommu",
        &[
            "--cpus", "2", "--memory", "128M", "--iommu", "intel", "--disk", &disk,
        ],
    ) {
        Ok(r) => r,
        Err(why) => return skip("virtio_blk_iommu", &why),
    };
    assert_probe_pass(
        &run,
        "virtio-blk-iommu",
        &[
            "levels=4",
            "base=0x123456000000",
            "read=ok",
            "write=ok",
            "unmapped=ioerr",
            "ring=needs_reset",
            "recovered=ok",
            "faults=2",
        ],
    );
    assert!(
        run.stderr.contains("addresses through the IOMMU"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("a ring is not reachable through the IOMMU; the device needs a reset"),
        "{}",
        run.dump()
    );
    img.check_after_blk_iommu();
}

/// Without a VT-d unit there is no ACCESS_PLATFORM to negotiate and no DMAR: the scenario
/// fails cleanly, saying why.
#[test]
fn virtio_blk_iommu_needs_a_vtd_unit() {
    let img = Image::new("blk-iommu-none");
    let disk = format!("path={}", img.path());
    for extra in [
        &["--memory", "128M"][..],
        &["--memory", "128M", "--iommu", "amd"],
    ] {
        let args = [extra, &["--disk", &disk]].concat();
        let run = match run_probe("virtio-blk-iommu", &args) {
            Ok(r) => r,
            Err(why) => return skip("virtio_blk_iommu_needs_a_vtd_unit", &why),
        };
        assert!(run.saw("PROBE FAIL virtio-blk-iommu"), "{}", run.dump());
        assert_eq!(run.code(), Some(1), "{}", run.dump());
    }
}

#[test]
fn virtio_blk_alone_without_iommu_direct_io() {
    let img = Image::new("blk-direct");
    let disk = format!("path={},direct=on", img.path());
    let run = match run_probe("virtio-blk", &["--memory", "128M", "--disk", &disk]) {
        Ok(r) => r,
        Err(why) => return skip("virtio_blk_alone", &why),
    };
    assert_probe_pass(&run, "virtio-blk", &["queues=1", "remapped=0", "serial=-"]);
    img.check_after_blk(1, true);
}

#[test]
fn virtio_rng_288_vcpus_remapped() {
    let run = match run_probe("virtio-rng", &[&IR_288[..], &["--rng"]].concat()) {
        Ok(r) => r,
        Err(why) => return skip("virtio_rng_288", &why),
    };
    assert_probe_pass(&run, "virtio-rng", &["bytes=128", "irqs=2", "remapped=1"]);
}

#[test]
fn every_device_together_each_found_by_id() {
    let img = Image::new("together");
    let disk = format!("path={}", img.path());
    let extra = [
        "--memory",
        "128M",
        "--device",
        "edu",
        "--disk",
        &disk,
        "--console",
        "virtio",
        "--rng",
    ];
    let run = match run_probe("virtio-rng", &extra) {
        Ok(r) => r,
        Err(why) => return skip("every_device_together", &why),
    };
    assert_probe_pass(&run, "virtio-rng", &["remapped=0"]);
    // edu at 00:01, then the disk, the console and the rng.
    assert!(run.saw("virtio-rng: 00:04.0 found"), "{}", run.dump());
}

/// A hostile driver: a queue size that is not a power of two, device-configuration writes
/// of every size, notifies of missing and stopped queues, a short header, a buffer outside
/// RAM, a looping chain and a runaway available index; irvmm answers each as the virtio
/// specification says (IOERR, a dropped chain, DEVICE_NEEDS_RESET with a configuration
/// interrupt) and keeps running; the image is untouched.
#[test]
fn virtio_blk_hostile_driver_288_vcpus() {
    let img = Image::new("bad");
    let disk = format!("path={}", img.path());
    let run = match run_probe(
        "virtio-blk-bad",
        &[&IR_288[..], &["--disk", &disk]].concat(),
    ) {
        Ok(r) => r,
        Err(why) => return skip("virtio_blk_hostile", &why),
    };
    assert_probe_pass(
        &run,
        "virtio-blk-bad",
        &[
            "bad_size=needs_reset",
            "short=ioerr",
            "outside=ioerr",
            "loop=dropped",
            "runaway=needs_reset",
        ],
    );
    let d = fs::read(&img.0).expect("read image");
    assert!(
        d.iter().enumerate().all(|(o, &b)| b == pattern(o)),
        "the image changed"
    );
}

/// Runs irvmm with `input` on standard input; returns (exit code, stdout, stderr).
fn run_with_stdin(args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(irvmm())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irvmm");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait irvmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn virtio_console_288_vcpus_out_and_in() {
    if let Err(why) = kvm_available() {
        return skip("virtio_console_288", &why);
    }
    let probe = match asset("probe.elf") {
        Ok(p) => p,
        Err(why) => return skip("virtio_console_288", &why),
    };
    let mut args = vec![
        "--kernel",
        probe.to_str().expect("utf-8"),
        "--cmdline",
        "probe=virtio-console probe.hvc_input=ping-from-host",
        "--console",
        "virtio",
    ];
    args.extend_from_slice(&IR_288);
    let (code, out, err) = run_with_stdin(&args, b"ping-from-host\n");
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("PROBE-HVC hello from the virtio console"),
        "{out}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("PROBE PASS virtio-console tx=40 rx=15 ") && last.ends_with("remapped=1"),
        "{out}"
    );
}

// --- bad input: exit status 2, one line naming --disk, no guest -------------------------

fn refused(disk: &str) -> Option<String> {
    let kernel = match asset("probe.elf") {
        Ok(k) => k,
        Err(why) => {
            skip("disk refusal", &why);
            return None;
        }
    };
    let out = Command::new(irvmm())
        .args([
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--cmdline",
            "probe=boot",
        ])
        .args(["--disk", disk])
        .env_remove("RUST_LOG")
        .output()
        .expect("run irvmm");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{disk}: {stderr}");
    assert!(out.stdout.is_empty(), "{disk}: the guest must not have run");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{disk}: one line expected: {stderr}");
    assert!(
        lines[0].contains("--disk"),
        "{disk}: '{}' does not name --disk",
        lines[0]
    );
    Some(lines[0].to_string())
}

#[test]
fn bad_disks_are_refused_with_one_line() {
    let Some(l) = refused("path=/nonexistent/irvmm-disk.img") else {
        return;
    };
    assert!(l.contains("No such file"), "{l}");
    let dir = std::env::temp_dir();
    let l = refused(&format!("path={}", dir.display())).unwrap_or_default();
    assert!(l.contains("directory"), "{l}");
    let img = Image::new("bad");
    let l = refused(&format!("path={},queues=0", img.path())).unwrap_or_default();
    assert!(l.contains("queues=0"), "{l}");
    let l = refused(&format!("path={},serial={}", img.path(), "s".repeat(21))).unwrap_or_default();
    assert!(l.contains("serial"), "{l}");
    // Locked: another holder of the image (as a second VM would be).
    let holder = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.0)
        .expect("open");
    holder.try_lock().expect("lock");
    let l = refused(&format!("path={}", img.path())).unwrap_or_default();
    assert!(l.contains("locked"), "{l}");
    let l = refused(&format!("path={},readonly=on", img.path())).unwrap_or_default();
    assert!(l.contains("locked"), "{l}");
}

// --- the same scenarios on QEMU's virtio devices ----------------------------------------

/// QEMU 7.2 (Debian's qemu-system-x86) running the probe with `devices`, `smp` vCPUs (with
/// an intel-iommu doing interrupt remapping when above 1), or why it cannot run here.
fn qemu(
    scenario_cmdline: &str,
    smp: u32,
    devices: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(Option<i32>, String, String), String> {
    qemu_in(None, scenario_cmdline, smp, devices, stdin)
}

/// [`qemu`] in network namespace `netns`, when given.
fn qemu_in(
    netns: Option<&str>,
    scenario_cmdline: &str,
    smp: u32,
    devices: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(Option<i32>, String, String), String> {
    kvm_available()?;
    let probe = asset("probe.elf")?;
    let qemu = find_qemu()?.display().to_string();
    let serial = std::env::temp_dir().join(
        format!(
            "irvmm-qemu-serial-{}-{scenario_cmdline:.12}.log",
            std::process::id()
        )
        .replace(' ', "_"),
    );
    let smp = smp.to_string();
    let mut args: Vec<String> = [
        "120",
        &qemu,
        "-accel",
        "kvm",
        "-M",
        "q35,kernel-irqchip=split",
        "-m",
        "128M",
        "-smp",
        &smp,
        "-nographic",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nodefaults",
        "-kernel",
        probe.to_str().expect("utf-8"),
        "-append",
        scenario_cmdline,
        "-device",
        "isa-debug-exit,iobase=0x501,iosize=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A scenario that needs its own intel-iommu options passes the device itself.
    if smp != "1" && !devices.iter().any(|d| d.starts_with("intel-iommu")) {
        args.extend(["-device", "intel-iommu,intremap=on,eim=on"].map(String::from));
    }
    match stdin {
        // The console takes standard input; the serial port goes to a file.
        Some(_) => args.extend(["-serial".to_string(), format!("file:{}", serial.display())]),
        None => args.extend(["-serial", "stdio"].map(String::from)),
    }
    args.extend(devices.iter().map(|s| s.to_string()));
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "timeout"]);
            c
        }
        None => Command::new("timeout"),
    };
    let mut child = command
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    let mut pipe = child.stdin.take();
    if let (Some(p), Some(input)) = (pipe.as_mut(), stdin) {
        p.write_all(input).map_err(|e| e.to_string())?;
    }
    // QEMU's stdio backend stops at end of input: keep standard input open until it exits.
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    drop(pipe);
    let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if stdin.is_some() {
        stdout.push_str(&fs::read_to_string(&serial).unwrap_or_default());
        let _ = fs::remove_file(&serial);
    }
    Ok((
        out.status.code(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn qemu_pass(
    test: &str,
    res: Result<(Option<i32>, String, String), String>,
    scenario: &str,
    fields: &[&str],
) -> Option<String> {
    let (code, out, err) = match res {
        Ok(r) => r,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    let line = out
        .lines()
        .rfind(|l| l.starts_with("PROBE "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with(&format!("PROBE PASS {scenario}")),
        "{test}: {out}\n{err}"
    );
    for f in fields {
        assert!(
            line.split_whitespace().any(|w| w == *f),
            "{test}: {f} missing from {line}"
        );
    }
    assert_eq!(code, QEMU_PASS, "{test}: {out}\n{err}");
    Some(out)
}

#[test]
fn qemu_virtio_blk_288_vcpus_remapped() {
    let img = Image::new("qemu-blk");
    let drive = format!("file={},if=none,id=d0,format=raw", img.path());
    let res = qemu(
        "probe=virtio-blk",
        288,
        &[
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,disable-legacy=on,num-queues=2,serial=qemu-disk",
        ],
        None,
    );
    if qemu_pass(
        "qemu_virtio_blk",
        res,
        "virtio-blk",
        &["queues=2", "serial=qemu-disk", "remapped=1", "moved=286->0"],
    )
    .is_some()
    {
        // QEMU ignores discards by default (discard=ignore): sectors 40..48 keep their data.
        img.check_after_blk(2, false);
    }
}

/// virtio-blk with ACCESS_PLATFORM through QEMU 7.2's intel-iommu (caching mode, 48-bit
/// tables): the same IOVAs work; an unmapped data page is a fault QEMU records with the
/// same reason and address as irvmm (QEMU drops the unreachable part and reports OK), an
/// unmapped ring makes it set DEVICE_NEEDS_RESET as irvmm does.
#[test]
fn qemu_virtio_blk_iommu_access_platform() {
    let img = Image::new("qemu-blk-iommu");
    let drive = format!("file={},if=none,id=d0,format=raw", img.path());
    let res = qemu(
        "probe=virtio-blk-iommu",
        2,
        &[
            "-device",
            "intel-iommu,intremap=on,eim=on,caching-mode=on,aw-bits=48",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on",
        ],
        None,
    );
    if qemu_pass(
        "qemu_virtio_blk_iommu",
        res,
        "virtio-blk-iommu",
        &[
            "levels=4",
            "read=ok",
            "write=ok",
            "unmapped=dropped",
            "ring=needs_reset",
            "recovered=ok",
            "faults=2",
        ],
    )
    .is_some()
    {
        img.check_after_blk_iommu();
    }
}

#[test]
fn qemu_virtio_rng() {
    let res = qemu(
        "probe=virtio-rng",
        1,
        &["-device", "virtio-rng-pci,disable-legacy=on"],
        None,
    );
    qemu_pass(
        "qemu_virtio_rng",
        res,
        "virtio-rng",
        &["bytes=128", "remapped=0"],
    );
}

#[test]
fn qemu_virtio_console_288_vcpus_remapped() {
    let res = qemu(
        "probe=virtio-console probe.hvc_input=ping-from-host probe.strict_irqs=0",
        288,
        &[
            "-chardev",
            "stdio,id=c0",
            "-device",
            "virtio-serial-pci,disable-legacy=on",
            "-device",
            "virtconsole,chardev=c0",
        ],
        Some(b"ping-from-host\n"),
    );
    if let Some(out) = qemu_pass(
        "qemu_virtio_console",
        res,
        "virtio-console",
        &["rx=15", "remapped=1"],
    ) {
        assert!(
            out.contains("PROBE-HVC hello from the virtio console"),
            "{out}"
        );
    }
}

// --- virtio-net ------------------------------------------------------------------------

/// The peer's summary for a full `virtio-net` run.
const PEER_FULL: &str = "PEER OK pings=8 udp=1 tcp_in=3000 tcp_out=3000 gso_seen=1 bad=0";

/// A namespace with `tap` (made beforehand when `existing`, multi-queue when
/// `multi_queue`) and the peer on it, or why not.
fn net_setup(
    test: &str,
    tap: &str,
    existing: bool,
    multi_queue: bool,
) -> Result<(netns::NetNs, netns::Peer), String> {
    kvm_available()?;
    asset("probe.elf")?;
    let ns = netns::NetNs::create(test)?;
    if existing {
        ns.add_tap(tap, multi_queue)?;
    }
    let mut peer = ns.peer(tap, &["--linger", "60"])?;
    if existing {
        peer.wait_ready()?;
    }
    Ok((ns, peer))
}

/// Runs the probe with `cmdline` in `ns` under irvmm with `extra` arguments.
fn irvmm_in(ns: &netns::NetNs, cmdline: &str, extra: &[&str]) -> GuestRun {
    let probe = asset("probe.elf").expect("probe.elf");
    let mut args = vec![
        "--kernel",
        probe.to_str().expect("utf-8"),
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    ns.run_vmm(
        irvmm(),
        &args,
        &[("RUST_LOG", "info")],
        Duration::from_secs(300),
    )
}

#[test]
fn virtio_net_288_vcpus_remapped_two_pairs() {
    let tap = netns::unique("tn");
    let (ns, peer) = match net_setup("net288", &tap, true, true) {
        Ok(s) => s,
        Err(why) => return skip("virtio_net_288", &why),
    };
    let net = format!("tap={tap},mac=52:54:00:0a:0b:0c,queues=2");
    let mut extra = IR_288.to_vec();
    extra.extend(["--net", &net]);
    let run = irvmm_in(&ns, "probe=virtio-net", &extra);
    let peer = peer.finish(Duration::from_secs(5));
    assert_probe_pass(
        &run,
        "virtio-net",
        &[
            "mac=52:54:00:0a:0b:0c",
            "pairs=2",
            "pings=8",
            "csum_tx=1",
            "csum_rx=partial",
            "tso_tx=1",
            "tso_rx=1",
            "stray=0",
            "remapped=1",
        ],
    );
    assert!(peer.contains(PEER_FULL), "peer:\n{peer}\n{}", run.dump());
    // Both pairs carried frames each way.
    let last = run.lines.last().cloned().unwrap_or_default();
    for field in ["txq=", "rxq="] {
        let v = last
            .split_whitespace()
            .find_map(|w| w.strip_prefix(field))
            .unwrap_or_default();
        assert!(
            v.split('+').all(|n| n.parse::<u32>().unwrap_or(0) > 0),
            "{field}{v}: a pair carried nothing\n{}",
            run.dump()
        );
    }
    // Config + 2 pairs + control: six vectors, all in KVM.
    let line = vectors_line(&run, "virtio-net0");
    assert!(line.contains("6 vectors, 6 enabled, 6 in KVM"), "{line}");
    assert!(
        run.stderr.contains("2 queue pair(s) in use"),
        "{}",
        run.dump()
    );
    assert!(ns.has_link(&tap), "an existing tap must stay");
}

#[test]
fn virtio_net_created_tap_alone() {
    let tap = netns::unique("tc");
    let (ns, peer) = match net_setup("netnew", &tap, false, false) {
        Ok(s) => s,
        Err(why) => return skip("virtio_net_created_tap", &why),
    };
    let net = format!("tap={tap}");
    let run = irvmm_in(
        &ns,
        "probe=virtio-net",
        &["--memory", "128M", "--net", &net],
    );
    let peer = peer.finish(Duration::from_secs(5));
    assert_probe_pass(
        &run,
        "virtio-net",
        &["pairs=1", "csum_rx=partial", "tso_rx=1", "remapped=0"],
    );
    assert!(peer.contains(PEER_FULL), "peer:\n{peer}\n{}", run.dump());
    assert!(
        run.stderr.contains("(created, 1 queue pair(s)"),
        "{}",
        run.dump()
    );
    assert!(!ns.has_link(&tap), "the tap irvmm created must go with it");
}

/// A hostile driver (see the probe's `virtio-net-bad`): bad queue size, config writes,
/// stray notifies, receive buffers the device cannot write, transmit chains that must
/// never reach the tap, bad control commands, a runaway index; irvmm keeps running and
/// recovers after a reset.
#[test]
fn virtio_net_hostile_driver_288_vcpus() {
    let tap = netns::unique("tb");
    let (ns, peer) = match net_setup("netbad", &tap, false, false) {
        Ok(s) => s,
        Err(why) => return skip("virtio_net_hostile", &why),
    };
    let net = format!("tap={tap}");
    let mut extra = IR_288.to_vec();
    extra.extend(["--net", &net]);
    let run = irvmm_in(&ns, "probe=virtio-net-bad", &extra);
    let peer = peer.finish(Duration::from_secs(5));
    assert_probe_pass(
        &run,
        "virtio-net-bad",
        &[
            "bad_size=needs_reset",
            "rx_readonly=0",
            "rx_outside=0",
            "tx_bad=5",
            "ctrl=err",
            "runaway=needs_reset",
            "stray=0",
        ],
    );
    // Four good pings; none of the hostile ones got through.
    assert!(peer.contains("PEER OK pings=4 "), "peer:\n{peer}");
    assert!(!peer.contains("PEER BAD"), "peer:\n{peer}");
}

/// Runs irvmm with `args` (no guest must start); asserts exit status 2 and one stderr
/// line naming `--net`; returns the line.
fn net_refused(prefix: &[&str], args: &[&str]) -> String {
    let kernel = asset("probe.elf").expect("probe.elf");
    let mut c = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(irvmm());
            c
        }
        None => Command::new(irvmm()),
    };
    let out = c
        .args([
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--cmdline",
            "probe=boot",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run irvmm");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: the guest must not have run"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr}");
    assert!(lines[0].contains("--net"), "{args:?}: '{}'", lines[0]);
    lines[0].to_string()
}

#[test]
fn bad_nets_are_refused_with_one_line() {
    if let Err(why) = asset("probe.elf") {
        return skip("bad_nets", &why);
    }
    for (net, says) in [
        ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
        ("tap=t0,mac=52:54:00:12:34", "mac=52:54:00:12:34"),
        ("tap=t0,mac=00:00:00:00:00:00", "all-zero"),
        ("tap=t0,queues=0", "queues=0"),
        ("tap=t0,queues=65", "queues=65"),
        ("tap=much-too-long-name", "interface name"),
        ("mac=52:54:00:12:34:56", "tap=NAME"),
    ] {
        let l = net_refused(&[], &["--net", net]);
        assert!(l.contains(says), "{net}: {l}");
    }
    // Without CAP_NET_ADMIN no tap can be created (or taken from another user).
    let setpriv = "/usr/bin/setpriv";
    if std::path::Path::new(setpriv).exists() {
        let tap = netns::unique("tp");
        let l = net_refused(
            &[
                setpriv,
                "--bounding-set",
                "-net_admin",
                "--inh-caps",
                "-net_admin",
                "--",
            ],
            &["--net", &format!("tap={tap}")],
        );
        assert!(l.contains("CAP_NET_ADMIN"), "{l}");
    } else {
        skip(
            "bad_nets (no CAP_NET_ADMIN)",
            "setpriv (util-linux) is not installed",
        );
    }
    // A tun device of that name, and a multi-queue tap opened with one queue.
    let ns = match netns::NetNs::create("netref") {
        Ok(ns) => ns,
        Err(why) => return skip("bad_nets (tun, multi_queue)", &why),
    };
    let tun = netns::unique("tu");
    ns.add_tun(&tun).expect("add tun");
    let mq = netns::unique("tm");
    ns.add_tap(&mq, true).expect("add tap");
    let ip = ["ip", "netns", "exec", ns.name()];
    let l = net_refused(&ip, &["--net", &format!("tap={tun}")]);
    assert!(l.contains("not a single-queue tap"), "{l}");
    let l = net_refused(&ip, &["--net", &format!("tap={mq}")]);
    assert!(l.contains("made with multi_queue"), "{l}");
}

#[test]
fn qemu_virtio_net_288_vcpus_remapped_two_pairs() {
    let tap = netns::unique("tq");
    let (ns, peer) = match net_setup("qnet", &tap, true, true) {
        Ok(s) => s,
        Err(why) => return skip("qemu_virtio_net", &why),
    };
    let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no,queues=2");
    let res = qemu_in(
        Some(ns.name()),
        "probe=virtio-net",
        288,
        &[
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:0a:0b:0d,romfile=,mq=on,vectors=6",
        ],
        None,
    );
    let out = qemu_pass(
        "qemu_virtio_net",
        res,
        "virtio-net",
        &[
            "mac=52:54:00:0a:0b:0d",
            "pairs=2",
            "csum_rx=partial",
            "tso_tx=1",
            "tso_rx=1",
            "stray=0",
            "remapped=1",
        ],
    );
    let peer = peer.finish(Duration::from_secs(5));
    if out.is_some() {
        assert!(peer.contains(PEER_FULL), "peer:\n{peer}");
    }
}

#[test]
fn qemu_virtio_net_created_tap() {
    let tap = netns::unique("tr");
    let (ns, peer) = match net_setup("qnetnew", &tap, false, false) {
        Ok(s) => s,
        Err(why) => return skip("qemu_virtio_net_created_tap", &why),
    };
    let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
    let res = qemu_in(
        Some(ns.name()),
        "probe=virtio-net",
        1,
        &[
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
        ],
        None,
    );
    let out = qemu_pass(
        "qemu_virtio_net_created_tap",
        res,
        "virtio-net",
        &["pairs=1", "csum_rx=partial", "tso_rx=1", "remapped=0"],
    );
    let peer = peer.finish(Duration::from_secs(5));
    if out.is_some() {
        assert!(peer.contains(PEER_FULL), "peer:\n{peer}");
    }
}
