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
