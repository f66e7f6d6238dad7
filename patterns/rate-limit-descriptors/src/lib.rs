//! Global rate limiting: descriptors from request attributes, the limit tree, fixed windows.
#![no_std]
