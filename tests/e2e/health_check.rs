//! End-to-end tests for the health-check filter (being written).
