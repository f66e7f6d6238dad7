//! `traffic-split` (being written).
