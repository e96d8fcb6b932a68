//! Black-box tests of the gateway: real HTTP, real Redis (started per test).

#[macro_use]
mod helpers;
mod binary;
mod crash;
mod delivery;
mod fault_proxy;
mod first_hour;
mod hardening;
mod hostile;
mod idempotency;
mod openapi;
mod outage;
mod reports;
mod secrets;
mod submit;
