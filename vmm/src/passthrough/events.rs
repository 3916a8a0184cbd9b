//! Passthrough events the VMM serves on one thread: a device's INTx eventfd (the host
//! signals it and masks INTx; irvmm asserts the device's IOAPIC pin, and on the guest's
//! EOI deasserts it and unmasks INTx on the device), and a vfio-user server hanging up
//! (its BARs stop being mapped, so they read all ones, and it is logged once).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use devices::pci::PciAddress;
use devices::IoApic;
use kvm_ioctls::VmFd;
use vfio::VfioPciFunction;
use vmm_sys_util::eventfd::EventFd;

use super::slots::BarMapper;
use crate::interrupt::watcher::Watcher;

/// Tokens at or above this are hang-ups (device index); below, INTx pins.
const HANGUP_TOKEN: u32 = 1 << 16;

struct IntxLine {
    fd: Arc<EventFd>,
    function: Weak<Mutex<VfioPciFunction>>,
}

struct Hangup {
    fd: OwnedFd,
    name: String,
    address: PciAddress,
}

/// The event server.
pub struct PassthroughEvents {
    ioapic: Arc<Mutex<IoApic>>,
    mapper: Arc<BarMapper<VmFd>>,
    intx: Mutex<BTreeMap<u32, IntxLine>>,
    hangups: Mutex<Vec<Hangup>>,
    watcher: OnceLock<Watcher>,
}

impl PassthroughEvents {
    /// An event server driving `ioapic` and `mapper`.
    pub fn new(ioapic: Arc<Mutex<IoApic>>, mapper: Arc<BarMapper<VmFd>>) -> Arc<Self> {
        Arc::new(PassthroughEvents {
            ioapic,
            mapper,
            intx: Mutex::new(BTreeMap::new()),
            hangups: Mutex::new(Vec::new()),
            watcher: OnceLock::new(),
        })
    }

    fn watcher(self: &Arc<Self>) -> std::io::Result<&Watcher> {
        if let Some(w) = self.watcher.get() {
            return Ok(w);
        }
        let me = Arc::downgrade(self);
        let w = Watcher::start(move |token| match me.upgrade() {
            Some(ev) => {
                ev.fired(token);
                true
            }
            None => false,
        })?;
        Ok(self.watcher.get_or_init(|| w))
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards `fd` (a device's INTx) to IOAPIC `pin`.
    pub fn add_intx(
        self: &Arc<Self>,
        pin: u32,
        fd: Arc<EventFd>,
        function: Weak<Mutex<VfioPciFunction>>,
    ) -> std::io::Result<()> {
        self.watcher()?.watch(&fd, pin)?;
        Self::lock(&self.intx).insert(pin, IntxLine { fd, function });
        Ok(())
    }

    /// Watches `fd` (a vfio-user socket) for the server hanging up.
    pub fn add_hangup(
        self: &Arc<Self>,
        fd: OwnedFd,
        name: &str,
        address: PciAddress,
    ) -> std::io::Result<()> {
        let mut h = Self::lock(&self.hangups);
        let token = HANGUP_TOKEN + h.len() as u32;
        self.watcher()?.watch_hangup(fd.as_raw_fd(), token)?;
        h.push(Hangup {
            fd,
            name: name.to_string(),
            address,
        });
        Ok(())
    }

    /// True when `pin` carries a passed-through device's INTx.
    pub fn is_intx_pin(&self, pin: u32) -> bool {
        Self::lock(&self.intx).contains_key(&pin)
    }

    /// The guest's EOI ended `pin`'s interrupt (the IOAPIC already cleared Remote IRR):
    /// unmask the device's INTx, which signals again if the device still asserts it.
    pub fn intx_eoi(&self, pin: u32) {
        let function = Self::lock(&self.intx).get(&pin).map(|l| l.function.clone());
        if let Some(f) = function.and_then(|f| f.upgrade()) {
            f.lock().unwrap_or_else(|p| p.into_inner()).intx_eoi();
        }
    }

    fn fired(&self, token: u32) {
        if token >= HANGUP_TOKEN {
            self.hung_up(token - HANGUP_TOKEN);
            return;
        }
        let fd = Self::lock(&self.intx).get(&token).map(|l| l.fd.clone());
        let Some(fd) = fd else { return };
        if fd.read().is_err() {
            return;
        }
        Self::lock(&self.ioapic).set_irq_level(token as usize, true);
    }

    fn hung_up(&self, index: u32) {
        let hangups = Self::lock(&self.hangups);
        let Some(h) = hangups.get(index as usize) else {
            return;
        };
        if let Some(w) = self.watcher.get() {
            let _ = w.unwatch_raw(h.fd.as_raw_fd());
        }
        log::error!(
            "{}: the device server hung up; the device is gone (its BARs now read all ones)",
            h.name
        );
        self.mapper.mark_dead(h.address);
    }
}
