//! repayment-gateway: between an MFI's MIS and Kiva's Partner API.
//!
//! Flow, left to right only: `api` → `intake` → `store` (→ delivery → Kiva).

pub mod api;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod intake;
pub mod kiva;
pub mod metrics;
pub mod periods;
pub mod sandbox;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod web;
