//! RESP2, the Redis wire protocol: commands out as arrays of bulk strings, replies in as
//! one of five types. Only what the rate-limit store needs; bounded so a broken or hostile
//! server cannot make the parser allocate without limit.

use std::fmt;

/// A reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// An error reply (`-ERR ...`): the command failed, the connection is still good.
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

/// The byte stream is not RESP: the connection cannot be trusted any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Redis' own limit on a bulk string.
const MAX_BULK: usize = 512 << 20;
const MAX_ARRAY: usize = 1 << 20;
const MAX_DEPTH: usize = 8;
/// A status, error or integer line longer than this is not RESP from a sane server.
const MAX_LINE: usize = 64 << 10;

/// Appends one command (`INCRBY key 1` as `["INCRBY", "key", "1"]`).
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((line, mut used)) = line(buf)? else { return Ok(None) };
    let (kind, text) = line.split_first().ok_or_else(|| ProtocolError("empty line".into()))?;
    let text = std::str::from_utf8(text).map_err(|_| ProtocolError("line is not UTF-8".into()))?;
    let reply = match kind {
        b'+' => Reply::Simple(text.to_owned()),
        b'-' => Reply::Error(text.to_owned()),
        b':' => Reply::Integer(text.parse().map_err(|_| ProtocolError(format!("bad integer {text:?}")))?),
        b'$' => match length(text, MAX_BULK)? {
            None => Reply::Bulk(None),
            Some(n) => {
                if buf.len() < used + n + 2 {
                    return Ok(None);
                }
                if &buf[used + n..used + n + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string not followed by CRLF".into()));
                }
                let data = buf[used..used + n].to_vec();
                used += n + 2;
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match length(text, MAX_ARRAY)? {
            None => Reply::Array(None),
            Some(n) => {
                if depth >= MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deep".into()));
                }
                // Capacity from the data at hand, not from the header: a header may lie.
                let mut items = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    match parse_at(&buf[used..], depth + 1)? {
                        None => return Ok(None),
                        Some((item, len)) => {
                            items.push(item);
                            used += len;
                        }
                    }
                }
                Reply::Array(Some(items))
            }
        },
        other => return Err(ProtocolError(format!("unknown reply type {:?}", *other as char))),
    };
    Ok(Some((reply, used)))
}

/// The first CRLF-terminated line (without CRLF) and the bytes it took.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if buf.len() > MAX_LINE => Err(ProtocolError("line too long".into())),
        None => Ok(None),
    }
}

/// A bulk or array length: -1 is null.
fn length(text: &str, max: usize) -> Result<Option<usize>, ProtocolError> {
    match text.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 && (n as u64) <= max as u64 => Ok(Some(n as usize)),
        _ => Err(ProtocolError(format!("bad length {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"INCRBY", b"edge_user_a_60", b"1"]);
        encode(&mut out, &[b"PING"]);
        assert_eq!(out, b"*3\r\n$6\r\nINCRBY\r\n$14\r\nedge_user_a_60\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (b"-WRONGTYPE Operation\r\n", Reply::Error("WRONGTYPE Operation".into())),
            (b":42\r\n", Reply::Integer(42)),
            (b":-3\r\n", Reply::Integer(-3)),
            (b"$5\r\nhe\r\no\r\n", Reply::Bulk(Some(b"he\r\no".to_vec()))),
            (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+a\r\n",
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(b"x".to_vec())),
                    Reply::Array(Some(vec![Reply::Simple("a".into())])),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes), Ok(Some((want.clone(), bytes.len()))), "{:?}", String::from_utf8_lossy(bytes));
            // Every proper prefix is incomplete, never an error or a wrong reply.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "prefix {cut} of {:?}", String::from_utf8_lossy(bytes));
            }
        }
    }

    #[test]
    fn parses_pipelined_replies_one_at_a_time() {
        let buf = b":1\r\n:1\r\n:7\r\n";
        let (first, used) = parse(buf).unwrap().unwrap();
        assert_eq!((first, used), (Reply::Integer(1), 4));
        assert_eq!(parse(&buf[8..]).unwrap().unwrap().0, Reply::Integer(7));
    }

    #[test]
    fn rejects_what_is_not_resp() {
        for bad in [&b"?x\r\n"[..], b":abc\r\n", b"$-2\r\n", b"$3\r\nabcd\r\n", b"*99999999999\r\n", b"\r\n"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b'+'; MAX_LINE + 1]).is_err());
    }
}
