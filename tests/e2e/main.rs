//! End-to-end tests: the real `gancho` binary, real HTTP over loopback, a real store in a temp
//! folder. One test binary, modules by subject. It is a test target of the `gancho` package
//! (`crates/gancho/Cargo.toml`), so cargo builds the binary it runs before it, with the same
//! features (fail points included).

// Test code: a failed expectation is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

mod actions;
mod admin;
// Shared helpers; some serve only a few of the tests.
mod bad_input;
mod browser;
mod cli;
mod cluster;
mod cluster_faults;
mod cluster_ingress;
mod cluster_ops;
mod crash;
mod dashboard;
mod hostile;
mod invariants;
mod operations;
mod poison;
mod retention;
mod rule_tests;
mod rules;
mod shutdown;
mod signed;
mod streaming;
#[allow(dead_code)]
#[path = "../support/lib.rs"]
mod support;
mod tidy;
mod webhooks;
