//! `cargo xtask sweep | profile | test | bench`: a thin driver over cargo and the advcomp binary.
//!
//! - `sweep`: the main job, `advcomp sweep` (the whole study; cached, resumable, with the
//!   figures and the report). Default: the `quick` preset on the embedded MNIST.
//! - `profile`: `advcomp profile` (attack throughput per bitwidth, density and batch size, or
//!   `--kernels`).
//! - `bench`: advcomp vs a plain PyTorch loop on the same LeNet5 weights and images (IFGSM,
//!   IFGM, DeepFool, clean evaluation), alternating, in images/s (see bench.rs).
//! - `judge`: ONNX Runtime runs the exported (or given QDQ) model on the clean images and on
//!   advcomp's adversarial set, and judges advcomp's emulation of it (see judge.rs).
//! - `test`: set-up (a Vulkan driver so the WGSL/wgpu tests run, lavapipe where there is no
//!   GPU; Fashion-MNIST for the imported ResNet8), then the whole test suite with the GPU
//!   tests required.

mod bench;
mod judge;

use std::process::{Command, ExitCode};

use advcomp::backend;

const USAGE: &str = "usage:
  cargo xtask sweep [--preset quick|paper] [--config sweep.toml] [--model M] [--dataset D] [--seeds N] [--baseline F] [--backend auto|wgpu|cpu] [--out DIR]
  cargo xtask profile [--bits 32,16,8,4] [--density 0.5,0.1] [--batch-sizes 64,256,1024] [--attacks ifgsm,ifgm,deepfool] [--backend B] [--out DIR]
  cargo xtask profile --kernels [--backend B] [--elements N] [--repeats R]
  cargo xtask test [-- extra cargo test args]
  cargo xtask bench [--works eval,ifgsm,ifgm,deepfool] [--batch-sizes 16,64,256,1024] [--repeats 1] [--threads 1,2] [--no-pytorch] (--help for all)
  cargo xtask judge --model CHECKPOINT|FILE.onnx [--dataset D] [--images 10000] [--attack ifgsm] [--attack-images 1000] [--out target/judge]
(`cargo run --bin advcomp -- sweep --help` lists every option)";

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { backend::silence_mesa_warnings() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(command @ ("sweep" | "profile")) => advcomp(command, &args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("judge") => judge::judge(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `advcomp <command> <args>` (built by cargo in the same profile, with cargo's build
/// progress shown) and passes its exit code on.
fn advcomp(command: &str, args: &[String]) -> Result<ExitCode, String> {
    let status = Command::new(cargo())
        .args(["run", "--package", "advcomp", "--bin", "advcomp", "--"])
        .arg(command)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

/// Where Debian's `dataset-fashion-mnist` puts the files (advcomp's default location).
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn test(extra: &[String]) -> Result<ExitCode, String> {
    let mut missing = Vec::new();
    if backend::adapters().is_empty() {
        eprintln!("xtask test: no Vulkan adapter; installing Mesa's lavapipe");
        missing.extend(["mesa-vulkan-drivers", "libvulkan1"]);
    }
    if !std::path::Path::new(FASHION_MNIST).is_dir() {
        eprintln!("xtask test: no Fashion-MNIST in {FASHION_MNIST}; installing it");
        missing.push("dataset-fashion-mnist");
    }
    // A single-node Slurm cluster for the `--slurm` test (the test starts and stops the
    // daemons itself). Only where it can be installed: elsewhere that test is skipped, unless
    // ADVCOMP_REQUIRE_SLURM is set.
    let slurm = ["slurmctld", "slurmd", "sbatch", "munged"];
    if !slurm.iter().all(|p| installed(p)) {
        if can_install() {
            eprintln!("xtask test: no Slurm; installing slurmctld, slurmd, slurm-client and munge");
            missing.extend(["slurmctld", "slurmd", "slurm-client", "munge"]);
        } else {
            eprintln!(
                "xtask test: no Slurm and no root + apt-get to install it; the Slurm test will be \
                 skipped unless ADVCOMP_REQUIRE_SLURM is set"
            );
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let status = Command::new(cargo())
        .args(["test", "--workspace"])
        .args(extra)
        .env("ADVCOMP_REQUIRE_GPU", "1")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

/// Whether this machine lets us install Debian packages (root and apt-get).
fn can_install() -> bool {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    is_root && Command::new("apt-get").arg("--version").output().is_ok()
}

/// Whether `program` is installed in a system binary folder.
fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(program).is_file())
}

/// Installs Debian `packages` the tests need (Mesa's lavapipe where there is no GPU, so the
/// wgpu tests run instead of being skipped; Fashion-MNIST) where apt and root allow.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    if !can_install() {
        return Err(format!(
            "the tests need {} and cannot install them (needs root and apt-get): install them \
             (or a GPU driver instead of lavapipe), then rerun",
            packages.join(", ")
        ));
    }
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(packages);
    for args in [&["update", "-qq"][..], &install] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !status.success() {
            return Err(format!("apt-get {} failed ({status})", args.join(" ")));
        }
    }
    Ok(())
}
