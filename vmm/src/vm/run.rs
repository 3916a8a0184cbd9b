//! The VM's event loop: one epoll set on the VMM's main thread, no polling with sleeps.
//!
//! | source | event |
//! |---|---|
//! | the exit state's eventfd | a device or vCPU recorded why the VM stops |
//! | the stop signals' signalfd | SIGINT, SIGTERM or SIGHUP: stop with [`VmOutcome::Signal`] |
//! | standard input (console) | bytes for the guest, or `Ctrl-a x`: [`VmOutcome::UserQuit`] |
//! | the console sink's room eventfd | the guest drained COM1's receive FIFO, or the virtio console's I/O thread took input into its buffers: feed it more |
//! | the epoll timeout | the `--timeout` deadline passed: [`VmOutcome::Timeout`] |
//!
//! Standard input is in the set only while the console wants input (see
//! [`crate::console`]); a descriptor epoll refuses (a regular file, `/dev/null`) is read
//! when the sink has room instead. The sink is the virtio console with `--console virtio`,
//! else COM1 ([`Vm::console_sink`]).

use std::os::fd::AsRawFd;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{Error, Host, StopReason, Vm, VmOutcome};
use crate::console::{Command, Console, InputSink};

/// Epoll tokens.
const TOKEN_EXIT: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_SINK_ROOM: u64 = 3;
/// Events handled per wake-up.
const EVENTS: usize = 8;

/// Runs `console`'s commands; true when one ends the VM.
fn commands(vm: &Vm, cmds: &[Command]) -> bool {
    if cmds.contains(&Command::Quit) {
        vm.exit.set(VmOutcome::UserQuit);
        return true;
    }
    false
}

/// Adds standard input to `epoll` when the console wants input and removes it when not;
/// `registered` tracks which. A descriptor epoll refuses makes the console a file, which is
/// read at once (and then whenever `sink` has room).
fn update_stdin(
    vm: &Vm,
    epoll: &Epoll,
    console: &mut Console,
    sink: &dyn InputSink,
    registered: &mut bool,
) -> Result<(), Error> {
    let want = console.wants_input();
    if want == *registered {
        return Ok(());
    }
    let fd = console.fd();
    if want {
        let ev = EpollEvent::new(EventSet::IN, TOKEN_STDIN);
        match epoll.ctl(ControlOperation::Add, fd, ev) {
            Ok(()) => *registered = true,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                console.set_unpollable();
                let cmds = console.feed(sink);
                commands(vm, &cmds);
            }
            Err(e) => {
                return Err(Error::Io {
                    what: "watching standard input",
                    source: e,
                })
            }
        }
    } else {
        epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            .map_err(Error::io("unwatching standard input"))?;
        *registered = false;
    }
    Ok(())
}

/// Waits until the VM must stop; returns why.
pub(super) fn event_loop(vm: &Vm, host: &mut Host) -> Result<StopReason, Error> {
    let epoll = Epoll::new().map_err(Error::io("epoll"))?;
    let add = |fd: i32, token: u64, what: &'static str| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(Error::io(what))
    };
    add(
        vm.exit.event().as_raw_fd(),
        TOKEN_EXIT,
        "watching the exit event",
    )?;
    add(host.signals.as_raw_fd(), TOKEN_SIGNAL, "watching signals")?;
    let mut stdin_registered = false;
    let (sink, sink_room) = vm.console_sink();
    if let Some(console) = host.console.as_mut() {
        add(
            sink_room.as_raw_fd(),
            TOKEN_SINK_ROOM,
            "watching the console's guest side",
        )?;
        // Input left from before a restart, or a file, goes in first.
        let cmds = console.feed(sink);
        commands(vm, &cmds);
    }
    let mut events = [EpollEvent::default(); EVENTS];
    loop {
        if let Some(reason) = vm.exit.get() {
            return Ok(reason);
        }
        if let Some(console) = host.console.as_mut() {
            update_stdin(vm, &epoll, console, sink, &mut stdin_registered)?;
        }
        let timeout_ms = match host.deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    vm.exit.set(VmOutcome::Timeout);
                    continue;
                }
                // Round up so the deadline has passed when epoll returns.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        let n = match epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    what: "waiting for events",
                    source: e,
                })
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    while let Some(signal) = host.signals.read() {
                        log::info!("signal {signal}: stopping the VM");
                        vm.exit.set(VmOutcome::Signal(signal));
                    }
                }
                TOKEN_STDIN => {
                    if let Some(console) = host.console.as_mut() {
                        let mut cmds = console.read_input();
                        cmds.extend(console.feed(sink));
                        commands(vm, &cmds);
                    }
                }
                TOKEN_SINK_ROOM => {
                    // Drain the counter; a failed read just means it was zero.
                    let _ = sink_room.read();
                    if let Some(console) = host.console.as_mut() {
                        let cmds = console.feed(sink);
                        commands(vm, &cmds);
                    }
                }
                // TOKEN_EXIT: the reason is read at the top of the loop.
                _ => {}
            }
        }
    }
}
