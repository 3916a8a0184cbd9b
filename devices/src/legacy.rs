//! Legacy platform controls. TO BE WRITTEN.
/// Placeholder.
pub struct DebugExit;
/// Placeholder.
pub struct AcpiPmControl;
/// Placeholder.
pub struct ResetControl;
