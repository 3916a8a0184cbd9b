//! Kernel VFIO: host PCI functions bound to vfio-pci, opened through the legacy
//! container/group interface with vfio-ioctls, as [`crate::VfioBackend`]s.
//!
//! A VMM creates one [`KernelVfio`] per VM (with KVM's VFIO pseudo-device when it has the
//! VM fd), opens each `--device vfio,path=...` with [`KernelVfio::open`], and maps guest RAM
//! once, after the first device is open ([`KernelVfio::dma_map`], or each device's
//! `dma_map`: identical ranges are mapped once and shared):
//!
//! ```no_run
//! # fn demo(vm: &kvm_ioctls::VmFd, ram: &[vfio::DmaRegion]) -> Result<(), Box<dyn std::error::Error>> {
//! use vfio::kernel::KernelVfio;
//! let host = KernelVfio::for_vm(vm)?;
//! let nic = host.open("/sys/bus/pci/devices/0000:01:00.0")?; // KernelOpenError: tell the user
//! for region in ram {
//!     host.dma_map(region)?;
//! }
//! # drop(nic); Ok(()) }
//! ```
//!
//! * [`sysfs`]: the checks made before any ioctl, with their one-line instructions
//!   ([`KernelOpenError`]).
//! * [`isolation`]: whether the group's MSIs are isolated, from `allow_unsafe_interrupts`.
//! * [`container`]: the shared container, group bookkeeping and DMA mappings ([`dma`]).
//! * [`device`]: [`VfioKernelDevice`], the backend itself, on the raw calls of [`ioctl`].

pub mod container;
pub mod device;
pub mod dma;
pub mod error;
pub mod ioctl;
pub mod isolation;
pub mod sysfs;

pub use container::KernelVfio;
pub use device::VfioKernelDevice;
pub use error::KernelOpenError;
