//! End-to-end tests for the traffic-split filter (being written).
