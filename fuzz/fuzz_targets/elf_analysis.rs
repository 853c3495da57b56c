//! Fuzz target `elf_analysis`: the checks in `fuzz/checks.rs`, which the regression tests also run.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::elf_analysis(data));
