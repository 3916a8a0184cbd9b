//! Writes the `amd_mmio` seed inputs into `fuzz/corpus/amd_mmio/`:
//!
//!     cargo run --example gen_amd_mmio_seeds
//!
//! The seeds are also regression inputs: `amd_mmio`'s tests check that the committed files
//! are current and still pass.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/amd_mmio");
    let n = irvmm_fuzz::amd_mmio::write_seeds(&dir)?;
    println!("wrote {n} seeds to {}", dir.display());
    Ok(())
}
