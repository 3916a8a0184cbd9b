//! The `amd-ga` scenario's guest hypervisor bookkeeping: how a GA tag names a (VM, vCPU),
//! and the table its GA log handler looks tags up in.
//!
//! KVM (`arch/x86/kvm/svm/avic.c`) builds a tag as `(vm_id << 9) | vcpu_index`: 9 bits of
//! vCPU index, so a VM with more than 512 vCPUs cannot be named that way. This hypervisor
//! keeps KVM's layout for VMs up to 512 vCPUs and gives bigger VMs an explicit wider split,
//! told apart by bit 31, and checks at creation that a VM fits its layout:
//!
//! | layout | bit 31 | VM ID | vCPU index |
//! |---|---|---|---|
//! | [`Layout::Kvm`] | 0 | 30:9 (22 bits) | 8:0 (up to 512 vCPUs) |
//! | [`Layout::Wide`] | 1 | 30:12 (19 bits) | 11:0 (up to 4096 vCPUs) |
//!
//! The lookup hashes the VM ID into one of 256 buckets as KVM does (`hash_32(vm_id, 8)`:
//! multiply by the 32-bit golden ratio, keep the top 8 bits), then compares the *full* key,
//! layout and VM ID, of every VM in the bucket, and checks the vCPU index against the VM's
//! size: two VMs in one bucket, or a tag of one layout whose bits happen to decode as a VM
//! of the other, never resolve to the wrong vCPU.

use crate::report::Text;
use crate::text;

/// The layout selector.
const WIDE_BIT: u32 = 1 << 31;
/// KVM's layout: vCPU index bits and VM ID bits.
const KVM_INDEX_BITS: u32 = 9;
const KVM_VM_BITS: u32 = 22;
/// The wide layout.
const WIDE_INDEX_BITS: u32 = 12;
const WIDE_VM_BITS: u32 = 19;
/// Bucket bits (KVM's `SVM_VM_DATA_HASH_BITS`).
const BUCKET_BITS: u32 = 8;
/// Buckets.
pub const BUCKETS: usize = 1 << BUCKET_BITS;
/// The 32-bit golden ratio of Linux's `hash_32`.
const GOLDEN_RATIO_32: u32 = 0x61c8_8647;
/// Most VMs the table holds, and per bucket.
const MAX_VMS: usize = 8;
const BUCKET_SLOTS: usize = 4;

/// How a VM's tags are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// KVM's: 9-bit vCPU index.
    Kvm,
    /// 12-bit vCPU index, bit 31 set.
    Wide,
}

impl Layout {
    fn index_bits(self) -> u32 {
        match self {
            Layout::Kvm => KVM_INDEX_BITS,
            Layout::Wide => WIDE_INDEX_BITS,
        }
    }

    fn vm_bits(self) -> u32 {
        match self {
            Layout::Kvm => KVM_VM_BITS,
            Layout::Wide => WIDE_VM_BITS,
        }
    }

    fn selector(self) -> u32 {
        match self {
            Layout::Kvm => 0,
            Layout::Wide => WIDE_BIT,
        }
    }

    /// The layout a VM of `vcpus` vCPUs gets.
    fn for_vcpus(vcpus: u32) -> Layout {
        if vcpus <= 1 << KVM_INDEX_BITS {
            Layout::Kvm
        } else {
            Layout::Wide
        }
    }

    /// The layout a tag says it has.
    fn of_tag(tag: u32) -> Layout {
        if tag & WIDE_BIT != 0 {
            Layout::Wide
        } else {
            Layout::Kvm
        }
    }
}

/// KVM's bucket of a VM ID: `hash_32(vm_id, 8)`.
pub fn bucket(vm_id: u32) -> usize {
    (vm_id.wrapping_mul(GOLDEN_RATIO_32) >> (u32::BITS - BUCKET_BITS)) as usize
}

/// One VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vm {
    /// Its ID.
    pub id: u32,
    /// How its tags are laid out.
    pub layout: Layout,
    /// Its vCPU count.
    pub vcpus: u32,
}

/// What a tag resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuRef {
    /// The VM's ID.
    pub vm_id: u32,
    /// The vCPU index.
    pub vcpu: u32,
}

/// The VMs, hashed by ID.
pub struct TagTable {
    vms: [Option<Vm>; MAX_VMS],
    buckets: [[Option<u8>; BUCKET_SLOTS]; BUCKETS],
}

impl TagTable {
    /// An empty table.
    pub const fn new() -> TagTable {
        TagTable {
            vms: [None; MAX_VMS],
            buckets: [[None; BUCKET_SLOTS]; BUCKETS],
        }
    }

    /// Creates VM `id` with `vcpus` vCPUs; fails when the ID is taken, or does not fit the
    /// layout its size needs, or the table is full.
    pub fn create(&mut self, id: u32, vcpus: u32) -> Result<Vm, Text> {
        let layout = Layout::for_vcpus(vcpus);
        if id == 0 || id >> layout.vm_bits() != 0 || vcpus > 1 << layout.index_bits() {
            return Err(text!(
                "VM {} with {} vCPUs does not fit the {:?} tag layout",
                id,
                vcpus,
                layout
            ));
        }
        if self.vms.iter().flatten().any(|v| v.id == id) {
            return Err(text!("VM ID {} is taken", id));
        }
        let slot = self
            .vms
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| text!("more than {} VMs", MAX_VMS))?;
        let b = bucket(id);
        let entry = self.buckets[b]
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or_else(|| text!("bucket {} is full", b))?;
        let vm = Vm { id, layout, vcpus };
        self.vms[slot] = Some(vm);
        *entry = Some(slot as u8);
        Ok(vm)
    }

    /// The tag of `vm`'s vCPU `vcpu`.
    pub fn tag(&self, vm: &Vm, vcpu: u32) -> Result<u32, Text> {
        if vcpu >= vm.vcpus {
            return Err(text!("VM {} has no vCPU {}", vm.id, vcpu));
        }
        Ok(vm.layout.selector() | (vm.id << vm.layout.index_bits()) | vcpu)
    }

    /// Resolves `tag`: decodes it by the layout its bit 31 names, hashes the VM ID, and
    /// compares the full key of every VM in the bucket. `None` for a tag no vCPU has.
    pub fn lookup(&self, tag: u32) -> Option<VcpuRef> {
        let layout = Layout::of_tag(tag);
        let index_bits = layout.index_bits();
        let vcpu = tag & ((1 << index_bits) - 1);
        let vm_id = (tag & !WIDE_BIT) >> index_bits;
        self.buckets[bucket(vm_id)]
            .iter()
            .flatten()
            .filter_map(|&slot| self.vms[usize::from(slot)])
            .find(|vm| vm.id == vm_id && vm.layout == layout && vcpu < vm.vcpus)
            .map(|vm| VcpuRef { vm_id: vm.id, vcpu })
    }

    /// The first VM in `vm_id`'s bucket: what a lookup that stopped at the bucket (without
    /// the full-key compare) would pick for every tag hashing there.
    pub fn bucket_head(&self, vm_id: u32) -> Option<u32> {
        self.buckets[bucket(vm_id)]
            .iter()
            .flatten()
            .find_map(|&slot| self.vms[usize::from(slot)])
            .map(|vm| vm.id)
    }

    /// How many VMs share `vm_id`'s bucket.
    pub fn bucket_population(&self, vm_id: u32) -> usize {
        self.buckets[bucket(vm_id)].iter().flatten().count()
    }
}

/// The smallest VM ID above `after` (below 2^`bits`) in the same bucket as `like`.
pub fn next_in_bucket(like: u32, after: u32, layout: Layout) -> Option<u32> {
    let limit = 1u32 << layout.vm_bits();
    (after + 1..limit).find(|&id| bucket(id) == bucket(like))
}

/// Layout of a VM with `vcpus` vCPUs (for [`next_in_bucket`]).
pub fn layout_for(vcpus: u32) -> Layout {
    Layout::for_vcpus(vcpus)
}
