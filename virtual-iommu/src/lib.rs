//! Guest-visible IOMMU models for irvmm.
//!
//! This crate answers two questions for the rest of the VMM: "what does this interrupt
//! message become" and "which remapping entries changed". It makes no KVM calls and reads
//! guest memory only through narrow traits, so every model here is unit-testable without
//! `/dev/kvm`.
//!
//! Today it holds the message types every interrupt source speaks; the VT-d model builds
//! on them.

pub mod msi;

pub use msi::{MsiMessage, SourceId};
