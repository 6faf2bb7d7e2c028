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
    let bytes = super::read_bounded(path)?;
    parse_idx(path, &bytes)
}

/// Parses IDX bytes (gzipped or raw); `path` only names the source in errors. A gzip stream
/// is inflated only as far as its IDX header says the file reaches (one byte more, to tell
/// trailing data), so a small file that inflates to gigabytes is refused without holding them.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<Idx> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        let (dims, expected) = header(path, bytes)?;
        return body(path, dims, expected, &bytes[4 + 4 * bytes[3] as usize..]);
    }
    let corrupt =
        |e: std::io::Error| Error::data(path, format!("corrupt or truncated gzip stream: {e}"));
    let mut stream = flate2::read::GzDecoder::new(bytes);
    let mut head = [0u8; 4];
    let got = read_up_to(&mut stream, &mut head).map_err(corrupt)?;
    let mut header_bytes = head[..got].to_vec();
    if got == 4 {
        let mut dims = vec![0u8; 4 * head[3] as usize];
        let got = read_up_to(&mut stream, &mut dims).map_err(corrupt)?;
        header_bytes.extend(&dims[..got]);
    }
    let (dims, expected) = header(path, &header_bytes)?;
    let mut data = Vec::new();
    stream
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(corrupt)?;
    body(path, dims, expected, &data)
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn read_up_to(stream: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The dimensions an IDX header declares and the data bytes they need (checked against
/// overflow and [`crate::limits::MAX_DATA_BYTES`]).
fn header(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, usize)> {
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
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= crate::limits::MAX_DATA_BYTES)
        .ok_or_else(|| {
            Error::data(
                path,
                format!(
                    "dimensions {dims:?} claim more than {} GiB of data: not a dataset advcomp can read",
                    crate::limits::MAX_DATA_BYTES >> 30
                ),
            )
        })?;
    Ok((dims, expected))
}

/// Checks that `data` (what follows the header) holds exactly `expected` bytes.
fn body(path: &Path, dims: Vec<usize>, expected: usize, data: &[u8]) -> Result<Idx> {
    let found = data.len();
    if found < expected {
        return Err(Error::data(
            path,
            format!("truncated: dimensions {dims:?} need {expected} bytes of data, found {found}"),
        ));
    }
    if found > expected {
        return Err(Error::data(
            path,
            format!("trailing data after the {expected} bytes that dimensions {dims:?} need"),
        ));
    }
    Ok(Idx {
        dims,
        data: data.to_vec(),
    })
}
