//! The one integration-test binary: engine twins, formats, and the command line.

mod analysis;
mod bounds;
mod cli;
mod confinement;
mod daemon;
mod daemon_confinement;
mod diff;
mod elf;
mod faults;
mod formats;
mod fuzz_regressions;
mod harness;
mod help;
mod hermetic;
mod io_safety;
mod llm_real;
mod llm_security;
mod llm_standin;
mod map;
mod memory;
mod policy;
mod properties;
mod tasks;
mod tree;
mod twins;
mod watch;
