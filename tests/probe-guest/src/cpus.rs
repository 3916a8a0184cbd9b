//! The set of processors the firmware says are present: the APIC IDs of the enabled MADT
//! processor entries (type 0 Local APIC and type 9 Local x2APIC), sorted, without duplicates.

use crate::acpi::madt::{Entry, Madt, FLAG_ENABLED};
use crate::ap::MAX_APS;
use crate::report::Text;
use crate::text;

/// Most CPUs the probe handles: the BSP and [`MAX_APS`] APs.
pub const MAX_CPUS: usize = MAX_APS + 1;

/// Sorted APIC IDs of the enabled processors.
pub struct CpuList {
    ids: [u32; MAX_CPUS],
    len: usize,
}

impl CpuList {
    /// Collects the enabled processors of `madt`; fails on a malformed MADT, on more than
    /// [`MAX_CPUS`] processors or on an APIC ID listed twice.
    pub fn from_madt(madt: &Madt<'_>) -> Result<CpuList, Text> {
        let mut list = CpuList {
            ids: [0; MAX_CPUS],
            len: 0,
        };
        for entry in madt.entries() {
            let id = match entry? {
                Entry::LocalApic { apic_id, flags, .. } if flags & FLAG_ENABLED != 0 => {
                    u32::from(apic_id)
                }
                Entry::X2Apic { apic_id, flags, .. } if flags & FLAG_ENABLED != 0 => apic_id,
                _ => continue,
            };
            let slot = list
                .ids
                .get_mut(list.len)
                .ok_or_else(|| text!("MADT lists more than {} enabled CPUs", MAX_CPUS))?;
            *slot = id;
            list.len += 1;
        }
        let ids = &mut list.ids[..list.len];
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(text!("MADT lists APIC ID {} twice", pair[0]));
        }
        if list.len == 0 {
            return Err(text!("MADT lists no enabled processor"));
        }
        Ok(list)
    }

    /// The IDs, ascending.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// Number of CPUs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Highest APIC ID.
    pub fn max_id(&self) -> u32 {
        self.ids().last().copied().unwrap_or(0)
    }

    /// Whether `id` is listed.
    pub fn contains(&self, id: u32) -> bool {
        self.ids().binary_search(&id).is_ok()
    }

    /// The IDs other than `bsp`, ascending, copied into `out`; returns how many.
    pub fn aps(&self, bsp: u32, out: &mut [u32]) -> usize {
        let mut n = 0;
        for &id in self.ids().iter().filter(|&&id| id != bsp) {
            if let Some(slot) = out.get_mut(n) {
                *slot = id;
                n += 1;
            }
        }
        n
    }
}

/// Compares the sorted `expected` IDs with `got` (sorted in place): `Ok` when equal,
/// otherwise a reason naming the first few missing and unexpected IDs and any duplicates.
pub fn compare(expected: &[u32], got: &mut [u32]) -> Result<(), Text> {
    got.sort_unstable();
    if expected == got {
        return Ok(());
    }
    const SHOW: usize = 4;
    let mut missing = [0u32; SHOW];
    let (mut n_missing, mut n_extra, mut n_dup) = (0usize, 0usize, 0usize);
    let mut extra = [0u32; SHOW];
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < got.len() {
        if j > 0 && j < got.len() && got[j] == got[j - 1] {
            n_dup += 1;
            j += 1;
            continue;
        }
        match (expected.get(i), got.get(j)) {
            (Some(&e), Some(&g)) if e == g => {
                i += 1;
                j += 1;
            }
            (Some(&e), Some(&g)) if e < g => {
                if n_missing < SHOW {
                    missing[n_missing] = e;
                }
                n_missing += 1;
                i += 1;
            }
            (Some(&e), None) => {
                if n_missing < SHOW {
                    missing[n_missing] = e;
                }
                n_missing += 1;
                i += 1;
            }
            (_, Some(&g)) => {
                if n_extra < SHOW {
                    extra[n_extra] = g;
                }
                n_extra += 1;
                j += 1;
            }
            (None, None) => break,
        }
    }
    Err(text!(
        "{} expected IDs missing {:?}, {} unexpected {:?}, {} duplicates",
        n_missing,
        &missing[..n_missing.min(SHOW)],
        n_extra,
        &extra[..n_extra.min(SHOW)],
        n_dup
    ))
}
