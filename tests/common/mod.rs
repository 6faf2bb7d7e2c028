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
