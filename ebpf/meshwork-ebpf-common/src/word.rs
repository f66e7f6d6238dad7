//! A u64 that several CPUs update at once, for fields inside map values.
//!
//! `core::sync::atomic::AtomicU64` has no read-modify-write methods on `bpfel-unknown-none`: the
//! target declares no compare-and-swap (`target_has_atomic` is unset), although BPF has had
//! 64-bit CMPXCHG, XCHG and fetch-add since kernel 5.12 (`-C target-cpu=v3`). So in BPF the same
//! operations go straight to the compiler's atomic intrinsics (nightly, which the BPF build uses
//! anyway), and on the host to `AtomicU64`; the decision logic above this type is identical.

use core::cell::UnsafeCell;

#[repr(transparent)]
pub struct Word(UnsafeCell<u64>);

// SAFETY: every access goes through an atomic operation.
unsafe impl Sync for Word {}

impl core::fmt::Debug for Word {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Word").field(&self.load()).finish()
    }
}

impl Word {
    pub const fn new(value: u64) -> Word {
        Word(UnsafeCell::new(value))
    }

    /// # Safety
    /// `ptr` must be 8-aligned, valid for `'a`, and only accessed atomically meanwhile.
    #[inline(always)]
    pub unsafe fn from_ptr<'a>(ptr: *mut u64) -> &'a Word {
        // SAFETY: Word is a transparent UnsafeCell<u64>; the caller vouches for the pointer.
        unsafe { &*(ptr as *const Word) }
    }

    pub fn into_inner(self) -> u64 {
        self.0.into_inner()
    }

    #[inline(always)]
    pub fn load(&self) -> u64 {
        // SAFETY: a live, aligned u64 (see from_ptr).
        unsafe { imp::load(self.0.get()) }
    }

    /// Replaces `current` with `new`; false when the value was no longer `current`.
    #[inline(always)]
    pub fn compare_exchange(&self, current: u64, new: u64) -> bool {
        // SAFETY: as above.
        unsafe { imp::cas(self.0.get(), current, new) }
    }

    #[inline(always)]
    pub fn fetch_add(&self, n: u64) -> u64 {
        // SAFETY: as above.
        unsafe { imp::fetch_add(self.0.get(), n) }
    }

    #[inline(always)]
    pub fn swap(&self, value: u64) -> u64 {
        // SAFETY: as above.
        unsafe { imp::swap(self.0.get(), value) }
    }
}

#[cfg(target_arch = "bpf")]
mod imp {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg};

    #[inline(always)]
    pub unsafe fn load(p: *mut u64) -> u64 {
        // LLVM's BPF backend cannot select a relaxed atomic load below cpu v4; an aligned 64-bit
        // load is single-copy atomic on every BPF JIT anyway, and the CAS that follows validates
        // what it read. Volatile keeps the compiler from caching it across retries.
        unsafe { core::ptr::read_volatile(p) }
    }
    #[inline(always)]
    pub unsafe fn cas(p: *mut u64, current: u64, new: u64) -> bool {
        // Compare the old value rather than use the intrinsic's success flag: this nightly emits
        // that flag as a `br i8`, which LLVM's bitcode reader (bpf-linker) rejects as
        // "Invalid record". A strong CAS succeeded exactly when the old value was `current`.
        let (old, _) =
            unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, current, new) };
        old == current
    }
    #[inline(always)]
    pub unsafe fn fetch_add(p: *mut u64, n: u64) -> u64 {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, n) }
    }
    #[inline(always)]
    pub unsafe fn swap(p: *mut u64, value: u64) -> u64 {
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(p, value) }
    }
}

#[cfg(not(target_arch = "bpf"))]
mod imp {
    use core::sync::atomic::{AtomicU64, Ordering};

    #[inline(always)]
    pub unsafe fn load(p: *mut u64) -> u64 {
        unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Relaxed)
    }
    #[inline(always)]
    pub unsafe fn cas(p: *mut u64, current: u64, new: u64) -> bool {
        unsafe { AtomicU64::from_ptr(p) }.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }
    #[inline(always)]
    pub unsafe fn fetch_add(p: *mut u64, n: u64) -> u64 {
        unsafe { AtomicU64::from_ptr(p) }.fetch_add(n, Ordering::SeqCst)
    }
    #[inline(always)]
    pub unsafe fn swap(p: *mut u64, value: u64) -> u64 {
        unsafe { AtomicU64::from_ptr(p) }.swap(value, Ordering::SeqCst)
    }
}
