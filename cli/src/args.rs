//! Command-line grammar and value parsers.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vmm::passthrough::{MsixPolicy, PassthroughConfig, PassthroughSource};
use vmm::{
    ApicMode, DeviceConfig, IommuKind, PciDeviceKind, PvPanicConfig, ResetAction, SerialMode,
    Topology,
};

const EXAMPLES: &str = "\
Examples:
  irvmm --kernel target/guests/vmlinux --initramfs target/guests/initramfs.cpio.gz \\
        --cmdline \"console=ttyS0\" --cpus 4 --memory 512M
  irvmm --kernel target/guests/probe.elf --cmdline probe=boot --cpus 288,sockets=2,cores=144,threads=1
  irvmm --kernel bzImage --cpu-features -cx16,-xsave --cmdline \"console=ttyS0 noxsave\" --serial file:boot.log
  irvmm --kernel target/guests/probe.elf --cmdline probe=ir-basic --cpus 288 --iommu intel --device edu
  irvmm --kernel vmlinux --cmdline \"console=ttyS0 iommu=pt\" --cpus 288 --iommu amd
  irvmm --kernel vmlinux --device vfio,path=/sys/bus/pci/devices/0000:01:00.0 --iommu intel --cpus 8
  irvmm --kernel target/guests/probe.elf --cmdline probe=vfio-basic --device vfio-user,socket=/tmp/dev.sock
  irvmm --kernel vmlinux --initramfs initramfs.cpio.gz --net tap=tap0,mac=52:54:00:12:34:56,queues=2 --cpus 2

Exit status:
  0        ACPI power-off (or KVM's shutdown event)
  v        the byte v the guest wrote to the debug-exit port 0x501
  2        bad command-line input (nothing was started)
  120      the guest crashed (triple fault, KVM internal error): reason on stderr
  121      VMM failure
  122      the guest reset the machine (--on-reset exit)
  123      the guest panicked (pvpanic PANICKED event)
  124      --timeout expired (the VM was stopped cleanly)
  125      Ctrl-a x typed on the console (--serial stdio or --console virtio)
  128+n    stopped cleanly on signal n: 129 SIGHUP, 130 SIGINT, 143 SIGTERM
Console (--serial stdio, --console virtio): a terminal is put in raw mode; Ctrl-a x quits,
Ctrl-a h helps, Ctrl-a Ctrl-a sends Ctrl-a. Set RUST_LOG=debug for details.";

/// irvmm: a KVM virtual machine monitor for x86-64 with interrupt remapping done right at scale.
#[derive(Debug, Parser)]
#[command(name = "irvmm", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Kernel to boot: an ELF with a PVH entry note (vmlinux) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (cpio, optionally compressed) handed to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    /// vCPUs: a count, optionally with a topology whose product is that count.
    #[arg(long, value_name = "N[,sockets=S,cores=C,threads=T]", default_value = "1", value_parser = parse_cpus)]
    pub cpus: Topology,

    /// Guest RAM: a byte count with an optional K, M or G suffix (binary units).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Where COM1 goes: stdio, file:PATH or off.
    #[arg(long, value_name = "stdio|file:PATH|off", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialMode,

    /// CPUID features to hide (-name) or offer (+name), comma separated, e.g. -cx16,-xsave.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cpu_features: String,

    /// Offer the paravirtual extended destination ID (MSI address bits 11:5 carry APIC ID
    /// bits 14:8), the IOMMU-less way to reach APIC IDs above 255.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub ext_dest_id: bool,

    /// Local APIC mode the vCPUs start in: auto picks x2apic when an APIC ID is 255 or more.
    #[arg(long, value_name = "auto|xapic|x2apic", default_value = "auto", value_parser = parse_apic_mode)]
    pub apic_mode: ApicMode,

    /// Guest-visible IOMMU: none; intel (VT-d with interrupt remapping, x2APIC capable); or
    /// amd (AMD-Vi with interrupt remapping, x2APIC and guest virtual APIC capable, at
    /// 0xfed80000 as PCI function 00:1e.0, the IOAPIC as device 00:14.0). Neither translates
    /// DMA: under amd, a Linux that predates HATDis support (2025; Debian 12's 6.1 for one)
    /// needs iommu=pt on its command line for devices that do DMA.
    #[arg(long, value_name = "none|intel|amd", default_value = "none", value_parser = parse_iommu)]
    pub iommu: IommuKind,

    /// Add a PCI device (repeatable, placed on bus 0 in order): edu (QEMU's edu test
    /// device, MSI), edu-msix (its MSI-X variant with 256 vectors), a host device through
    /// kernel VFIO (vfio,path=SYSFS_PATH) or a vfio-user server's device
    /// (vfio-user,socket=PATH); passthrough takes msix=auto|relocate|trap|direct (where the
    /// guest's MSI-X table lives; auto relocates it when the host isolates MSIs) and
    /// irqfd=on|off (off: the VMM delivers every interrupt; for comparisons).
    #[arg(
        long = "device",
        value_name = "edu|edu-msix|vfio,path=P[,msix=M]|vfio-user,socket=S[,msix=M]",
        value_parser = parse_device,
        action = clap::ArgAction::Append
    )]
    pub devices: Vec<DeviceConfig>,

    /// Add a virtio-blk disk on a raw image (repeatable, placed after the --devices):
    /// readonly=on opens it read-only, direct=on bypasses the host page cache (O_DIRECT),
    /// queues=N gives it N request queues (1-64), serial=ID what the guest reads as its ID
    /// (at most 20 bytes). The image is locked: exclusively when writable.
    #[arg(
        long = "disk",
        value_name = "path=IMG[,readonly=on][,direct=on][,queues=N][,serial=ID]",
        value_parser = parse_disk,
        action = clap::ArgAction::Append
    )]
    pub disks: Vec<vmm::virtio_disk::DiskConfig>,

    /// Add a virtio-net device on a tap (repeatable, placed after the disks): tap=NAME is
    /// opened, or created and set up when it does not exist (both need CAP_NET_ADMIN unless
    /// the tap belongs to the user); mac=MAC is the guest's address (default: random,
    /// locally administered); queues=N gives it N queue pairs (1-64; the tap must then be
    /// multi_queue).
    #[arg(
        long = "net",
        value_name = "tap=NAME[,mac=MAC][,queues=N]",
        value_parser = parse_net,
        action = clap::ArgAction::Append
    )]
    pub nets: Vec<vmm::virtio_net::NetConfig>,

    /// virtio: a virtio console (hvc0) on standard input and output (standard input then
    /// goes to it, not to COM1, with the console's raw mode and Ctrl-a keys); off: none.
    #[arg(long, value_name = "virtio|off", default_value = "off", value_parser = parse_console)]
    pub console: vmm::ConsoleMode,

    /// Add a virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    pub rng: bool,

    /// KVM device node.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm_device: PathBuf,

    /// What a guest reset does: exit (status 122) or restart (the VM is built again from
    /// scratch and the guest boots anew; not with passed-through devices).
    #[arg(long, value_name = "exit|restart", default_value = "exit", value_parser = parse_on_reset)]
    pub on_reset: ResetAction,

    /// Stop the VM after SECONDS (decimals allowed), restarts included: exit status 124.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// pvpanic devices: isa (QEMU's ISA device at port 0x505, ACPI ID QEMU0001), pci (QEMU's
    /// PCI function 1b36:0011, placed after the --device list), both (isa,pci) or off. A
    /// guest panic reported through one exits with status 123.
    #[arg(long, value_name = "isa|pci|isa,pci|off", default_value = "isa", value_parser = parse_pvpanic)]
    pub pvpanic: PvPanicConfig,

    /// KVM halt polling for this VM: how long (ns) a halted vCPU's thread spins waiting for
    /// an interrupt before it sleeps (KVM_CAP_HALT_POLL); 0 turns it off. Default: the host
    /// kernel's halt_poll_ns.
    #[arg(long, value_name = "NS")]
    pub halt_poll_ns: Option<u32>,
}

/// Parses `N[,sockets=S,cores=C,threads=T]`; omitted parts default so the product is N.
pub fn parse_cpus(s: &str) -> Result<Topology, String> {
    let mut parts = s.split(',');
    let count: u32 = parts.next().unwrap_or("").trim().parse().map_err(|_| {
        format!("'{s}' is not a vCPU count (use e.g. 4 or 288,sockets=2,cores=144,threads=1)")
    })?;
    let (mut sockets, mut cores, mut threads) = (None, None, None);
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("'{p}' must be sockets=N, cores=N or threads=N"))?;
        let v: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("'{p}': '{v}' is not a number"))?;
        match k.trim() {
            "sockets" => sockets = Some(v),
            "cores" => cores = Some(v),
            "threads" => threads = Some(v),
            other => {
                return Err(format!(
                    "unknown topology key '{other}' (use sockets, cores, threads)"
                ))
            }
        }
    }
    let sockets = sockets.unwrap_or(1);
    let threads = threads.unwrap_or(1);
    let cores = match cores {
        Some(c) => c,
        None if sockets > 0 && threads > 0 => count / (sockets * threads).max(1),
        None => 0,
    };
    Topology::new(count, sockets, cores, threads).map_err(|e| e.to_string())
}

/// Parses a size with an optional K/M/G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (use e.g. 512M or 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses `stdio`, `off` or `file:PATH`.
pub fn parse_serial(s: &str) -> Result<SerialMode, String> {
    match s {
        "stdio" => Ok(SerialMode::Stdio),
        "off" => Ok(SerialMode::Off),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
            _ => Err(format!("'{s}' is not stdio, off or file:PATH")),
        },
    }
}

/// Parses `auto`, `xapic` or `x2apic`.
pub fn parse_apic_mode(s: &str) -> Result<ApicMode, String> {
    match s {
        "auto" => Ok(ApicMode::Auto),
        "xapic" => Ok(ApicMode::XApic),
        "x2apic" => Ok(ApicMode::X2Apic),
        _ => Err(format!("'{s}' is not auto, xapic or x2apic")),
    }
}

/// Parses `none`, `intel` or `amd`.
pub fn parse_iommu(s: &str) -> Result<IommuKind, String> {
    match s {
        "none" => Ok(IommuKind::None),
        "intel" => Ok(IommuKind::Intel),
        "amd" => Ok(IommuKind::Amd),
        _ => Err(format!("'{s}' is not none, intel or amd")),
    }
}

/// Parses `msix=` of a passthrough device.
fn parse_msix(v: &str) -> Result<MsixPolicy, String> {
    match v {
        "auto" => Ok(MsixPolicy::Auto),
        "relocate" => Ok(MsixPolicy::Relocate),
        "trap" => Ok(MsixPolicy::Trap),
        "direct" => Ok(MsixPolicy::Direct),
        _ => Err(format!(
            "msix={v} is not a placement (use auto, relocate, trap or direct)"
        )),
    }
}

/// Parses a device: `edu`, `edu-msix`, `vfio,path=P[,msix=M]` or
/// `vfio-user,socket=S[,msix=M]`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or("");
    let simple = |k: PciDeviceKind| -> Result<DeviceConfig, String> {
        match s.split_once(',') {
            None => Ok(DeviceConfig::Emulated(k)),
            Some((_, rest)) => Err(format!("{kind} takes no options (got '{rest}')")),
        }
    };
    let (key, what) = match kind {
        "edu" => return simple(PciDeviceKind::Edu),
        "edu-msix" => return simple(PciDeviceKind::EduMsix),
        "vfio" => (
            "path",
            "a sysfs path such as /sys/bus/pci/devices/0000:01:00.0",
        ),
        "vfio-user" => ("socket", "the server's socket path"),
        _ => {
            return Err(format!(
            "'{kind}' is not a known device (edu, edu-msix, vfio,path=..., vfio-user,socket=...)"
        ))
        }
    };
    let mut location = None;
    let mut msix = MsixPolicy::Auto;
    let mut irqfd = true;
    for p in parts {
        match p.split_once('=') {
            Some((k, v)) if k == key && !v.is_empty() => location = Some(v.to_string()),
            Some(("msix", v)) => msix = parse_msix(v)?,
            Some(("irqfd", v)) => {
                irqfd = parse_on_off(v).map_err(|e| format!("{kind}: irqfd: {e}"))?
            }
            _ => {
                return Err(format!(
                    "{kind}: unknown option '{p}' (use {key}=..., msix=..., irqfd=on|off)"
                ))
            }
        }
    }
    let location = location.ok_or_else(|| format!("{kind} needs {key}=: {what}"))?;
    let source = if kind == "vfio" {
        PassthroughSource::Kernel(location.into())
    } else {
        PassthroughSource::User(location.into())
    };
    Ok(DeviceConfig::Passthrough(PassthroughConfig {
        source,
        msix,
        irqfd,
    }))
}

/// Parses `path=IMG[,readonly=on][,direct=on][,queues=N][,serial=ID]`.
pub fn parse_disk(s: &str) -> Result<vmm::virtio_disk::DiskConfig, String> {
    let mut path = None;
    let (mut readonly, mut direct, mut queues, mut serial) = (false, false, 1u16, None);
    for p in s.split(',') {
        match p.split_once('=') {
            Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("readonly", v)) => readonly = parse_on_off(v).map_err(|e| format!("readonly: {e}"))?,
            Some(("direct", v)) => direct = parse_on_off(v).map_err(|e| format!("direct: {e}"))?,
            Some(("queues", v)) => {
                queues = v
                    .parse()
                    .map_err(|_| format!("queues: '{v}' is not a number"))?;
                if queues == 0 {
                    return Err("queues=0: a disk needs at least one queue".into());
                }
            }
            Some(("serial", v)) => serial = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "unknown option '{p}' (use path=IMG, readonly=on|off, direct=on|off, queues=N, serial=ID)"
                ))
            }
        }
    }
    let path = path.ok_or("needs path=IMG (a raw disk image)")?;
    Ok(vmm::virtio_disk::DiskConfig {
        path,
        readonly,
        direct,
        queues,
        serial,
    })
}

/// Parses `tap=NAME[,mac=MAC][,queues=N]`.
pub fn parse_net(s: &str) -> Result<vmm::virtio_net::NetConfig, String> {
    let mut tap = None;
    let (mut mac, mut queues) = (None, 1u16);
    for p in s.split(',') {
        match p.split_once('=') {
            Some(("tap", v)) => {
                if !vmm::virtio_net::tap::valid_name(v) {
                    return Err(format!(
                        "tap={v:?}: not an interface name (1 to 15 bytes, no '/', ':' or whitespace)"
                    ));
                }
                tap = Some(v.to_string());
            }
            Some(("mac", v)) => mac = Some(v.parse().map_err(|e| format!("{e}"))?),
            Some(("queues", v)) => {
                queues = v
                    .parse()
                    .map_err(|_| format!("queues: '{v}' is not a number"))?;
                if queues == 0 || queues > vmm::virtio_net::MAX_QUEUE_PAIRS {
                    return Err(format!(
                        "queues={queues}: a network device has 1 to {} queue pairs",
                        vmm::virtio_net::MAX_QUEUE_PAIRS
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "unknown option '{p}' (use tap=NAME, mac=MAC, queues=N)"
                ))
            }
        }
    }
    let tap = tap.ok_or("needs tap=NAME (a tap interface, created when missing)")?;
    Ok(vmm::virtio_net::NetConfig { tap, mac, queues })
}

/// Parses `virtio` or `off`.
pub fn parse_console(s: &str) -> Result<vmm::ConsoleMode, String> {
    match s {
        "virtio" => Ok(vmm::ConsoleMode::Virtio),
        "off" => Ok(vmm::ConsoleMode::Off),
        _ => Err(format!("'{s}' is not virtio or off")),
    }
}

/// Parses `exit` or `restart`.
pub fn parse_on_reset(s: &str) -> Result<ResetAction, String> {
    match s {
        "exit" => Ok(ResetAction::Exit),
        "restart" => Ok(ResetAction::Restart),
        _ => Err(format!("'{s}' is not exit or restart")),
    }
}

/// Longest `--timeout` (about 31 years): keeps deadline arithmetic far from overflow.
const MAX_TIMEOUT_SECONDS: f64 = 1e9;

/// Parses a positive number of seconds, decimals allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (use e.g. 30 or 2.5)"))?;
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECONDS) {
        return Err(format!(
            "'{s}' must be more than 0 and at most {MAX_TIMEOUT_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `off` or a comma-separated list of `isa` and `pci`.
pub fn parse_pvpanic(s: &str) -> Result<PvPanicConfig, String> {
    let mut c = PvPanicConfig {
        isa: false,
        pci: false,
    };
    if s == "off" {
        return Ok(c);
    }
    for part in s.split(',') {
        match part {
            "isa" => c.isa = true,
            "pci" => c.pci = true,
            _ => return Err(format!("'{part}' is not isa, pci or off")),
        }
    }
    Ok(c)
}

/// Parses `on` or `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn cpus_with_and_without_topology() {
        assert_eq!(parse_cpus("4").unwrap().cpus(), 4);
        let t = parse_cpus("288,sockets=2,threads=2").unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (2, 72, 2));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("10,sockets=3").is_err());
        assert!(parse_cpus("4,dies=2").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn iommu_takes_none_intel_or_amd() {
        assert_eq!(parse_iommu("none"), Ok(IommuKind::None));
        assert_eq!(parse_iommu("intel"), Ok(IommuKind::Intel));
        assert_eq!(parse_iommu("amd"), Ok(IommuKind::Amd));
        assert!(parse_iommu("AMD").is_err());
        assert!(parse_iommu("smmu")
            .unwrap_err()
            .contains("none, intel or amd"));
        let parsed = Args::try_parse_from(["irvmm", "--kernel", "k", "--iommu", "amd"]);
        assert_eq!(parsed.map(|a| a.iommu).ok(), Some(IommuKind::Amd));
    }

    #[test]
    fn ext_dest_id_takes_on_or_off() {
        let parse = |v: &str| {
            Args::try_parse_from(["irvmm", "--kernel", "k", "--ext-dest-id", v])
                .map(|a| a.ext_dest_id)
        };
        assert!(parse("on").unwrap());
        assert!(!parse("off").unwrap());
        assert!(parse("maybe").is_err());
        assert!(
            Args::try_parse_from(["irvmm", "--kernel", "k"])
                .unwrap()
                .ext_dest_id
        );
    }

    #[test]
    fn nets() {
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56,queues=4").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(
            n.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(n.queues, 4);
        let n = parse_net("tap=t").unwrap();
        assert_eq!((n.mac, n.queues), (None, 1));
        for (bad, says) in [
            ("tap=t,queues=0", "queues=0"),
            ("tap=t,queues=65", "queues=65"),
            ("tap=t,queues=x", "queues"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t,mac=52:54:00:12:34", "mac=52:54:00:12:34"),
            ("tap=t,mac=00:00:00:00:00:00", "all-zero"),
            ("mac=52:54:00:12:34:56", "tap=NAME"),
            ("tap=", "tap=\"\""),
            ("tap=a/b", "interface name"),
            ("tap=t,vhost=on", "unknown option"),
        ] {
            let e = parse_net(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn disks_and_console() {
        let d = parse_disk("path=/tmp/a.img,readonly=on,direct=on,queues=4,serial=abc").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.readonly && d.direct);
        assert_eq!((d.queues, d.serial.as_deref()), (4, Some("abc")));
        let d = parse_disk("path=x.img").unwrap();
        assert!(!d.readonly && !d.direct && d.queues == 1 && d.serial.is_none());
        assert!(parse_disk("path=x.img,queues=0")
            .unwrap_err()
            .contains("queues=0"));
        assert!(parse_disk("readonly=on").is_err());
        assert!(parse_disk("path=x,cache=none").is_err());
        assert!(parse_disk("path=x,queues=many").is_err());
        assert_eq!(parse_console("virtio"), Ok(vmm::ConsoleMode::Virtio));
        assert_eq!(parse_console("off"), Ok(vmm::ConsoleMode::Off));
        assert!(parse_console("tty").is_err());
    }

    #[test]
    fn devices() {
        assert_eq!(
            parse_device("edu"),
            Ok(DeviceConfig::Emulated(PciDeviceKind::Edu))
        );
        assert!(parse_device("edu,x=1").is_err());
        assert_eq!(
            parse_device("vfio-user,socket=/tmp/s,msix=trap"),
            Ok(DeviceConfig::Passthrough(PassthroughConfig {
                source: PassthroughSource::User("/tmp/s".into()),
                msix: MsixPolicy::Trap,
                irqfd: true
            }))
        );
        assert_eq!(
            parse_device("vfio,path=/sys/bus/pci/devices/0000:01:00.0"),
            Ok(DeviceConfig::Passthrough(PassthroughConfig {
                source: PassthroughSource::Kernel("/sys/bus/pci/devices/0000:01:00.0".into()),
                msix: MsixPolicy::Auto,
                irqfd: true
            }))
        );
        assert!(parse_device("vfio").unwrap_err().contains("needs path="));
        assert!(parse_device("vfio-user,socket=/s,msix=sometimes").is_err());
        assert!(parse_device("vfio-user,path=/s").is_err());
        assert!(parse_device("nic").is_err());
        assert!(matches!(
            parse_device("vfio-user,socket=/s,irqfd=off"),
            Ok(DeviceConfig::Passthrough(PassthroughConfig {
                irqfd: false,
                ..
            }))
        ));
    }

    #[test]
    fn on_reset_timeout_and_pvpanic() {
        let a = Args::try_parse_from(["irvmm", "--kernel", "k"]).unwrap();
        assert_eq!(a.on_reset, ResetAction::Exit);
        assert_eq!(a.timeout, None);
        assert_eq!(a.pvpanic, PvPanicConfig::default());
        assert!(a.pvpanic.isa && !a.pvpanic.pci);
        assert_eq!(a.halt_poll_ns, None);
        assert_eq!(parse_on_reset("restart"), Ok(ResetAction::Restart));
        assert!(parse_on_reset("reboot").is_err());
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout(" 30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "-1", "x", "", "nan", "inf", "1e10"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_pvpanic("isa,pci"),
            Ok(PvPanicConfig {
                isa: true,
                pci: true
            })
        );
        assert_eq!(
            parse_pvpanic("pci"),
            Ok(PvPanicConfig {
                isa: false,
                pci: true
            })
        );
        assert_eq!(
            parse_pvpanic("off"),
            Ok(PvPanicConfig {
                isa: false,
                pci: false
            })
        );
        assert!(parse_pvpanic("isa,off").is_err());
        assert!(parse_pvpanic("").is_err());
    }

    #[test]
    fn serial_modes() {
        assert_eq!(parse_serial("off"), Ok(SerialMode::Off));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialMode::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
    }
}
