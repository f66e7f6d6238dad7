//! Circuit breaker: consecutive failures or a failure ratio over a window open it; half-open probes close it.
#![no_std]
