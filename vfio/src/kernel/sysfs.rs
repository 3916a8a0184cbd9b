//! What the host's sysfs and /dev say about a device before any VFIO ioctl: that the path
//! names a PCI function, that it is bound to vfio-pci, that it has an IOMMU group whose
//! other members are out of the way, and that the VFIO nodes exist and may be opened.
//!
//! Every check takes its root directories as arguments, so the unit tests run them against
//! a fake tree in a temporary directory. The messages name the real paths (`/sys/...`), since
//! they are instructions for the user.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::error::KernelOpenError;

/// The driver a passed-through device must be bound to.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";
/// Drivers that leave DMA ownership of their device to others (the kernel's
/// `driver_managed_dma`), so their devices do not make a group unviable.
const DMA_NEUTRAL_DRIVERS: &[&str] = &["pci-stub", "pcieport"];
/// Most bytes read from one sysfs attribute (they are a line each).
const ATTR_LIMIT: u64 = 4096;
/// The sysfs directory of PCI devices, relative to the sysfs root.
const PCI_DEVICES: &str = "bus/pci/devices";
/// The sysfs directory of PCI drivers, relative to the sysfs root.
const PCI_DRIVERS: &str = "bus/pci/drivers";

/// A PCI function as sysfs describes it, checked fit for VFIO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Its address, `dddd:bb:dd.f`.
    pub bdf: String,
    /// Its sysfs directory, symbolic links resolved.
    pub path: PathBuf,
    /// The driver it is bound to (vfio-pci or a vfio-pci variant driver).
    pub driver: String,
    /// Its IOMMU group.
    pub group: u32,
}

/// Reads a small sysfs attribute, without its trailing newline.
pub(crate) fn read_attr(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    fs::File::open(path)?
        .take(ATTR_LIMIT)
        .read_to_string(&mut text)?;
    Ok(text.trim_end().to_string())
}

/// Reads a boolean module parameter (`Y`/`N`, or `1`/`0` for integer parameters) from
/// `<sysfs_root>/module/<module>/parameters/<param>`; `None` when it is absent or unreadable.
pub fn read_bool_param(sysfs_root: &Path, module: &str, param: &str) -> Option<bool> {
    let path = sysfs_root
        .join("module")
        .join(module)
        .join("parameters")
        .join(param);
    parse_bool(&read_attr(&path).ok()?)
}

/// `Y`/`y`/`1` → true, `N`/`n`/`0` → false.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `name` is a PCI address `dddd:bb:dd.f` (hexadecimal, as sysfs names devices).
pub fn is_pci_address(name: &str) -> bool {
    let hex = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut parts = name.split(':');
    let (Some(domain), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    // Domains have four hex digits, more behind VMD bridges (`10000:e1:00.0`).
    hex(domain, 4..=8)
        && hex(bus, 2..=2)
        && hex(dev, 2..=2)
        && matches!(func.as_bytes(), [b'0'..=b'7'])
}

/// The sysfs path a `--device vfio,path=` value names: a path as given, or a bare PCI
/// address (`0000:01:00.0` or `01:00.0`) looked up under `<sysfs_root>/bus/pci/devices`.
pub fn resolve_device_path(sysfs_root: &Path, given: &str) -> PathBuf {
    if !given.contains('/') {
        let full = if given.split(':').count() == 2 {
            format!("0000:{given}")
        } else {
            given.to_string()
        };
        if is_pci_address(&full) {
            return sysfs_root.join(PCI_DEVICES).join(full);
        }
    }
    PathBuf::from(given)
}

/// The last component of the target of symbolic link `link`, if it is one.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// Whether a driver name is vfio-pci or one of its variant drivers (`mlx5_vfio_pci`, ...).
fn is_vfio_driver(driver: &str) -> bool {
    driver == VFIO_PCI_DRIVER || driver.contains("vfio")
}

/// The shell commands that bind `bdf` to vfio-pci, given its current driver.
fn bind_commands(sysfs_root: &Path, bdf: &str, current: Option<&str>) -> String {
    let mut steps = Vec::new();
    if !sysfs_root.join(PCI_DRIVERS).join(VFIO_PCI_DRIVER).exists() {
        steps.push("modprobe vfio-pci".to_string());
    }
    if current.is_some() {
        steps.push(format!(
            "echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind"
        ));
    }
    steps.push(format!(
        "echo {VFIO_PCI_DRIVER} > /sys/bus/pci/devices/{bdf}/driver_override"
    ));
    steps.push(format!("echo {bdf} > /sys/bus/pci/drivers_probe"));
    format!(
        "{} (or: driverctl set-override {bdf} {VFIO_PCI_DRIVER})",
        steps.join("; ")
    )
}

/// Checks, from sysfs alone, that `given` (a sysfs path or a PCI address) is a PCI function
/// bound to vfio-pci whose IOMMU group is viable, and returns what was learnt.
pub fn inspect_device(sysfs_root: &Path, given: &str) -> Result<HostDevice, KernelOpenError> {
    let path = resolve_device_path(sysfs_root, given);
    let canonical = match fs::canonicalize(&path) {
        Ok(p) => p,
        Err(_) => {
            return Err(KernelOpenError::NotFound {
                path: given.to_string(),
            })
        }
    };
    let not_pci = || KernelOpenError::NotPci {
        path: given.to_string(),
    };
    let bdf = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_pci_address(n))
        .ok_or_else(not_pci)?
        .to_string();
    let on_pci_bus = match link_name(&canonical.join("subsystem")) {
        Some(subsystem) => subsystem == "pci",
        None => canonical.join("config").is_file(),
    };
    if !canonical.is_dir() || !on_pci_bus {
        return Err(not_pci());
    }

    let driver = link_name(&canonical.join("driver"));
    match driver.as_deref() {
        Some(d) if is_vfio_driver(d) => {}
        current => {
            return Err(KernelOpenError::NotBound {
                bound: match current {
                    Some(d) => format!("bound to {d}"),
                    None => "bound to no driver".to_string(),
                },
                how: bind_commands(sysfs_root, &bdf, current),
                bdf,
            })
        }
    }
    let driver = driver.unwrap_or_default();

    let group_link = canonical.join("iommu_group");
    let group = link_name(&group_link)
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| KernelOpenError::NoIommuGroup { bdf: bdf.clone() })?;

    let blockers = group_blockers(&group_link.join("devices"), &bdf);
    if !blockers.is_empty() {
        return Err(KernelOpenError::GroupNotViable {
            group,
            bdf,
            blockers: blockers.join(", "),
        });
    }
    Ok(HostDevice {
        bdf,
        path: canonical,
        driver,
        group,
    })
}

/// The other members of a group that keep it from being viable, as
/// `"0000:01:00.1 (bound to snd_hda_intel)"`, sorted.
fn group_blockers(devices_dir: &Path, bdf: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(devices_dir) else {
        // The group's member list is unreadable: let the kernel's viability check decide.
        return Vec::new();
    };
    let mut blockers: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name == bdf {
                return None;
            }
            let driver = link_name(&e.path().join("driver"))?;
            if is_vfio_driver(&driver) || DMA_NEUTRAL_DRIVERS.contains(&driver.as_str()) {
                return None;
            }
            Some(format!("{name} (bound to {driver})"))
        })
        .collect();
    blockers.sort();
    blockers
}

/// The effective user id (for messages about permissions).
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that the VFIO container node and the node of `dev`'s group exist and open
/// read-write, and that no other process holds the group. Skip the group node
/// (`group_held`) when this VMM already holds the group: a group opens only once.
pub fn check_nodes(
    dev_root: &Path,
    dev: &HostDevice,
    group_held: bool,
) -> Result<(), KernelOpenError> {
    let vfio_dir = dev_root.join("vfio");
    try_open(&vfio_dir.join("vfio"), "/dev/vfio/vfio", None)?;
    if group_held {
        return Ok(());
    }
    let group_node = vfio_dir.join(dev.group.to_string());
    if !group_node.exists() && vfio_dir.join(format!("noiommu-{}", dev.group)).exists() {
        return Err(KernelOpenError::NoIommuGroup {
            bdf: dev.bdf.clone(),
        });
    }
    try_open(
        &group_node,
        &format!("/dev/vfio/{}", dev.group),
        Some((dev.group, &dev.bdf)),
    )
}

/// Opens `path` read-write and closes it again; `shown` is the path to name in messages.
fn try_open(path: &Path, shown: &str, group: Option<(u32, &str)>) -> Result<(), KernelOpenError> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(KernelOpenError::NodeMissing {
            path: shown.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(KernelOpenError::NoAccess {
            path: shown.to_string(),
            uid: euid(),
        }),
        Err(e) => match (e.raw_os_error(), group) {
            (Some(libc::EBUSY), Some((group, bdf))) => Err(KernelOpenError::GroupBusy {
                group,
                bdf: bdf.to_string(),
            }),
            _ => Err(KernelOpenError::Host {
                bdf: group.map_or("VFIO", |(_, b)| b).to_string(),
                op: "opening a VFIO node",
                detail: format!("{shown}: {e}"),
            }),
        },
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs tree for tests.

    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    use vmm_sys_util::tempdir::TempDir;

    /// A temporary sysfs root and /dev root.
    pub struct FakeHost {
        dir: TempDir,
    }

    impl FakeHost {
        pub fn new() -> Self {
            let dir = TempDir::new_with_prefix("/tmp/irvmm-fake-sysfs-").unwrap();
            let host = FakeHost { dir };
            fs::create_dir_all(host.sys().join("bus/pci/devices")).unwrap();
            fs::create_dir_all(host.sys().join("bus/pci/drivers")).unwrap();
            fs::create_dir_all(host.sys().join("kernel/iommu_groups")).unwrap();
            fs::create_dir_all(host.dev().join("vfio")).unwrap();
            host
        }

        pub fn sys(&self) -> PathBuf {
            self.dir.as_path().join("sys")
        }

        pub fn dev(&self) -> PathBuf {
            self.dir.as_path().join("dev")
        }

        /// Writes `text` to `<sys>/<rel>`, creating directories.
        pub fn write(&self, rel: &str, text: &str) {
            let p = self.sys().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }

        /// Adds PCI function `bdf` bound to `driver`, in IOMMU group `group`.
        pub fn add_pci(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let sys = self.sys();
            let real = sys.join("devices/pci0000:00").join(bdf);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("config"), [0u8; 256]).unwrap();
            symlink(sys.join("bus/pci"), real.join("subsystem")).unwrap();
            if let Some(d) = driver {
                let drv = sys.join("bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                symlink(&drv, real.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = sys.join("kernel/iommu_groups").join(g.to_string());
                fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, real.join("iommu_group")).unwrap();
                symlink(&real, gdir.join("devices").join(bdf)).unwrap();
            }
            let link = sys.join("bus/pci/devices").join(bdf);
            symlink(&real, &link).unwrap();
            link
        }

        /// Creates `/dev/vfio/<name>` as a plain file.
        pub fn add_node(&self, name: &str) {
            fs::write(self.dev().join("vfio").join(name), b"").unwrap();
        }

        pub fn path(&self) -> &Path {
            self.dir.as_path()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:01:00.0"));
        assert!(is_pci_address("10de:af:1f.7"));
        assert!(is_pci_address("10000:e1:00.0"));
        assert!(!is_pci_address("0000:01:00.8"));
        assert!(!is_pci_address("01:00.0"));
        assert!(!is_pci_address("0000:01:00"));
        assert!(!is_pci_address("0000:01:00.0:1"));
        assert!(!is_pci_address("ivhd0"));
        let root = Path::new("/sys");
        assert_eq!(
            resolve_device_path(root, "01:00.0"),
            Path::new("/sys/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(
            resolve_device_path(root, "/sys/bus/pci/devices/0000:01:00.0"),
            Path::new("/sys/bus/pci/devices/0000:01:00.0")
        );
    }

    #[test]
    fn bound_device_in_a_viable_group_passes() {
        let h = FakeHost::new();
        let link = h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(12));
        // A bridge bound to pcieport and an unbound function share the group: still viable.
        h.add_pci("0000:00:01.0", Some("pcieport"), Some(12));
        h.add_pci("0000:01:00.2", None, Some(12));
        let dev = inspect_device(&h.sys(), &s(&link)).unwrap();
        assert_eq!(dev.bdf, "0000:01:00.0");
        assert_eq!(dev.group, 12);
        assert_eq!(dev.driver, "vfio-pci");
        assert!(dev.path.ends_with("devices/pci0000:00/0000:01:00.0"));
        // A bare address resolves the same way.
        assert_eq!(inspect_device(&h.sys(), "01:00.0").unwrap(), dev);
    }

    #[test]
    fn missing_and_non_pci_paths() {
        let h = FakeHost::new();
        let missing = s(&h.sys().join("bus/pci/devices/0000:09:00.0"));
        let e = inspect_device(&h.sys(), &missing).unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::NotFound {
                path: missing.clone()
            }
        );
        assert!(e.to_string().contains("does not exist"));
        h.write("class/net/eth0/address", "00:11:22:33:44:55\n");
        let net = s(&h.sys().join("class/net/eth0"));
        let e = inspect_device(&h.sys(), &net).unwrap_err();
        assert!(matches!(e, KernelOpenError::NotPci { .. }), "{e}");
        // A PCI-looking name on another bus is not a PCI device either.
        let odd = h.sys().join("devices/platform/0000:02:00.0");
        fs::create_dir_all(&odd).unwrap();
        std::os::unix::fs::symlink(h.sys().join("bus/platform"), odd.join("subsystem")).unwrap();
        let e = inspect_device(&h.sys(), &s(&odd)).unwrap_err();
        assert!(matches!(e, KernelOpenError::NotPci { .. }), "{e}");
    }

    #[test]
    fn device_bound_elsewhere_says_how_to_bind() {
        let h = FakeHost::new();
        let link = h.add_pci("0000:01:00.0", Some("e1000e"), Some(3));
        let e = inspect_device(&h.sys(), &s(&link)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("0000:01:00.0 is bound to e1000e, not to vfio-pci"),
            "{msg}"
        );
        assert!(
            msg.contains("modprobe vfio-pci; "),
            "vfio-pci not loaded: {msg}"
        );
        assert!(msg.contains(
            "echo 0000:01:00.0 > /sys/bus/pci/devices/0000:01:00.0/driver/unbind; \
             echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override; \
             echo 0000:01:00.0 > /sys/bus/pci/drivers_probe"
        ));
        assert!(msg.contains("driverctl set-override 0000:01:00.0 vfio-pci"));
        assert!(!msg.contains('\n'));

        // Unbound, with vfio-pci loaded: no unbind step, no modprobe.
        let h = FakeHost::new();
        fs::create_dir_all(h.sys().join("bus/pci/drivers/vfio-pci")).unwrap();
        let link = h.add_pci("0000:02:00.0", None, Some(4));
        let msg = inspect_device(&h.sys(), &s(&link)).unwrap_err().to_string();
        assert!(msg.contains("is bound to no driver"), "{msg}");
        assert!(
            !msg.contains("unbind") && !msg.contains("modprobe"),
            "{msg}"
        );
    }

    #[test]
    fn no_group_means_no_iommu() {
        let h = FakeHost::new();
        let link = h.add_pci("0000:01:00.0", Some("vfio-pci"), None);
        let e = inspect_device(&h.sys(), &s(&link)).unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::NoIommuGroup {
                bdf: "0000:01:00.0".into()
            }
        );
        assert!(e.to_string().contains("intel_iommu=on"));
    }

    #[test]
    fn group_with_host_drivers_is_not_viable() {
        let h = FakeHost::new();
        let link = h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(7));
        h.add_pci("0000:01:00.1", Some("snd_hda_intel"), Some(7));
        h.add_pci("0000:01:00.3", Some("xhci_hcd"), Some(7));
        h.add_pci("0000:01:00.2", Some("mlx5_vfio_pci"), Some(7));
        let e = inspect_device(&h.sys(), &s(&link)).unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::GroupNotViable {
                group: 7,
                bdf: "0000:01:00.0".into(),
                blockers: "0000:01:00.1 (bound to snd_hda_intel), \
                           0000:01:00.3 (bound to xhci_hcd)"
                    .into(),
            }
        );
        assert!(e.to_string().contains("/sys/kernel/iommu_groups/7/devices"));
    }

    #[test]
    fn vfio_nodes_missing_busy_or_fine() {
        let h = FakeHost::new();
        let link = h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(5));
        let dev = inspect_device(&h.sys(), &s(&link)).unwrap();
        let e = check_nodes(&h.dev(), &dev, false).unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::NodeMissing {
                path: "/dev/vfio/vfio".into()
            }
        );
        h.add_node("vfio");
        let e = check_nodes(&h.dev(), &dev, false).unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::NodeMissing {
                path: "/dev/vfio/5".into()
            }
        );
        // Already held by this VMM: the group node is not opened again.
        check_nodes(&h.dev(), &dev, true).unwrap();
        h.add_node("noiommu-5");
        assert!(matches!(
            check_nodes(&h.dev(), &dev, false),
            Err(KernelOpenError::NoIommuGroup { .. })
        ));
        h.add_node("5");
        check_nodes(&h.dev(), &dev, false).unwrap();
        assert!(h.path().exists());
    }

    #[test]
    fn permission_message_names_node_and_user() {
        let e = KernelOpenError::NoAccess {
            path: "/dev/vfio/5".into(),
            uid: 1000,
        };
        let msg = e.to_string();
        assert!(msg.starts_with("/dev/vfio/5 is not accessible read-write to this user (uid 1000)"));
        assert!(msg.contains("ulimit -l"));
    }

    #[test]
    fn bool_params() {
        let h = FakeHost::new();
        h.write(
            "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
            "N\n",
        );
        h.write("module/kvm_amd/parameters/avic", "1\n");
        h.write("module/odd/parameters/x", "maybe\n");
        let sys = h.sys();
        assert_eq!(
            read_bool_param(&sys, "vfio_iommu_type1", "allow_unsafe_interrupts"),
            Some(false)
        );
        assert_eq!(read_bool_param(&sys, "kvm_amd", "avic"), Some(true));
        assert_eq!(read_bool_param(&sys, "odd", "x"), None);
        assert_eq!(
            read_bool_param(&sys, "iommufd", "allow_unsafe_interrupts"),
            None
        );
    }
}
