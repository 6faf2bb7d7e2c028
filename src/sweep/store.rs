//! A sweep's output folder: the lock that keeps a second sweep out, the log, the progress
//! bars, and the cleanup of temporary files a killed run left behind.
//!
//! Every artefact is written by [`crate::write_atomically`] (temporary file, then rename) under
//! a name that carries the hash of everything it depends on, so a file that exists is complete
//! and current; resuming is nothing more than skipping what exists.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::files::remove_stale_temporaries;
use crate::{Error, Result};

/// A sub-folder of the output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Folder {
    /// Checkpoints: the baselines and the compressed models.
    Models,
    /// Adversarial sets.
    Sets,
    /// One result file per job (or per cell).
    Cells,
    /// The report's figures.
    Figures,
}

impl Folder {
    pub const ALL: [Folder; 4] = [Folder::Models, Folder::Sets, Folder::Cells, Folder::Figures];

    pub fn name(self) -> &'static str {
        match self {
            Folder::Models => "models",
            Folder::Sets => "sets",
            Folder::Cells => "cells",
            Folder::Figures => crate::report::FIGURES,
        }
    }
}

pub(super) struct Store {
    root: PathBuf,
    /// Held for the whole run: the OS releases it when the process ends, however it ends.
    _lock: Option<File>,
    /// `sweep.log` (a sweep's folder), or none (lines go to stderr only).
    log: Option<Mutex<File>>,
    start: Instant,
    pub multi: MultiProgress,
    pub overall: ProgressBar,
}

impl Store {
    /// Opens `root` for one whole run (`shared` false: no other run may use it meanwhile) or
    /// for one shard of a stage (`shared` true: other shards may run beside it, a whole run
    /// may not). Only a whole run clears stale temporary files: a shard cannot tell a killed
    /// process's temporary from one another node is writing, so it leaves them (harmless;
    /// the next whole run on the folder removes them).
    pub fn open(root: &Path, shared: bool) -> Result<Self> {
        for folder in Folder::ALL {
            let dir = root.join(folder.name());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let lock = lock(root, shared, "sweep")?;
        // Only now, holding the lock alone, is it safe to clear what a killed run left.
        if !shared {
            remove_stale_temporaries(root, None, false);
            for folder in Folder::ALL {
                remove_stale_temporaries(&root.join(folder.name()), None, false);
            }
        }
        let log_path = root.join("sweep.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        Ok(Self::new(root, Some(lock), Some(log)))
    }

    /// A folder of the transfer command's adversarial sets (`--cache`) or of the profile's
    /// files, or none: locked while `what` (the command) uses it, nothing else written into it.
    pub fn cache(root: Option<&Path>, what: &str) -> Result<Self> {
        let lock = match root {
            Some(root) => {
                std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
                Some(lock(root, false, what)?)
            }
            None => None,
        };
        Ok(Self::new(root.unwrap_or(Path::new("")), lock, None))
    }

    fn new(root: &Path, lock: Option<File>, log: Option<File>) -> Self {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{prefix:>18} [{bar:30}] {percent:>3}% elapsed {elapsed_precise}, eta {eta_precise}",
            )
            .expect("valid template"),
        ));
        overall.set_prefix("overall");
        Self {
            root: root.to_path_buf(),
            _lock: lock,
            log: log.map(Mutex::new),
            start: Instant::now(),
            multi,
            overall,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A line in `sweep.log` and on stderr (above the progress bars).
    pub fn log(&self, message: &str) {
        let line = format!("[{:>7.1}s] {message}", self.start.elapsed().as_secs_f64());
        if let Some(Ok(mut log)) = self.log.as_ref().map(Mutex::lock) {
            let _ = writeln!(log, "{line}");
        }
        self.multi.suspend(|| eprintln!("{line}"));
    }

    /// A stage bar under the overall one.
    pub fn stage(&self, len: u64, label: &str, unit: &str) -> ProgressBar {
        let bar = self.multi.add(
            ProgressBar::new(len).with_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>18}} [{{bar:30}}] {{pos}}/{{len}} {unit} (eta {{eta}})"
                ))
                .expect("valid template"),
            ),
        );
        bar.set_prefix(label.to_string());
        bar
    }

    /// Adds an externally made bar (an attack's image bar) under the overall one.
    pub fn add(&self, bar: ProgressBar) -> ProgressBar {
        self.multi.add(bar)
    }
}

/// `root/.lock`, held exclusively (a whole run) or shared (one shard of a stage).
fn lock(root: &Path, shared: bool, what: &str) -> Result<File> {
    let lock_path = root.join(".lock");
    // Read and write: NFS turns flock into byte-range locks, and a shared (read) lock needs a
    // file open for reading.
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    let locked = if shared {
        lock.try_lock_shared()
    } else {
        lock.try_lock()
    };
    match locked {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(Error::usage(format!(
                "another {what} is running on {} (it holds {}); wait for it or choose \
                 another folder",
                root.display(),
                lock_path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
    }
    Ok(lock)
}
