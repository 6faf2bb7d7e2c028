//! The kinds of job a plan holds, one module each: what the job does when the executor runs
//! it ([`Work::run`]), and what it adds to the sweep's report from the files it wrote
//! ([`Work::results`]).

mod attack;
mod compress;
mod differential;
mod eps_steps;
mod matrix;
mod measure;
mod profile_files;
mod report;
mod train;
mod unbounded;

use std::path::Path;

use serde::Serialize;

pub(super) use attack::Attack;
pub(super) use compress::Compress;
pub(super) use differential::Differential;
pub(super) use eps_steps::EpsSteps;
pub(super) use matrix::Matrix;
pub(super) use measure::Measure;
pub(super) use profile_files::ProfileFiles;
pub(super) use report::Report;
pub(super) use train::Train;
pub(super) use unbounded::Unbounded;

use super::context::Context;
use crate::{Error, Result};

/// What a job does.
pub(super) trait Work {
    /// Runs the job; returns what it did, for the log.
    fn run(&self, context: &Context) -> Result<String>;

    /// Adds what the job wrote to the report's results (read back from its files, so a
    /// report of a resumed or sharded run is the same).
    fn results(&self, _context: &Context, _results: &mut crate::report::Results) -> Result<()> {
        Ok(())
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value).expect("result serialises");
    crate::write_atomically(path, text.as_bytes())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes =
        crate::files::read_input(path, crate::limits::MAX_TEXT_BYTES as u64, 2, Error::data)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, format!("not a result file: {e}")))
}
