//! Retries: retry-on conditions, a retry budget, jittered exponential back-off.
#![no_std]
