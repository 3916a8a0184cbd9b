//! vCPUs: the KVM_RUN loop and what each exit means ([`Vcpu`]), the kick protocol that
//! gets a thread out of KVM_RUN ([`kick`]) and the manager of the vCPU threads
//! ([`manager`]).

pub mod kick;
pub mod manager;
pub mod prime;
#[cfg(test)]
mod tests;

use std::ptr::NonNull;
use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::Bus;
use crate::vm::exit::{ExitState, VmOutcome};
use kick::ImmediateExit;
use manager::{RunStep, VcpuRun};

/// What every vCPU thread shares.
pub struct VcpuContext {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Handles KVM_EXIT_IOAPIC_EOI for a vector (ends the level pins routed to it).
    pub ioapic_eoi: Box<dyn Fn(u8) + Send + Sync>,
    /// Where a vCPU records why the VM must stop (crash, system event).
    pub exit: Arc<ExitState>,
    /// Guest memory (to report instruction bytes on failures).
    pub mem: GuestMemoryMmap,
}

/// One vCPU: its KVM fd, index and APIC ID, and what every vCPU shares.
pub struct Vcpu {
    /// KVM vCPU.
    pub fd: VcpuFd,
    /// Index in creation order.
    pub index: u32,
    /// x2APIC ID (= KVM vCPU id).
    pub apic_id: u32,
    /// An AP: its first entry is primed before the guest runs, and it then waits for a
    /// SIPI (see [`prime`]). False for the boot vCPU, which runs from its registers.
    pub wait_for_sipi: bool,
    /// The buses, the EOI hook, the exit state and guest memory.
    pub ctx: Arc<VcpuContext>,
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
    /// Runs the guest once (one KVM_RUN) and handles the exit. A failure or a system event
    /// is recorded in the exit state and ends this vCPU ([`RunStep::Stopped`]).
    fn step(&mut self) -> RunStep {
        let ctx = self.ctx.clone();
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
                VcpuExit::Hlt | VcpuExit::IrqWindowOpen => None,
                VcpuExit::Intr => return RunStep::Interrupted,
                VcpuExit::Shutdown => Some(Failure::Shutdown),
                VcpuExit::InternalError => Some(Failure::Internal),
                VcpuExit::FailEntry(reason, _) => Some(Failure::FailEntry(reason)),
                VcpuExit::SystemEvent(kind, data) => {
                    let outcome = match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VmOutcome::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => VmOutcome::Reset,
                        KVM_SYSTEM_EVENT_CRASH => {
                            VmOutcome::Crash(format!("vCPU {}: guest reported a crash", self.index))
                        }
                        other => VmOutcome::Crash(format!(
                            "vCPU {}: unknown system event {other} {data:x?}",
                            self.index
                        )),
                    };
                    ctx.exit.set(outcome);
                    return RunStep::Stopped;
                }
                other => Some(Failure::Unexpected(format!("{other:?}"))),
            },
            // A signal (the kick): look at requests.
            Err(e) if e.errno() == libc::EINTR => return RunStep::Interrupted,
            // An AP left wait-for-SIPI (KVM returns EAGAIN after INIT/SIPI): enter again.
            Err(e) if e.errno() == libc::EAGAIN => return RunStep::Continue,
            Err(e) => Some(Failure::Unexpected(format!("KVM_RUN failed: {e}"))),
        };
        match failure {
            None => RunStep::Continue,
            Some(f) => {
                let msg = self.describe(f, &ctx.mem);
                ctx.exit.set(VmOutcome::Crash(msg));
                RunStep::Stopped
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

impl VcpuRun for Vcpu {
    fn immediate_exit(&mut self) -> ImmediateExit {
        let run = self.fd.get_kvm_run();
        let byte = NonNull::from(&mut run.immediate_exit);
        // SAFETY: the byte is in this vCPU's kvm_run page, mapped as long as `self.fd`
        // lives; the manager keeps the vCPU (returned by its thread) alive until it has
        // joined the thread and stops kicking it then. Besides KVM's read at KVM_RUN entry,
        // irvmm touches the byte only through this flag (kvm-ioctls' `run` reads the exit
        // fields of the page, not this byte).
        unsafe { ImmediateExit::new(byte) }
    }

    /// Primes an AP's first entry and leaves it in wait-for-SIPI (see [`prime`]); the boot
    /// vCPU needs nothing.
    fn prepare(&mut self) -> Result<(), String> {
        if !self.wait_for_sipi {
            return Ok(());
        }
        prime::prime_ap(&mut self.fd).map_err(|e| format!("priming the AP's first entry: {e}"))
    }

    fn run_once(&mut self) -> RunStep {
        self.step()
    }
}
