//! umbra-ids: the identifiers every crate passes around, so that a set id
//! is never taken for a volume id or a plain number from the store through
//! the coordinator, the control protocol and the daemon. They serialize as
//! their number (JSON, postcard), so the wire and the catalog are unchanged.
//! This crate holds types only: no I/O, no dependency on any other crate of
//! umbra.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A volume's row id in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VolumeId(pub i64);

/// A shadow copy set's row id in the catalog; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SetId(pub i64);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
