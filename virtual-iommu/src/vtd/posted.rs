//! Interrupt posting (VT-d spec 5.2, 9.11, 9.12): what a unit with CAP.PI does with an
//! interrupt whose IRTE is in posted format.
//!
//! The entry names a 64-byte *posted-interrupt descriptor* (PD) in guest memory, owned by a
//! guest hypervisor for one of its vCPUs (Linux's `struct pi_desc`):
//!
//! | bits    | field |
//! |---------|-------|
//! | 255:0   | PIR, one posted-interrupt request bit per vector |
//! | 256     | ON, outstanding notification |
//! | 257     | SN, suppress notification |
//! | 271:258 | reserved |
//! | 279:272 | NV, notification vector |
//! | 287:280 | reserved |
//! | 319:288 | NDST, notification destination: the 32-bit x2APIC ID in x2APIC mode (IRTA.EIME = 1); in xAPIC mode the 8-bit APIC ID in 303:296 with the rest reserved |
//! | 511:320 | not interpreted |
//!
//! Bits 256..320 are the *control qword* at byte offset 32. Posting one interrupt, in this
//! order ([`post`]):
//!
//! 1. read the descriptor; any byte outside guest RAM blocks the interrupt with fault 0x27
//!    (the address is 64-byte aligned by construction: the IRTE cannot express anything
//!    else);
//! 2. reserved control bits set block it with fault 0x28;
//! 3. set PIR bit `vector` with an atomic OR on the dword holding it
//!    ([`GuestMemoryReader::fetch_or_u32`]);
//! 4. compute X = ON clear and (URG or SN clear) from the control qword and, when X, set ON
//!    with a compare-exchange on that qword ([`GuestMemoryReader::compare_exchange_u64`]),
//!    recomputing from the value found whenever the guest changed it meanwhile;
//! 5. when X, send the notification event: fixed, physical, edge, vector NV to NDST.
//!
//! Hardware does steps 3 and 4 as one locked read-modify-write of the descriptor. Doing the
//! PIR update first and ON second is what a guest's `lock cmpxchg`/`lock bts` users need:
//! a handler that clears ON and then harvests PIR (`xchg`) can only see a PIR bit early (a
//! notification with nothing new to harvest, which it tolerates), never miss one. With SN
//! set and URG clear, ON stays clear (the guest finds the PIR bit when it next looks), so
//! a later urgent interrupt still notifies.
//!
//! Bits 511:320 are not checked: VMX's posted-interrupt descriptor leaves them to
//! software, and a guest hypervisor may share one descriptor between its CPU's and the
//! IOMMU's posting (KVM does).

use thiserror::Error;

use crate::memory::{GuestMemoryReader, MemError};
use crate::msi::{DeliveryMode, MsiMessage, SourceId};

use super::irte::PostedFormat;

/// Size (and alignment) of a posted-interrupt descriptor.
pub const PD_SIZE: u64 = 64;
/// Byte offset of the PIR (256 bits).
pub const PD_PIR_OFFSET: u64 = 0;
/// Byte offset of the control qword (descriptor bits 319:256).
pub const PD_CONTROL_OFFSET: u64 = 32;
/// Control qword: ON, outstanding notification (descriptor bit 256).
pub const PD_ON: u64 = 1 << 0;
/// Control qword: SN, suppress notification (descriptor bit 257).
pub const PD_SN: u64 = 1 << 1;
/// Control qword: shift of NV, the notification vector (descriptor bits 279:272).
pub const PD_NV_SHIFT: u32 = 16;
/// Control qword: mask (after shifting) of NV.
pub const PD_NV_MASK: u64 = 0xff;
/// Control qword: shift of NDST, the notification destination (descriptor bits 319:288).
pub const PD_NDST_SHIFT: u32 = 32;
/// Control qword reserved bits in both modes: 15:2 and 31:24 (descriptor 271:258, 287:280).
pub const PD_CONTROL_RESERVED: u64 = (0x3fff << 2) | (0xff << 24);
/// Control qword bits additionally reserved in xAPIC mode: NDST bits 7:0 and 31:16.
pub const PD_CONTROL_RESERVED_XAPIC: u64 = (0xff << 32) | (0xffff << 48);
/// Shift of the 8-bit xAPIC destination inside NDST (`NDST[15:8]`).
const NDST_XAPIC_SHIFT: u32 = 8;
/// Mask (after shifting) of the 8-bit xAPIC destination.
const NDST_XAPIC_MASK: u32 = 0xff;
/// Vectors per PIR dword.
const VECTORS_PER_DWORD: u8 = 32;
/// Bytes per PIR dword.
const DWORD_BYTES: u64 = 4;
/// Compare-exchange attempts on the control qword before the unit stops competing with a
/// guest that keeps changing it (see [`post`]).
pub const MAX_CONTROL_ATTEMPTS: u32 = 1024;

/// One interrupt to post: a well-formed posted-format entry reached by a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostedInterrupt {
    /// The IRTE index.
    pub index: u32,
    /// The requester.
    pub source_id: SourceId,
    /// The entry.
    pub entry: PostedFormat,
    /// IRTA.EIME: NDST is a 32-bit x2APIC ID (else an 8-bit xAPIC ID in `NDST[15:8]`).
    pub x2apic: bool,
}

impl PostedInterrupt {
    /// Guest-physical address of the PIR dword holding the entry's vector, or `None` on
    /// overflow.
    pub fn pir_dword_address(&self) -> Option<u64> {
        let dword = u64::from(self.entry.vector / VECTORS_PER_DWORD);
        self.entry
            .descriptor_address
            .checked_add(PD_PIR_OFFSET)?
            .checked_add(dword * DWORD_BYTES)
    }

    /// The vector's bit in that dword.
    pub fn pir_mask(&self) -> u32 {
        1u32 << (self.entry.vector % VECTORS_PER_DWORD)
    }

    /// Guest-physical address of the control qword, or `None` on overflow.
    pub fn control_address(&self) -> Option<u64> {
        self.entry.descriptor_address.checked_add(PD_CONTROL_OFFSET)
    }

    /// The control bits that must be zero in this unit's mode.
    pub fn reserved_control_bits(&self) -> u64 {
        if self.x2apic {
            PD_CONTROL_RESERVED
        } else {
            PD_CONTROL_RESERVED | PD_CONTROL_RESERVED_XAPIC
        }
    }

    /// X: whether posting into a descriptor whose control qword is `control` sets ON and
    /// notifies (ON clear, and URG or SN clear).
    pub fn notifies(&self, control: u64) -> bool {
        control & PD_ON == 0 && (self.entry.urgent || control & PD_SN == 0)
    }

    /// The notification event `control` names: fixed, physical, edge, vector NV to NDST,
    /// in KVM's x2APIC API layout.
    pub fn notification(&self, control: u64) -> MsiMessage {
        let nv = ((control >> PD_NV_SHIFT) & PD_NV_MASK) as u8;
        let ndst = (control >> PD_NDST_SHIFT) as u32;
        let destination = if self.x2apic {
            ndst
        } else {
            (ndst >> NDST_XAPIC_SHIFT) & NDST_XAPIC_MASK
        };
        MsiMessage::compat(destination, false, nv, DeliveryMode::Fixed, false)
    }
}

/// What posting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted {
    /// The notification event to send (X = 1), or `None` (ON was already set, or SN
    /// suppressed it).
    pub notification: Option<MsiMessage>,
    /// The control qword as the unit last saw it (after its own update).
    pub control: u64,
    /// The PIR bit was already set (the interrupt merged with a pending one).
    pub already_pending: bool,
}

/// Why an interrupt could not be posted: the fault the unit records.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PostError {
    /// The descriptor is not (wholly) in guest RAM (fault 0x27).
    #[error("posted-interrupt descriptor at {address:#x} not accessible: {source}")]
    Unreadable {
        /// The descriptor address from the IRTE.
        address: u64,
        /// The failed access.
        source: MemError,
    },
    /// Reserved control bits are set (fault 0x28); `bits` holds them.
    #[error("posted-interrupt descriptor at {address:#x}: reserved control bits {bits:#x}")]
    Reserved {
        /// The descriptor address from the IRTE.
        address: u64,
        /// The offending bits of the control qword.
        bits: u64,
    },
}

/// Posts `p` into its descriptor through `mem` (steps 1 to 4 of the module
/// documentation); the caller sends the notification and records faults.
///
/// A guest that changes the control qword between every read and compare-exchange for
/// [`MAX_CONTROL_ATTEMPTS`] rounds gets the notification its last-seen value called for,
/// without ON being set: a spurious notification is harmless to a posted-interrupt
/// handler, a lost one is not, and the VMM thread must not spin on guest memory.
pub fn post(mem: &dyn GuestMemoryReader, p: &PostedInterrupt) -> Result<Posted, PostError> {
    let address = p.entry.descriptor_address;
    let unreadable = |source| PostError::Unreadable { address, source };
    let overflow = MemError::Unmapped {
        gpa: address,
        len: PD_SIZE as usize,
    };
    // 1. The whole descriptor must be RAM.
    let mut pd = [0u8; PD_SIZE as usize];
    mem.read(address, &mut pd).map_err(unreadable)?;
    let control_at = p.control_address().ok_or(unreadable(overflow))?;
    let pir_at = p.pir_dword_address().ok_or(unreadable(overflow))?;
    let mut control = control_word(&pd);
    // 2. Reserved control bits.
    check_reserved(p, control)?;
    // 3. PIR.
    let before = mem.fetch_or_u32(pir_at, p.pir_mask()).map_err(unreadable)?;
    let already_pending = before & p.pir_mask() != 0;
    // 4. ON, unless the guest keeps racing us.
    for _ in 0..MAX_CONTROL_ATTEMPTS {
        if !p.notifies(control) {
            return Ok(Posted {
                notification: None,
                control,
                already_pending,
            });
        }
        match mem
            .compare_exchange_u64(control_at, control, control | PD_ON)
            .map_err(unreadable)?
        {
            Ok(_) => {
                return Ok(Posted {
                    notification: Some(p.notification(control)),
                    control: control | PD_ON,
                    already_pending,
                });
            }
            Err(actual) => {
                control = actual;
                check_reserved(p, control)?;
            }
        }
    }
    log::debug!(
        "vt-d: descriptor {address:#x} control changed {MAX_CONTROL_ATTEMPTS} times while posting; notifying without ON"
    );
    Ok(Posted {
        notification: p.notifies(control).then(|| p.notification(control)),
        control,
        already_pending,
    })
}

/// The control qword of a descriptor image.
fn control_word(pd: &[u8; PD_SIZE as usize]) -> u64 {
    let mut bytes = [0u8; 8];
    let at = PD_CONTROL_OFFSET as usize;
    bytes.copy_from_slice(&pd[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn check_reserved(p: &PostedInterrupt, control: u64) -> Result<(), PostError> {
    let bits = control & p.reserved_control_bits();
    if bits != 0 {
        return Err(PostError::Reserved {
            address: p.entry.descriptor_address,
            bits,
        });
    }
    Ok(())
}

/// Builders for descriptors, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A control qword: notification vector `nv` to `ndst` (placed as the unit's mode
    /// expects: all 32 bits when `x2apic`, else in `NDST[15:8]`), with ON and SN as given.
    pub fn control(nv: u8, ndst: u32, x2apic: bool, on: bool, sn: bool) -> u64 {
        let ndst = if x2apic {
            u64::from(ndst)
        } else {
            u64::from(ndst & NDST_XAPIC_MASK) << NDST_XAPIC_SHIFT
        };
        let mut c = (u64::from(nv) << PD_NV_SHIFT) | (ndst << PD_NDST_SHIFT);
        if on {
            c |= PD_ON;
        }
        if sn {
            c |= PD_SN;
        }
        c
    }

    /// A descriptor image with an empty PIR and `control`.
    pub fn descriptor(control: u64) -> [u8; PD_SIZE as usize] {
        let mut pd = [0u8; PD_SIZE as usize];
        let at = PD_CONTROL_OFFSET as usize;
        pd[at..at + 8].copy_from_slice(&control.to_le_bytes());
        pd
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::build::*;
    use super::*;
    use crate::vtd::irte::SourceValidation;

    /// RAM at `[0, len)`; counts compare-exchanges; optionally a guest that rewrites the
    /// control qword right before each of the unit's compare-exchanges.
    struct Ram {
        bytes: RefCell<Vec<u8>>,
        cas: Cell<u32>,
        meddle: Option<Box<dyn Fn(u64) -> u64>>,
    }

    impl Ram {
        fn new(len: usize) -> Self {
            Ram {
                bytes: RefCell::new(vec![0; len]),
                cas: Cell::new(0),
                meddle: None,
            }
        }
        fn put(&self, gpa: u64, data: &[u8]) {
            let at = gpa as usize;
            self.bytes.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        }
        fn qword(&self, gpa: u64) -> u64 {
            let mut b = [0u8; 8];
            self.read(gpa, &mut b).unwrap();
            u64::from_le_bytes(b)
        }
        fn pir(&self, pd: u64, vector: u8) -> bool {
            let mut b = [0u8; 4];
            self.read(pd + u64::from(vector / 32) * 4, &mut b).unwrap();
            u32::from_le_bytes(b) & (1 << (vector % 32)) != 0
        }
    }

    impl GuestMemoryReader for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let bytes = self.bytes.borrow();
            let at = usize::try_from(gpa).ok();
            match at.and_then(|a| bytes.get(a..a.checked_add(buf.len())?)) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                }),
            }
        }
        fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
            let mut bytes = self.bytes.borrow_mut();
            let at = usize::try_from(gpa).ok();
            match at.and_then(|a| bytes.get_mut(a..a.checked_add(buf.len())?)) {
                Some(dst) => {
                    dst.copy_from_slice(buf);
                    Ok(())
                }
                None => Err(MemError::Unmapped {
                    gpa,
                    len: buf.len(),
                }),
            }
        }
        fn compare_exchange_u64(
            &self,
            gpa: u64,
            current: u64,
            new: u64,
        ) -> Result<Result<u64, u64>, MemError> {
            self.cas.set(self.cas.get() + 1);
            if let Some(m) = &self.meddle {
                let v = m(self.qword(gpa));
                self.write(gpa, &v.to_le_bytes())?;
            }
            let actual = self.qword(gpa);
            if actual != current {
                return Ok(Err(actual));
            }
            self.write(gpa, &new.to_le_bytes())?;
            Ok(Ok(actual))
        }
    }

    const PD: u64 = 0x1000;

    fn interrupt(vector: u8, urgent: bool, x2apic: bool) -> PostedInterrupt {
        PostedInterrupt {
            index: 7,
            source_id: SourceId(0x18),
            entry: PostedFormat {
                fault_processing_disabled: false,
                urgent,
                vector,
                descriptor_address: PD,
                source_validation: SourceValidation::None,
            },
            x2apic,
        }
    }

    #[test]
    fn first_post_sets_pir_and_on_and_notifies_ndst_with_nv() {
        let ram = Ram::new(0x2000);
        ram.put(PD, &descriptor(control(0xf2, 0x1_0123, true, false, false)));
        let p = interrupt(0x65, false, true);
        let r = post(&ram, &p).unwrap();
        let n = r.notification.expect("notification");
        assert_eq!((n.destination(), n.vector()), (0x1_0123, 0xf2));
        assert!(!n.is_level());
        assert!(ram.pir(PD, 0x65));
        assert!(!r.already_pending);
        assert_eq!(ram.qword(PD + 32) & PD_ON, PD_ON);
        assert_eq!(r.control & PD_ON, PD_ON);
        // Vector 0x65 is bit 5 of dword 3.
        let mut b = [0u8; 32];
        ram.read(PD, &mut b).unwrap();
        assert_eq!(b[12], 1 << 5);
        assert!(b.iter().enumerate().all(|(i, &x)| i == 12 || x == 0));
    }

    #[test]
    fn outstanding_notification_is_not_repeated_until_on_is_cleared() {
        let ram = Ram::new(0x2000);
        ram.put(PD, &descriptor(control(0xf2, 5, true, false, false)));
        let a = interrupt(0x30, false, true);
        let b = interrupt(0xff, false, true);
        assert!(post(&ram, &a).unwrap().notification.is_some());
        let again = post(&ram, &b).unwrap();
        assert_eq!(again.notification, None, "ON already set");
        assert!(ram.pir(PD, 0xff) && ram.pir(PD, 0x30));
        assert!(post(&ram, &a).unwrap().already_pending);
        // The guest clears ON: the next post notifies again.
        let c = ram.qword(PD + 32) & !PD_ON;
        ram.put(PD + 32, &c.to_le_bytes());
        assert!(post(&ram, &b).unwrap().notification.is_some());
    }

    #[test]
    fn sn_suppresses_and_leaves_on_clear_and_urg_overrides() {
        let ram = Ram::new(0x2000);
        ram.put(PD, &descriptor(control(0xf2, 5, true, false, true)));
        let r = post(&ram, &interrupt(0x40, false, true)).unwrap();
        assert_eq!(r.notification, None);
        assert!(ram.pir(PD, 0x40));
        assert_eq!(ram.qword(PD + 32) & PD_ON, 0, "suppressed: ON stays clear");
        let r = post(&ram, &interrupt(0x41, true, true)).unwrap();
        assert_eq!(r.notification.map(|m| m.vector()), Some(0xf2), "urgent");
        assert_eq!(ram.qword(PD + 32) & (PD_ON | PD_SN), PD_ON | PD_SN);
        // ON set: even an urgent interrupt does not notify twice.
        let r = post(&ram, &interrupt(0x42, true, true)).unwrap();
        assert_eq!(r.notification, None);
    }

    #[test]
    fn xapic_mode_takes_ndst_15_8_and_reserves_the_rest() {
        let ram = Ram::new(0x2000);
        ram.put(PD, &descriptor(control(0xe0, 0x2a, false, false, false)));
        let r = post(&ram, &interrupt(0x50, false, false)).unwrap();
        assert_eq!(r.notification.unwrap().destination(), 0x2a);
        // A 32-bit NDST is reserved in xAPIC mode.
        ram.put(PD, &descriptor(control(0xe0, 0x1_0000, true, false, false)));
        assert!(matches!(
            post(&ram, &interrupt(0x50, false, false)),
            Err(PostError::Reserved { .. })
        ));
    }

    #[test]
    fn reserved_control_bits_block_before_anything_is_written() {
        for bit in [2u32, 15, 24, 31] {
            let ram = Ram::new(0x2000);
            ram.put(
                PD,
                &descriptor(control(0xf2, 5, true, false, false) | 1 << bit),
            );
            assert_eq!(
                post(&ram, &interrupt(0x40, false, true)),
                Err(PostError::Reserved {
                    address: PD,
                    bits: 1 << bit
                }),
                "bit {bit}"
            );
            assert!(!ram.pir(PD, 0x40), "nothing posted");
        }
        // Bits 511:320 are software's.
        let ram = Ram::new(0x2000);
        let mut pd = descriptor(control(0xf2, 5, true, false, false));
        pd[40..].fill(0xa5);
        ram.put(PD, &pd);
        assert!(post(&ram, &interrupt(0x40, false, true)).is_ok());
    }

    #[test]
    fn descriptor_outside_ram_is_unreadable() {
        let ram = Ram::new(0x2000);
        for address in [0x2000, 0x1fe0, !0x3f_u64, 0xffff_ffc0] {
            let mut p = interrupt(0x40, false, true);
            p.entry.descriptor_address = address;
            assert!(
                matches!(post(&ram, &p), Err(PostError::Unreadable { address: a, .. }) if a == address),
                "{address:#x}"
            );
        }
        assert_eq!(ram.cas.get(), 0);
    }

    #[test]
    fn a_guest_changing_the_control_word_is_followed() {
        // The guest sets SN between the unit's read and its compare-exchange: the unit
        // re-evaluates and does not notify.
        let mut ram = Ram::new(0x2000);
        ram.meddle = Some(Box::new(|c| c | PD_SN));
        ram.put(PD, &descriptor(control(0xf2, 5, true, false, false)));
        let r = post(&ram, &interrupt(0x40, false, true)).unwrap();
        assert_eq!(r.notification, None);
        assert_eq!(ram.cas.get(), 1);
        assert_eq!(ram.qword(PD + 32) & PD_ON, 0);
        // A guest that changes NV every time wins every race; the unit gives up after
        // MAX_CONTROL_ATTEMPTS and still notifies (with the vector it last saw).
        let mut ram = Ram::new(0x2000);
        ram.meddle = Some(Box::new(|c| c ^ (1 << PD_NV_SHIFT)));
        ram.put(PD, &descriptor(control(0xf2, 5, true, false, false)));
        let r = post(&ram, &interrupt(0x40, false, true)).unwrap();
        assert!(r.notification.is_some());
        assert_eq!(ram.cas.get(), MAX_CONTROL_ATTEMPTS);
        // A guest writing a reserved bit meanwhile: fault.
        let mut ram = Ram::new(0x2000);
        ram.meddle = Some(Box::new(|c| c | 1 << 24));
        ram.put(PD, &descriptor(control(0xf2, 5, true, false, false)));
        assert!(matches!(
            post(&ram, &interrupt(0x40, false, true)),
            Err(PostError::Reserved { .. })
        ));
    }
}
