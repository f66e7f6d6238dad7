//! Traffic for `scripts/bench_ebpf.sh`: `send` blasts small UDP datagrams with sendmmsg(2) for a
//! fixed time; `recv` counts what arrives with recvmmsg(2). Each prints one JSON line.
//!
//! udp-flood send SRC DST SECONDS
//! udp-flood recv BIND SECONDS

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const PAYLOAD: usize = 18; // 64-byte frames: 14 Ethernet + 20 IPv4 + 8 UDP + 18 + 4 FCS

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: udp-flood send SRC DST SECONDS | recv BIND SECONDS";
    let secs = |s: &str| Duration::from_secs_f64(s.parse().expect(usage));
    match args.get(1).map(String::as_str) {
        Some("send") if args.len() == 5 => {
            send(args[2].parse().expect(usage), args[3].parse().expect(usage), secs(&args[4]))
        }
        Some("recv") if args.len() == 4 => recv(args[2].parse().expect(usage), secs(&args[3])),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn send(src: SocketAddr, dst: SocketAddr, duration: Duration) {
    let socket = UdpSocket::bind(src).expect("bind");
    socket.connect(dst).expect("connect");
    let payload = [0x6du8; PAYLOAD];
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: PAYLOAD }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: an all-zero mmsghdr is valid; then point it at one iovec.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while start.elapsed() < duration {
        // SAFETY: msgs points at BATCH valid headers whose iovecs outlive the call.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            errors += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(r#"{{"sent": {sent}, "errors": {errors}, "seconds": {secs:.3}, "pps": {:.0}}}"#, sent as f64 / secs);
}

fn recv(bind: SocketAddr, duration: Duration) {
    let socket = UdpSocket::bind(bind).expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iov: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: b.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: as in send.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    println!(r#"{{"ready": "{}"}}"#, socket.local_addr().expect("addr"));
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        // SAFETY: msgs points at BATCH headers with buffers that outlive the call.
        let n = unsafe { libc::recvmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut()) };
        if n > 0 {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            received += n as u64;
        }
    }
    let secs = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(0.0);
    let pps = if secs > 0.0 { received as f64 / secs } else { 0.0 };
    println!(r#"{{"received": {received}, "seconds": {secs:.3}, "pps": {pps:.0}}}"#);
}
