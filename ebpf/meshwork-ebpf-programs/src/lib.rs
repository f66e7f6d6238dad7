//! What every meshwork BPF object shares: the panic handler, the license, and small helpers
//! for updating map values in place.
#![no_std]
// Context loads are written in BPF assembly (see `ctx`).
#![feature(asm_experimental_arch)]

use aya_ebpf::EbpfContext;
use aya_ebpf::programs::SockOpsContext;
use meshwork_ebpf_common::addr::{Addr16, DestKey, mapped_v4};
use meshwork_ebpf_common::word::Word;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// Map values are updated in place by several CPUs at once; every field the programs touch is a
/// naturally aligned u64 inside a map value, which is what `Word` needs.
///
/// # Safety
/// `field` must point into a live map value.
#[inline(always)]
pub unsafe fn atomic<'a>(field: *mut u64) -> &'a Word {
    // SAFETY: the caller passes a pointer into a map value, which the kernel keeps 8-aligned
    // and alive for the whole program run.
    unsafe { Word::from_ptr(field) }
}

/// Bytes `[offset, offset + N)` of a packet, or `None` when the packet is shorter. The explicit
/// bound check against `data_end` is what the verifier needs to accept the read.
#[inline(always)]
pub fn packet_bytes<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
    let start = data + offset;
    if start + N > data_end {
        return None;
    }
    // SAFETY: checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

/// The remote end of a sock_ops socket as a map key.
#[inline(always)]
pub fn sock_ops_peer(ctx: &SockOpsContext) -> Option<DestKey> {
    use ctx::sock_ops as f;
    let c = ctx.as_ptr();
    // SAFETY: `c` is the sock_ops context; the offsets are bpf_sock_ops fields.
    unsafe {
        // remote_port holds the port in network order in its upper 16 bits on little-endian
        // kernels (the kernel loads skc_dport and shifts it left by 16).
        let port = u16::from_be((ctx::load_u32::<{ f::REMOTE_PORT }>(c) >> 16) as u16);
        match ctx::load_u32::<{ f::FAMILY }>(c) {
            AF_INET => Some(DestKey::new(mapped_v4(ctx::load_u32::<{ f::REMOTE_IP4 }>(c).to_ne_bytes()), port)),
            AF_INET6 => Some(DestKey::new(
                ip6_bytes([
                    ctx::load_u32::<{ f::REMOTE_IP6 }>(c),
                    ctx::load_u32::<{ f::REMOTE_IP6 + 4 }>(c),
                    ctx::load_u32::<{ f::REMOTE_IP6 + 8 }>(c),
                    ctx::load_u32::<{ f::REMOTE_IP6 + 12 }>(c),
                ]),
                port,
            )),
            _ => None,
        }
    }
}

/// Reads of BPF context fields, in assembly.
///
/// The verifier only accepts a context load as `*(u32 *)(ctx + constant)` on the unmodified
/// context pointer. LLVM, seeing several fields read, happily computes `ctx + 24` once into a
/// register and loads through it later ("dereference of modified ctx ptr ... disallowed"). Clang
/// has `preserve_static_offset` for that; Rust does not, so the load is spelled out.
pub mod ctx {
    use aya_ebpf::cty::c_void;

    /// # Safety
    /// `ctx` must be the program's context and `OFFSET` a readable u32 field of it.
    #[inline(always)]
    pub unsafe fn load_u32<const OFFSET: usize>(ctx: *mut c_void) -> u32 {
        let value: u64;
        // SAFETY: a single load the verifier checks against the context type.
        unsafe {
            core::arch::asm!(
                "{value} = *(u32 *)({ctx} + {offset})",
                value = out(reg) value,
                ctx = in(reg) ctx,
                offset = const OFFSET,
                options(readonly, nostack, preserves_flags),
            );
        }
        value as u32
    }

    /// Offsets in `struct bpf_sock_ops`.
    pub mod sock_ops {
        use aya_ebpf::bindings::bpf_sock_ops as S;
        use core::mem::offset_of;
        pub const OP: usize = offset_of!(S, op);
        pub const ARGS: usize = offset_of!(S, __bindgen_anon_1);
        pub const FAMILY: usize = offset_of!(S, family);
        pub const REMOTE_IP4: usize = offset_of!(S, remote_ip4);
        pub const REMOTE_IP6: usize = offset_of!(S, remote_ip6);
        pub const REMOTE_PORT: usize = offset_of!(S, remote_port);
        pub const SRTT_US: usize = offset_of!(S, srtt_us);
        pub const CB_FLAGS: usize = offset_of!(S, bpf_sock_ops_cb_flags);
    }

    /// Offsets in `struct bpf_sock_addr`.
    pub mod sock_addr {
        use aya_ebpf::bindings::bpf_sock_addr as S;
        use core::mem::offset_of;
        pub const USER_IP4: usize = offset_of!(S, user_ip4);
        pub const USER_IP6: usize = offset_of!(S, user_ip6);
        pub const USER_PORT: usize = offset_of!(S, user_port);
        pub const TYPE: usize = offset_of!(S, type_);
    }
}

/// The sock_ops callback and its first two arguments.
#[inline(always)]
pub fn sock_ops_op(ctx: &SockOpsContext) -> (u32, u32, u32) {
    use ctx::sock_ops as f;
    let c = ctx.as_ptr();
    // SAFETY: sock_ops context fields.
    unsafe { (ctx::load_u32::<{ f::OP }>(c), ctx::load_u32::<{ f::ARGS }>(c), ctx::load_u32::<{ f::ARGS + 4 }>(c)) }
}

/// Adds callbacks to those already requested on the socket (another program may share it).
#[inline(always)]
pub fn request_sock_ops_callbacks(ctx: &SockOpsContext, flags: u32) {
    // SAFETY: a sock_ops context field.
    let current = unsafe { ctx::load_u32::<{ ctx::sock_ops::CB_FLAGS }>(ctx.as_ptr()) };
    let _ = ctx.set_cb_flags((current | flags) as i32);
}

/// An IPv6 address the kernel hands over as four network-order words.
#[inline(always)]
pub fn ip6_bytes(words: [u32; 4]) -> Addr16 {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Declares the object's license. None of the helpers used is GPL-only, so the objects carry the
/// project's license. A macro because the section must be in each bin's own object.
#[macro_export]
macro_rules! license {
    () => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "license")]
        pub static LICENSE: [u8; 11] = *b"Apache-2.0\0";
    };
}
