//! End-to-end tests for the timeout filter (being written).
