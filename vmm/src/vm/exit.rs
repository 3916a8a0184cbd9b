//! Why a VM stops, and where the first reason is recorded.
//!
//! Devices (through [`devices::VmExitHandler`]), vCPU threads (crashes) and the VM's own
//! event loop (timeout, signals, `Ctrl-a x`) all report to one [`ExitState`]; the first
//! report wins and wakes the event loop through an eventfd, which then stops the vCPUs.

use std::sync::Mutex;

use devices::{ExitRequest, VmExitHandler};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest wrote this status to the debug-exit port.
    DebugExit(u8),
    /// ACPI power-off or KVM shutdown event.
    PowerOff,
    /// The guest reset the platform (with `--on-reset exit`).
    Reset,
    /// The guest reported a panic through pvpanic.
    Panic,
    /// `--timeout` expired; the VM was stopped.
    Timeout,
    /// The VMM received this signal (SIGINT, SIGTERM, SIGHUP); the VM was stopped.
    Signal(i32),
    /// The user typed `Ctrl-a x` on the console.
    UserQuit,
    /// The guest cannot continue: triple fault, KVM internal error, failed entry.
    Crash(String),
}

/// What [`ExitState`] holds: an outcome, or a failure of the VMM itself while the VM ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The VM ended for this reason.
    Outcome(VmOutcome),
    /// The VMM failed (a vCPU thread panicked, ...): exit as a VMM failure.
    Failure(String),
}

/// Where the first reason to stop is recorded; its eventfd becomes readable then.
pub struct ExitState {
    reason: Mutex<Option<StopReason>>,
    event: EventFd,
}

impl ExitState {
    /// A state with nothing recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitState {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another was recorded first, and signals the eventfd.
    pub fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
            if let Err(e) = self.event.write(1) {
                log::error!("exit state: cannot signal the event loop: {e}");
            }
        }
    }

    /// Records `outcome` unless another reason was recorded first.
    pub fn set(&self, outcome: VmOutcome) {
        self.stop(StopReason::Outcome(outcome));
    }

    /// Records a VMM failure unless another reason was recorded first.
    pub fn fail(&self, message: impl Into<String>) {
        self.stop(StopReason::Failure(message.into()));
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable once a reason is recorded (never reset: a stopped VM
    /// stays stopped).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl VmExitHandler for ExitState {
    fn request_exit(&self, request: ExitRequest) {
        self.set(match request {
            ExitRequest::DebugExit(v) => VmOutcome::DebugExit(v),
            ExitRequest::PowerOff => VmOutcome::PowerOff,
            ExitRequest::Reset => VmOutcome::Reset,
            ExitRequest::Panic => VmOutcome::Panic,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_signals_once() {
        let state = ExitState::new().unwrap();
        assert_eq!(state.get(), None);
        assert!(state.event().read().is_err(), "nothing recorded yet");
        state.request_exit(ExitRequest::DebugExit(7));
        state.request_exit(ExitRequest::PowerOff);
        state.fail("late");
        state.set(VmOutcome::Crash("late".into()));
        assert_eq!(
            state.get(),
            Some(StopReason::Outcome(VmOutcome::DebugExit(7)))
        );
        assert_eq!(state.event().read().unwrap(), 1);
    }

    #[test]
    fn exit_requests_map_to_outcomes() {
        for (req, out) in [
            (ExitRequest::PowerOff, VmOutcome::PowerOff),
            (ExitRequest::Reset, VmOutcome::Reset),
            (ExitRequest::Panic, VmOutcome::Panic),
            (ExitRequest::DebugExit(0), VmOutcome::DebugExit(0)),
        ] {
            let s = ExitState::new().unwrap();
            s.request_exit(req);
            assert_eq!(s.get(), Some(StopReason::Outcome(out)));
        }
    }

    #[test]
    fn failures_are_kept_apart() {
        let s = ExitState::new().unwrap();
        s.fail("vCPU 3 panicked");
        s.set(VmOutcome::PowerOff);
        assert_eq!(s.get(), Some(StopReason::Failure("vCPU 3 panicked".into())));
    }
}
