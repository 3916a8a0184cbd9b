//! Device passthrough: a host PCI function given to the guest, served either by the host
//! kernel's VFIO or by a vfio-user device server, behind one backend trait.
//!
//! * [`backend`]: what the guest-visible function needs from a device ([`VfioBackend`]),
//!   with the region, IRQ and DMA types both backends share.
//! * [`caps`]: the region-info capability chain (SPARSE_MMAP, MSIX_MAPPABLE), parsed the
//!   same way from kernel and vfio-user answers.
//! * [`function`]: the guest-visible PCI function ([`VfioPciFunction`]): configuration
//!   space with BARs, ROM, MSI and MSI-X emulated, BARs mapped or trapped, the MSI-X table
//!   placed by the host's MSI isolation, the device's interrupts enabled with the VMM's
//!   eventfds.
//! * [`kernel`]: the host kernel's VFIO (`/dev/vfio`); [`user`]: a vfio-user server.
//! * [`host`]: host facts (whether irqfd interrupts can be posted).

pub mod backend;
pub mod caps;
pub mod function;
pub mod host;
pub mod kernel;
pub mod user;

pub use backend::{
    BackendError, BackendKind, DmaRegion, IrqInfo, Isolation, RegionInfo, RegionMmap, VfioBackend,
};
pub use function::{FunctionError, Interrupts, IrqNeeds, VectorSet, VfioPciFunction};
pub use kernel::{KernelOpenError, KernelVfio, VfioKernelDevice};
