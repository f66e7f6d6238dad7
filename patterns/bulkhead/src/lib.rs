//! Bulkhead: a cap on concurrent requests per key, with leases so a dead worker's share is reclaimed.
#![no_std]
