//! Device passthrough: a host PCI function given to the guest, served either by the host
//! kernel's VFIO or by a vfio-user device server, behind one backend trait.
//!
//! * [`backend`]: what the guest-visible function needs from a device ([`VfioBackend`]),
//!   with the region, IRQ and DMA types both backends share.
//! * [`caps`]: the region-info capability chain (SPARSE_MMAP, MSIX_MAPPABLE), parsed the
//!   same way from kernel and vfio-user answers.

pub mod backend;
pub mod caps;
pub mod host;
pub mod kernel;
pub mod user;

pub use backend::{
    BackendError, BackendKind, DmaRegion, IrqInfo, Isolation, RegionInfo, RegionMmap,
    VfioBackend,
};
pub use kernel::{KernelOpenError, KernelVfio, VfioKernelDevice};
