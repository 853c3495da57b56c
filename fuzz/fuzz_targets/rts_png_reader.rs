//! Fuzz target `rts_png_reader`: the checks in `fuzz/checks.rs`, which the regression tests also run.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rts_png_reader(data));
