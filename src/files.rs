//! How advcomp writes files: atomically (a temporary file beside the output, then a rename),
//! never over one of the command's inputs, checked for writability before the work starts,
//! byte-reproducible (safetensors headers with sorted metadata), and cleaned up when a run is
//! killed (stale temporaries removed on the next run) or interrupted (SIGINT / SIGTERM remove
//! the temporaries in flight before the process exits).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// The temporaries being written right now: what an interrupt removes.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// `.name.tmp-PID.ext`: the temporary file of `path` for this process (the extension kept, so
/// writers that pick a format from it, like the PNG encoder, still do).
fn temporary(path: &Path, file_name: &OsStr) -> PathBuf {
    let extension = path
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!(
        ".{}.tmp-{}{extension}",
        file_name.to_string_lossy(),
        std::process::id()
    ))
}

/// The SHA-256 of `bytes` as hex (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of a file's bytes as hex.
pub fn sha256_of_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename, so a crash
/// never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |tmp| {
        let mut file = std::fs::File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })
}

/// [`write_atomically`] for a writer that makes the file itself: `write` writes the
/// temporary path it is given, which is then renamed to `path`.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("{}: not a file path", path.display())))?;
    let tmp = temporary(path, file_name);
    lock_in_flight().push(tmp.clone());
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    lock_in_flight().retain(|p| *p != tmp);
    result.map_err(io)
}

fn lock_in_flight() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list as it was: still usable.
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process id in a temporary's name `.x.tmp-PID[.ext]`, if it is one of ours.
fn temporary_pid(name: &str) -> Option<u32> {
    let (stem, rest) = name.rsplit_once(".tmp-")?;
    let pid = rest.split('.').next()?;
    (stem.starts_with('.') && stem.len() > 1)
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` may still be running (and writing its temporary). Where the system
/// cannot tell (no /proc), it is taken as gone.
fn alive(pid: u32) -> bool {
    pid == std::process::id()
        || (Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the temporaries in `dir` that killed runs left behind: files named as
/// [`write_atomically`] names them (of the file `only` when given, else of any file). With
/// `keep_live_owners`, a temporary whose process still runs is kept (it may be mid-write);
/// without, every one goes (for a caller that holds a lock no other writer can have).
pub fn remove_stale_temporaries(dir: &Path, only: Option<&OsStr>, keep_live_owners: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = only.map(|name| format!(".{}.tmp-", name.to_string_lossy()));
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = match &prefix {
            Some(prefix) => name.starts_with(prefix.as_str()),
            None => true,
        };
        if let Some(pid) = temporary_pid(&name).filter(|_| ours)
            && !(keep_live_owners && alive(pid))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `path` made absolute with symlinks resolved, also when it does not exist yet (its nearest
/// existing ancestor is resolved and the rest appended).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output that is (or resolves to) one of `inputs`, naming the option.
fn refuse_inputs(option: &str, path: &Path, inputs: &[&Path]) -> Result<()> {
    let out = resolved(path);
    for input in inputs {
        if resolved(input) == out {
            return Err(Error::usage(format!(
                "{option} {}: is also an input of this command ({}); it would be overwritten — \
                 choose another output",
                path.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents) and checks that a file can be written in it, with a probe
/// that is removed again.
fn probe_directory(option: &str, dir: &Path) -> Result<()> {
    let bad = |what: String| Error::usage(format!("{option}: {what}"));
    if dir.exists() && !dir.is_dir() {
        return Err(bad(format!("{} is a file, not a directory", dir.display())));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| bad(format!("cannot create directory {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".advcomp-probe.tmp-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| bad(format!("cannot write in {}: {e}", dir.display())))
}

/// Checks, before any work, that the file output `path` (given with `option`) can be written
/// and is none of `inputs`; removes temporaries of it that a killed run left.
pub fn check_output_file(option: &str, path: &Path, inputs: &[&Path]) -> Result<()> {
    if path.is_dir() {
        return Err(Error::usage(format!(
            "{option} {}: is a directory; give a file name",
            path.display()
        )));
    }
    let Some(name) = path.file_name() else {
        return Err(Error::usage(format!(
            "{option} {}: not a file name",
            path.display()
        )));
    };
    refuse_inputs(option, path, inputs)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    probe_directory(option, dir)?;
    remove_stale_temporaries(dir, Some(name), true);
    Ok(())
}

/// Checks, before any work, that the output folder `dir` (given with `option`) can be created
/// and written, and is none of `inputs`.
pub fn check_output_dir(option: &str, dir: &Path, inputs: &[&Path]) -> Result<()> {
    refuse_inputs(option, dir, inputs)?;
    probe_directory(option, dir)
}

/// A safetensors file's bytes with its `__metadata__` in sorted key order: the same tensors
/// and metadata always give the same bytes (the safetensors crate writes metadata in a hash
/// map's order, which changes from process to process).
pub fn safetensors_bytes<'a>(
    tensors: Vec<(String, safetensors::tensor::TensorView<'a>)>,
    metadata: BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes =
        safetensors::tensor::serialize(tensors, Some(metadata.clone().into_iter().collect()))
            .map_err(|e| e.to_string())?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| "short header")?);
    let header_end = 8 + usize::try_from(header_len).map_err(|e| e.to_string())?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..header_end]).map_err(|e| e.to_string())?;
    // Rebuild the header with the sorted metadata first and the tensors in the order the
    // crate wrote them (already deterministic: by dtype, then name).
    let mut canonical = serde_json::Map::new();
    canonical.insert(
        "__metadata__".into(),
        serde_json::Value::Object(
            metadata
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        ),
    );
    header.remove("__metadata__");
    canonical.extend(header);
    let mut text = serde_json::to_vec(&canonical).map_err(|e| e.to_string())?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - header_end);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    out.extend(&bytes[header_end..]);
    Ok(out)
}

/// What an interrupted command tells its user.
static RESUME_HINT: Mutex<&'static str> = Mutex::new("nothing was written");

/// SIGINT and SIGTERM (Slurm's time limit, `kill`) stop the process cleanly: the temporaries
/// in flight are removed, `hint` says what to do next (e.g. how to resume), and the exit code
/// is 128 + the signal (130, 143). Call once, early in `main`. Unix only: elsewhere the
/// default handling stays (and stale temporaries are removed by the next run).
pub fn stop_cleanly_on_signals(hint: &'static str) {
    *RESUME_HINT.lock().unwrap_or_else(|e| e.into_inner()) = hint;
    #[cfg(unix)]
    {
        // Rust ignores SIGPIPE, so printing into a closed pipe (`| head`) would panic; the
        // default action ends the process quietly instead.
        // SAFETY: called early in main, before any other thread; SIG_DFL is a valid action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        use signal_hook::consts::{SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Held until exit: no new temporary starts while these are removed.
                let in_flight = lock_in_flight();
                for tmp in in_flight.iter() {
                    let _ = std::fs::remove_file(tmp);
                }
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                let hint = *RESUME_HINT.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!("\ninterrupted by {name}: stopped; {hint}");
                // `_exit`: the main thread is still computing (maybe on a GPU driver), so no
                // exit handlers run under it.
                signal_hook::low_level::exit(128 + signal);
            }
        });
    }
}
