//! ACPI tables. TO BE WRITTEN.
