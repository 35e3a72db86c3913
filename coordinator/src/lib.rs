//! umbra-coordinator: the application side of a shadow copy set.
//!
//! - `protocol`: the writer wire format (JSON lines), documented for other
//!   languages in umbra-writer(7).
//! - `sequence`: the coordinator, its registry of writers and the VSS event
//!   sequence with its deadlines and abort rules.
//! - `provider`: the trait a snapshot mechanism implements (the
//!   copy-on-write provider lives in umbra-fs).
//! - `link`: how the coordinator talks to one writer (a socket, or a program
//!   run per event: `exec`).
//! - `client`: a small library for writers written in Rust.
//!
//! This crate never mounts anything, never touches a volume's files and
//! never knows how a snapshot is made: that is the provider's business.

pub mod client;
pub mod exec;
pub mod link;
pub mod protocol;
pub mod provider;
pub mod sequence;
mod state;

pub use exec::ExecWriter;
pub use link::{LinkError, SocketLink, WriterLink};
pub use protocol::{Component, Event, EventMessage, Failure, Registration, Reply};
pub use provider::{Committed, Provider, ProviderError, ProviderHold, SetPlan};
pub use sequence::{
    Coordinator, Created, Options, Pending, RegisterError, RestoreRequest, Restoring,
    SequenceError, SetRequest, WriterView,
};
pub use state::{SetWriter, WriterState};
