//! The VM's one VFIO container: created on the first device opened, holding every IOMMU
//! group the VM uses and the DMA mappings of guest RAM, shared by all kernel-VFIO devices.
//!
//! Opening a device runs the sysfs checks first ([`super::sysfs`]), so a user who forgot to
//! bind the device or to enable the IOMMU gets a one-line instruction instead of an ioctl
//! error; only then does vfio-ioctls open the container, attach the group and fetch the
//! device fd. The group's MSI isolation is decided from `allow_unsafe_interrupts` read
//! around that attach ([`super::isolation`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::{DeviceFd, VmFd};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps};

use crate::backend::{BackendError, DmaRegion, Isolation};

use super::device::VfioKernelDevice;
use super::dma::{Action, DmaMappings, Owner, CONTAINER_OWNER};
use super::error::KernelOpenError;
use super::isolation::{self, AttachFacts, IommuBackend};
use super::sysfs::{self, HostDevice};

/// Where the host's sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";
/// Where the host's device nodes live.
pub const DEV_ROOT: &str = "/dev";

/// An IOMMU group this VM holds.
#[derive(Debug)]
struct HeldGroup {
    /// Open devices of the group.
    devices: usize,
    /// Decided when the group was attached.
    isolation: Isolation,
}

struct State {
    /// KVM's VFIO pseudo-device, until the container takes it.
    kvm_device: Option<VfioDeviceFd>,
    container: Option<Arc<VfioContainer>>,
    groups: HashMap<u32, HeldGroup>,
    /// Addresses of the open devices (a device is opened once per VM).
    open: HashSet<String>,
    dma: DmaMappings,
}

/// The VM's VFIO container and what it holds. Create one per VM (in an `Arc`), open devices
/// with [`KernelVfio::open`], map guest RAM once with [`KernelVfio::dma_map`] (or through
/// any device's [`crate::VfioBackend::dma_map`]: identical mappings are shared).
pub struct KernelVfio {
    sysfs_root: PathBuf,
    dev_root: PathBuf,
    state: Mutex<State>,
    next_owner: AtomicU64,
}

impl std::fmt::Debug for KernelVfio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelVfio")
            .field("sysfs_root", &self.sysfs_root)
            .field("dev_root", &self.dev_root)
            .finish_non_exhaustive()
    }
}

impl KernelVfio {
    /// A container for the host's `/sys` and `/dev`, without KVM's VFIO device (KVM then
    /// does not learn about the groups: no non-coherent DMA handling for them).
    pub fn new() -> Arc<Self> {
        Self::with_roots(Path::new(SYSFS_ROOT), Path::new(DEV_ROOT), None)
    }

    /// A container that registers every group with KVM's VFIO pseudo-device `kvm_vfio`
    /// (a `KVM_DEV_TYPE_VFIO` device of the VM).
    pub fn with_kvm_device(kvm_vfio: DeviceFd) -> Arc<Self> {
        Self::with_roots(Path::new(SYSFS_ROOT), Path::new(DEV_ROOT), Some(kvm_vfio))
    }

    /// Creates KVM's VFIO pseudo-device on `vm` and a container that uses it.
    pub fn for_vm(vm: &VmFd) -> Result<Arc<Self>, KernelOpenError> {
        let mut request = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let fd = vm
            .create_device(&mut request)
            .map_err(|e| KernelOpenError::Host {
                bdf: "VFIO".into(),
                op: "creating KVM's VFIO device (KVM_CREATE_DEVICE)",
                detail: e.to_string(),
            })?;
        Ok(Self::with_kvm_device(fd))
    }

    /// A container whose sysfs checks read `sysfs_root` and `dev_root` (tests use fake
    /// trees; the ioctls always use the real /dev/vfio).
    pub fn with_roots(sysfs_root: &Path, dev_root: &Path, kvm_vfio: Option<DeviceFd>) -> Arc<Self> {
        Arc::new(KernelVfio {
            sysfs_root: sysfs_root.to_path_buf(),
            dev_root: dev_root.to_path_buf(),
            state: Mutex::new(State {
                kvm_device: kvm_vfio.map(VfioDeviceFd::new_from_kvm),
                container: None,
                groups: HashMap::new(),
                open: HashSet::new(),
                dma: DmaMappings::default(),
            }),
            next_owner: AtomicU64::new(CONTAINER_OWNER + 1),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent bookkeeping behind
        // (every update is a single insert or remove), so carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the device at `path` (its sysfs path, e.g. `/sys/bus/pci/devices/0000:01:00.0`,
    /// or its PCI address): checks sysfs, attaches its group to the container (creating the
    /// container first if needed), and reads its regions and interrupts.
    pub fn open(self: &Arc<Self>, path: &str) -> Result<VfioKernelDevice, KernelOpenError> {
        let dev = sysfs::inspect_device(&self.sysfs_root, path)?;
        let mut st = self.state();
        if st.open.contains(&dev.bdf) {
            return Err(KernelOpenError::DeviceBusy { bdf: dev.bdf });
        }
        let held = st.groups.contains_key(&dev.group);
        sysfs::check_nodes(&self.dev_root, &dev, held)?;
        let container = self.container(&mut st, &dev)?;

        let before_type1 = AttachFacts::read_param(&self.sysfs_root, Some(IommuBackend::Type1));
        let before_iommufd = AttachFacts::read_param(&self.sysfs_root, Some(IommuBackend::Iommufd));
        let ops: Arc<dyn VfioOps> = container;
        let opened = VfioDevice::new(&dev.path, ops, false);
        // vfio-ioctls drops the errno of VFIO_GROUP_SET_CONTAINER; nothing between the failed
        // ioctl and here makes a failing system call, so it is still in errno.
        let errno = io::Error::last_os_error();
        let device = opened.map_err(|e| self.open_error(e, errno, &dev))?;

        let isolation = match st.groups.get(&dev.group) {
            Some(g) => g.isolation.clone(),
            None => {
                let backend = IommuBackend::of_legacy_container(&self.sysfs_root);
                let facts = AttachFacts {
                    group: dev.group,
                    backend,
                    unsafe_before: match backend {
                        Some(IommuBackend::Iommufd) => before_iommufd,
                        _ => before_type1,
                    },
                    unsafe_after: AttachFacts::read_param(&self.sysfs_root, backend),
                };
                isolation::decide(&facts)
            }
        };
        let owner = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let opened =
            VfioKernelDevice::load(Arc::clone(self), owner, &dev, device, isolation.clone())?;
        log::info!(
            "vfio: {} (group {}, driver {}) opened; {}",
            dev.bdf,
            dev.group,
            dev.driver,
            isolation.reason
        );
        st.groups
            .entry(dev.group)
            .or_insert(HeldGroup {
                devices: 0,
                isolation,
            })
            .devices += 1;
        st.open.insert(dev.bdf);
        Ok(opened)
    }

    /// The container, opened now if this is the first device.
    fn container(
        &self,
        st: &mut State,
        dev: &HostDevice,
    ) -> Result<Arc<VfioContainer>, KernelOpenError> {
        if let Some(c) = &st.container {
            return Ok(Arc::clone(c));
        }
        let kvm = match &st.kvm_device {
            Some(d) => Some(Arc::new(d.try_clone().map_err(|e| {
                KernelOpenError::Host {
                    bdf: dev.bdf.clone(),
                    op: "duplicating KVM's VFIO device fd",
                    detail: e.to_string(),
                }
            })?)),
            None => None,
        };
        let container = Arc::new(VfioContainer::new(kvm).map_err(|e| match e {
            VfioError::OpenContainer(io) => node_error(&io, "/dev/vfio/vfio", None, &dev.bdf),
            other => KernelOpenError::Host {
                bdf: dev.bdf.clone(),
                op: "opening the VFIO container",
                detail: format!(
                    "{other}: the host's VFIO must offer the type1v2 IOMMU (vfio_iommu_type1)"
                ),
            },
        })?);
        st.kvm_device = None;
        st.container = Some(Arc::clone(&container));
        Ok(container)
    }

    /// Turns what vfio-ioctls said about opening `dev` into an instruction for the user.
    fn open_error(&self, e: VfioError, errno: io::Error, dev: &HostDevice) -> KernelOpenError {
        let group = dev.group;
        let bdf = dev.bdf.clone();
        let host = |op: &'static str, detail: String| KernelOpenError::Host {
            bdf: bdf.clone(),
            op,
            detail,
        };
        match e {
            VfioError::OpenGroup(io, _) => {
                node_error(&io, &format!("/dev/vfio/{group}"), Some(group), &bdf)
            }
            VfioError::GroupViable => {
                let fresh = sysfs::inspect_device(&self.sysfs_root, &dev.path.to_string_lossy());
                match fresh {
                    Err(err @ KernelOpenError::GroupNotViable { .. }) => err,
                    _ => KernelOpenError::GroupNotViable {
                        group,
                        bdf,
                        blockers: "a member bound to a host driver (the kernel says so; \
                                   sysfs showed none when checked)"
                            .into(),
                    },
                }
            }
            VfioError::ContainerSetIOMMU(err) if err.errno() == libc::EPERM => {
                KernelOpenError::UnsafeInterrupts { group, bdf }
            }
            VfioError::ContainerSetIOMMU(err) => KernelOpenError::AttachRefused {
                group,
                bdf,
                detail: format!("VFIO_SET_IOMMU: {err}"),
            },
            VfioError::GroupSetContainer if errno.raw_os_error() == Some(libc::EPERM) => {
                KernelOpenError::UnsafeInterrupts { group, bdf }
            }
            VfioError::GroupSetContainer => KernelOpenError::AttachRefused {
                group,
                bdf,
                detail: format!("VFIO_GROUP_SET_CONTAINER: {errno}"),
            },
            VfioError::GroupGetDeviceFD(err) if err.errno() == libc::EBUSY => {
                KernelOpenError::DeviceBusy { bdf }
            }
            VfioError::SetDeviceAttr(err) => host(
                "registering the group with KVM's VFIO device (KVM_DEV_VFIO_FILE_ADD)",
                err.to_string(),
            ),
            other => host("opening the VFIO device", other.to_string()),
        }
    }

    /// Maps `region` of guest RAM for every device of the container (owned by the container
    /// itself, not by a device). Needs at least one device open: the container has no IOMMU
    /// before its first group. Mapping an identical range again is a no-op.
    pub fn dma_map(&self, region: &DmaRegion) -> Result<(), BackendError> {
        self.claim(CONTAINER_OWNER, region)
    }

    /// Removes a mapping made by [`KernelVfio::dma_map`] (kept while a device still
    /// claims the same range).
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), BackendError> {
        self.release(CONTAINER_OWNER, iova, size)
    }

    /// Whether a DMA mapping of exactly `[iova, iova + size)` exists.
    pub fn dma_mapped(&self, iova: u64, size: u64) -> bool {
        self.state().dma.is_mapped(iova, size)
    }

    /// Maps `region` on behalf of `owner` (a no-op when already mapped identically).
    pub(crate) fn claim(&self, owner: Owner, region: &DmaRegion) -> Result<(), BackendError> {
        self.claim_with(owner, region, true, true)
    }

    /// [`KernelVfio::claim`] with the device allowed to read (`read`) and write (`write`)
    /// the region. Identical claims share the first mapping and its permissions (all
    /// devices of the container share one I/O address space).
    pub(crate) fn claim_with(
        &self,
        owner: Owner,
        region: &DmaRegion,
        read: bool,
        write: bool,
    ) -> Result<(), BackendError> {
        const OP: &str = "VFIO_IOMMU_MAP_DMA";
        let mut st = self.state();
        let container = st.container.clone().ok_or(BackendError::Invalid {
            op: OP,
            what: "no device is attached to the VFIO container yet".into(),
        })?;
        let size = usize::try_from(region.size).map_err(|_| BackendError::Invalid {
            op: OP,
            what: format!("size {:#x} too large", region.size),
        })?;
        let action = st
            .dma
            .claim(owner, region.iova, region.size, region.host_addr)
            .map_err(|c| BackendError::Invalid {
                op: OP,
                what: format!("[{:#x}, +{:#x}): {c}", region.iova, region.size),
            })?;
        if action == Action::Nothing {
            return Ok(());
        }
        if read && write {
            // SAFETY: a DmaRegion is guest RAM (the trait's contract): the VMM keeps
            // `[host_addr, host_addr + size)` mapped for the VM's lifetime and touches it only
            // as guest memory (volatile accesses, never Rust references held across device
            // DMA). The kernel pins the pages, so the device never reaches memory outside them.
            let mapped =
                unsafe { container.vfio_dma_map(region.iova, size, region.host_addr as *mut u8) };
            mapped.map_err(|e| dma_error(OP, e))?;
        } else {
            let request = super::ioctl::dma_map_request(
                region.iova,
                region.size,
                region.host_addr,
                read,
                write,
            );
            // SAFETY: as above: the region is guest RAM kept mapped for the VM's lifetime.
            unsafe { super::ioctl::map_dma(&*container, &request) }
                .map_err(|source| BackendError::Io { op: OP, source })?;
        }
        st.dma
            .commit_map(owner, region.iova, region.size, region.host_addr);
        Ok(())
    }

    /// Drops `owner`'s claim on `[iova, iova + size)`, unmapping it if it was the last.
    pub(crate) fn release(&self, owner: Owner, iova: u64, size: u64) -> Result<(), BackendError> {
        const OP: &str = "VFIO_IOMMU_UNMAP_DMA";
        let mut st = self.state();
        let action = st
            .dma
            .release(owner, iova, size)
            .map_err(|c| BackendError::Invalid {
                op: OP,
                what: format!("[{iova:#x}, +{size:#x}): {c}"),
            })?;
        if action == Action::Nothing {
            return Ok(());
        }
        let container = st.container.clone().ok_or(BackendError::Invalid {
            op: OP,
            what: "the VFIO container is gone".into(),
        })?;
        let size_usize = usize::try_from(size).map_err(|_| BackendError::Invalid {
            op: OP,
            what: format!("size {size:#x} too large"),
        })?;
        container
            .vfio_dma_unmap(iova, size_usize)
            .map_err(|e| dma_error(OP, e))?;
        st.dma.commit_unmap(iova);
        Ok(())
    }

    /// Releases every DMA claim of `owner` (a device closing).
    pub(crate) fn release_all(&self, owner: Owner) {
        let claims = self.state().dma.owned_by(owner);
        for (iova, size) in claims {
            if let Err(e) = self.release(owner, iova, size) {
                log::warn!("vfio: releasing DMA mapping at {iova:#x}: {e}");
            }
        }
    }

    /// Device `bdf` of `group` was closed (after its vfio-ioctls device was dropped).
    pub(crate) fn device_closed(&self, bdf: &str, group: u32) {
        let mut st = self.state();
        st.open.remove(bdf);
        if let Some(g) = st.groups.get_mut(&group) {
            g.devices = g.devices.saturating_sub(1);
            if g.devices == 0 {
                st.groups.remove(&group);
            }
        }
        if st.groups.is_empty() && !st.dma.is_empty() {
            // The kernel tears the container's IOMMU down with its last group, mappings
            // included; they are made again after the next device attaches.
            log::info!(
                "vfio: last device closed; the container's {} DMA mappings are gone",
                st.dma.len()
            );
            st.dma = DmaMappings::default();
        }
    }
}

/// An error opening a VFIO node, as an instruction.
fn node_error(io: &io::Error, shown: &str, group: Option<u32>, bdf: &str) -> KernelOpenError {
    match (io.kind(), io.raw_os_error(), group) {
        (io::ErrorKind::NotFound, _, _) => KernelOpenError::NodeMissing {
            path: shown.to_string(),
        },
        (io::ErrorKind::PermissionDenied, _, _) => KernelOpenError::NoAccess {
            path: shown.to_string(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            uid: unsafe { libc::geteuid() },
        },
        (_, Some(libc::EBUSY), Some(group)) => KernelOpenError::GroupBusy {
            group,
            bdf: bdf.to_string(),
        },
        _ => KernelOpenError::Host {
            bdf: bdf.to_string(),
            op: "opening a VFIO node",
            detail: format!("{shown}: {io}"),
        },
    }
}

/// A failed DMA (un)map as a backend error, with a hint for the usual cause.
fn dma_error(op: &'static str, e: VfioError) -> BackendError {
    let errno = match &e {
        VfioError::IommuDmaMap(s) | VfioError::IommuDmaUnmap(s) => Some(s.errno()),
        _ => None,
    };
    match errno {
        Some(libc::ENOMEM) => BackendError::Io {
            op: "VFIO_IOMMU_MAP_DMA (pins guest RAM: the locked-memory limit, ulimit -l, \
                 must cover it)",
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        },
        Some(n) => BackendError::Io {
            op,
            source: io::Error::from_raw_os_error(n),
        },
        None => BackendError::Invalid {
            op,
            what: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sysfs::fake::FakeHost;

    #[test]
    fn open_stops_at_the_first_sysfs_problem() {
        let h = FakeHost::new();
        h.add_pci("0000:01:00.0", Some("nvme"), Some(9));
        let vfio = KernelVfio::with_roots(&h.sys(), &h.dev(), None);
        let e = vfio.open("0000:01:00.0").unwrap_err();
        assert!(matches!(e, KernelOpenError::NotBound { .. }), "{e}");
        let e = vfio.open("/nonexistent/0000:01:00.0").unwrap_err();
        assert!(matches!(e, KernelOpenError::NotFound { .. }), "{e}");
    }

    #[test]
    fn open_without_vfio_nodes_says_so() {
        let h = FakeHost::new();
        h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(9));
        let vfio = KernelVfio::with_roots(&h.sys(), &h.dev(), None);
        let e = vfio.open("0000:01:00.0").unwrap_err();
        assert_eq!(
            e,
            KernelOpenError::NodeMissing {
                path: "/dev/vfio/vfio".into()
            }
        );
    }

    /// The fake tree passes every check; the real /dev/vfio/vfio then decides. On this
    /// project's build machines it does not exist, and the error names it.
    #[test]
    fn container_errors_name_the_real_node() {
        let h = FakeHost::new();
        h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(9));
        h.add_node("vfio");
        h.add_node("9");
        let vfio = KernelVfio::with_roots(&h.sys(), &h.dev(), None);
        match vfio.open("0000:01:00.0") {
            Err(KernelOpenError::NodeMissing { path }) => {
                assert!(!Path::new("/dev/vfio/vfio").exists());
                assert_eq!(path, "/dev/vfio/vfio");
            }
            Err(e) => assert!(Path::new("/dev/vfio/vfio").exists(), "{e}"),
            Ok(_) => panic!("a fake device cannot open"),
        }
    }

    #[test]
    fn dma_needs_an_attached_group() {
        let vfio =
            KernelVfio::with_roots(Path::new("/nonexistent"), Path::new("/nonexistent"), None);
        let region = DmaRegion {
            iova: 0,
            size: 0x1000,
            host_addr: 0x7000_0000_0000,
            fd: -1,
            fd_offset: 0,
        };
        let e = vfio.dma_map(&region).unwrap_err();
        assert!(e.to_string().contains("no device is attached"), "{e}");
        assert!(!vfio.dma_mapped(0, 0x1000));
        assert!(vfio.dma_unmap(0, 0x1000).is_err());
    }

    #[test]
    fn error_mapping() {
        let h = FakeHost::new();
        h.add_pci("0000:01:00.0", Some("vfio-pci"), Some(9));
        let vfio = KernelVfio::with_roots(&h.sys(), &h.dev(), None);
        let dev = sysfs::inspect_device(&h.sys(), "0000:01:00.0").unwrap();
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let sys = |n| vmm_sys_util::errno::Error::new(n);
        assert_eq!(
            vfio.open_error(
                VfioError::ContainerSetIOMMU(sys(libc::EPERM)),
                eperm(),
                &dev
            ),
            KernelOpenError::UnsafeInterrupts {
                group: 9,
                bdf: "0000:01:00.0".into()
            }
        );
        assert!(matches!(
            vfio.open_error(VfioError::GroupSetContainer, eperm(), &dev),
            KernelOpenError::UnsafeInterrupts { group: 9, .. }
        ));
        let e = vfio.open_error(
            VfioError::GroupSetContainer,
            io::Error::from_raw_os_error(libc::EINVAL),
            &dev,
        );
        assert!(matches!(e, KernelOpenError::AttachRefused { .. }), "{e}");
        assert!(e.to_string().contains("dmesg"));
        assert_eq!(
            vfio.open_error(
                VfioError::OpenGroup(io::Error::from_raw_os_error(libc::EBUSY), "9".into()),
                eperm(),
                &dev
            ),
            KernelOpenError::GroupBusy {
                group: 9,
                bdf: "0000:01:00.0".into()
            }
        );
        assert!(matches!(
            vfio.open_error(
                VfioError::OpenGroup(io::Error::from_raw_os_error(libc::EACCES), "9".into()),
                eperm(),
                &dev
            ),
            KernelOpenError::NoAccess { .. }
        ));
        assert!(matches!(
            vfio.open_error(VfioError::GroupGetDeviceFD(sys(libc::EBUSY)), eperm(), &dev),
            KernelOpenError::DeviceBusy { .. }
        ));
        // The kernel says not viable although sysfs showed nothing: still an instruction.
        let e = vfio.open_error(VfioError::GroupViable, eperm(), &dev);
        assert!(
            matches!(e, KernelOpenError::GroupNotViable { group: 9, .. }),
            "{e}"
        );
        // Now sysfs shows the culprit.
        h.add_pci("0000:01:00.1", Some("snd_hda_intel"), Some(9));
        let e = vfio.open_error(VfioError::GroupViable, eperm(), &dev);
        assert!(
            e.to_string()
                .contains("0000:01:00.1 (bound to snd_hda_intel)"),
            "{e}"
        );
    }
}
