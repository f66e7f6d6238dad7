//! End-to-end tests for the global-rate-limit filter (being written).
