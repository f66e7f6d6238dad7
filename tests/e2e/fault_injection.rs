//! End-to-end tests for the fault-injection filter (being written).
