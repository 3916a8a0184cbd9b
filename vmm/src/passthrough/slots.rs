//! Passed-through BAR areas as KVM memory slots: wherever the guest programs a BAR (inside
//! the PCI MMIO window, with memory decoding on), its mapped areas become slots, so device
//! registers are reached with no VM exit. Follows `BarMoved` and `DecodeChanged` from
//! configuration writes; a device found dead loses its slots, so its BARs read all ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::pci::{ConfigWriteEffect, PciAddress, PciConfigListener, PciWindow};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vfio::function::plan::MapArea;

/// One area to map: where in which BAR, and the host memory behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotArea {
    /// The BAR part.
    pub area: MapArea,
    /// Host address of its mapping.
    pub host_addr: u64,
}

/// A live slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    slot: u32,
    gpa: u64,
    size: u64,
}

/// One passed-through function's BARs.
#[derive(Default)]
struct DeviceBars {
    name: String,
    areas: Vec<SlotArea>,
    /// BAR index → programmed address.
    addresses: BTreeMap<u8, u64>,
    memory_decode: bool,
    dead: bool,
    live: Vec<Live>,
}

/// Installs memory slots; KVM in production, a recorder in tests.
pub trait SlotBackend: Send + Sync {
    /// `KVM_SET_USER_MEMORY_REGION` (size 0 removes the slot).
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<(), String>;
}

impl SlotBackend for VmFd {
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<(), String> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: `host_addr` is a live shared mapping of the device's region held (in an
        // Arc) by the passthrough function for the VM's lifetime; size 0 deletes the slot.
        unsafe { self.set_user_memory_region(region) }.map_err(|e| e.to_string())
    }
}

struct State {
    devices: BTreeMap<PciAddress, DeviceBars>,
    free: Vec<u32>,
    next_slot: u32,
}

/// The slot manager; register it as the PCI root's configuration listener.
pub struct BarMapper<S: SlotBackend> {
    backend: Arc<S>,
    window: PciWindow,
    state: Mutex<State>,
}

impl<S: SlotBackend> BarMapper<S> {
    /// A manager whose slots start at `first_slot` (RAM has the ones below) and which only
    /// maps BARs inside `window`.
    pub fn new(backend: Arc<S>, first_slot: u32, window: PciWindow) -> Self {
        BarMapper {
            backend,
            window,
            state: Mutex::new(State {
                devices: BTreeMap::new(),
                free: Vec::new(),
                next_slot: first_slot,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers function `address`'s mappable areas (before its BARs are placed).
    pub fn add_device(&self, address: PciAddress, name: &str, areas: Vec<SlotArea>) {
        self.lock().devices.insert(
            address,
            DeviceBars {
                name: name.to_string(),
                areas,
                ..DeviceBars::default()
            },
        );
    }

    /// The device at `address` is gone: remove its slots for good.
    pub fn mark_dead(&self, address: PciAddress) {
        let mut st = self.lock();
        if let Some(d) = st.devices.get_mut(&address) {
            d.dead = true;
        }
        self.remap(&mut st, address);
    }

    /// The live slots of `address`: `(gpa, size)`.
    pub fn live(&self, address: PciAddress) -> Vec<(u64, u64)> {
        self.lock()
            .devices
            .get(&address)
            .map(|d| d.live.iter().map(|l| (l.gpa, l.size)).collect())
            .unwrap_or_default()
    }

    fn remap(&self, st: &mut State, address: PciAddress) {
        let Some(dev) = st.devices.get_mut(&address) else {
            return;
        };
        let old = std::mem::take(&mut dev.live);
        let mut wanted = Vec::new();
        if dev.memory_decode && !dev.dead {
            for a in &dev.areas {
                let Some(&base) = dev.addresses.get(&a.area.bar) else {
                    continue;
                };
                let Some(gpa) = base.checked_add(a.area.offset) else {
                    continue;
                };
                let inside = base != 0
                    && gpa >= self.window.base
                    && gpa
                        .checked_add(a.area.size)
                        .is_some_and(|e| e <= self.window.end());
                if inside {
                    wanted.push((gpa, a.area.size, a.host_addr));
                }
            }
        }
        let name = dev.name.clone();
        let mut free = std::mem::take(&mut st.free);
        for l in old {
            if let Err(e) = self.backend.set_slot(l.slot, l.gpa, 0, 0) {
                log::error!("{name}: removing memory slot {} failed: {e}", l.slot);
            }
            free.push(l.slot);
        }
        let mut live = Vec::new();
        for (gpa, size, host) in wanted {
            let slot = free.pop().unwrap_or_else(|| {
                st.next_slot += 1;
                st.next_slot - 1
            });
            match self.backend.set_slot(slot, gpa, size, host) {
                Ok(()) => live.push(Live { slot, gpa, size }),
                Err(e) => {
                    // Overlapping RAM or another BAR: the guest's mistake; that range then
                    // traps (RAM wins where it overlaps).
                    log::debug!("{name}: BAR area at {gpa:#x}+{size:#x} not mapped: {e}");
                    free.push(slot);
                }
            }
        }
        st.free = free;
        if let Some(dev) = st.devices.get_mut(&address) {
            dev.live = live;
        }
    }
}

impl<S: SlotBackend> PciConfigListener for BarMapper<S> {
    fn config_effect(&self, address: PciAddress, effect: ConfigWriteEffect) {
        let mut st = self.lock();
        let Some(dev) = st.devices.get_mut(&address) else {
            return;
        };
        match effect {
            ConfigWriteEffect::BarMoved { bar, new, .. } => {
                dev.addresses.insert(bar, new);
            }
            ConfigWriteEffect::DecodeChanged { memory, .. } => {
                if memory == dev.memory_decode {
                    return;
                }
                dev.memory_decode = memory;
            }
        }
        self.remap(&mut st, address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Slots(Mutex<BTreeMap<u32, (u64, u64)>>);
    impl SlotBackend for Slots {
        fn set_slot(&self, slot: u32, gpa: u64, size: u64, _host: u64) -> Result<(), String> {
            let mut s = self.0.lock().unwrap();
            if size == 0 {
                s.remove(&slot);
                return Ok(());
            }
            if s.values().any(|&(g, z)| gpa < g + z && g < gpa + size) {
                return Err("overlap".into());
            }
            s.insert(slot, (gpa, size));
            Ok(())
        }
    }

    fn area(bar: u8, offset: u64, size: u64) -> SlotArea {
        SlotArea {
            area: MapArea { bar, offset, size },
            host_addr: 0x7000_0000 + offset,
        }
    }

    #[test]
    fn slots_follow_bar_moves_and_decode() {
        let kvm = Arc::new(Slots::default());
        let m = BarMapper::new(kvm.clone(), 2, PciWindow::MMIO32);
        let a = PciAddress::new(0, 3, 0).unwrap();
        m.add_device(a, "dev", vec![area(0, 0, 0x1000), area(0, 0x2000, 0x2000)]);
        m.config_effect(
            a,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0xc000_0000,
            },
        );
        assert!(m.live(a).is_empty(), "decode off");
        m.config_effect(
            a,
            ConfigWriteEffect::DecodeChanged {
                memory: true,
                io: false,
            },
        );
        assert_eq!(
            m.live(a),
            vec![(0xc000_0000, 0x1000), (0xc000_2000, 0x2000)]
        );
        m.config_effect(
            a,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0xc000_0000,
                new: 0xd000_0000,
            },
        );
        assert_eq!(
            m.live(a),
            vec![(0xd000_0000, 0x1000), (0xd000_2000, 0x2000)]
        );
        assert_eq!(kvm.0.lock().unwrap().len(), 2, "old slots removed");
        // Outside the window (sizing leftovers, addresses over RAM): not mapped.
        m.config_effect(
            a,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0x1000,
            },
        );
        assert!(m.live(a).is_empty());
        m.config_effect(
            a,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0xc000_0000,
            },
        );
        // A second device programmed over the first: its overlapping area stays trapped.
        let b = PciAddress::new(0, 4, 0).unwrap();
        m.add_device(b, "other", vec![area(0, 0, 0x1000)]);
        m.config_effect(
            b,
            ConfigWriteEffect::DecodeChanged {
                memory: true,
                io: false,
            },
        );
        m.config_effect(
            b,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0xc000_0000,
            },
        );
        assert!(m.live(b).is_empty());
        // A dead device loses its slots.
        m.mark_dead(a);
        assert!(m.live(a).is_empty());
        m.config_effect(
            a,
            ConfigWriteEffect::BarMoved {
                bar: 0,
                old: 0,
                new: 0xc800_0000,
            },
        );
        assert!(m.live(a).is_empty());
    }
}
