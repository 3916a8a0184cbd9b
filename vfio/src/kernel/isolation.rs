//! Whether the host isolates a kernel-VFIO device's MSIs, decided from what was read around
//! the attach of its IOMMU group.
//!
//! MSIX_MAPPABLE says nothing about it (vfio-pci sets it on every mappable MSI-X BAR). What
//! does is the attach itself: `vfio_iommu_type1` (and iommufd) refuse a group whose MSIs the
//! host cannot isolate unless `allow_unsafe_interrupts` is set. So a group attached while
//! that parameter read N, before and after the attach, has isolated MSIs (notes/vfio.md).

use std::path::Path;

use crate::backend::Isolation;

use super::sysfs::read_bool_param;

/// Module parameter that lets unisolated groups attach.
pub const UNSAFE_INTERRUPTS_PARAM: &str = "allow_unsafe_interrupts";

/// Which IOMMU back end attached the group (and so whose parameter counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuBackend {
    /// The legacy container's `vfio_iommu_type1`.
    Type1,
    /// iommufd (its own cdev path, or its emulation of /dev/vfio/vfio).
    Iommufd,
}

impl IommuBackend {
    /// The kernel module whose `allow_unsafe_interrupts` parameter applies.
    pub fn module(self) -> &'static str {
        match self {
            IommuBackend::Type1 => "vfio_iommu_type1",
            IommuBackend::Iommufd => "iommufd",
        }
    }

    /// The back end serving the legacy container on this host: `vfio_iommu_type1` when its
    /// module is present, iommufd's /dev/vfio/vfio emulation when only iommufd is (the two
    /// are exclusive kernel configurations); `None` when neither shows in sysfs.
    pub fn of_legacy_container(sysfs_root: &Path) -> Option<Self> {
        let module = |m: &str| sysfs_root.join("module").join(m).is_dir();
        if module(IommuBackend::Type1.module()) {
            Some(IommuBackend::Type1)
        } else if module(IommuBackend::Iommufd.module()) {
            Some(IommuBackend::Iommufd)
        } else {
            None
        }
    }
}

/// What was read around the attach of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachFacts {
    /// The group.
    pub group: u32,
    /// The back end that attached it, if known.
    pub backend: Option<IommuBackend>,
    /// `allow_unsafe_interrupts` just before the attach (`None`: unreadable, e.g. the module
    /// was not loaded yet).
    pub unsafe_before: Option<bool>,
    /// `allow_unsafe_interrupts` just after the attach.
    pub unsafe_after: Option<bool>,
}

impl AttachFacts {
    /// Reads the parameter of `backend` from `sysfs_root` (call before and after the attach).
    pub fn read_param(sysfs_root: &Path, backend: Option<IommuBackend>) -> Option<bool> {
        read_bool_param(sysfs_root, backend?.module(), UNSAFE_INTERRUPTS_PARAM)
    }
}

/// The isolation verdict for a group attached under `facts`.
///
/// Isolated only when the back end is known, the parameter read N after the attach, and it
/// did not read Y before it (unreadable before is fine: the module loads during the first
/// attach, with the value read after). Everything else is reported as not isolated, with
/// the reason.
pub fn decide(facts: &AttachFacts) -> Isolation {
    let group = facts.group;
    let Some(backend) = facts.backend else {
        return Isolation {
            isolated: false,
            reason: format!(
                "group {group} was attached by an IOMMU back end that sysfs does not show \
                 (neither vfio_iommu_type1 nor iommufd): the host may not isolate MSIs"
            ),
        };
    };
    let module = backend.module();
    let yn = |v: bool| if v { 'Y' } else { 'N' };
    match (facts.unsafe_before, facts.unsafe_after) {
        (Some(true), _) | (_, Some(true)) => Isolation {
            isolated: false,
            reason: format!(
                "{module} attached group {group} with {UNSAFE_INTERRUPTS_PARAM}=Y: \
                 the host may not isolate MSIs"
            ),
        },
        (before, Some(false)) => Isolation {
            isolated: true,
            reason: format!(
                "{module} attached group {group} with {UNSAFE_INTERRUPTS_PARAM}={}: \
                 the host remaps or isolates its MSIs",
                before.map_or('N', yn)
            ),
        },
        (_, None) => Isolation {
            isolated: false,
            reason: format!(
                "{module} attached group {group} but /sys/module/{module}/parameters/\
                 {UNSAFE_INTERRUPTS_PARAM} could not be read: the host may not isolate MSIs"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sysfs::fake::FakeHost;

    fn facts(before: Option<bool>, after: Option<bool>) -> AttachFacts {
        AttachFacts {
            group: 12,
            backend: Some(IommuBackend::Type1),
            unsafe_before: before,
            unsafe_after: after,
        }
    }

    #[test]
    fn attached_with_unsafe_interrupts_off_is_isolated() {
        let i = decide(&facts(Some(false), Some(false)));
        assert!(i.isolated);
        assert_eq!(
            i.reason,
            "vfio_iommu_type1 attached group 12 with allow_unsafe_interrupts=N: \
             the host remaps or isolates its MSIs"
        );
        // Module loaded by the attach itself: only the value after exists.
        assert!(decide(&facts(None, Some(false))).isolated);
    }

    #[test]
    fn unsafe_interrupts_on_at_any_point_is_not_isolated() {
        for (b, a) in [
            (Some(true), Some(true)),
            (Some(true), Some(false)),
            (Some(false), Some(true)),
            (None, Some(true)),
        ] {
            let i = decide(&facts(b, a));
            assert!(!i.isolated, "{b:?} {a:?}");
            assert!(
                i.reason.contains("allow_unsafe_interrupts=Y"),
                "{}",
                i.reason
            );
            assert!(i.reason.contains("may not isolate"));
        }
    }

    #[test]
    fn unknowns_are_not_isolated() {
        let i = decide(&facts(Some(false), None));
        assert!(!i.isolated);
        assert!(i.reason.contains("could not be read"), "{}", i.reason);
        let i = decide(&AttachFacts {
            backend: None,
            ..facts(Some(false), Some(false))
        });
        assert!(!i.isolated);
        let i = decide(&AttachFacts {
            backend: Some(IommuBackend::Iommufd),
            ..facts(Some(false), Some(false))
        });
        assert!(i.isolated);
        assert!(i.reason.starts_with("iommufd attached group 12"));
    }

    #[test]
    fn backend_and_parameter_from_sysfs() {
        let h = FakeHost::new();
        assert_eq!(IommuBackend::of_legacy_container(&h.sys()), None);
        h.write("module/iommufd/parameters/allow_unsafe_interrupts", "Y\n");
        assert_eq!(
            IommuBackend::of_legacy_container(&h.sys()),
            Some(IommuBackend::Iommufd)
        );
        h.write(
            "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
            "N\n",
        );
        let backend = IommuBackend::of_legacy_container(&h.sys());
        assert_eq!(backend, Some(IommuBackend::Type1));
        assert_eq!(AttachFacts::read_param(&h.sys(), backend), Some(false));
        assert_eq!(AttachFacts::read_param(&h.sys(), None), None);
    }
}
