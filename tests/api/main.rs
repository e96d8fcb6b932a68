//! Black-box tests of the gateway: real HTTP, real Redis (started per test).

#[path = "../support/cluster.rs"]
mod cluster_support;
#[macro_use]
mod helpers;
mod binary;
mod cluster;
mod crash;
mod delivery;
mod expected_loans;
mod expected_store;
mod failover;
mod fairness;
mod fault_proxy;
mod files;
mod first_hour;
mod hardening;
mod hostile;
mod idempotency;
mod metrics;
mod openapi;
mod outage;
mod periods;
mod redis_tls;
mod replicas;
mod reports;
mod secrets;
mod submit;
mod web;
