//! The `umbra` binary. For now it only carries the configuration and the
//! naming of sets; the commands follow.

mod config;
mod naming;

fn main() {}
