//! The CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes).

use std::path::Path;

use super::{Images, Pixels};
use crate::{Error, Result};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads and concatenates CIFAR-10 batch files (`data_batch_1.bin` ... or `test_batch.bin`).
pub fn read_cifar_batches(paths: &[impl AsRef<Path>]) -> Result<Images> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let bytes = super::read_bounded(path)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::data(
                path,
                format!(
                    "truncated or wrong format: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] > 9 {
                return Err(Error::data(
                    path,
                    format!("record {i} has label {} (labels must be 0..=9)", record[0]),
                ));
            }
            labels.push(record[0]);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(Images {
        pixels: Pixels::Bytes(pixels),
        labels,
        channels: 3,
        height: 32,
        width: 32,
    })
}
