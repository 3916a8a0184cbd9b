//! The vCPU manager driving real KVM vCPUs: the kick protocol against `KVM_RUN` for a guest
//! halted in the kernel (`cli; hlt`, only a signal gets it out), a guest spinning in guest
//! mode (`jmp $`) and a guest exiting to user space all the time (`out` in a loop). Skipped
//! when /dev/kvm cannot be opened. (A vCPU that stops on its own, a crash, is covered by the
//! probe's `triple-fault` integration test and by the fake vCPUs of the manager's tests.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::BusDevice;
use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::manager::CpuManager;
use super::{Vcpu, VcpuContext};
use crate::bus::Bus;
use crate::vm::exit::ExitState;

/// Where the guest code goes (real mode, CS = 0).
const CODE: u64 = 0x1000;
/// Guest RAM.
const RAM: usize = 0x10000;
/// The port the `out` loop writes.
const COUNTER_PORT: u16 = 0x80;
/// `cli; hlt; jmp $-3`: halted in the kernel for good.
const HALT: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];
/// `jmp $`: always in guest mode.
const SPIN: &[u8] = &[0xeb, 0xfe];
/// `out 0x80, al; jmp $-4`: an exit to user space per iteration.
const OUT_LOOP: &[u8] = &[0xe6, COUNTER_PORT as u8, 0xeb, 0xfc];

/// Counts writes to its port.
struct Counter(Arc<AtomicU64>);

impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Rig {
    manager: CpuManager<Vcpu>,
    exit: Arc<ExitState>,
    outs: Arc<AtomicU64>,
    _vm: Arc<VmFd>,
}

/// Real mode, CS = 0, IP = [`CODE`], interrupts off.
fn point_at_code(fd: &VcpuFd) {
    let mut sregs = fd.get_sregs().expect("sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).expect("sregs");
    let mut regs = fd.get_regs().expect("regs");
    regs.rip = CODE;
    regs.rflags = 2;
    fd.set_regs(&regs).expect("regs");
}

/// `n` vCPUs running `code` in real mode with an in-kernel LAPIC (split irqchip), or `None`
/// without /dev/kvm.
fn rig(n: u32, code: &[u8]) -> Option<Rig> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("SKIPPED: /dev/kvm cannot be opened ({e})");
            return None;
        }
    };
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    vm.enable_cap(&cap).expect("split irqchip");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("RAM");
    mem.write_slice(code, GuestAddress(CODE)).expect("code");
    let host = mem.iter().next().expect("one region").as_ptr();
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the mapping belongs to `mem`, which the vCPU context keeps alive longer than
    // the VM's vCPUs run.
    unsafe { vm.set_user_memory_region(region) }.expect("memory");
    let exit = Arc::new(ExitState::new().expect("exit state"));
    let outs = Arc::new(AtomicU64::new(0));
    let mut pio = Bus::new("pio");
    pio.insert(
        u64::from(COUNTER_PORT),
        1,
        Arc::new(Mutex::new(Counter(outs.clone()))),
    )
    .expect("counter port");
    let ctx = Arc::new(VcpuContext {
        pio,
        mmio: Bus::new("mmio"),
        ioapic_eoi: Box::new(|_| {}),
        exit: exit.clone(),
        mem,
    });
    let vcpus = (0..n)
        .map(|i| {
            let fd = vm.create_vcpu(u64::from(i)).expect("vCPU");
            point_at_code(&fd);
            Vcpu {
                fd,
                index: i,
                apic_id: i,
                wait_for_sipi: false,
                ctx: ctx.clone(),
            }
        })
        .collect();
    let failures = exit.clone();
    let manager = CpuManager::spawn(
        vcpus,
        "test-vcpu",
        256 << 10,
        Box::new(move |i, msg| failures.fail(format!("vCPU {i}: {msg}"))),
    )
    .expect("threads");
    Some(Rig {
        manager,
        exit,
        outs,
        _vm: vm,
    })
}

/// Stops and joins within a bound, and nothing was recorded as a reason to stop.
fn stop_promptly(mut rig: Rig, n: usize) {
    let start = Instant::now();
    assert_eq!(rig.manager.stop().len(), n);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(rig.exit.get(), None);
}

#[test]
fn vcpus_halted_in_the_kernel_are_kicked_out() {
    let Some(rig) = rig(4, HALT) else { return };
    rig.manager.start().expect("start");
    // Let them enter the guest and halt.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..10 {
        rig.manager.pause().expect("pause");
        rig.manager.resume().expect("resume");
    }
    stop_promptly(rig, 4);
}

#[test]
fn vcpus_spinning_in_the_guest_are_kicked_out() {
    let Some(rig) = rig(2, SPIN) else { return };
    rig.manager.start().expect("start");
    std::thread::sleep(Duration::from_millis(50));
    rig.manager.pause().expect("pause");
    rig.manager.resume().expect("resume");
    stop_promptly(rig, 2);
}

#[test]
fn paused_vcpus_do_not_run_and_resumed_ones_do() {
    let Some(rig) = rig(2, OUT_LOOP) else { return };
    rig.manager.start().expect("start");
    let wait_for_progress = |from: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.outs.load(Ordering::SeqCst) <= from {
            assert!(Instant::now() < deadline, "the guest made no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_progress(0);
    for _ in 0..5 {
        rig.manager.pause().expect("pause");
        let frozen = rig.outs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rig.outs.load(Ordering::SeqCst), frozen, "a paused vCPU ran");
        rig.manager.resume().expect("resume");
        wait_for_progress(frozen);
    }
    stop_promptly(rig, 2);
}

/// An AP in wait-for-SIPI is primed without running a guest instruction: its `out` loop
/// never reaches the port, its RIP stays, it is back in wait-for-SIPI, and the signal that
/// held the entry back is neither pending nor delivered afterwards.
#[test]
fn a_primed_ap_runs_nothing_and_waits_for_its_sipi() {
    use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_INIT_RECEIVED};
    let Some(rig) = rig(1, OUT_LOOP) else {
        return;
    };
    let mut ap = rig._vm.create_vcpu(1).expect("AP");
    point_at_code(&ap);
    ap.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_INIT_RECEIVED,
    })
    .expect("wait-for-SIPI");
    super::prime::prime_ap(&mut ap).expect("prime");
    assert_eq!(ap.get_regs().expect("regs").rip, CODE);
    assert_eq!(
        ap.get_mp_state().expect("mp state").mp_state,
        KVM_MP_STATE_INIT_RECEIVED
    );
    assert_eq!(
        rig.outs.load(Ordering::SeqCst),
        0,
        "the AP ran its out loop"
    );
    // SAFETY: reading this thread's pending set into an initialised set.
    let pending = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        libc::sigismember(&set, super::prime::prime_signal())
    };
    assert_eq!(pending, 0, "the priming signal is still pending");
    stop_promptly(rig, 1);
}
