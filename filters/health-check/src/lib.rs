//! `health-check` (being written).
