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

/// The SHA-256 of an input file's bytes as hex (read as [`read_input`] reads, errors made by
/// `refuse`).
pub fn sha256_of_file(
    path: &Path,
    max: u64,
    refuse: impl Fn(&Path, String) -> Error,
) -> Result<String> {
    Ok(sha256_hex(&read_input(path, max, 1, refuse)?))
}

/// Reads an input file whole, refusing before the first byte is read what would hang, never
/// end or not fit: anything but a regular file ([`open_input`]), a file larger than `max`
/// bytes, or one whose size `copies` times over (the bytes and what the reader parses them
/// into) exceeds the memory this process can still get ([`available_memory`]). The error is
/// `refuse(path, problem)`, so each reader names its kind of file (data file, checkpoint,
/// model, config).
pub fn read_input(
    path: &Path,
    max: u64,
    copies: u64,
    refuse: impl Fn(&Path, String) -> Error,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let (file, size) = open_input(path, &refuse)?;
    if size > max {
        return Err(refuse(
            path,
            format!(
                "is {size} bytes, more than the {} advcomp reads as this kind of file",
                bytes_text(max)
            ),
        ));
    }
    let need = size.saturating_mul(copies);
    check_memory(need).map_err(|available| {
        refuse(
            path,
            format!(
                "is {size} bytes; reading it needs about {}, more than the {} this process \
                 can still get",
                bytes_text(need),
                bytes_text(available)
            ),
        )
    })?;
    let mut bytes = Vec::new();
    // A failed reservation (an address-space limit) is an error, not an abort.
    bytes
        .try_reserve_exact(size as usize + 1)
        .map_err(|_| refuse(path, format!("cannot hold its {size} bytes in memory")))?;
    // At most one byte past the size: a file that grows meanwhile is still bounded.
    file.take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > size {
        return Err(refuse(path, "grew while it was read".into()));
    }
    Ok(bytes)
}

/// Opens an input file for reading and returns it with its size, refusing anything but a
/// regular file (a FIFO would block forever, `/dev/zero` never ends, a directory is no file)
/// without blocking: it is opened non-blocking and its type read from the open handle.
pub fn open_input(
    path: &Path,
    refuse: impl Fn(&Path, String) -> Error,
) -> Result<(std::fs::File, u64)> {
    let cannot = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => refuse(path, "file not found".into()),
        _ => refuse(path, format!("cannot read: {e}")),
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading blocks until a writer comes; non-blocking, it opens at once
    // and is refused below. (Regular files ignore the flag.)
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(refuse(
            path,
            format!("is {}, not a regular file", file_kind(&meta)),
        ));
    }
    Ok((file, meta.len()))
}

/// What a file that is not a regular file is, in words.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// `bytes` as "16 GiB", "2 MiB" or "512 bytes".
pub fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

/// Bytes this process can still allocate, as far as the system tells: the memory available
/// to new work (`MemAvailable` in /proc/meminfo) and, under an address-space limit
/// (`ulimit -v`, RLIMIT_AS), what is left of it. `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo_kib = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_kib(&t, "MemAvailable:"))
        .map(|kib| kib * 1024);
    #[cfg(unix)]
    let limited = {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
        (ok && limit.rlim_cur != libc::RLIM_INFINITY).then(|| {
            let mapped = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| meminfo_kib(&t, "VmSize:"))
                .map_or(0, |kib| kib * 1024);
            limit.rlim_cur.saturating_sub(mapped)
        })
    };
    #[cfg(not(unix))]
    let limited: Option<u64> = None;
    match (available, limited) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// `Ok` when `bytes` fit in [`available_memory`] (or it cannot be told), else the bytes
/// available.
pub fn check_memory(bytes: u64) -> std::result::Result<(), u64> {
    match available_memory() {
        Some(available) if bytes > available => Err(available),
        _ => Ok(()),
    }
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

/// Checks that a file can be written in `dir`, with a probe file that is removed again. A
/// folder that does not exist yet is not created (the writes create it when there is
/// something to write, so a command refused later leaves no empty folders behind): the probe
/// goes into its nearest existing ancestor, where the folder would be made.
fn probe_directory(option: &str, dir: &Path) -> Result<()> {
    let bad = |what: String| Error::usage(format!("{option}: {what}"));
    let existing = dir
        .ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(bad(format!(
            "{} is a file, not a directory",
            existing.display()
        )));
    }
    let probe = existing.join(format!(".advcomp-probe.tmp-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| bad(format!("cannot write in {}: {e}", existing.display())))
}

/// Checks, before any work, that the file output `path` (given with `option`) can be written
/// and is none of `inputs`; removes temporaries of it that a killed run left. An existing
/// output must be a regular file: the final rename would put a file in place of a device
/// node (`/dev/null` itself, as root) or a FIFO.
pub fn check_output_file(option: &str, path: &Path, inputs: &[&Path]) -> Result<()> {
    let refuse = |what: String| Err(Error::usage(format!("{option} {}: {what}", path.display())));
    // `Path` drops a trailing '/' ("out/" has the file name "out"), the final rename does not.
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return refuse("ends with '/'; give a file name".into());
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return refuse("is a directory; give a file name".into());
        }
        if !meta.is_file() {
            return refuse(format!(
                "is {}, not a regular file; give the name of a file to write",
                file_kind(&meta)
            ));
        }
    }
    let Some(name) = path.file_name() else {
        return refuse("not a file name".into());
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
