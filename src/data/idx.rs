//! The IDX format of MNIST and Fashion-MNIST, gzipped or raw.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// An IDX file of unsigned bytes: its dimensions and its data, row-major.
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file from disk; gzip is recognised by its magic bytes.
pub fn read_idx_file(path: &Path) -> Result<Idx> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::data(path, "file not found"),
        _ => Error::data(path, format!("cannot read: {e}")),
    })?;
    parse_idx(path, &bytes)
}

/// Parses IDX bytes (gzipped or raw); `path` only names the source in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<Idx> {
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt or truncated gzip stream: {e}")))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(Error::data(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::data(
            path,
            format!(
                "wrong magic number 0x{:02x}{:02x}{:02x}{:02x}: not an IDX file",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::data(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(Error::data(
            path,
            format!(
                "truncated: header of {ndims} dimensions does not fit in {} bytes",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let found = bytes.len() - header;
    if found < expected {
        return Err(Error::data(
            path,
            format!("truncated: dimensions {dims:?} need {expected} bytes of data, found {found}"),
        ));
    }
    if found > expected {
        return Err(Error::data(
            path,
            format!(
                "{} bytes of trailing data after dimensions {dims:?}",
                found - expected
            ),
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}
