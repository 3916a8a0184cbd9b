//! From an interrupt source's raw message to what KVM delivers.
//!
//! [`translate_source`] is the single place where a message becomes an interrupt: with a
//! virtual IOMMU it asks the IOMMU first (remapping, faults); without one (or with
//! remapping disabled), [`translate`] applies the IOMMU-less policy: remappable-format
//! messages are blocked (nothing could translate them) and, when the guest was offered
//! KVM_FEATURE_MSI_EXT_DEST_ID, address bits 11:5 move to `address_hi`.
//! [`postable`] says whether a host with posted interrupts could post a route.

use virtual_iommu::msi::{
    DeliveryMode, MSI_ADDR_DEST_MODE_LOGICAL, MSI_DATA_DELIVERY_MASK, MSI_DATA_DELIVERY_SHIFT,
};
use virtual_iommu::{MsiMessage, SourceId};

use crate::iommu::{Iommu, IommuFault, Outcome};

/// How messages are translated for this VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranslationPolicy {
    /// The guest was offered the extended destination ID.
    pub ext_dest_id: bool,
}

/// Translates a raw message without an IOMMU; `None` blocks it.
pub fn translate(msg: MsiMessage, policy: TranslationPolicy) -> Option<MsiMessage> {
    // A raw message with upper address bits is a memory write above 4 GiB, not an
    // interrupt (KVM would read those bits as destination bits 31:8).
    if !msg.is_msi_window() || msg.is_remappable() || msg.address_hi != 0 {
        return None;
    }
    Some(if policy.ext_dest_id {
        msg.with_ext_dest_swizzled()
    } else {
        msg
    })
}

/// What a source's raw message currently becomes: the interrupt-entry cache of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Xlat {
    /// The message KVM delivers (KVM's x2APIC API layout); `None`: nothing is delivered.
    pub route: Option<MsiMessage>,
    /// The VT-d IRTE index the message named: the key IEC invalidations reach it by
    /// (AMD-Vi invalidations name the source's requester ID instead).
    pub irte: Option<u32>,
    /// Why it is blocked, when the IOMMU blocked it (recorded when the source fires).
    pub blocked: Option<IommuFault>,
    /// An AMD-Vi guest-mode entry or a VT-d posted-format entry: no route; the IOMMU
    /// posts every interrupt.
    pub guest: bool,
}

/// Translates `raw` (from requester `sid`) through `iommu`, or the IOMMU-less policy.
pub fn translate_source(
    iommu: Option<&Iommu>,
    policy: TranslationPolicy,
    sid: SourceId,
    raw: Option<MsiMessage>,
) -> Xlat {
    let Some(raw) = raw else {
        return Xlat::default();
    };
    match iommu {
        None => Xlat {
            route: translate(raw, policy),
            ..Xlat::default()
        },
        Some(iommu) => match iommu.translate(sid, raw) {
            Outcome::Passthrough(m) if !iommu.remapping_enabled() => Xlat {
                route: translate(m, policy),
                ..Xlat::default()
            },
            Outcome::Passthrough(m) => Xlat {
                route: Some(m),
                ..Xlat::default()
            },
            Outcome::Remapped { message, irte } => Xlat {
                route: Some(message),
                irte,
                ..Xlat::default()
            },
            Outcome::Blocked { fault, irte } => Xlat {
                irte,
                blocked: Some(fault),
                ..Xlat::default()
            },
            Outcome::GuestMode { irte } => Xlat {
                guest: true,
                irte,
                ..Xlat::default()
            },
        },
    }
}

/// Destination of an x2APIC broadcast.
const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// True when a host that posts interrupts can post `route`: fixed or lowest-priority
/// delivery to one physical destination (KVM's `kvm_irq_is_postable` plus its
/// single-destination check in the posting paths). Logical or broadcast destinations,
/// SMI/NMI/INIT/ExtINT and level-triggered messages are delivered by KVM without posting.
pub fn postable(route: &MsiMessage) -> bool {
    let mode = DeliveryMode::from_bits(
        ((route.data & MSI_DATA_DELIVERY_MASK) >> MSI_DATA_DELIVERY_SHIFT) as u8,
    );
    let logical = route.address_lo & MSI_ADDR_DEST_MODE_LOGICAL != 0;
    matches!(
        mode,
        Some(DeliveryMode::Fixed) | Some(DeliveryMode::LowestPriority)
    ) && !logical
        && !route.is_level()
        && route.destination() != X2APIC_BROADCAST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_dest_applied_only_when_offered() {
        let raw = MsiMessage {
            address_lo: 0xfee0_0000 | (0x2c << 12) | (0x1 << 5),
            address_hi: 0,
            data: 0x31,
        };
        let on = translate(raw, TranslationPolicy { ext_dest_id: true }).unwrap();
        assert_eq!(on.destination(), 0x12c);
        let off = translate(raw, TranslationPolicy { ext_dest_id: false }).unwrap();
        assert_eq!(off.destination(), 0x2c);
    }

    #[test]
    fn remappable_and_non_msi_blocked_without_iommu() {
        let remap = MsiMessage {
            address_lo: 0xfee0_0010,
            address_hi: 0,
            data: 0,
        };
        assert_eq!(translate(remap, TranslationPolicy::default()), None);
        let bogus = MsiMessage {
            address_lo: 0x1000,
            address_hi: 0,
            data: 0,
        };
        assert_eq!(translate(bogus, TranslationPolicy::default()), None);
        let ok = MsiMessage::compat(3, false, 0x40, DeliveryMode::Fixed, false);
        assert_eq!(translate(ok, TranslationPolicy::default()), Some(ok));
        let above_4g = MsiMessage {
            address_hi: 0x1,
            ..ok
        };
        assert_eq!(translate(above_4g, TranslationPolicy::default()), None);
    }

    #[test]
    fn postable_needs_fixed_or_lowest_priority_to_one_physical_destination() {
        let fixed = MsiMessage::compat(300, false, 0x40, DeliveryMode::Fixed, false);
        assert!(postable(&fixed));
        assert!(postable(&MsiMessage::compat(
            3,
            false,
            0x40,
            DeliveryMode::LowestPriority,
            false
        )));
        assert!(!postable(&MsiMessage::compat(
            3,
            true,
            0x40,
            DeliveryMode::Fixed,
            false
        )));
        assert!(!postable(&MsiMessage::compat(
            3,
            false,
            0x40,
            DeliveryMode::Nmi,
            false
        )));
        assert!(!postable(&MsiMessage::compat(
            3,
            false,
            0x40,
            DeliveryMode::Fixed,
            true
        )));
        let broadcast = MsiMessage {
            address_lo: 0xfee0_0000 | (0xff << 12),
            address_hi: 0xffff_ff00,
            data: 0x40,
        };
        assert!(!postable(&broadcast));
    }
}
