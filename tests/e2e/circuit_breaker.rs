//! End-to-end tests for the circuit-breaker filter (being written).
