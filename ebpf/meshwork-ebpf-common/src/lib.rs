//! What meshwork's eBPF programs and their user-space loader share: the layout of every map key
//! and value, the config structs user space writes, and the decision logic the kernel side runs
//! (so the host can test it).
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of padding the compiler could fill with
//! garbage: the kernel hashes keys byte by byte, and the two halves are built by different
//! compilers (the pinned nightly for BPF, stable for user space), so only an explicit layout is
//! a contract.
#![no_std]
// BPF only: the atomic intrinsics behind `word::Word` (the BPF build is nightly anyway).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features, reason = "atomic intrinsics, see word.rs"))]

pub mod addr;
pub mod breaker;
pub mod ratelimit;
pub mod rtt;
pub mod word;

/// How many times a compare-and-swap is retried before the caller gives up. Bounded because the
/// verifier only accepts bounded loops; 8 is far more than two racing CPUs ever need.
pub const MAX_CAS_ATTEMPTS: usize = 8;

/// How many times a CPU tries a breaker slot's try-lock before it gives up (and lets the connect
/// through). Unlike a lost CAS, a busy lock means another CPU is inside a critical section (a
/// decode, a state-machine step and an encode: a few hundred instructions), so waiting it out
/// takes far more than 8 tries: with 8, two connects racing on two CPUs found the lock busy in
/// about one run in four. 1024 tries cover microseconds, still a bounded loop for the verifier.
pub const MAX_LOCK_SPINS: usize = 1024;

/// `aya::Pod` for every type user space reads from or writes to a map.
#[cfg(feature = "user")]
mod pod {
    use crate::{addr, breaker, ratelimit, rtt};
    // SAFETY: each type is #[repr(C)], Copy, has no padding and every bit pattern is valid.
    unsafe impl aya::Pod for ratelimit::RateLimit {}
    unsafe impl aya::Pod for ratelimit::SourceState {}
    unsafe impl aya::Pod for rtt::RttStats {}
    unsafe impl aya::Pod for addr::DestKey {}
    unsafe impl aya::Pod for breaker::BreakerConfig {}
    unsafe impl aya::Pod for breaker::BreakerSlot {}
}
