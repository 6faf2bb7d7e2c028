//! Helpers shared by the integration tests.
#![allow(dead_code)]

use advcomp::backend::{self, Backend, BackendChoice};

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
