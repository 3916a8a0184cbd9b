//! Prints what a fuzz input decodes to, for triaging crashes:
//! `cargo +nightly run --example show_input -- <target> <file>` from `fuzz/`.
//! Add `--run` to also run it through the harness (outside libFuzzer, so a panic shows
//! its message and backtrace directly).

use arbitrary::{Arbitrary, Unstructured};
use irvmm_fuzz::for_each_op;

fn show_ops<'a, S, T>(data: &'a [u8])
where
    S: Arbitrary<'a> + std::fmt::Debug,
    T: Arbitrary<'a> + std::fmt::Debug,
{
    let mut u = Unstructured::new(data);
    match S::arbitrary(&mut u) {
        Ok(setup) => println!("setup: {setup:#x?}"),
        Err(e) => println!("setup does not decode: {e}"),
    }
    for_each_op::<T>(u.take_rest(), |op| println!("{op:x?}"));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: show_input <target> <file> [--run]");
        std::process::exit(2);
    };
    let data = std::fs::read(file).expect("input file");
    let run = args.iter().any(|a| a == "--run");
    match target.as_str() {
        "vtd_mmio" => {
            show_ops::<irvmm_fuzz::vtd_mmio::VtdSetup, irvmm_fuzz::vtd_mmio::VtdOp>(&data);
            if run {
                irvmm_fuzz::vtd_mmio::run(&data);
            }
        }
        "remap_decode" => {
            show_ops::<irvmm_fuzz::remap_decode::RemapSetup, irvmm_fuzz::remap_decode::RemapOp>(
                &data,
            );
            if run {
                irvmm_fuzz::remap_decode::run(&data);
            }
        }
        "ioapic_mmio" => {
            show_ops::<(), irvmm_fuzz::ioapic_mmio::IoApicOp>(&data);
            if run {
                irvmm_fuzz::ioapic_mmio::run(&data);
            }
        }
        "pci_config" => {
            show_ops::<(), irvmm_fuzz::pci_config::PciOp>(&data);
            if run {
                irvmm_fuzz::pci_config::run(&data);
            }
        }
        "kernel_load" => {
            let mut u = Unstructured::new(&data);
            match irvmm_fuzz::kernel_load::KernelInput::arbitrary(&mut u) {
                Ok(input) => println!("{input:#x?}"),
                Err(e) => println!("does not decode: {e}"),
            }
            if run {
                irvmm_fuzz::kernel_load::run(&data);
            }
        }
        other => {
            eprintln!("unknown target {other}");
            std::process::exit(2);
        }
    }
    println!("done");
}
