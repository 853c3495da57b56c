//! The one integration-test binary: engine twins, formats, and the command line.

mod analysis;
mod cli;
mod daemon;
mod elf;
mod formats;
mod harness;
mod map;
mod memory;
mod tasks;
mod tree;
mod twins;
