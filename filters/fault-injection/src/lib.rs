//! `fault-injection` (being written).
