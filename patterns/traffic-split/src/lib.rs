//! Traffic split: match rules, then a weighted pick among backends.
#![no_std]
