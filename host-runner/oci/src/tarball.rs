//! Reproducible tar.gz layers: fixed owner, mode and time, and a gzip header without a time,
//! so the same files always give the same digest (and `catalog build` the same sha256).

use std::io::{Read, Write};

use anyhow::Context;

/// A tar of `files` (path, bytes), in the given order; and its gzip.
pub struct TarGz {
    pub tar: Vec<u8>,
    pub gz: Vec<u8>,
}

pub fn pack(files: &[(String, Vec<u8>)]) -> anyhow::Result<TarGz> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_slice()).with_context(|| format!("adding {path} to a tar"))?;
    }
    let tar = builder.into_inner()?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    Ok(TarGz { tar, gz: gz.finish()? })
}

/// The files of a tar.gz, at most `limit` bytes unpacked (a layer is untrusted input).
pub fn unpack(gz: &[u8], limit: u64) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let decoder = flate2::read::GzDecoder::new(gz).take(limit + 1);
    let mut archive = tar::Archive::new(decoder);
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().context("reading a tar.gz layer")? {
        let mut entry = entry.context("reading a tar.gz layer")?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).with_context(|| format!("reading {path} from a tar.gz layer"))?;
        total += data.len() as u64;
        anyhow::ensure!(total <= limit, "the tar.gz layer unpacks to more than {limit} bytes");
        files.push((path, data));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_reproducible_and_round_trips() {
        let files =
            vec![("plugin.wasm".to_owned(), b"\0asm\x01\0\0\0".to_vec()), ("a/b.txt".to_owned(), b"hi".to_vec())];
        let a = pack(&files).unwrap();
        let b = pack(&files).unwrap();
        assert_eq!(a.gz, b.gz);
        assert_eq!(unpack(&a.gz, 1 << 20).unwrap(), files);
        assert!(unpack(&a.gz, 4).is_err(), "the unpack limit holds");
    }
}
