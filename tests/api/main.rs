//! Black-box tests of the gateway: real HTTP, real Redis (started per test).

mod binary;
mod delivery;
mod helpers;
mod idempotency;
mod openapi;
mod outage;
mod reports;
mod submit;
