//! `global-rate-limit` (being written).
