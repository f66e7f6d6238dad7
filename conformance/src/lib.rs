//! meshwork's conformance suites and their runner.

pub mod adapters;
pub mod attest;
pub mod intent;
pub mod outcome;
pub mod probe;
pub mod report;
pub mod runner;
pub mod suites;
