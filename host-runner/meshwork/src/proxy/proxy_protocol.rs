//! The PROXY protocol (v1 text and v2 binary, haproxy's spec) on listeners that ask for it: a
//! load balancer in front tells meshwork who the client is. The header is parsed by the `ppp`
//! crate from bytes peeked off the socket, and exactly the header is consumed, so the TLS
//! handshake or HTTP request after it is untouched.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header accepted: v1's 107 bytes, or v2's 16 plus a bounded payload.
const MAX_HEADER: usize = 16 + 1024;

/// Reads the header: `Some((client, destination))` for a proxied TCP connection, `None` for a
/// LOCAL (health check) or UNKNOWN one (the socket's own addresses stand).
pub async fn read_header(stream: &mut TcpStream) -> std::io::Result<Option<(SocketAddr, SocketAddr)>> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the PROXY header"));
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == seen || n == MAX_HEADER {
                // Nothing new arrived (peek returns at once with what is there): wait a little.
                if n == MAX_HEADER {
                    return Err(invalid("header longer than the PROXY protocol allows"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            seen = n;
            continue;
        }
        let (length, addresses) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_addresses(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_addresses(&h)),
            HeaderResult::V1(Err(e)) => return Err(invalid(&format!("{e:?}"))),
            HeaderResult::V2(Err(e)) => return Err(invalid(&format!("{e:?}"))),
        };
        let mut header = vec![0u8; length];
        stream.read_exact(&mut header).await?;
        return Ok(addresses);
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a PROXY protocol header: {why}"))
}

fn v1_addresses(a: &ppp::v1::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        ppp::v1::Addresses::Tcp4(ip) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(ip) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_addresses(h: &ppp::v2::Header<'_>) -> Option<(SocketAddr, SocketAddr)> {
    if h.command == ppp::v2::Command::Local {
        return None;
    }
    match h.addresses {
        ppp::v2::Addresses::IPv4(ip) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        ppp::v2::Addresses::IPv6(ip) => Some((
            SocketAddr::new(ip.source_address.into(), ip.source_port),
            SocketAddr::new(ip.destination_address.into(), ip.destination_port),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn parse(bytes: Vec<u8>) -> (std::io::Result<Option<(SocketAddr, SocketAddr)>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for chunk in bytes.chunks(7) {
                c.write_all(chunk).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            c.shutdown().await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let result = read_header(&mut s).await;
        let mut rest = Vec::new();
        if result.is_ok() {
            s.read_to_end(&mut rest).await.unwrap();
        }
        client.await.unwrap();
        (result, rest)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn v1_and_v2_headers_give_the_client_and_leave_the_rest() {
        let (r, rest) = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n".to_vec()).await;
        let (client, dest) = r.unwrap().unwrap();
        assert_eq!(client, "203.0.113.7:51000".parse().unwrap());
        assert_eq!(dest, "10.0.0.1:443".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            ("[2001:db8::1]:4000".parse::<SocketAddr>().unwrap(), "[2001:db8::2]:443".parse::<SocketAddr>().unwrap()),
        )
        .build()
        .unwrap();
        let (r, rest) = parse([header, b"\x16\x03\x01".to_vec()].concat()).await;
        assert_eq!(r.unwrap().unwrap().0, "[2001:db8::1]:4000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");

        let (r, _) = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(r.is_err(), "a request without the header is refused");
    }
}
