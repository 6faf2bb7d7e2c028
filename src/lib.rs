//! advcomp: how adversarial examples transfer between a full-precision classifier and its
//! compressed (pruned, fixed-point quantised) versions.
//!
//! One folder per concern: [`data`] (datasets, batching), [`model`] (LeNet5, CifarNet,
//! checkpoints), [`backend`] (which device runs the work), [`train`] (training and evaluation),
//! [`kernels`] (the WGSL kernels and their references), [`compress`], [`attack`], [`transfer`]
//! (adversarial sets and cell metrics), [`report`] (result files, figures, report page),
//! [`sweep`] (the whole study, cached and resumable) and [`profile`] (throughput).
//! The command line lives in the `advcomp` binary, not here.

pub mod attack;
pub mod backend;
pub mod compress;
pub mod data;
mod error;
pub mod kernels;
pub mod model;
pub mod profile;
pub mod report;
pub mod sweep;
pub mod train;
pub mod transfer;

pub use error::{Error, Result};

/// The tool's version, written into every checkpoint it makes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A stable 64-bit FNV-1a hash of `parts` (in order), as 16 hex digits: the key of configs in
/// checkpoints and of cached artefacts.
pub fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let hash = parts
        .into_iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename, so a crash
/// never leaves a half-written file under the final name.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::io(path, e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
