//! Which device runs the work: burn's wgpu backend on any Vulkan/Metal/DX12 adapter (Mesa's
//! lavapipe included), or the Flex CPU backend.
//!
//! Devices are always chosen explicitly: with the `wgpu` feature on, burn's `Device::default()`
//! would pick wgpu (even lavapipe, a software rasteriser) ahead of the faster Flex CPU backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};

use crate::{Error, Result};

/// What the user asked for with `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware GPU adapter if one exists, else the CPU backend.
    #[default]
    Auto,
    /// burn's wgpu backend on the best adapter, a software one (lavapipe) if that is all.
    Wgpu,
    /// The Flex CPU backend.
    Cpu,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Wgpu => "wgpu",
            BackendChoice::Cpu => "cpu",
        })
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cpu" => Ok(BackendChoice::Cpu),
            _ => Err(Error::usage(format!(
                "unknown backend '{s}' (expected auto, wgpu or cpu)"
            ))),
        }
    }
}

/// A chosen device with the names a user sees.
#[derive(Clone, Debug)]
pub struct Backend {
    pub device: Device,
    /// `wgpu` or `cpu`.
    pub name: &'static str,
    /// The adapter, e.g. "NVIDIA H100 80GB HBM3 (Vulkan)" or "llvmpipe (LLVM 15.0.6, 256 bits)
    /// (Vulkan, software)".
    pub adapter: String,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.name, self.adapter)
    }
}

/// The wgpu adapters this machine offers on Vulkan, Metal and DX12.
pub fn adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .map(|a| a.get_info())
        .collect()
}

fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    info.device_type != wgpu::DeviceType::Cpu
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    let software = if is_hardware(info) { "" } else { ", software" };
    format!("{} ({:?}{software})", info.name, info.backend)
}

/// The CPU backend (Flex), multi-threaded on rayon's global pool: as many threads as cores,
/// or `RAYON_NUM_THREADS`. The count printed is the pool's, i.e. the threads Flex really uses.
pub fn cpu() -> Backend {
    let threads = rayon::current_num_threads();
    Backend {
        device: Device::flex(),
        name: "cpu",
        adapter: format!(
            "Flex, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ),
    }
}

/// The most threads the CPU backend's pool gets: four per core the process may run on. More
/// only adds switching between them, and a huge count (`RAYON_NUM_THREADS=1000000`) would
/// spend a minute spawning threads before rayon's pool gives up with a panic.
pub fn max_cpu_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Builds rayon's global pool (the CPU backend's threads) with the count `RAYON_NUM_THREADS`
/// asks for, at most [`max_cpu_threads`]; returns what to tell the user when it was lowered.
/// Call once, early in `main`, before anything runs on the pool. An unset, empty, zero or
/// unreadable value means one thread per core, as rayon reads it.
pub fn init_cpu_threads() -> Option<String> {
    let asked = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<u128>().ok())
        .filter(|&n| n > 0)?;
    let most = max_cpu_threads();
    if asked <= most as u128 {
        return None;
    }
    // An error means the pool exists already (a library caller built it): nothing to do.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(most)
        .build_global();
    Some(format!(
        "RAYON_NUM_THREADS={asked} is more than 4 threads per core; the CPU backend uses {most}"
    ))
}

/// Opens the device for `choice`.
pub fn select(choice: BackendChoice) -> Result<Backend> {
    if choice == BackendChoice::Cpu {
        return Ok(cpu());
    }
    let found = adapters();
    let best = found
        .iter()
        .filter(|a| is_hardware(a))
        .min_by_key(|a| match a.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            _ => 3,
        });
    match (choice, best) {
        (_, Some(info)) => Ok(Backend {
            // The runtime prefers high-power hardware adapters, the same order as ours.
            device: Device::wgpu(DeviceKind::DefaultDevice),
            name: "wgpu",
            adapter: describe(info),
        }),
        (BackendChoice::Auto, None) => Ok(cpu()),
        (_, None) => match found.first() {
            Some(info) => Ok(Backend {
                device: Device::wgpu(DeviceKind::Cpu),
                name: "wgpu",
                adapter: describe(info),
            }),
            None => Err(Error::Backend(
                "--backend wgpu: no Vulkan, Metal or DX12 adapter found (on Debian/Ubuntu without \
                 a GPU, `apt-get install mesa-vulkan-drivers libvulkan1` provides lavapipe)"
                    .into(),
            )),
        },
    }
}

/// Lets glibc's allocator keep freed memory for the next allocation instead of handing it back
/// to the kernel. Every tensor op allocates its output; by default each buffer above 128 KiB
/// is a fresh `mmap` (page faults and zeroing on first touch) and each free an `munmap` (a TLB
/// shootdown on every core): about 7% of an attack on the CPU backend, 10% of a DeepFool
/// (whose batch of images times classes makes tensors above 100 MB). Every tensor now comes
/// from the heap (no `mmap` at all), which is never trimmed: the same sizes recur every step.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid" on headless machines; lavapipe does
/// not need that directory, so point the variable at a temporary one when it is unset.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists (first thing in main).
pub unsafe fn silence_mesa_warnings() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join("advcomp-xdg");
        if std::fs::create_dir_all(&dir).is_ok() {
            // SAFETY: the caller guarantees no other thread reads the environment now.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}
