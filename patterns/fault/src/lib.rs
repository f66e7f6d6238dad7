//! Fault injection: which requests get a delay or an abort.
#![no_std]
