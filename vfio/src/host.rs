//! Whether the host can post interrupts that arrive through KVM irqfds (IRQ bypass), read
//! from sysfs.
//!
//! KVM posts a passthrough interrupt (the host IOMMU writes it into the vCPU's
//! posted-interrupt descriptor or AVIC backing page, no host IRQ handler, no VM exit) when
//! the device's eventfd is both its VFIO trigger and a KVM irqfd, the route is postable
//! (notes/kvm-irq.md), and the host has posting: APICv/AVIC on, and an interrupt-remapping
//! IOMMU with posting in use (`kvm_arch_has_irq_bypass()`). This module reports that last
//! part, from what sysfs shows:
//!
//! * Linux 6.16 and later: `/sys/module/kvm_{intel,amd}/parameters/enable_device_posted_irqs`
//!   is KVM's own verdict (it is cleared at load unless APICv/AVIC and the IOMMU's posting
//!   capability are both there).
//! * Before: Intel: `kvm_intel.enable_apicv` (cleared by KVM when the CPU lacks APICv), every
//!   VT-d unit's CAP register (`/sys/class/iommu/dmar*/intel-iommu/cap`, `%llx`) with PI,
//!   bit 59, and interrupt remapping in use. AMD: `kvm_amd.avic` (cleared by KVM when
//!   unsupported), the IOMMU's extended features (`/sys/class/iommu/ivhd*/amd-iommu/features`:
//!   `%llx` of EFR on old kernels, `%llx:%llx` of EFR2 and EFR, or of EFR and EFR2 since
//!   6.7) with GASup (bit 7) and GAMSup = vAPIC (bit 21), and interrupt remapping in use.
//! * Interrupt remapping in use: some IRQ chip in `/sys/kernel/irq/*/chip_name` is a
//!   remapping one (`IR-IO-APIC`, `IR-PCI-MSI...`, `INTEL-IR`, `AMD-IR`).
//!
//! What sysfs cannot show is said in the reason: `intremap=nopost` on Intel, and on AMD
//! whether the IOMMU runs interrupt remapping in vAPIC mode (`amd_iommu_intr=legacy` turns
//! it off; the kernel log says "AMD-Vi: Virtual APIC enabled").

use std::fs;
use std::path::Path;

use crate::kernel::sysfs::{read_attr, read_bool_param};

/// CAP register bit of VT-d: Posted Interrupts Support.
pub const VTD_CAP_PI_BIT: u32 = 59;
/// AMD IOMMU extended feature bit: GASup (guest virtual APIC interrupt remapping format).
pub const AMD_EFR_GA_BIT: u32 = 7;
/// AMD IOMMU extended feature bit: GAMSup = 1, guest virtual APIC mode (posting).
pub const AMD_EFR_GAM_VAPIC_BIT: u32 = 21;
/// KVM's own verdict on device posting (Linux 6.16 and later).
const DEVICE_POSTED_PARAM: &str = "enable_device_posted_irqs";

/// Whether the host can post interrupts delivered through KVM irqfds, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPosting {
    /// Posting is available (as far as sysfs can tell).
    pub available: bool,
    /// One sentence naming the facts read, and what could not be determined.
    pub reason: String,
}

/// The host's KVM flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmVendor {
    /// `kvm_intel`: VMX, APICv, VT-d.
    Intel,
    /// `kvm_amd`: SVM, AVIC, AMD-Vi.
    Amd,
}

impl KvmVendor {
    fn module(self) -> &'static str {
        match self {
            KvmVendor::Intel => "kvm_intel",
            KvmVendor::Amd => "kvm_amd",
        }
    }

    fn apicv_param(self) -> &'static str {
        match self {
            KvmVendor::Intel => "enable_apicv",
            KvmVendor::Amd => "avic",
        }
    }

    fn unit_prefix(self) -> &'static str {
        match self {
            KvmVendor::Intel => "dmar",
            KvmVendor::Amd => "ivhd",
        }
    }

    fn posting_feature(self) -> &'static str {
        match self {
            KvmVendor::Intel => "posted interrupts (CAP.PI, bit 59)",
            KvmVendor::Amd => "GA with vAPIC mode (EFR GASup bit 7, GAMSup bit 21)",
        }
    }
}

/// One host IOMMU unit and whether it can post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuUnit {
    /// Its name in /sys/class/iommu (`dmar0`, `ivhd0`).
    pub name: String,
    /// It has the posting feature (`None`: its attribute could not be read or parsed).
    pub posting: Option<bool>,
}

/// What sysfs says about posting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostingFacts {
    /// Which vendor module of KVM is loaded.
    pub vendor: Option<KvmVendor>,
    /// `enable_device_posted_irqs` of that module (Linux 6.16+).
    pub device_posted_irqs: Option<bool>,
    /// `enable_apicv` (Intel) or `avic` (AMD).
    pub apicv: Option<bool>,
    /// The vendor's IOMMU units.
    pub units: Vec<IommuUnit>,
    /// Some IRQ chip is an interrupt-remapping one (`None`: /sys/kernel/irq unreadable).
    pub ir_in_use: Option<bool>,
}

/// Whether the host can post interrupts delivered through KVM irqfds, read under
/// `sysfs_root` (normally `/sys`).
pub fn host_posting(sysfs_root: &Path) -> HostPosting {
    decide(&PostingFacts::read(sysfs_root))
}

/// Parses a hexadecimal sysfs number (`%llx`, no `0x`).
fn hex(text: &str) -> Option<u64> {
    let t = text.trim();
    u64::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

/// Whether a VT-d CAP register value (the `cap` attribute) has posted interrupts.
pub fn vtd_cap_has_pi(cap_text: &str) -> Option<bool> {
    hex(cap_text).map(|cap| cap >> VTD_CAP_PI_BIT & 1 == 1)
}

/// Whether an AMD IOMMU `features` attribute shows GA with vAPIC mode. The attribute is
/// `EFR`, `EFR2:EFR` or `EFR:EFR2` depending on the kernel, so each half is checked for
/// both bits together (EFR2 defines neither bit 21 nor a GA pair).
pub fn amd_features_have_ga_vapic(text: &str) -> Option<bool> {
    let mut any = false;
    for half in text.trim().split(':') {
        let v = hex(half)?;
        any |= v >> AMD_EFR_GA_BIT & 1 == 1 && v >> AMD_EFR_GAM_VAPIC_BIT & 1 == 1;
    }
    Some(any)
}

/// Whether an IRQ chip name belongs to an interrupt-remapping domain.
pub fn is_remapping_chip(name: &str) -> bool {
    name.starts_with("IR-") || name == "INTEL-IR" || name == "AMD-IR"
}

impl PostingFacts {
    /// Reads the facts under `sysfs_root`.
    pub fn read(sysfs_root: &Path) -> Self {
        let vendor = [KvmVendor::Intel, KvmVendor::Amd]
            .into_iter()
            .find(|v| sysfs_root.join("module").join(v.module()).is_dir());
        let Some(v) = vendor else {
            return PostingFacts {
                ir_in_use: ir_in_use(sysfs_root),
                ..Default::default()
            };
        };
        PostingFacts {
            vendor,
            device_posted_irqs: read_bool_param(sysfs_root, v.module(), DEVICE_POSTED_PARAM),
            apicv: read_bool_param(sysfs_root, v.module(), v.apicv_param()),
            units: iommu_units(sysfs_root, v),
            ir_in_use: ir_in_use(sysfs_root),
        }
    }
}

/// The vendor's IOMMU units in /sys/class/iommu, sorted by name.
fn iommu_units(sysfs_root: &Path, vendor: KvmVendor) -> Vec<IommuUnit> {
    let Ok(entries) = fs::read_dir(sysfs_root.join("class/iommu")) else {
        return Vec::new();
    };
    let mut units: Vec<IommuUnit> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !name.starts_with(vendor.unit_prefix()) {
                return None;
            }
            let posting = match vendor {
                KvmVendor::Intel => read_attr(&e.path().join("intel-iommu/cap"))
                    .ok()
                    .and_then(|t| vtd_cap_has_pi(&t)),
                KvmVendor::Amd => read_attr(&e.path().join("amd-iommu/features"))
                    .ok()
                    .and_then(|t| amd_features_have_ga_vapic(&t)),
            };
            Some(IommuUnit { name, posting })
        })
        .collect();
    units.sort_by(|a, b| a.name.cmp(&b.name));
    units
}

/// Whether some IRQ chip of the host is a remapping one.
fn ir_in_use(sysfs_root: &Path) -> Option<bool> {
    let entries = fs::read_dir(sysfs_root.join("kernel/irq")).ok()?;
    Some(
        entries
            .filter_map(|e| e.ok())
            .any(|e| read_attr(&e.path().join("chip_name")).is_ok_and(|n| is_remapping_chip(&n))),
    )
}

/// The verdict from the facts.
pub fn decide(f: &PostingFacts) -> HostPosting {
    let Some(v) = f.vendor else {
        return HostPosting {
            available: false,
            reason: "neither kvm_intel nor kvm_amd is loaded (/sys/module): KVM cannot post \
                     interrupts"
                .into(),
        };
    };
    let module = v.module();
    let (blockers, unknowns) = blockers(f, v);
    match f.device_posted_irqs {
        Some(true) => HostPosting {
            available: true,
            reason: format!(
                "{module}.{DEVICE_POSTED_PARAM}=Y: KVM found {} and a posting IOMMU and posts \
                 device interrupts",
                v.apicv_param()
            ),
        },
        Some(false) => HostPosting {
            available: false,
            reason: format!(
                "{module}.{DEVICE_POSTED_PARAM}=N: KVM will not post device interrupts ({})",
                if blockers.is_empty() {
                    "turned off, or the IOMMU does not post (e.g. intremap=nopost or \
                     amd_iommu_intr=legacy)"
                        .to_string()
                } else {
                    blockers.join("; ")
                }
            ),
        },
        None if !blockers.is_empty() => HostPosting {
            available: false,
            reason: format!("{}: KVM cannot post interrupts", blockers.join("; ")),
        },
        None if !unknowns.is_empty() => HostPosting {
            available: false,
            reason: format!(
                "cannot tell whether the host posts interrupts: {}",
                unknowns.join("; ")
            ),
        },
        None => HostPosting {
            available: true,
            reason: match v {
                KvmVendor::Intel => format!(
                    "kvm_intel.enable_apicv=Y, every VT-d unit ({}) has {} and interrupt \
                     remapping is in use: KVM can post interrupts (unless the host booted with \
                     intremap=nopost, which sysfs does not show)",
                    unit_names(f),
                    v.posting_feature()
                ),
                KvmVendor::Amd => format!(
                    "kvm_amd.avic=Y, the AMD IOMMU ({}) has {} and interrupt remapping is in \
                     use: KVM can post interrupts, provided the IOMMU runs remapping in vAPIC \
                     mode (the default; amd_iommu_intr=legacy turns it off and sysfs does not \
                     show it; the kernel log says \"AMD-Vi: Virtual APIC enabled\")",
                    unit_names(f),
                    v.posting_feature()
                ),
            },
        },
    }
}

fn unit_names(f: &PostingFacts) -> String {
    f.units
        .iter()
        .map(|u| u.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What rules posting out, and what could not be read.
fn blockers(f: &PostingFacts, v: KvmVendor) -> (Vec<String>, Vec<String>) {
    let module = v.module();
    let apicv = v.apicv_param();
    let mut no = Vec::new();
    let mut unknown = Vec::new();
    match f.apicv {
        Some(true) => {}
        Some(false) => no.push(format!("{module}.{apicv}=N")),
        None => unknown.push(format!(
            "/sys/module/{module}/parameters/{apicv} unreadable"
        )),
    }
    if f.units.is_empty() {
        no.push(format!(
            "no {} unit in /sys/class/iommu (host IOMMU off)",
            v.unit_prefix()
        ));
    }
    for u in &f.units {
        match u.posting {
            Some(true) => {}
            Some(false) => no.push(format!("{} lacks {}", u.name, v.posting_feature())),
            None => unknown.push(format!("{}'s capabilities unreadable", u.name)),
        }
    }
    match f.ir_in_use {
        Some(true) => {}
        Some(false) => no.push(
            "interrupt remapping is not in use (no remapping IRQ chip in /sys/kernel/irq)".into(),
        ),
        None => unknown.push("/sys/kernel/irq unreadable (interrupt remapping unknown)".into()),
    }
    (no, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sysfs::fake::FakeHost;

    /// A CAP register of a server VT-d unit with PI (bit 59) set.
    const CAP_PI: &str = "8d2078c106f0466";
    /// A client VT-d unit without PI.
    const CAP_NO_PI: &str = "1c0000c40660462";
    /// EFR of a Zen 3 IOMMU: GASup (7) and GAMSup vAPIC (21) among others.
    const EFR_GA: u64 = 0x0000_0000_0020_0080 | 0x5a_0000_0007;

    fn intel_host(cap: &str, apicv: &str, ir: bool) -> FakeHost {
        let h = FakeHost::new();
        h.write("module/kvm_intel/parameters/enable_apicv", apicv);
        h.write("class/iommu/dmar0/intel-iommu/cap", &format!("{cap}\n"));
        h.write("class/iommu/dmar1/intel-iommu/cap", &format!("{CAP_PI}\n"));
        h.write("kernel/irq/0/chip_name", "IR-IO-APIC\n");
        h.write(
            "kernel/irq/120/chip_name",
            if ir {
                "IR-PCI-MSIX-0000:01:00.0\n"
            } else {
                "PCI-MSI\n"
            },
        );
        if !ir {
            h.write("kernel/irq/0/chip_name", "IO-APIC\n");
        }
        h
    }

    #[test]
    fn parsers() {
        assert_eq!(vtd_cap_has_pi(CAP_PI), Some(true));
        assert_eq!(vtd_cap_has_pi(CAP_NO_PI), Some(false));
        assert_eq!(vtd_cap_has_pi("zz"), None);
        let efr = format!("{EFR_GA:x}");
        assert_eq!(amd_features_have_ga_vapic(&efr), Some(true));
        // Both orders of the two-value format.
        assert_eq!(
            amd_features_have_ga_vapic(&format!("{efr}:0\n")),
            Some(true)
        );
        assert_eq!(amd_features_have_ga_vapic(&format!("a0:{efr}")), Some(true));
        // GASup alone (legacy GA) does not post; EFR2's bit 7 (SNPAVICSup) alone neither.
        assert_eq!(amd_features_have_ga_vapic("80"), Some(false));
        assert_eq!(amd_features_have_ga_vapic("80:80"), Some(false));
        assert_eq!(amd_features_have_ga_vapic("x:1"), None);
        assert!(is_remapping_chip("IR-PCI-MSI"));
        assert!(is_remapping_chip("AMD-IR"));
        assert!(!is_remapping_chip("PCI-MSIX-0000:00:14.0"));
    }

    #[test]
    fn intel_with_apicv_pi_and_ir_posts() {
        let h = intel_host(CAP_PI, "Y\n", true);
        let p = host_posting(&h.sys());
        assert!(p.available, "{}", p.reason);
        assert!(p.reason.contains("dmar0, dmar1"), "{}", p.reason);
        assert!(p.reason.contains("intremap=nopost"));
    }

    #[test]
    fn intel_blockers_are_named() {
        let p = host_posting(&intel_host(CAP_NO_PI, "Y\n", true).sys());
        assert!(!p.available);
        assert!(
            p.reason.starts_with("dmar0 lacks posted interrupts"),
            "{}",
            p.reason
        );
        let p = host_posting(&intel_host(CAP_PI, "N\n", false).sys());
        assert!(!p.available);
        assert!(
            p.reason.contains("kvm_intel.enable_apicv=N"),
            "{}",
            p.reason
        );
        assert!(
            p.reason.contains("interrupt remapping is not in use"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn kvm_verdict_wins_when_present() {
        let h = intel_host(CAP_NO_PI, "Y\n", true);
        h.write(
            "module/kvm_intel/parameters/enable_device_posted_irqs",
            "N\n",
        );
        let p = host_posting(&h.sys());
        assert!(!p.available);
        assert!(
            p.reason
                .starts_with("kvm_intel.enable_device_posted_irqs=N")
                && p.reason.contains("dmar0 lacks"),
            "{}",
            p.reason
        );
        h.write(
            "module/kvm_intel/parameters/enable_device_posted_irqs",
            "Y\n",
        );
        let p = host_posting(&h.sys());
        assert!(p.available, "{}", p.reason);
    }

    #[test]
    fn amd_with_avic_ga_and_ir_posts_with_a_caveat() {
        let h = FakeHost::new();
        h.write("module/kvm_amd/parameters/avic", "Y\n");
        h.write(
            "class/iommu/ivhd0/amd-iommu/features",
            &format!("{EFR_GA:x}:0\n"),
        );
        h.write("kernel/irq/24/chip_name", "AMD-IR\n");
        let p = host_posting(&h.sys());
        assert!(p.available, "{}", p.reason);
        assert!(p.reason.contains("amd_iommu_intr=legacy"), "{}", p.reason);
        // AVIC off (the default before it was enabled by default on newer parts).
        h.write("module/kvm_amd/parameters/avic", "N\n");
        let p = host_posting(&h.sys());
        assert!(!p.available);
        assert!(p.reason.contains("kvm_amd.avic=N"), "{}", p.reason);
    }

    #[test]
    fn unknowns_are_said_honestly() {
        let h = FakeHost::new();
        let p = host_posting(&h.sys());
        assert!(!p.available);
        assert!(
            p.reason.contains("neither kvm_intel nor kvm_amd"),
            "{}",
            p.reason
        );

        let h = FakeHost::new();
        h.write("module/kvm_amd/parameters/avic", "Y\n");
        h.write("class/iommu/ivhd0/amd-iommu/features", "garbage\n");
        h.write("kernel/irq/24/chip_name", "AMD-IR\n");
        let p = host_posting(&h.sys());
        assert!(!p.available);
        assert!(p.reason.starts_with("cannot tell"), "{}", p.reason);
        assert!(
            p.reason.contains("ivhd0's capabilities unreadable"),
            "{}",
            p.reason
        );

        // No IOMMU at all (this project's build machines).
        let h = FakeHost::new();
        h.write("module/kvm_amd/parameters/avic", "N\n");
        let p = host_posting(&h.sys());
        assert!(!p.available);
        assert!(p.reason.contains("no ivhd unit"), "{}", p.reason);
    }

    #[test]
    fn this_host_answers_without_panicking() {
        let p = host_posting(Path::new("/sys"));
        assert!(!p.reason.is_empty());
    }
}
