//! Addresses as map keys. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so one map and one LPM
//! trie hold both families, and a v4 prefix `/n` is the mapped prefix `/96+n`.

/// A 16-byte address in network byte order; IPv4 is IPv4-mapped.
pub type Addr16 = [u8; 16];

/// The IPv4-mapped form of an IPv4 address given as its four bytes in network order.
#[inline(always)]
pub const fn mapped_v4(octets: [u8; 4]) -> Addr16 {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// Prefix length of an IPv4 prefix in the mapped space.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// A TCP destination (remote address and port) as sock_ops and connect hooks see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub addr: Addr16,
    /// Host byte order.
    pub port: u16,
    /// Always 0: the kernel hashes every byte of a key.
    pub pad: u16,
}

impl DestKey {
    #[inline(always)]
    pub const fn new(addr: Addr16, port: u16) -> DestKey {
        DestKey { addr, port, pad: 0 }
    }
}

/// `Some(v4 octets)` when `addr` is IPv4-mapped.
pub fn as_v4(addr: &Addr16) -> Option<[u8; 4]> {
    if addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trips() {
        let a = mapped_v4([198, 18, 0, 1]);
        assert_eq!(as_v4(&a), Some([198, 18, 0, 1]));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(as_v4(&v6), None);
    }

    #[test]
    fn dest_key_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<DestKey>(), 20);
    }
}
