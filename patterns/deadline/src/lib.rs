//! Timeouts: the deadline a request gets and what is left of it for each try.
#![no_std]
