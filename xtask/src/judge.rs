//! `cargo xtask judge`: the deployed runtime as the judge of advcomp's emulation of a
//! quantised model. advcomp exports the model (or takes the QDQ ONNX file as given), predicts
//! the clean test images and crafts an adversarial set on it; ONNX Runtime then runs the ONNX
//! file on the same images (`bench/onnxruntime_judge.py`, with its optimisations off and at
//! their default) and the two are compared image by image. It passes when, at ONNX Runtime's
//! default level, they agree on at least 99.9% of the clean images and their adversarial
//! accuracies lie within 1 point; otherwise it says where they disagree and fails.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;

use crate::bench::{advcomp_binary, root, venv_python};

/// `cargo xtask judge` options.
#[derive(clap::Parser)]
#[command(
    name = "cargo xtask judge",
    about = "ONNX Runtime judges advcomp's emulation of a quantised model"
)]
struct Options {
    /// A checkpoint (exported to ONNX with `advcomp export`) or a (QDQ) ONNX file.
    #[arg(long)]
    model: PathBuf,
    /// The dataset (required for an ONNX file; else the checkpoint's).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Clean test images compared.
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// The attack advcomp crafts the adversarial set with (its default settings).
    #[arg(long, default_value = "ifgsm")]
    attack: String,
    /// Test images attacked.
    #[arg(long, default_value_t = 1000)]
    attack_images: usize,
    /// advcomp's backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Where the exported model, the set and the predictions go.
    #[arg(long, default_value = "target/judge")]
    out: PathBuf,
}

/// Least share of clean images on which ONNX Runtime and advcomp must predict the same class.
const AGREEMENT: f64 = 0.999;
/// Largest difference of adversarial accuracy allowed between them.
const ACCURACY_GAP: f64 = 0.01;

fn run(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn judge(args: &[String]) -> Result<ExitCode, String> {
    use clap::Parser;
    let o = Options::parse_from(
        std::iter::once("cargo xtask judge".to_string()).chain(args.iter().cloned()),
    );
    let python = venv_python(
        &["onnxruntime", "numpy", "safetensors"],
        "import onnxruntime, numpy, safetensors",
        "ONNX Runtime",
    )?;
    let binary = advcomp_binary()?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let file = |name: &str| o.out.join(name);
    let s = |p: &Path| p.to_str().expect("UTF-8 paths").to_string();
    let model = s(&o.model);
    let onnx = match o.model.extension().is_some_and(|e| e == "onnx") {
        true => o.model.clone(),
        false => {
            run(Command::new(&binary)
                .args(["export", "--checkpoint", &model, "--out"])
                .arg(file("model.onnx")))?;
            file("model.onnx")
        }
    };
    let mut data: Vec<String> = Vec::new();
    if let Some(d) = &o.dataset {
        data.extend(["--dataset".into(), d.clone()]);
    }
    if let Some(d) = &o.data_dir {
        data.extend(["--data-dir".into(), s(d)]);
    }
    let advcomp = |args: &[&str]| {
        let mut c = Command::new(&binary);
        c.args(args).args(["--backend", &o.backend]);
        c
    };
    eprintln!("judge: advcomp predicts {} clean test images", o.images);
    run(advcomp(&[
        "eval",
        "--checkpoint",
        &model,
        "--limit",
        &o.images.to_string(),
        "--predictions",
        &s(&file("clean.csv")),
    ])
    .args(&data))?;
    eprintln!(
        "judge: advcomp crafts {} on {} images",
        o.attack, o.attack_images
    );
    let attack = run(advcomp(&[
        "attack",
        "--source",
        &model,
        "--attack",
        &o.attack,
        "--limit",
        &o.attack_images.to_string(),
        "--no-checks",
        "--json",
        "--save-adv",
        &s(&file("adversarial.safetensors")),
    ])
    .args(&data))?;
    let attack: Value = serde_json::from_str(&attack).map_err(|e| format!("attack JSON: {e}"))?;
    run(Command::new(&python)
        .arg(root().join("bench/onnxruntime_judge.py"))
        .args([
            "--to-images",
            &s(&file("adversarial.safetensors")),
            &s(&file("adversarial-images.safetensors")),
        ]))?;
    run(&mut advcomp(&[
        "eval",
        "--checkpoint",
        &model,
        "--test-data",
        &s(&file("adversarial-images.safetensors")),
        "--predictions",
        &s(&file("adversarial.csv")),
    ]))?;
    eprintln!("judge: ONNX Runtime runs {}", onnx.display());
    let dataset = match &o.dataset {
        Some(d) => d.clone(),
        None => attack["dataset"].as_str().unwrap_or("mnist").to_string(),
    };
    let mut judge = Command::new(&python);
    judge
        .arg(root().join("bench/onnxruntime_judge.py"))
        .args(["--model", &s(&onnx), "--dataset", &dataset])
        .args(["--images", &o.images.to_string()])
        .args(["--adversarial", &s(&file("adversarial.safetensors"))])
        .args(["--advcomp-clean", &s(&file("clean.csv"))])
        .args(["--advcomp-adversarial", &s(&file("adversarial.csv"))]);
    if let Some(d) = &o.data_dir {
        judge.args(["--data-dir", &s(d)]);
    }
    let verdict_text = run(&mut judge)?;
    let verdict: Value =
        serde_json::from_str(&verdict_text).map_err(|e| format!("judge JSON: {e}"))?;
    // Every image where they differ, for the record.
    std::fs::write(file("verdict.json"), &verdict_text)
        .map_err(|e| format!("{}: {e}", file("verdict.json").display()))?;
    let mut pass = true;
    println!(
        "ONNX Runtime {} on {} ({dataset}), {} on {} images by advcomp:",
        verdict["onnxruntime"].as_str().unwrap_or("?"),
        onnx.display(),
        o.attack,
        o.attack_images
    );
    for level in ["disabled", "default"] {
        for set in ["clean", "adversarial"] {
            let v = &verdict[level][set];
            let (agree, ours, theirs) = (
                v["agreement"].as_f64().unwrap_or(0.0),
                v["accuracy_advcomp"].as_f64().unwrap_or(0.0),
                v["accuracy_onnxruntime"].as_f64().unwrap_or(0.0),
            );
            println!(
                "  optimisations {level:<8} {set:<11} {} images: same prediction on {:.2}%, accuracy advcomp {:.2}% vs ONNX Runtime {:.2}%, {} tied top logits",
                v["images"],
                100.0 * agree,
                100.0 * ours,
                100.0 * theirs,
                v["tied_top_logits"]
            );
            // In whole images: 1 point of 200 images is 2 images, not 0.0100000001.
            let images = v["images"].as_f64().unwrap_or(0.0);
            let bad = match set {
                "clean" => agree < AGREEMENT,
                _ => ((ours - theirs).abs() * images).round() > ACCURACY_GAP * images,
            };
            if v["disagreement_count"].as_u64().unwrap_or(0) > 0 {
                println!(
                    "    they disagree on {} images, e.g. {}",
                    v["disagreement_count"], v["disagreements"]
                );
            }
            if bad && level == "default" {
                pass = false;
            }
        }
    }
    println!(
        "  (ONNX Runtime's verdict, with the first 20 images where the two differ: {})",
        file("verdict.json").display()
    );
    if pass {
        println!(
            "judge: advcomp's emulation agrees with ONNX Runtime (>= {}% of clean predictions, adversarial accuracy within {} point)",
            100.0 * AGREEMENT,
            100.0 * ACCURACY_GAP
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "judge: advcomp's emulation and ONNX Runtime DISAGREE (needed: >= {}% of clean predictions the same, adversarial accuracy within {} point)",
            100.0 * AGREEMENT,
            100.0 * ACCURACY_GAP
        );
        Ok(ExitCode::from(1))
    }
}
