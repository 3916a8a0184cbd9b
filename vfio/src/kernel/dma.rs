//! Bookkeeping of the DMA mappings of one VFIO container.
//!
//! All devices of a VM share one container, so guest RAM is mapped once; but
//! [`crate::VfioBackend::dma_map`] is per device. Each mapping therefore records who asked
//! for it: the first claim maps, an identical claim by another user is a no-op, and the last
//! release unmaps. A claim that overlaps an existing mapping without being identical is an
//! error (the container would refuse it anyway).

use std::collections::{BTreeMap, BTreeSet};

/// Who asked for a mapping: a device of the container, or the VMM through the container.
pub type Owner = u64;

/// The owner id the container itself uses.
pub const CONTAINER_OWNER: Owner = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    size: u64,
    host_addr: u64,
    owners: BTreeSet<Owner>,
}

/// What a claim or release requires of the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Issue the map (or unmap) ioctl, then [`DmaMappings::commit_map`] (or
    /// [`DmaMappings::commit_unmap`]).
    Ioctl,
    /// Nothing to issue: the bookkeeping is already updated.
    Nothing,
}

/// Why a claim or release is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmaConflict {
    /// Zero size or a range that wraps.
    BadRange,
    /// Overlaps `[iova, iova + size)` mapped earlier, differently.
    Overlap {
        /// Start of the existing mapping.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// No mapping of exactly this range by this owner.
    NotMapped,
}

impl std::fmt::Display for DmaConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DmaConflict::BadRange => write!(f, "empty or wrapping range"),
            DmaConflict::Overlap { iova, size } => write!(
                f,
                "overlaps the mapping at {iova:#x} (size {size:#x}) without matching it"
            ),
            DmaConflict::NotMapped => write!(f, "not mapped by this device"),
        }
    }
}

/// The mappings of one container, by I/O virtual address.
#[derive(Debug, Default)]
pub struct DmaMappings {
    by_iova: BTreeMap<u64, Mapping>,
}

impl DmaMappings {
    /// Records `owner`'s wish to map `[iova, iova + size)` to `host_addr`. `Ioctl`: the range
    /// is new, map it and call [`Self::commit_map`]; `Nothing`: already mapped identically.
    pub fn claim(
        &mut self,
        owner: Owner,
        iova: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<Action, DmaConflict> {
        let end = iova
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or(DmaConflict::BadRange)?;
        if let Some(m) = self.by_iova.get_mut(&iova) {
            if m.size == size && m.host_addr == host_addr {
                m.owners.insert(owner);
                return Ok(Action::Nothing);
            }
        }
        // The mapping starting at or before `iova`, and any starting inside the range.
        let before = self.by_iova.range(..=iova).next_back();
        let inside = self.by_iova.range(iova..end).next();
        for (&start, m) in before.into_iter().chain(inside) {
            let m_end = start.saturating_add(m.size);
            if start < end && iova < m_end {
                return Err(DmaConflict::Overlap {
                    iova: start,
                    size: m.size,
                });
            }
        }
        Ok(Action::Ioctl)
    }

    /// Records a mapping whose ioctl succeeded after [`Self::claim`] answered `Ioctl`.
    pub fn commit_map(&mut self, owner: Owner, iova: u64, size: u64, host_addr: u64) {
        self.by_iova.insert(
            iova,
            Mapping {
                size,
                host_addr,
                owners: BTreeSet::from([owner]),
            },
        );
    }

    /// Drops `owner`'s claim on `[iova, iova + size)`. `Ioctl`: it was the last, unmap it and
    /// call [`Self::commit_unmap`]; `Nothing`: others still use it.
    pub fn release(&mut self, owner: Owner, iova: u64, size: u64) -> Result<Action, DmaConflict> {
        let m = self
            .by_iova
            .get_mut(&iova)
            .filter(|m| m.size == size && m.owners.contains(&owner))
            .ok_or(DmaConflict::NotMapped)?;
        if m.owners.len() == 1 {
            return Ok(Action::Ioctl);
        }
        m.owners.remove(&owner);
        Ok(Action::Nothing)
    }

    /// Forgets a mapping whose unmap ioctl succeeded.
    pub fn commit_unmap(&mut self, iova: u64) {
        self.by_iova.remove(&iova);
    }

    /// The ranges `owner` holds a claim on, as `(iova, size)`.
    pub fn owned_by(&self, owner: Owner) -> Vec<(u64, u64)> {
        self.by_iova
            .iter()
            .filter(|(_, m)| m.owners.contains(&owner))
            .map(|(&iova, m)| (iova, m.size))
            .collect()
    }

    /// Whether exactly `[iova, iova + size)` is mapped.
    pub fn is_mapped(&self, iova: u64, size: u64) -> bool {
        self.by_iova.get(&iova).is_some_and(|m| m.size == size)
    }

    /// Number of live mappings.
    pub fn len(&self) -> usize {
        self.by_iova.len()
    }

    /// No live mappings.
    pub fn is_empty(&self) -> bool {
        self.by_iova.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn second_identical_claim_is_a_no_op_and_last_release_unmaps() {
        let mut d = DmaMappings::default();
        assert_eq!(d.claim(1, 0, 2 * GIB, 0x7f00_0000_0000), Ok(Action::Ioctl));
        d.commit_map(1, 0, 2 * GIB, 0x7f00_0000_0000);
        assert_eq!(
            d.claim(2, 0, 2 * GIB, 0x7f00_0000_0000),
            Ok(Action::Nothing)
        );
        assert_eq!(
            d.claim(1, 0, 2 * GIB, 0x7f00_0000_0000),
            Ok(Action::Nothing)
        );
        assert_eq!(d.owned_by(2), vec![(0, 2 * GIB)]);
        assert!(d.is_mapped(0, 2 * GIB) && !d.is_mapped(0, GIB));
        assert_eq!(d.release(1, 0, 2 * GIB), Ok(Action::Nothing));
        assert_eq!(d.release(1, 0, 2 * GIB), Err(DmaConflict::NotMapped));
        assert_eq!(d.release(2, 0, 2 * GIB), Ok(Action::Ioctl));
        d.commit_unmap(0);
        assert!(d.is_empty());
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let mut d = DmaMappings::default();
        d.commit_map(1, 4 * GIB, 2 * GIB, 0x1000_0000);
        let overlap = Err(DmaConflict::Overlap {
            iova: 4 * GIB,
            size: 2 * GIB,
        });
        // Same start, other size or other host address.
        assert_eq!(d.claim(2, 4 * GIB, GIB, 0x1000_0000), overlap);
        assert_eq!(d.claim(2, 4 * GIB, 2 * GIB, 0x2000_0000), overlap);
        // Starting before and reaching in; starting inside.
        assert_eq!(d.claim(2, 3 * GIB, GIB + 1, 0), overlap);
        assert_eq!(d.claim(2, 5 * GIB, 4 * GIB, 0), overlap);
        // Adjacent on both sides is fine.
        assert_eq!(d.claim(2, 3 * GIB, GIB, 0), Ok(Action::Ioctl));
        assert_eq!(d.claim(2, 6 * GIB, GIB, 0), Ok(Action::Ioctl));
        assert_eq!(d.claim(2, 0, 0, 0), Err(DmaConflict::BadRange));
        assert_eq!(d.claim(2, u64::MAX, 2, 0), Err(DmaConflict::BadRange));
        assert_eq!(d.release(2, 4 * GIB, 2 * GIB), Err(DmaConflict::NotMapped));
        assert_eq!(d.len(), 1);
    }
}
