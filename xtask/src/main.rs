//! `cargo xtask sweep | profile | test`: a thin driver over the advcomp library and cargo.
//!
//! - `sweep`: the main job. For now: the baseline (train, or reuse a checkpoint of the same
//!   config) and its clean evaluation on the embedded MNIST; compression, attacks and the
//!   transfer matrix join it as they land.
//! - `profile`: throughput. For now `--kernels`: the compression kernels in GB/s on the
//!   chosen backend (attack throughput per bitwidth joins it with the attacks).
//! - `test`: set-up (a Vulkan driver so the WGSL/wgpu tests run, lavapipe where there is no
//!   GPU), then the whole test suite with the GPU tests required.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use advcomp::backend::{self, BackendChoice};
use advcomp::data::DatasetKind;
use advcomp::model::ModelKind;
use advcomp::profile;
use advcomp::train::{self, TrainConfig};

const USAGE: &str = "usage:
  cargo xtask sweep [--model lenet5] [--dataset mnist] [--backend auto|wgpu|cpu] [--epochs N] [--seed S] [--out DIR]
  cargo xtask profile --kernels [--backend auto|wgpu|cpu] [--elements N] [--repeats R] [--out DIR]
  cargo xtask test [-- extra cargo test args]";

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { backend::silence_mesa_warnings() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("sweep") => sweep(&args[1..]),
        Some("profile") => profile(&args[1..]),
        Some("test") => test(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` pairs into a lookup; refuses unknown names.
fn options(args: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let key = name.strip_prefix("--").filter(|k| known.contains(k));
        let key = key.ok_or_else(|| format!("unknown option '{name}'\n{USAGE}"))?;
        let value = it
            .next()
            .ok_or_else(|| format!("option --{key} needs a value"))?;
        out.push((key.to_string(), value.clone()));
    }
    Ok(out)
}

fn sweep(args: &[String]) -> Result<(), String> {
    let opts = options(
        args,
        &["model", "dataset", "backend", "epochs", "seed", "out"],
    )?;
    let get = |k: &str| {
        opts.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let model: ModelKind = get("model")
        .unwrap_or("lenet5")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let dataset: DatasetKind = match get("dataset") {
        Some(d) => d.parse().map_err(|e| format!("{e}"))?,
        None => model.default_dataset(),
    };
    let choice: BackendChoice = get("backend")
        .unwrap_or("auto")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let out = PathBuf::from(get("out").unwrap_or("sweep-out"));
    let mut config = TrainConfig::new(model, dataset.name());
    if let Some(e) = get("epochs") {
        config.epochs = e
            .parse()
            .map_err(|_| format!("--epochs: '{e}' is not a whole number"))?;
    }
    if let Some(s) = get("seed") {
        config.seed = s
            .parse()
            .map_err(|_| format!("--seed: '{s}' is not a whole number"))?;
    }
    let backend = backend::select(choice).map_err(|e| e.to_string())?;
    eprintln!(
        "sweep: {model} on {dataset}, backend {backend}, output in {}",
        out.display()
    );
    let checkpoint = out.join(format!("{model}-{dataset}-seed{}.safetensors", config.seed));
    let outcome = train::train_baseline(
        model,
        dataset,
        None,
        &config,
        None,
        &backend.device,
        &checkpoint,
        true,
        |r| {
            eprintln!(
                "baseline epoch {}/{}: train loss {:.4}, test acc {:.2}% ({:.0} s)",
                r.epoch,
                config.epochs,
                r.train_loss,
                100.0 * r.test_accuracy,
                r.seconds
            )
        },
    )
    .map_err(|e| e.to_string())?;
    let summary = serde_json::json!({
        "model": model.name(),
        "dataset": dataset.name(),
        "config": config,
        "baseline": outcome,
        "backend": backend.name,
        "adapter": backend.adapter,
    });
    let path = out.join("baseline.json");
    let text = serde_json::to_string_pretty(&summary).expect("json");
    advcomp::write_atomically(&path, text.as_bytes()).map_err(|e| e.to_string())?;
    println!(
        "baseline {model}/{dataset}: clean test accuracy {:.2}%{} -> {}",
        100.0 * outcome.test_accuracy,
        if outcome.reused {
            " (reused checkpoint)"
        } else {
            ""
        },
        path.display()
    );
    Ok(())
}

fn profile(args: &[String]) -> Result<(), String> {
    // `--kernels` is a switch; every other option takes a value.
    let (switches, rest): (Vec<String>, Vec<String>) =
        args.iter().cloned().partition(|a| a == "--kernels");
    if switches.is_empty() {
        return Err(format!(
            "profile: name what to profile (--kernels)\n{USAGE}"
        ));
    }
    let opts = options(&rest, &["backend", "elements", "repeats", "out"])?;
    let get = |k: &str| {
        opts.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let number = |k: &str, default: usize| -> Result<usize, String> {
        get(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("--{k}: '{v}' is not a whole number"))
        })
    };
    let choice: BackendChoice = get("backend")
        .unwrap_or("auto".into())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let elements = number("elements", 1 << 24)?;
    let repeats = number("repeats", 10)?;
    let out = PathBuf::from(get("out").unwrap_or("profile-out".into()));
    let backend = backend::select(choice).map_err(|e| e.to_string())?;
    eprintln!(
        "profile: compression kernels on {backend}, {elements} f32 elements, median of {repeats}"
    );
    let timings = profile::kernel_throughput(&backend.device, elements, repeats);
    let mut csv =
        String::from("kernel,backend,adapter,elements,bytes,median_seconds,gb_per_second\n");
    println!("{:<32} {:>12} {:>10}", "kernel", "median ms", "GB/s");
    for t in &timings {
        println!(
            "{:<32} {:>12.3} {:>10.2}",
            t.kernel,
            1e3 * t.median_seconds,
            t.gb_per_second
        );
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            t.kernel,
            backend.name,
            backend.adapter,
            t.elements,
            t.bytes,
            t.median_seconds,
            t.gb_per_second
        ));
    }
    let path = out.join("kernels.csv");
    advcomp::write_atomically(&path, csv.as_bytes()).map_err(|e| e.to_string())?;
    println!("adapter: {}; -> {}", backend.adapter, path.display());
    Ok(())
}

fn test(extra: &[String]) -> Result<(), String> {
    if backend::adapters().is_empty() {
        install_lavapipe()?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace"])
        .args(extra)
        .env("ADVCOMP_REQUIRE_GPU", "1")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

/// No Vulkan/Metal/DX12 adapter: install Mesa's software Vulkan driver where apt and root
/// allow, so the wgpu tests run on lavapipe rather than being skipped.
fn install_lavapipe() -> Result<(), String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let has_apt = Command::new("apt-get").arg("--version").output().is_ok();
    if !(is_root && has_apt) {
        return Err(
            "no Vulkan adapter and cannot install one (needs root and apt-get): install \
                    a GPU driver or Mesa's lavapipe (mesa-vulkan-drivers libvulkan1), then rerun"
                .into(),
        );
    }
    eprintln!("xtask test: no Vulkan adapter; installing mesa-vulkan-drivers (lavapipe)");
    for args in [
        &["update", "-qq"][..],
        &[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "mesa-vulkan-drivers",
            "libvulkan1",
        ][..],
    ] {
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
