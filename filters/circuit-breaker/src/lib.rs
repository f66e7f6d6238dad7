//! `circuit-breaker` (being written).
