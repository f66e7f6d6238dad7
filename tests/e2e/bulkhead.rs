//! End-to-end tests for the bulkhead filter (being written).
