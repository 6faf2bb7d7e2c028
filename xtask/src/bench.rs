//! `cargo xtask bench`: advcomp's attacks and clean evaluation on LeNet5 (or an ONNX model,
//! `--model`), side by side with the alternative a user would pick — the same work in a plain
//! PyTorch loop (`bench/pytorch_lenet5.py`; an ONNX model converted by onnx2torch), Foolbox's
//! DeepFool, or torchattacks' APGD, Square and the AutoAttack cascade
//! (`bench/reference_attacks.py`), on the same weights and images —
//! alternating the two, so both see the same machine load. Prints images/s with batch size,
//! backend and adapter, the ratio, the results of both (a disagreement fails the run), CPU time
//! over wall time, and the load average. advcomp runs as `cargo run` builds it (the dev
//! profile), as users run it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const WORKS: [&str; 8] = [
    "eval", "ifgsm", "ifgm", "deepfool", "apgd-ce", "apgd-dlr", "square", "auto",
];

/// The works that measure robustness at a budget (compared with torchattacks).
const BUDGETED: [&str; 4] = ["apgd-ce", "apgd-dlr", "square", "auto"];

/// `cargo xtask bench` options.
#[derive(clap::Parser)]
#[command(
    name = "cargo xtask bench",
    about = "advcomp vs PyTorch on the same weights (LeNet5, or an ONNX model) and images"
)]
struct Options {
    /// What to time: eval, ifgsm, ifgm, deepfool (against PyTorch or Foolbox); apgd-ce,
    /// apgd-dlr, square, auto (against torchattacks: APGD, Square, and APGD-CE, APGD-DLR,
    /// Square as one cascade).
    #[arg(long, value_delimiter = ',', default_value = "eval,ifgsm,ifgm,deepfool", value_parser = WORKS)]
    works: Vec<String>,
    /// L-inf budgets of apgd-ce, apgd-dlr, square and auto.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3")]
    budgets: Vec<f32>,
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024", value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch_sizes: Vec<u32>,
    /// Images per IFGSM / IFGM run (at least one batch).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=10000))]
    images: u32,
    /// Images per DeepFool run (at least one batch).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10000))]
    deepfool_images: u32,
    /// Runs of each tool per row (the median is shown).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeats: u32,
    /// PyTorch's thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Vec<u32>,
    /// A LeNet5 checkpoint (default: the vendored test model).
    #[arg(long, conflicts_with = "model")]
    weights: Option<PathBuf>,
    /// An ONNX classifier instead of LeNet5: advcomp imports it, PyTorch runs it as onnx2torch
    /// converts it (PyTorch only).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The test images: mnist (assets/mnist) or fashion-mnist (/usr/share/datasets/fashion-mnist).
    #[arg(long, default_value = "mnist", value_parser = ["mnist", "fashion-mnist"])]
    dataset: String,
    /// advcomp alone, without installing or running PyTorch.
    #[arg(long)]
    no_pytorch: bool,
    /// What to compare with: a plain PyTorch loop with advcomp's definitions, Foolbox 3.3.4's
    /// batched L2DeepFoolAttack on the same PyTorch model (deepfool only), or torchattacks'
    /// APGD and Square (apgd-ce, apgd-dlr, square, auto).
    #[arg(long, value_enum, default_value_t = Alternative::Pytorch)]
    alternative: Alternative,
}

/// The tool advcomp is timed against.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Alternative {
    Pytorch,
    Foolbox,
    Torchattacks,
}

impl Alternative {
    fn name(self) -> &'static str {
        match self {
            Alternative::Pytorch => "PyTorch",
            Alternative::Foolbox => "Foolbox",
            Alternative::Torchattacks => "torchattacks",
        }
    }

    /// The Python modules it needs (with onnx2torch for an ONNX model), as pip installs them.
    fn packages(self, onnx: bool) -> Vec<&'static str> {
        let mut packages = vec!["torch", "safetensors", "numpy"];
        packages.extend(match self {
            Alternative::Pytorch if onnx => &["onnx", "onnx2torch"][..],
            Alternative::Pytorch => &[],
            Alternative::Foolbox => &["foolbox==3.3.4"],
            Alternative::Torchattacks => &["torchattacks==3.5.1"],
        });
        packages
    }

    /// Whether it runs `work`.
    fn runs(self, work: &str) -> bool {
        match self {
            Alternative::Pytorch => !BUDGETED.contains(&work),
            Alternative::Foolbox => work == "deepfool",
            Alternative::Torchattacks => BUDGETED.contains(&work),
        }
    }
}

/// advcomp built as `cargo run` builds it (the dev profile); its path.
pub(crate) fn advcomp_binary() -> Result<PathBuf, String> {
    let status = Command::new(super::cargo())
        .args(["build", "--package", "advcomp", "--bin", "advcomp"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building advcomp failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("debug/advcomp"))
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

impl Options {
    /// The model both tools run: the ONNX file, or the LeNet5 checkpoint.
    fn weights(&self) -> &Path {
        self.model
            .as_deref()
            .or(self.weights.as_deref())
            .expect("set by parse")
    }

    /// The folder of the test images (the same file names for both datasets).
    fn data(&self) -> PathBuf {
        match self.dataset.as_str() {
            "fashion-mnist" => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            _ => root().join("assets/mnist"),
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    use clap::Parser;
    // clap prints help (exit 0) or a usage error (exit 2) itself.
    let mut options = Options::parse_from(
        std::iter::once("cargo xtask bench".to_string()).chain(args.iter().cloned()),
    );
    let alternative = options.alternative;
    if let Some(work) = options.works.iter().find(|w| !alternative.runs(w)) {
        return Err(format!(
            "--works {work}: {} does not run it (PyTorch: eval, ifgsm, ifgm, deepfool; \
             Foolbox: deepfool; torchattacks: apgd-ce, apgd-dlr, square, auto)",
            alternative.name()
        ));
    }
    if let Some(b) = options.budgets.iter().find(|b| !(**b > 0.0 && **b <= 1.0)) {
        return Err(format!("--budgets: {b} is not in (0, 1]"));
    }
    if let Some(model) = &options.model {
        if alternative != Alternative::Pytorch {
            return Err(format!(
                "--model: {} runs LeNet5 only; an ONNX model is compared with PyTorch",
                alternative.name()
            ));
        }
        if !model.is_file() {
            return Err(format!("--model {}: no such file", model.display()));
        }
        return Ok(options);
    }
    let weights = options
        .weights
        .get_or_insert_with(|| root().join("tests/data/models/lenet5.safetensors"));
    if !weights.is_file() {
        return Err(format!(
            "--weights {}: no such checkpoint",
            weights.display()
        ));
    }
    Ok(options)
}

/// The venv the benchmark keeps PyTorch (and Foolbox) in (`target/bench-venv`), made on
/// first use.
fn pytorch_python(alternative: Alternative, onnx: bool) -> Result<PathBuf, String> {
    let packages = alternative.packages(onnx);
    let modules: Vec<&str> = packages
        .iter()
        .map(|p| p.split("==").next().unwrap_or(p))
        .collect();
    venv_python(
        &packages,
        &format!("import {}", modules.join(", ")),
        alternative.name(),
    )
}

/// The Python of `target/bench-venv` with `packages` installed (`import` proves they are),
/// made and installed on first use.
pub(crate) fn venv_python(packages: &[&str], import: &str, what: &str) -> Result<PathBuf, String> {
    let venv = root().join("target/bench-venv");
    let python = venv.join("bin/python");
    let has_them = |python: &Path| {
        Command::new(python)
            .args(["-c", import])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_them(&python) {
        return Ok(python);
    }
    eprintln!(
        "installing {} into {} (once; a large download)",
        packages.join(", "),
        venv.display()
    );
    let run = |program: &Path, args: &[&str]| -> Result<(), String> {
        let status = Command::new(program)
            .args(args)
            .status()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {} failed ({status})",
                program.display(),
                args.join(" ")
            ))
        }
    };
    if !python.exists() {
        run(
            Path::new("python3"),
            &["-m", "venv", venv.to_str().unwrap()],
        )?;
    }
    let mut install = vec!["-m", "pip", "install", "--progress-bar", "on"];
    install.extend(packages);
    run(&python, &install)?;
    if has_them(&python) {
        Ok(python)
    } else {
        Err(format!("{what} installed but does not import"))
    }
}

/// One timed run: the JSON it printed and the CPU time it used over its wall time.
struct Run {
    json: Value,
    cpu_over_wall: f64,
}

fn children_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn timed(command: &mut Command) -> Result<Run, String> {
    let (cpu, start) = (children_cpu_seconds(), std::time::Instant::now());
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{command:?} printed no JSON ({e})"))?;
    Ok(Run {
        json,
        cpu_over_wall: (children_cpu_seconds() - cpu) / wall,
    })
}

/// One row's work: what is run, and at which budget.
#[derive(Clone, Copy)]
struct Work<'a> {
    name: &'a str,
    budget: Option<f32>,
}

impl Work<'_> {
    fn label(&self) -> String {
        match self.budget {
            Some(b) => format!("{} at {b}", self.name),
            None => self.name.to_string(),
        }
    }
}

fn advcomp_run(
    binary: &Path,
    options: &Options,
    work: Work,
    batch: usize,
    images: usize,
) -> Result<Run, String> {
    let mut command = Command::new(binary);
    let weights = options.weights().to_str().unwrap();
    let batch = batch.to_string();
    if work.name == "eval" {
        command.args(["eval", "--checkpoint", weights, "--batch-size", &batch]);
    } else {
        let images = images.to_string();
        command.args([
            "attack",
            "--source",
            weights,
            "--limit",
            &images,
            "--batch-size",
            &batch,
        ]);
        // The attack alone: no reruns for the indicators of attack failure.
        let attack: &[&str] = match work.name {
            "apgd-ce" => &["--attack", "apgd", "--loss", "ce", "--no-checks"],
            "apgd-dlr" => &["--attack", "apgd", "--loss", "dlr", "--no-checks"],
            "square" | "auto" => &["--attack", work.name, "--no-checks"],
            other => &["--attack", other],
        };
        command.args(attack);
        if let Some(b) = work.budget {
            command.args(["--budget", &b.to_string()]);
        }
    }
    timed(command.args(["--dataset", &options.dataset, "--backend", "cpu", "--json"]))
}

fn python_run(
    python: &Path,
    options: &Options,
    work: Work,
    batch: usize,
    images: usize,
    threads: usize,
) -> Result<Run, String> {
    let mut command = Command::new(python);
    match options.alternative {
        Alternative::Torchattacks => {
            // advcomp's `auto` on a model without quantisers is this cascade.
            let name = if work.name == "auto" {
                "cascade"
            } else {
                work.name
            };
            command
                .arg(root().join("bench/reference_attacks.py"))
                .args(["--work", name])
                .args(["--eps", &work.budget.unwrap_or(0.1).to_string()]);
        }
        _ => {
            command
                .arg(root().join("bench/pytorch_lenet5.py"))
                .args(["--work", work.name])
                .args(["--library", &options.alternative.name().to_lowercase()]);
        }
    }
    let model = match options.model {
        Some(_) => "--onnx",
        None => "--weights",
    };
    timed(
        command
            .args([model, options.weights().to_str().unwrap()])
            .args(["--mnist", options.data().to_str().unwrap()])
            .args(["--images", &images.to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--threads", &threads.to_string()]),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// What a run found: accuracy (eval), adversarial accuracy and mean L2 (attacks), or robust
/// accuracy alone (the budgeted attacks: torchattacks returns the clean image where it fails,
/// advcomp its best point, so their mean L2 differ by design).
fn outcome(work: &str, json: &Value, advcomp: bool) -> (f64, Option<f64>) {
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    if work == "eval" {
        return (number(&json["accuracy"]), None);
    }
    if BUDGETED.contains(&work) {
        return match advcomp {
            true => (
                number(&json["cells"][0]["metrics"]["adversarial_accuracy"]),
                None,
            ),
            false => (number(&json["robust_accuracy"]), None),
        };
    }
    if advcomp {
        let metrics = &json["cells"][0]["metrics"];
        (
            number(&metrics["adversarial_accuracy"]),
            Some(number(&metrics["l2"])),
        )
    } else {
        (
            number(&json["adversarial_accuracy"]),
            Some(number(&json["mean_l2"])),
        )
    }
}

fn describe((accuracy, l2): (f64, Option<f64>)) -> String {
    match l2 {
        None => format!("acc {:.2}%", 100.0 * accuracy),
        Some(l2) => format!("adv {:.1}% L2 {l2:.3}", 100.0 * accuracy),
    }
}

/// How far two tools' accuracies may lie apart: 1 point, 2 for the random searches (Square
/// and the cascade ending in it draw their squares differently: per image here, per batch in
/// torchattacks).
fn tolerance(work: &str) -> f64 {
    match work {
        "square" | "auto" => 0.02,
        _ => 0.01,
    }
}

/// Whether two tools' results agree: accuracy within [`tolerance`], mean L2 within 5%.
fn agree(work: &str, (a, a_l2): (f64, Option<f64>), (b, b_l2): (f64, Option<f64>)) -> bool {
    let l2 = match (a_l2, b_l2) {
        (Some(x), Some(y)) => (x / y - 1.0).abs() <= 0.05,
        _ => true,
    };
    (a - b).abs() <= tolerance(work) + 1e-9 && l2
}

pub fn bench(args: &[String]) -> Result<std::process::ExitCode, String> {
    let options = parse(args)?;
    let alternative = options.alternative.name();
    let binary = advcomp_binary()?;
    let python = match options.no_pytorch {
        true => None,
        false => match pytorch_python(options.alternative, options.model.is_some()) {
            Ok(python) => Some(python),
            Err(problem) => {
                eprintln!(
                    "bench: no {} to compare with ({problem}); advcomp alone",
                    options.alternative.name()
                );
                None
            }
        },
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} ({}), {} test images; advcomp backend cpu, {cores} cores ({cpu}); medians of {}; \
         images/s",
        match options.model {
            Some(_) => "ONNX model",
            None => "LeNet5",
        },
        options.weights().display(),
        options.dataset,
        options.repeats
    );
    let mut header = "| work | batch | images | advcomp | cpu/wall |".to_string();
    for t in &options.threads {
        header.push_str(&format!(" {alternative} {t} thr |"));
    }
    header.push_str(&format!(
        " advcomp / best {alternative} | advcomp result | {alternative} result | load avg |"
    ));
    println!("{header}");
    println!("|{}", " --- |".repeat(header.matches('|').count() - 1));
    let mut adapter = None;
    let mut disagreements = Vec::new();
    let works: Vec<Work> = options
        .works
        .iter()
        .flat_map(|name| match BUDGETED.contains(&name.as_str()) {
            true => options
                .budgets
                .iter()
                .map(|&b| Work {
                    name,
                    budget: Some(b),
                })
                .collect::<Vec<_>>(),
            false => vec![Work { name, budget: None }],
        })
        .collect();
    for work in works {
        for &batch in &options.batch_sizes {
            let batch = batch as usize;
            let images = match work.name {
                "eval" => 10_000,
                "deepfool" => (options.deepfool_images as usize).max(batch),
                _ => (options.images as usize).max(batch),
            };
            let mut ours = Vec::new();
            let mut theirs: Vec<Vec<Run>> = options.threads.iter().map(|_| Vec::new()).collect();
            // Alternate: advcomp, then PyTorch at each thread count, repeat.
            for _ in 0..options.repeats {
                ours.push(advcomp_run(&binary, &options, work, batch, images)?);
                if let Some(python) = &python {
                    for (i, &t) in options.threads.iter().enumerate() {
                        theirs[i].push(python_run(
                            python, &options, work, batch, images, t as usize,
                        )?);
                    }
                }
            }
            let rate = |runs: &[Run]| {
                median(
                    runs.iter()
                        .map(|r| r.json["images_per_second"].as_f64().unwrap_or(f64::NAN))
                        .collect(),
                )
            };
            let ours_rate = rate(&ours);
            let mut row = format!(
                "| {} | {batch} | {images} | {ours_rate:.1} | {:.2} |",
                work.label(),
                median(ours.iter().map(|r| r.cpu_over_wall).collect())
            );
            let mut best = f64::NAN;
            for runs in &theirs {
                if runs.is_empty() {
                    row.push_str(" - |");
                } else {
                    let r = rate(runs);
                    best = if best.is_nan() { r } else { best.max(r) };
                    row.push_str(&format!(" {r:.1} |"));
                }
            }
            let ours_result = outcome(work.name, &ours[0].json, true);
            let their_result = theirs
                .iter()
                .find_map(|runs| runs.first())
                .map(|r| outcome(work.name, &r.json, false));
            if let Some(theirs) = their_result
                && !agree(work.name, ours_result, theirs)
            {
                disagreements.push(format!(
                    "{} batch {batch}: advcomp {}, {alternative} {}",
                    work.label(),
                    describe(ours_result),
                    describe(theirs)
                ));
            }
            let ratio = match best.is_nan() {
                true => "-".to_string(),
                false => format!("{:.2}", ours_rate / best),
            };
            row.push_str(&format!(
                " {ratio} | {} | {} | {} |",
                describe(ours_result),
                their_result.map_or("-".into(), describe),
                load_average()
            ));
            println!("{row}");
            adapter = ours[0].json["adapter"].as_str().map(String::from);
        }
    }
    println!(
        "advcomp: backend cpu, adapter {}; {alternative}: {}",
        adapter.unwrap_or_else(|| "?".into()),
        match (&python, options.alternative) {
            (None, _) => "not run",
            (Some(_), Alternative::Pytorch) if options.model.is_some() => {
                "the model as onnx2torch converts it, plain loop, torch.set_num_threads(N)"
            }
            (Some(_), Alternative::Pytorch) => "plain loop, torch.set_num_threads(N)",
            (Some(_), Alternative::Foolbox) => {
                "L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02), torch.set_num_threads(N)"
            }
            (Some(_), Alternative::Torchattacks) => {
                "torchattacks 3.5.1: APGD(steps=100, n_restarts=1, rho=0.75, seed=0), \
                 Square(n_queries=5000, p_init=0.8), the cascade as MultiAttack; \
                 torch.set_num_threads(N)"
            }
        }
    );
    if !disagreements.is_empty() {
        return Err(format!(
            "the two tools' results disagree (accuracy by more than 1 point, 2 for square and \
             auto, or mean L2 by more than 5%): {}",
            disagreements.join("; ")
        ));
    }
    Ok(std::process::ExitCode::SUCCESS)
}
