//! End-to-end tests: the real `gancho` binary, real HTTP over loopback, a real store in a temp
//! folder. One test binary, modules by subject.

// Test code: a failed expectation is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

mod actions;
mod bad_input;
mod cli;
mod crash;
mod rules;
mod shutdown;
mod tidy;
mod webhooks;
