//! The reporting month: what Kiva expects, what was reported, and whether it is ready to be
//! finalized in PA2.

pub mod expected;
pub mod not_reported;
pub mod reason;
pub mod refresh;
pub mod snapshot;
pub mod view;
