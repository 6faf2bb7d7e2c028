//! Helpers shared by the integration tests.
#![allow(dead_code)]

use advcomp::backend::{self, Backend, BackendChoice};

/// The advcomp binary as a command, for a test that sets more than its arguments (a working
/// folder, the environment, pipes, a child to kill).
pub fn command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_advcomp"))
}

/// The tiny sweep config: every stage and figure, seconds on a CPU.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-sweep.toml");

/// `advcomp sweep` of [`TINY`] on the cpu into `out`, to be run.
pub fn tiny_sweep(out: &std::path::Path) -> std::process::Command {
    let mut cmd = command();
    cmd.args(["sweep", "--config", TINY, "--backend", "cpu", "--out"])
        .arg(out);
    cmd
}

/// The classes `model` predicts for `images`.
pub fn predicted(
    model: &impl advcomp::attack::Differentiable,
    images: burn::Tensor<4>,
) -> Vec<i64> {
    let n = images.dims()[0];
    model
        .logits(images)
        .argmax(1)
        .reshape([n])
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap()
}

/// Runs `advcomp ARGS` to the end and gives its output.
pub fn advcomp(args: &[&str]) -> std::process::Output {
    command().args(args).output().unwrap()
}

/// Runs `advcomp ARGS` in the folder `dir` to the end and gives its output.
pub fn advcomp_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    command().current_dir(dir).args(args).output().unwrap()
}

/// Asserts that `out` is a refusal: exit code 2, an `error: ` on stderr, each of `expected`
/// somewhere in stderr, and nothing panicked or aborted. `what` names the case in a failure.
pub fn assert_refused(out: &std::process::Output, what: &str, expected: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert!(err.contains("error: "), "{what}: {err}");
    for e in expected {
        assert!(err.contains(e), "{what}: expected '{e}' in: {err}");
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// The wgpu backend, or `None` (test skipped, said on stderr) when this machine has no
/// Vulkan/Metal/DX12 adapter and `ADVCOMP_REQUIRE_GPU` is unset. CI sets it (and installs
/// lavapipe), so there a missing adapter fails the test instead.
pub fn wgpu_or_skip() -> Option<Backend> {
    if backend::adapters().is_empty() {
        if std::env::var_os("ADVCOMP_REQUIRE_GPU").is_some() {
            panic!(
                "ADVCOMP_REQUIRE_GPU is set but no Vulkan/Metal/DX12 adapter exists (install mesa-vulkan-drivers)"
            );
        }
        eprintln!("SKIPPED: no wgpu adapter on this machine and ADVCOMP_REQUIRE_GPU unset");
        return None;
    }
    let gpu = backend::select(BackendChoice::Wgpu).unwrap();
    eprintln!("wgpu adapter: {}", gpu.adapter);
    Some(gpu)
}

/// The result files, with the output folder's own path taken out (models.csv names its
/// checkpoints relative to it, but a baseline given from inside it keeps the path it was
/// given by).
pub fn sweep_results(out: &std::path::Path) -> Vec<(String, String)> {
    let mut files: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv") || n.ends_with(".jsonl"))
        .filter(|n| n != "throughput.csv") // timings differ from run to run
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(out.join(&name)).unwrap();
            (name, text.replace(&out.display().to_string(), "OUT"))
        })
        .collect()
}

/// A path of one test's own under the system temp folder (`advcomp-<pid>-<name>`), removed
/// with everything under it when the test passes; kept, and named on stderr, when it fails,
/// to be looked at. A stale one of an earlier run is removed first.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// Nothing is created there: the test (or advcomp) makes the file or folder.
    pub fn path(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("advcomp-{}-{name}", std::process::id()));
        remove(&path);
        Scratch(path)
    }

    /// An empty folder.
    pub fn folder(name: &str) -> Scratch {
        let scratch = Scratch::path(name);
        std::fs::create_dir_all(&scratch.0).unwrap();
        scratch
    }
}

fn remove(path: &std::path::Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a look: {}", self.0.display());
        } else {
            remove(&self.0);
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

/// The first `n` MNIST test images (the embedded set) and their labels, as one batch.
pub fn mnist_test_batch(
    n: usize,
    device: &burn::tensor::Device,
) -> (
    burn::tensor::Tensor<4>,
    burn::tensor::Tensor<1, burn::tensor::Int>,
) {
    let test = advcomp::data::load(
        advcomp::data::DatasetKind::Mnist,
        advcomp::data::Split::Test,
        None,
    )
    .unwrap();
    test.batch(&(0..n).collect::<Vec<_>>(), device)
}

/// Side of the toy images of [`Threshold`].
pub const SIDE: usize = 4;
/// Pixels of a toy image.
pub const D: usize = SIDE * SIDE;

/// Two classes on 1 x 4 x 4 images: class 1 when the mean pixel exceeds `threshold` (logits
/// [0, 50 * (mean - threshold)]): a model whose every adversarial example is known.
pub struct Threshold {
    pub threshold: f32,
}

impl advcomp::attack::Differentiable for Threshold {
    fn logits(&self, images: burn::Tensor<4>) -> burn::Tensor<2> {
        let n = images.dims()[0];
        let mean = images.reshape([n, D]).mean_dim(1); // [n, 1]
        let class1 = (mean - self.threshold) * 50.0;
        burn::Tensor::cat(vec![class1.zeros_like(), class1], 1)
    }
}

pub mod onnx;

/// The address-space limit hostile inputs are run under, in KiB: `ulimit -v 8000000`. Under
/// it, memory the machine cannot give makes an allocation fail (an abort, unless advcomp
/// refuses first) instead of succeeding on paper.
pub const ADDRESS_SPACE_KIB: u64 = 8_000_000;

/// How long a command on a hostile input may take before it counts as hanging.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(60);

/// What a limited run gives: its output and its peak memory (KiB of resident memory).
pub struct Limited {
    pub output: std::process::Output,
    pub peak_kib: i64,
}

/// Runs the advcomp binary with `args` and `envs` as a hostile input's test must: under
/// [`ADDRESS_SPACE_KIB`], killed and failed after [`HANG`] (a regression that blocks, on a
/// FIFO say, fails its test instead of hanging the suite).
#[allow(clippy::zombie_processes)] // reaped by libc::wait4 below (for its peak memory)
pub fn advcomp_limited(args: &[&str], envs: &[(&str, &str)]) -> Limited {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut command = command();
    command
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let bytes = ADDRESS_SPACE_KIB * 1024;
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let pid = child.id() as i32;
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let start = std::time::Instant::now();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: wait4 on our own child, writing the status and usage given.
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            break;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!(
                "advcomp {args:?} still ran after {HANG:?} (killed): {}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    use std::os::unix::process::ExitStatusExt;
    Limited {
        output: std::process::Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        },
        peak_kib: usage.ru_maxrss,
    }
}

/// [`assert_refused`], and more precisely: its error (the first line of stderr that starts
/// with `error: `) starts with `error: {start}` and contains each of `then`.
pub fn assert_error(out: &std::process::Output, start: &str, then: &[&str]) {
    assert_refused(out, start, then);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line ({:?}): {err}", out.status));
    assert!(
        line.starts_with(&format!("error: {start}")),
        "the error line should start with 'error: {start}': {line}"
    );
    for t in then {
        assert!(line.contains(t), "'{t}' not in the error line: {line}");
    }
}

/// A golden-output file (safetensors) written by a fixture script: its tensors as numbers.
pub struct Golden(Vec<u8>);

impl Golden {
    pub fn read(path: &std::path::Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn tensor(&self, name: &str) -> Vec<u8> {
        let file = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let tensor = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        tensor.data().to_vec()
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.tensor(name))
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        bytemuck::pod_collect_to_vec(&self.tensor(name))
    }
}
