//! End-to-end tests for the retry filter (being written).
