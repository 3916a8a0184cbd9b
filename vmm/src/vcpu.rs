//! vCPU threads: the KVM_RUN loop and what each exit means.

use std::sync::{Arc, Condvar, Mutex};

use devices::{ExitRequest, VmExitHandler};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::Bus;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest wrote this status to the debug-exit port.
    DebugExit(u8),
    /// ACPI power-off or KVM shutdown event.
    PowerOff,
    /// The guest reset the platform (treated as exit).
    Reset,
    /// The guest cannot continue: triple fault, KVM internal error, failed entry.
    Crash(String),
}

/// Where the first reason to stop is recorded and waited for.
#[derive(Default)]
pub struct ExitState {
    outcome: Mutex<Option<VmOutcome>>,
    cv: Condvar,
}

impl ExitState {
    /// Records `outcome` unless another was recorded first, and wakes the waiter.
    pub fn set(&self, outcome: VmOutcome) {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_none() {
            *o = Some(outcome);
            self.cv.notify_all();
        }
    }

    /// True once a reason to stop was recorded.
    pub fn is_set(&self) -> bool {
        self.outcome.lock().map(|o| o.is_some()).unwrap_or(true)
    }

    /// Blocks until a reason to stop is recorded and returns it.
    pub fn wait(&self) -> VmOutcome {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(out) = o.clone() {
                return out;
            }
            o = self.cv.wait(o).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl VmExitHandler for ExitState {
    fn request_exit(&self, request: ExitRequest) {
        self.set(match request {
            ExitRequest::DebugExit(v) => VmOutcome::DebugExit(v),
            ExitRequest::PowerOff => VmOutcome::PowerOff,
            ExitRequest::Reset => VmOutcome::Reset,
        });
    }
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Handles KVM_EXIT_IOAPIC_EOI for a vector (ends the level pins routed to it).
    pub ioapic_eoi: Box<dyn Fn(u8) + Send + Sync>,
    /// Stop reason.
    pub exit: Arc<ExitState>,
    /// Guest memory (to report instruction bytes on failures).
    pub mem: GuestMemoryMmap,
}

/// One vCPU: its KVM fd, index and APIC ID.
pub struct Vcpu {
    /// KVM vCPU.
    pub fd: VcpuFd,
    /// Index in creation order.
    pub index: u32,
    /// x2APIC ID (= KVM vCPU id).
    pub apic_id: u32,
}

/// KVM internal-error suberror for emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

enum Failure {
    Internal,
    Shutdown,
    FailEntry(u64),
    Unexpected(String),
}

impl Vcpu {
    /// Runs the vCPU until the VM stops or this vCPU fails.
    pub fn run(mut self, ctx: Arc<VcpuContext>) {
        loop {
            let failure = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        ctx.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoOut(port, data) => {
                        ctx.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        ctx.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        ctx.mmio.write(addr, data);
                        None
                    }
                    VcpuExit::IoapicEoi(vector) => {
                        (ctx.ioapic_eoi)(vector);
                        None
                    }
                    VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                    VcpuExit::Shutdown => Some(Failure::Shutdown),
                    VcpuExit::InternalError => Some(Failure::Internal),
                    VcpuExit::FailEntry(reason, _) => Some(Failure::FailEntry(reason)),
                    VcpuExit::SystemEvent(kind, data) => {
                        let outcome = match kind {
                            KVM_SYSTEM_EVENT_SHUTDOWN => VmOutcome::PowerOff,
                            KVM_SYSTEM_EVENT_RESET => VmOutcome::Reset,
                            KVM_SYSTEM_EVENT_CRASH => VmOutcome::Crash(format!(
                                "vCPU {}: guest reported a crash",
                                self.index
                            )),
                            other => VmOutcome::Crash(format!(
                                "vCPU {}: unknown system event {other} {data:x?}",
                                self.index
                            )),
                        };
                        ctx.exit.set(outcome);
                        None
                    }
                    other => Some(Failure::Unexpected(format!("{other:?}"))),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(Failure::Unexpected(format!("KVM_RUN failed: {e}"))),
            };
            if let Some(f) = failure {
                let msg = self.describe(f, &ctx.mem);
                ctx.exit.set(VmOutcome::Crash(msg));
                return;
            }
            if ctx.exit.is_set() {
                return;
            }
        }
    }

    /// Where the vCPU stands: RIP and the instruction bytes there, for failure reports.
    fn location(&self, mem: &GuestMemoryMmap) -> String {
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "at unknown RIP".to_string();
        };
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        let bytes = self
            .fd
            .translate_gva(linear)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut buf = [0u8; MAX_INSN_LEN];
                mem.read_slice(&mut buf, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| buf)
            })
            .map(|b| {
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "unavailable".to_string());
        format!(
            "at RIP {:#x} (cs base {:#x}, cr0 {:#x}, cr4 {:#x}, efer {:#x}), instruction bytes: {bytes}",
            regs.rip, sregs.cs.base, sregs.cr0, sregs.cr4, sregs.efer
        )
    }

    fn describe(&mut self, f: Failure, mem: &GuestMemoryMmap) -> String {
        let what = match f {
            Failure::Internal => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                let kind = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                    " (emulation failure: the host cannot emulate this instruction)"
                } else {
                    ""
                };
                format!(
                    "KVM internal error, suberror {}{kind}, data {:x?}",
                    internal.suberror,
                    &internal.data[..n]
                )
            }
            Failure::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
            Failure::FailEntry(reason) => format!("VM entry failed, hardware reason {reason:#x}"),
            Failure::Unexpected(s) => format!("unexpected exit: {s}"),
        };
        format!(
            "vCPU {} (APIC ID {}): {what} {}",
            self.index,
            self.apic_id,
            self.location(mem)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_reason_wins_and_wakes_waiter() {
        let state = Arc::new(ExitState::default());
        assert!(!state.is_set());
        let waiter = {
            let s = state.clone();
            std::thread::spawn(move || s.wait())
        };
        state.request_exit(ExitRequest::DebugExit(7));
        state.request_exit(ExitRequest::PowerOff);
        state.set(VmOutcome::Crash("late".into()));
        assert_eq!(waiter.join().unwrap(), VmOutcome::DebugExit(7));
        assert!(state.is_set());
        assert_eq!(state.wait(), VmOutcome::DebugExit(7));
    }

    #[test]
    fn exit_requests_map_to_outcomes() {
        for (req, out) in [
            (ExitRequest::PowerOff, VmOutcome::PowerOff),
            (ExitRequest::Reset, VmOutcome::Reset),
            (ExitRequest::DebugExit(0), VmOutcome::DebugExit(0)),
        ] {
            let s = ExitState::default();
            s.request_exit(req);
            assert_eq!(s.wait(), out);
        }
    }
}
