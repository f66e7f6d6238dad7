//! Just enough protobuf for the echo service's messages (test code: a few fields by hand).

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn string(out: &mut Vec<u8>, field: u32, s: &[u8]) {
    if s.is_empty() {
        return;
    }
    varint(out, u64::from(field << 3 | 2));
    varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v == 0 {
        return;
    }
    varint(out, u64::from(field << 3));
    varint(out, v);
}

/// `meshwork.test.v1.EchoRequest`.
pub fn echo_request(text: &str, status: u32, message: &str, delay_ms: u32) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, text.as_bytes());
    uint(&mut out, 2, u64::from(status));
    string(&mut out, 3, message.as_bytes());
    uint(&mut out, 4, u64::from(delay_ms));
    out
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Every (field, bytes-or-varint) of a message, in order.
pub fn fields(buf: &[u8]) -> Vec<(u32, Result<Vec<u8>, u64>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some(key) = read_varint(buf, &mut at) else { break };
        let field = (key >> 3) as u32;
        match key & 7 {
            0 => {
                let Some(v) = read_varint(buf, &mut at) else { break };
                out.push((field, Err(v)));
            }
            2 => {
                let Some(len) = read_varint(buf, &mut at) else { break };
                let end = at + len as usize;
                let Some(bytes) = buf.get(at..end) else { break };
                out.push((field, Ok(bytes.to_vec())));
                at = end;
            }
            _ => break,
        }
    }
    out
}

/// `EchoReply.text` and its metadata entries.
pub fn echo_reply(buf: &[u8]) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut metadata = Vec::new();
    for (field, value) in fields(buf) {
        match (field, value) {
            (1, Ok(b)) => text = String::from_utf8_lossy(&b).into_owned(),
            (2, Ok(entry)) => {
                let (mut k, mut v) = (String::new(), String::new());
                for (f, val) in fields(&entry) {
                    match (f, val) {
                        (1, Ok(b)) => k = String::from_utf8_lossy(&b).into_owned(),
                        (2, Ok(b)) => v = String::from_utf8_lossy(&b).into_owned(),
                        _ => {}
                    }
                }
                metadata.push((k, v));
            }
            _ => {}
        }
    }
    (text, metadata)
}
