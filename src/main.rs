//! The `umbra` binary. For now it only carries the configuration, the
//! naming of sets and the control protocol; the commands follow.

mod config;
mod naming;
mod protocol;

fn main() {}
