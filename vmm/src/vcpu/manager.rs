//! The vCPU manager: one thread per vCPU, created (with its vCPU already configured) before
//! any of them runs, started together, paused and resumed with every thread acknowledging,
//! and stopped and joined on every way out of the VM.
//!
//! # Threads
//!
//! [`CpuManager::spawn`] creates every thread; each unblocks the kick signal, does its
//! vCPU's one-time preparation ([`VcpuRun::prepare`], in parallel with the others) and waits
//! at a gate. [`CpuManager::start`] waits until every thread is prepared, then opens the gate
//! for all of them at once. A thread then runs
//!
//! ```text
//! loop {
//!     match request { Stop => leave, Pause => park until the request changes, Run => {} }
//!     run_once()   // one KVM_RUN and the handling of its exit
//!     if KVM_RUN was interrupted (EINTR) { clear immediate_exit }
//! }
//! ```
//!
//! and leaves the loop early when `run_once` says the vCPU cannot go on (it recorded why
//! beforehand, e.g. a crash). A panic inside `run_once` is caught: the thread reports it to
//! the manager's panic hook and ends like a vCPU that stopped on its own.
//!
//! # Requests and kicks
//!
//! Requests (run, pause, stop) are one atomic shared by all threads; the manager changes it,
//! then kicks every live thread with [`super::kick`]'s protocol (set `immediate_exit`, send
//! the kick signal), which guarantees that each thread reads the new request before it
//! enters the guest again. Paused threads wait on a condition variable; [`CpuManager::pause`]
//! returns once every thread has parked (or ended), [`CpuManager::resume`] once every one has
//! left the park. [`CpuManager::stop`] sets the stop request, wakes parked threads and those
//! still at the gate, kicks the rest and joins them all; dropping the manager does the same.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm_sys_util::signal::Killable;

use super::kick::{self, ImmediateExit, KickError};

/// What one trip through the guest ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStep {
    /// The exit was handled; enter the guest again (after looking at requests).
    Continue,
    /// `KVM_RUN` returned `EINTR` (a kick, or another signal) or found `immediate_exit`
    /// set: clear the flag, look at requests.
    Interrupted,
    /// This vCPU cannot go on (it recorded why); its thread ends.
    Stopped,
}

/// A vCPU as the manager drives it: a KVM vCPU, or a fake one in tests.
pub trait VcpuRun: Send + 'static {
    /// The flag that makes the next entry into the guest return at once (for a KVM vCPU, the
    /// `immediate_exit` byte of its `kvm_run` page). Asked once, before the thread starts; it
    /// must stay valid as long as the vCPU value lives.
    fn immediate_exit(&mut self) -> ImmediateExit;

    /// One-time work on the vCPU's own thread before the gate opens (for a KVM AP: priming
    /// its first entry, see [`super::prime`]). Nothing of the guest runs yet.
    fn prepare(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Enters the guest once and handles the exit. Must return [`RunStep::Interrupted`]
    /// promptly when the kick signal arrives or [`VcpuRun::immediate_exit`] is set on entry.
    fn run_once(&mut self) -> RunStep;
}

/// Errors of the manager.
#[derive(Debug, Error)]
pub enum ManagerError {
    /// The kick signal could not be set up.
    #[error(transparent)]
    Kick(#[from] KickError),
    /// A vCPU thread could not be created.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Thread {
        /// The vCPU.
        index: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not every thread acknowledged a pause or resume in time.
    #[error("{done} of {expected} vCPU threads acknowledged the {what} within {timeout:?}")]
    Acknowledge {
        /// "pause" or "resume".
        what: &'static str,
        /// Threads that did.
        done: usize,
        /// Threads that had to.
        expected: usize,
        /// How long the manager waited.
        timeout: Duration,
    },
    /// `pause` before `start`.
    #[error("the vCPUs have not been started")]
    NotStarted,
    /// A vCPU's preparation failed.
    #[error("vCPU {index}: {message}")]
    Prepare {
        /// The vCPU.
        index: usize,
        /// Why.
        message: String,
    },
    /// Not every thread was prepared in time.
    #[error("{done} of {expected} vCPU threads were prepared within {timeout:?}")]
    NotPrepared {
        /// Threads that were.
        done: usize,
        /// Threads that had to be.
        expected: usize,
        /// How long the manager waited.
        timeout: Duration,
    },
}

/// The request every vCPU thread looks at before entering the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Request {
    Run = 0,
    Pause = 1,
    Stop = 2,
}

impl Request {
    fn from_u8(v: u8) -> Request {
        match v {
            0 => Request::Run,
            1 => Request::Pause,
            _ => Request::Stop,
        }
    }
}

/// Thread counts, under [`Control::state`].
#[derive(Debug, Default)]
struct Counts {
    /// The gate is open.
    started: bool,
    /// Threads done with [`VcpuRun::prepare`] (successfully or not).
    prepared: usize,
    /// The first preparation that failed: the vCPU and why.
    failed: Option<(usize, String)>,
    /// Threads parked by a pause request.
    paused: usize,
    /// Threads whose loop ended (stop request, vCPU stopped, panic).
    ended: usize,
}

/// Called with a vCPU's index and the panic message when its thread panicked.
pub type PanicHook = Box<dyn Fn(usize, &str) + Send + Sync>;

/// What the manager and its threads share.
struct Control {
    request: AtomicU8,
    state: Mutex<Counts>,
    cv: Condvar,
    on_panic: PanicHook,
}

impl Control {
    fn request(&self) -> Request {
        Request::from_u8(self.request.load(Ordering::SeqCst))
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until the gate opens; false when a stop came first.
    fn wait_for_start(&self) -> bool {
        let mut counts = self.counts();
        while !counts.started && self.request() != Request::Stop {
            counts = self.cv.wait(counts).unwrap_or_else(|p| p.into_inner());
        }
        self.request() != Request::Stop
    }

    /// Parks the calling vCPU thread while the request is [`Request::Pause`].
    fn park(&self) {
        let mut counts = self.counts();
        counts.paused += 1;
        self.cv.notify_all();
        while self.request() == Request::Pause {
            counts = self.cv.wait(counts).unwrap_or_else(|p| p.into_inner());
        }
        counts.paused -= 1;
        self.cv.notify_all();
    }

    /// Records that the calling thread's preparation is over (`Err`: it failed).
    fn prepared(&self, index: usize, result: Result<(), String>) {
        let mut counts = self.counts();
        counts.prepared += 1;
        if let Err(message) = result {
            counts.failed.get_or_insert((index, message));
        }
        self.cv.notify_all();
    }

    fn ended(&self) {
        let mut counts = self.counts();
        counts.ended += 1;
        self.cv.notify_all();
    }

    /// Waits until `done(counts)` holds or `timeout` passes; returns the last counts'
    /// verdict and the value `progress` reports for them.
    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Counts) -> bool,
        progress: impl Fn(&Counts) -> usize,
    ) -> Result<(), usize> {
        let deadline = Instant::now() + timeout;
        let mut counts = self.counts();
        while !done(&counts) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(progress(&counts));
            }
            counts = self
                .cv
                .wait_timeout(counts, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

/// One vCPU thread as the manager holds it.
struct Handle<V> {
    thread: Option<JoinHandle<V>>,
    kick: ImmediateExit,
}

/// How long [`CpuManager::pause`] and [`CpuManager::resume`] wait for every thread.
pub const ACKNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Owns the vCPU threads. See the [module documentation](self).
pub struct CpuManager<V: VcpuRun> {
    control: Arc<Control>,
    handles: Vec<Handle<V>>,
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The body of a vCPU thread.
fn vcpu_thread<V: VcpuRun>(
    mut vcpu: V,
    index: usize,
    control: Arc<Control>,
    kick: ImmediateExit,
) -> V {
    if let Err(e) = kick::unblock_in_this_thread() {
        control.prepared(index, Err(e.to_string()));
        control.ended();
        return vcpu;
    }
    let prepared = catch_unwind(AssertUnwindSafe(|| vcpu.prepare()))
        .unwrap_or_else(|payload| Err(format!("panicked: {}", panic_message(payload.as_ref()))));
    let ok = prepared.is_ok();
    control.prepared(index, prepared);
    if ok && control.wait_for_start() {
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            match control.request() {
                Request::Stop => return,
                Request::Pause => {
                    control.park();
                    continue;
                }
                Request::Run => {}
            }
            match vcpu.run_once() {
                RunStep::Continue => {}
                // Cleared after an interrupted entry, before the request is read again (see
                // the protocol in `kick`). Only then: a flag left set by a kick that
                // another exit overtook just makes the next entry return at once, and a
                // vCPU that is never kicked never touches its kvm_run page from user space
                // (an AP halted for good keeps it out of the VMM's RSS).
                RunStep::Interrupted => kick.clear(),
                RunStep::Stopped => return,
            }
        }));
        if let Err(payload) = result {
            (control.on_panic)(index, panic_message(payload.as_ref()));
        }
    }
    control.ended();
    vcpu
}

impl<V: VcpuRun> CpuManager<V> {
    /// Creates one thread per vCPU, named `{name}{index}` with `stack_size` bytes of stack,
    /// each waiting for [`CpuManager::start`]. `on_panic` is told about a thread that
    /// panicked (the thread then ends). On error, the threads created so far are stopped and
    /// joined.
    pub fn spawn(
        vcpus: Vec<V>,
        name: &str,
        stack_size: usize,
        on_panic: PanicHook,
    ) -> Result<Self, ManagerError> {
        kick::install_handler()?;
        let control = Arc::new(Control {
            request: AtomicU8::new(Request::Run as u8),
            state: Mutex::new(Counts::default()),
            cv: Condvar::new(),
            on_panic,
        });
        let mut manager = CpuManager {
            control,
            handles: Vec::with_capacity(vcpus.len()),
        };
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let kick = vcpu.immediate_exit();
            let control = manager.control.clone();
            let thread = thread::Builder::new()
                .name(format!("{name}{index}"))
                .stack_size(stack_size)
                .spawn(move || vcpu_thread(vcpu, index, control, kick))
                .map_err(|source| ManagerError::Thread { index, source })?;
            manager.handles.push(Handle {
                thread: Some(thread),
                kick,
            });
        }
        Ok(manager)
    }

    /// Number of vCPUs.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when there is no vCPU.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Waits until every thread has prepared its vCPU, then lets every thread enter its
    /// guest. Fails, opening nothing, when a preparation failed or did not end within
    /// [`ACKNOWLEDGE_TIMEOUT`]; the threads then wait at the gate until [`CpuManager::stop`].
    pub fn start(&self) -> Result<(), ManagerError> {
        let expected = self.handles.len();
        self.control
            .wait_until(
                ACKNOWLEDGE_TIMEOUT,
                |c| c.prepared >= expected,
                |c| c.prepared,
            )
            .map_err(|done| ManagerError::NotPrepared {
                done,
                expected,
                timeout: ACKNOWLEDGE_TIMEOUT,
            })?;
        let mut counts = self.control.counts();
        if let Some((index, message)) = counts.failed.clone() {
            return Err(ManagerError::Prepare { index, message });
        }
        counts.started = true;
        self.control.cv.notify_all();
        Ok(())
    }

    /// Kicks every thread that has not been joined.
    fn kick_all(&self) {
        let signal = kick::kick_signal();
        for h in &self.handles {
            if let Some(thread) = &h.thread {
                h.kick.set();
                if let Err(e) = thread.kill(signal) {
                    // ESRCH: the thread has ended; nothing to kick.
                    log::debug!("kick: {e}");
                }
            }
        }
    }

    /// Moves every vCPU out of its guest and parks its thread; returns once all have parked
    /// (threads that ended count as parked).
    pub fn pause(&self) -> Result<(), ManagerError> {
        if !self.control.counts().started {
            return Err(ManagerError::NotStarted);
        }
        // A stop request stays.
        let _ = self.control.request.compare_exchange(
            Request::Run as u8,
            Request::Pause as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.kick_all();
        let n = self.handles.len();
        self.control
            .wait_until(
                ACKNOWLEDGE_TIMEOUT,
                |c| c.paused + c.ended >= n,
                |c| c.paused + c.ended,
            )
            .map_err(|done| ManagerError::Acknowledge {
                what: "pause",
                done,
                expected: n,
                timeout: ACKNOWLEDGE_TIMEOUT,
            })
    }

    /// Lets paused threads run again; returns once every one has left its park.
    pub fn resume(&self) -> Result<(), ManagerError> {
        {
            let _counts = self.control.counts();
            let _ = self.control.request.compare_exchange(
                Request::Pause as u8,
                Request::Run as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            self.control.cv.notify_all();
        }
        let n = self.handles.len();
        self.control
            .wait_until(
                ACKNOWLEDGE_TIMEOUT,
                |c| c.paused == 0,
                |c| n.saturating_sub(c.paused),
            )
            .map_err(|done| ManagerError::Acknowledge {
                what: "resume",
                done,
                expected: n,
                timeout: ACKNOWLEDGE_TIMEOUT,
            })
    }

    /// Whether every thread's loop has ended (each stopped on its own, or was stopped).
    pub fn all_ended(&self) -> bool {
        self.control.counts().ended >= self.handles.len()
    }

    /// Stops every vCPU and joins its thread; returns the vCPUs whose threads could be
    /// joined, in index order. Calling it again returns nothing.
    pub fn stop(&mut self) -> Vec<V> {
        {
            let _counts = self.control.counts();
            self.control
                .request
                .store(Request::Stop as u8, Ordering::SeqCst);
            self.control.cv.notify_all();
        }
        self.kick_all();
        let mut out = Vec::with_capacity(self.handles.len());
        for (index, h) in self.handles.iter_mut().enumerate() {
            if let Some(thread) = h.thread.take() {
                match thread.join() {
                    Ok(v) => out.push(v),
                    Err(payload) => {
                        log::error!(
                            "vCPU {index}: thread died: {}",
                            panic_message(payload.as_ref())
                        )
                    }
                }
            }
        }
        out
    }
}

impl<V: VcpuRun> Drop for CpuManager<V> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::NonNull;
    use std::sync::atomic::AtomicUsize;

    /// What a fake vCPU does in `run_once`.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Like a halted vCPU in KVM_RUN: returns at once when the flag is set, else waits
        /// for a signal.
        Halt,
        /// Like a busy guest: exits to user space all the time.
        Spin,
        /// Stops on its own at its `n`th run.
        StopAt(usize),
        /// Panics at its first run.
        Panic,
    }

    struct Fake {
        flag: Box<u8>,
        kick: Option<ImmediateExit>,
        behaviour: Behaviour,
        runs: usize,
        total: Arc<AtomicUsize>,
        blocked: bool,
        /// What `prepare` does: sleep this long, then fail with this message if any.
        prep: (Duration, Option<&'static str>),
        /// When `prepare` finished.
        prepared_at: Option<Instant>,
        /// When `run_once` first ran.
        first_run_at: Option<Instant>,
    }

    impl Fake {
        fn new(behaviour: Behaviour, total: &Arc<AtomicUsize>) -> Self {
            Fake {
                flag: Box::new(0),
                kick: None,
                behaviour,
                runs: 0,
                total: total.clone(),
                blocked: false,
                prep: (Duration::ZERO, None),
                prepared_at: None,
                first_run_at: None,
            }
        }

        /// KVM_RUN on a halted vCPU, with KVM_SET_SIGNAL_MASK's semantics: the kick signal
        /// is blocked outside the wait and unblocked atomically by ppoll, so a kick sent
        /// between the flag check and the wait is not lost.
        fn halt(&mut self) -> RunStep {
            if !self.blocked {
                // SAFETY: plain signal-mask calls on this thread with initialized sets.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, kick::kick_signal());
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                self.blocked = true;
            }
            if self.kick.is_some_and(|k| k.is_set()) {
                return RunStep::Interrupted;
            }
            // SAFETY: no file descriptors, no timeout (wait for a signal), an initialized
            // empty mask.
            unsafe {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::ppoll(std::ptr::null_mut(), 0, std::ptr::null(), &empty);
            }
            RunStep::Interrupted
        }
    }

    impl VcpuRun for Fake {
        fn immediate_exit(&mut self) -> ImmediateExit {
            // SAFETY: the box lives as long as the fake and is only accessed atomically
            // through the returned flag.
            let k = unsafe { ImmediateExit::new(NonNull::from(&mut *self.flag)) };
            self.kick = Some(k);
            k
        }

        fn prepare(&mut self) -> Result<(), String> {
            std::thread::sleep(self.prep.0);
            self.prepared_at = Some(Instant::now());
            match self.prep.1 {
                Some(why) => Err(why.to_string()),
                None => Ok(()),
            }
        }

        fn run_once(&mut self) -> RunStep {
            self.first_run_at.get_or_insert_with(Instant::now);
            self.runs += 1;
            self.total.fetch_add(1, Ordering::SeqCst);
            match self.behaviour {
                Behaviour::Halt => self.halt(),
                Behaviour::Spin => {
                    std::hint::spin_loop();
                    RunStep::Continue
                }
                Behaviour::StopAt(n) if self.runs >= n => RunStep::Stopped,
                Behaviour::StopAt(_) => RunStep::Continue,
                Behaviour::Panic => panic!("fake vCPU panicked"),
            }
        }
    }

    /// Panics reported to the hook: (vCPU index, message).
    type Panics = Arc<Mutex<Vec<(usize, String)>>>;

    fn manager(behaviours: &[Behaviour]) -> (CpuManager<Fake>, Arc<AtomicUsize>, Panics) {
        let total = Arc::new(AtomicUsize::new(0));
        let fakes = behaviours.iter().map(|&b| Fake::new(b, &total)).collect();
        manager_of(fakes, total)
    }

    fn manager_of(
        fakes: Vec<Fake>,
        total: Arc<AtomicUsize>,
    ) -> (CpuManager<Fake>, Arc<AtomicUsize>, Panics) {
        let panics = Arc::new(Mutex::new(Vec::new()));
        let seen = panics.clone();
        let m = CpuManager::spawn(
            fakes,
            "fake",
            256 << 10,
            Box::new(move |i, msg| seen.lock().unwrap().push((i, msg.to_string()))),
        )
        .unwrap();
        (m, total, panics)
    }

    #[test]
    fn nothing_runs_before_start_and_stop_before_start_joins() {
        let (mut m, total, _) = manager(&[Behaviour::Spin; 4]);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(total.load(Ordering::SeqCst), 0);
        assert_eq!(m.len(), 4);
        let vcpus = m.stop();
        assert_eq!(vcpus.len(), 4);
        assert!(vcpus.iter().all(|v| v.runs == 0));
        assert!(m.stop().is_empty());
    }

    #[test]
    fn start_waits_for_every_preparation_before_any_vcpu_runs() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut fakes: Vec<Fake> = (0..4).map(|_| Fake::new(Behaviour::Spin, &total)).collect();
        fakes[3].prep = (Duration::from_millis(50), None);
        let (mut m, _, _) = manager_of(fakes, total.clone());
        m.start().expect("start");
        while total.load(Ordering::SeqCst) < 100 {
            std::thread::yield_now();
        }
        let vcpus = m.stop();
        let last_prepared = vcpus.iter().filter_map(|v| v.prepared_at).max().unwrap();
        let first_run = vcpus.iter().filter_map(|v| v.first_run_at).min().unwrap();
        assert!(
            first_run >= last_prepared,
            "a vCPU ran before the slow one was prepared"
        );
    }

    #[test]
    fn a_failed_preparation_fails_start_and_nothing_runs() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut fakes: Vec<Fake> = (0..3).map(|_| Fake::new(Behaviour::Spin, &total)).collect();
        fakes[2].prep = (Duration::ZERO, Some("no entry"));
        let (mut m, total, _) = manager_of(fakes, total);
        match m.start() {
            Err(ManagerError::Prepare { index: 2, message }) => assert_eq!(message, "no entry"),
            other => panic!("start: {other:?}"),
        }
        assert_eq!(m.stop().len(), 3);
        assert_eq!(total.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn halted_vcpus_are_kicked_out_and_joined() {
        let (mut m, total, _) = manager(&[Behaviour::Halt; 16]);
        m.start().expect("start");
        // Every fake enters its halt wait.
        while total.load(Ordering::SeqCst) < 16 {
            std::thread::yield_now();
        }
        let start = Instant::now();
        let vcpus = m.stop();
        assert_eq!(vcpus.len(), 16);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(m.all_ended());
    }

    #[test]
    fn pause_parks_every_thread_and_resume_runs_them_again() {
        let mut b = vec![Behaviour::Halt; 6];
        b.extend([Behaviour::Spin; 2]);
        let (mut m, total, _) = manager(&b);
        m.start().expect("start");
        for _ in 0..20 {
            m.pause().unwrap();
            let frozen = total.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(total.load(Ordering::SeqCst), frozen, "a paused vCPU ran");
            m.resume().unwrap();
        }
        // Running again: the spinning fakes make progress.
        let before = total.load(Ordering::SeqCst);
        while total.load(Ordering::SeqCst) == before {
            std::thread::yield_now();
        }
        assert_eq!(m.stop().len(), 8);
    }

    #[test]
    fn stop_while_paused_joins() {
        let (mut m, _, _) = manager(&[Behaviour::Halt, Behaviour::Spin]);
        m.start().expect("start");
        m.pause().unwrap();
        assert_eq!(m.stop().len(), 2);
    }

    #[test]
    fn pause_before_start_is_refused() {
        let (m, _, _) = manager(&[Behaviour::Halt]);
        assert!(matches!(m.pause(), Err(ManagerError::NotStarted)));
    }

    #[test]
    fn a_vcpu_that_stops_on_its_own_counts_as_ended() {
        let (mut m, _, panics) = manager(&[Behaviour::StopAt(3), Behaviour::Halt]);
        m.start().expect("start");
        while m.control.counts().ended < 1 {
            std::thread::yield_now();
        }
        m.pause().unwrap();
        m.resume().unwrap();
        let vcpus = m.stop();
        assert_eq!(vcpus[0].runs, 3);
        assert!(panics.lock().unwrap().is_empty());
    }

    #[test]
    fn a_panicking_vcpu_is_reported_and_the_rest_still_stop() {
        let (mut m, _, panics) = manager(&[Behaviour::Halt, Behaviour::Panic, Behaviour::Halt]);
        m.start().expect("start");
        while panics.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        assert_eq!(
            panics.lock().unwrap().clone(),
            vec![(1, "fake vCPU panicked".to_string())]
        );
        assert_eq!(m.stop().len(), 3);
    }

    #[test]
    fn dropping_the_manager_joins_its_threads() {
        let (m, total, _) = manager(&[Behaviour::Halt; 4]);
        m.start().expect("start");
        while total.load(Ordering::SeqCst) < 4 {
            std::thread::yield_now();
        }
        drop(m);
    }

    #[test]
    fn many_vcpus_start_and_stop_quickly() {
        let (mut m, total, _) = manager(&[Behaviour::Halt; 256]);
        let start = Instant::now();
        m.start().expect("start");
        while total.load(Ordering::SeqCst) < 256 {
            std::thread::yield_now();
        }
        assert_eq!(m.stop().len(), 256);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
