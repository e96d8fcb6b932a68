//! A local Kiva stand-in.
