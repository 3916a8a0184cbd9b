//! Guest virtual APIC (GA) mode: posting an interrupt for a guest hypervisor's vCPU.
//!
//! A guest-mode IRTE (128-bit format, GuestMode = 1, control `GAMEn` = vAPIC) does not name
//! a destination to interrupt. It names a *vAPIC backing page* (the guest hypervisor's
//! AVIC page for one of its vCPUs), the vCPU's vector, where that vCPU runs, and an opaque
//! tag. Delivering such an interrupt means, in this order:
//!
//! 1. set bit `vector % 32` of the IRR dword at backing-page offset
//!    `0x200 + 0x10 * (vector / 32)`, atomically with respect to the guest's own accesses
//!    ([`crate::GuestMemoryReader::fetch_or_u32`]);
//! 2. if IsRun = 1, send a doorbell to Destination (the physical APIC ID of the CPU
//!    running the vCPU) so its AVIC hardware picks up the new IRR bit. The guest's CPUs are
//!    irvmm's vCPUs, which have no AVIC to ring; a doorbell to a CPU not running a guest
//!    has no effect on hardware either, so the unit only counts it;
//! 3. if IsRun = 0 and GALogIntr = 1, append a GA log entry {GATag, device ID, GUEST_NR}
//!    and raise the GA log interrupt, so the guest hypervisor wakes the vCPU that GATag
//!    names.
//!
//! Destination, IsRun and GATag change whenever the guest hypervisor schedules the vCPU
//! (Linux's `amd_iommu_update_ga` rewrites them without any invalidation command, because
//! the IOMMU does not cache them). The unit therefore reads the IRTE at every interrupt: a
//! translation that ends in a guest-mode entry yields a [`GuestPost`], never a route, and
//! the VMM must not cache it. GATag is carried as the full 32 bits the entry holds; the
//! unit never interprets, truncates or re-keys it (KVM's own encoding, vCPU index and VM
//! ID, is the guest hypervisor's business).

use crate::memory::{GuestMemoryReader, MemError};

use super::irte::GuestModeIrte;
use super::log::ga_log_entry;

/// Offset of the first IRR dword in a vAPIC backing page (the APIC's IRR register).
pub const IRR_OFFSET: u64 = 0x200;
/// Distance between consecutive IRR dwords (APIC registers are 16 bytes apart).
pub const IRR_STRIDE: u64 = 0x10;
/// Vectors per IRR dword.
pub const VECTORS_PER_DWORD: u8 = 32;

/// Everything needed to post one interrupt through a guest-mode IRTE, read from the table
/// for this interrupt only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestPost {
    /// The requester.
    pub device_id: u16,
    /// The IRTE index (MSI data 10:0).
    pub index: u32,
    /// The domain ID of the requester's DTE (for events).
    pub domain_id: u16,
    /// The request's address (for events).
    pub request_address: u64,
    /// The guest's vector.
    pub vector: u8,
    /// System physical address of the vAPIC backing page.
    pub backing_page: u64,
    /// Physical APIC ID of the CPU running (or last running) the vCPU.
    pub destination: u32,
    /// The vCPU is running on `destination`.
    pub is_run: bool,
    /// Log a GA entry when the vCPU is not running.
    pub ga_log_intr: bool,
    /// The guest hypervisor's tag for the vCPU, all 32 bits.
    pub ga_tag: u32,
}

impl GuestPost {
    /// The post an entry describes for a request from `device_id`.
    pub fn new(
        entry: &GuestModeIrte,
        device_id: u16,
        index: u32,
        domain_id: u16,
        request_address: u64,
    ) -> Self {
        GuestPost {
            device_id,
            index,
            domain_id,
            request_address,
            vector: entry.vector,
            backing_page: entry.backing_page,
            destination: entry.destination,
            is_run: entry.is_run,
            ga_log_intr: entry.ga_log_intr,
            ga_tag: entry.ga_tag,
        }
    }

    /// Guest-physical address of the IRR dword holding `vector`'s bit, or `None` when it
    /// would overflow the address space.
    pub fn irr_address(&self) -> Option<u64> {
        let dword = u64::from(self.vector / VECTORS_PER_DWORD);
        self.backing_page
            .checked_add(IRR_OFFSET)?
            .checked_add(dword * IRR_STRIDE)
    }

    /// The bit to set in that dword.
    pub fn irr_mask(&self) -> u32 {
        1u32 << (self.vector % VECTORS_PER_DWORD)
    }

    /// The GA log entry this post appends when the vCPU is not running.
    pub fn ga_log_entry(&self) -> u64 {
        ga_log_entry(self.ga_tag, self.device_id)
    }

    /// What must happen after the IRR bit is set.
    pub fn notification(&self) -> Notification {
        if self.is_run {
            Notification::Doorbell(self.destination)
        } else if self.ga_log_intr {
            Notification::GaLog(self.ga_log_entry())
        } else {
            Notification::None
        }
    }
}

/// What follows the IRR update of a post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notification {
    /// IsRun = 1: a doorbell to this physical APIC ID.
    Doorbell(u32),
    /// IsRun = 0, GALogIntr = 1: this GA log entry.
    GaLog(u64),
    /// IsRun = 0, GALogIntr = 0: nothing; the vCPU finds the IRR bit when it next runs.
    None,
}

/// Sets the vector's IRR bit in the backing page (step 1), atomically through `mem`.
/// Returns the IRR dword's previous value; fails when the dword is not in guest RAM.
pub fn set_irr(mem: &dyn GuestMemoryReader, post: &GuestPost) -> Result<u32, MemError> {
    let gpa = post.irr_address().ok_or(MemError::Unmapped {
        gpa: post.backing_page,
        len: 4,
    })?;
    mem.fetch_or_u32(gpa, post.irr_mask())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(vector: u8, is_run: bool, ga_log_intr: bool) -> GuestPost {
        GuestPost {
            device_id: 0x18,
            index: 3,
            domain_id: 1,
            request_address: 0xfee0_0000,
            vector,
            backing_page: 0x5000,
            destination: 0x1_0002,
            is_run,
            ga_log_intr,
            ga_tag: 0x8000_0201,
        }
    }

    #[test]
    fn irr_location() {
        let p = post(0x21, false, false);
        assert_eq!(p.irr_address(), Some(0x5000 + 0x200 + 0x10));
        assert_eq!(p.irr_mask(), 1 << 1);
        let p = post(0xff, false, false);
        assert_eq!(p.irr_address(), Some(0x5000 + 0x270));
        assert_eq!(p.irr_mask(), 1 << 31);
        let p = post(0, false, false);
        assert_eq!(p.irr_address(), Some(0x5200));
        let mut far = post(0xff, false, false);
        far.backing_page = u64::MAX - 0x100;
        assert_eq!(far.irr_address(), None);
    }

    #[test]
    fn notification_order_of_precedence() {
        assert_eq!(
            post(1, true, true).notification(),
            Notification::Doorbell(0x1_0002)
        );
        let p = post(1, false, true);
        assert_eq!(p.notification(), Notification::GaLog(p.ga_log_entry()));
        assert_eq!(p.ga_log_entry() as u32, 0x8000_0201, "tag untouched");
        assert_eq!(post(1, false, false).notification(), Notification::None);
    }
}
