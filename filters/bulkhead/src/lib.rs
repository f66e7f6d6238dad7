//! `bulkhead` (being written).
