//! The `pulse` binary: command line, configuration and wiring of the crates.
//!
//! It owns no KPI rules (those are in `pulse-engine`) and no input formats
//! (`pulse-model`); it reads files and flags, builds the engine on a store,
//! and prints what the engine reports.

pub mod cli;
pub mod config;
mod demo;
mod files;
pub mod memory;
mod run;
mod runtime;
