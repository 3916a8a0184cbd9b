//! Guest-visible IOMMU models for irvmm.
//!
//! This crate answers three questions for the rest of the VMM: "what does this interrupt
//! message become", "where does this DMA go" and "which remapping entries changed". It makes no KVM calls and reads
//! guest memory only through the narrow [`GuestMemoryReader`] trait, so every model here is
//! unit-testable without `/dev/kvm`.
//!
//! * [`msi`]: the message types every interrupt source speaks.
//! * [`vtd`]: an Intel VT-d remapping unit with DMA remapping (legacy root and context
//!   tables, second-level page walks, context cache and IOTLB), interrupt remapping and
//!   queued invalidation ([`vtd::VtdUnit`]).
//! * [`shadow`]: what a host IOMMU must map and unmap to mirror a passed-through
//!   device's guest DMA mappings.
//! * [`amd`]: an AMD-Vi unit with interrupt remapping, the command buffer, event and GA
//!   logs, and guest virtual APIC posting ([`amd::AmdViUnit`]).

#![warn(missing_docs)]

pub mod amd;
pub mod memory;
pub mod msi;
pub mod shadow;
pub mod vtd;

pub use memory::{GuestMemoryReader, MemError};
pub use msi::{MsiMessage, SourceId};
pub use vtd::{
    DeviceView, DmaFault, DmaInvalidation, DmaMapping, DmaRequest, Effects, IecInvalidation,
    Translation, VtdConfig, VtdUnit,
};
