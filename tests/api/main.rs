//! Black-box tests of the gateway: real HTTP, real Redis (started per test).

#[path = "../support/cluster.rs"]
mod cluster_support;
#[path = "../support/workbooks.rs"]
mod workbooks;
#[macro_use]
mod helpers;
mod attacks;
mod batch_kinds;
mod binary;
mod cluster;
mod crash;
mod delivery;
mod demo;
mod durability;
mod expected_loans;
mod expected_store;
mod exports;
mod failover;
mod fairness;
mod fault_proxy;
mod files;
mod first_hour;
mod hardening;
mod hostile;
mod hostile_files;
mod idempotency;
mod metrics;
mod openapi;
mod operator_actions;
mod outage;
mod periods;
mod queue_summary;
mod raw_http;
mod redis_tls;
mod replicas;
mod reports;
mod secrets;
mod submit;
mod truth;
mod web;
