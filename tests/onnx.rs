//! ONNX models imported at run time compute what PyTorch computed on the same weights: logits
//! within 1e-4 and input gradients within 1e-4 (relative to their largest magnitude), on the
//! CPU backend and on wgpu (lavapipe in CI); the vendored files are the ones PyTorch wrote.

mod common;
use common::Scratch;

use std::path::PathBuf;

use advcomp::attack::{self, Differentiable};
use advcomp::model::Compression;
use advcomp::model::onnx::{self, OnnxModel};
use burn::prelude::*;
use safetensors::SafeTensors;
use sha2::Digest;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/models")
}

struct Imported(OnnxModel);

impl Differentiable for Imported {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.0.forward(images, &Compression::default())
    }
}

struct Golden {
    x: Tensor<4>,
    y: Tensor<1, Int>,
    logits: Vec<f32>,
    grad: Vec<f32>,
}

fn golden(name: &str, device: &Device) -> Golden {
    let bytes = std::fs::read(models().join(format!("{name}.golden.safetensors"))).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let f32s =
        |n: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(file.tensor(n).unwrap().data()) };
    let labels: Vec<i64> = bytemuck::pod_collect_to_vec(file.tensor("y").unwrap().data());
    let count = labels.len();
    Golden {
        x: Tensor::from_data(TensorData::new(f32s("x"), [count, 1, 28, 28]), device),
        y: Tensor::from_data(TensorData::new(labels, [count]), device),
        logits: f32s("logits"),
        grad: f32s("grad"),
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Imports `name` on `device` and checks its logits and input gradients against PyTorch's.
fn matches_pytorch(name: &str, device: &Device, backend: &str) {
    let model = onnx::import(&models().join(format!("{name}.onnx")), device).unwrap();
    assert_eq!(model.graph.input_shape, [1, 28, 28]);
    assert_eq!(model.graph.classes, 10);
    let g = golden(name, device);
    let logits = host(Imported(model.clone()).logits(g.x.clone()));
    let diff = max_abs_diff(&logits, &g.logits);
    assert!(diff < 1e-4, "{name} on {backend}: logits differ by {diff}");
    let grad = host(attack::loss_gradient(&Imported(model), &g.x, &g.y));
    let scale = g.grad.iter().map(|v| v.abs()).fold(0.0, f32::max);
    let diff = max_abs_diff(&grad, &g.grad) / scale;
    assert!(
        diff < 1e-4,
        "{name} on {backend}: gradients differ by {diff} (relative)"
    );
}

#[test]
fn vendored_models_are_the_files_pytorch_wrote() {
    let sums = std::fs::read_to_string(models().join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(models().join(file)).unwrap();
        let actual: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, sum, "{file}");
    }
}

#[test]
fn imported_models_match_pytorch_on_the_cpu() {
    let cpu = advcomp::backend::cpu().device;
    for name in ["mlp-mnist", "resnet8-fmnist"] {
        matches_pytorch(name, &cpu, "cpu");
    }
}

#[test]
fn imported_models_match_pytorch_on_wgpu() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    for name in ["mlp-mnist", "resnet8-fmnist"] {
        matches_pytorch(name, &gpu.device, "wgpu");
    }
}

fn advcomp(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_advcomp"))
        .args(args)
        .output()
        .unwrap()
}

fn model_file(name: &str) -> String {
    models().join(name).to_str().unwrap().to_string()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// PyTorch's numbers for `name` (the vendored `.json`).
fn pytorch(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(models().join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn imported_models_have_pytorchs_test_accuracy() {
    for (name, dataset) in [("mlp-mnist", "mnist"), ("resnet8-fmnist", "fashion-mnist")] {
        let out = advcomp(&[
            "eval",
            "--model",
            &model_file(&format!("{name}.onnx")),
            "--dataset",
            dataset,
            "--backend",
            "cpu",
            "--json",
        ]);
        let ours = json(&out)["accuracy"].as_f64().unwrap();
        let theirs = pytorch(name)["test_acc_10k"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 0.0005,
            "{name}: {ours} vs PyTorch {theirs}"
        );
    }
}

/// IFGSM, IFGM and DeepFool on the MLP, IFGSM and IFGM on the ResNet8 (its DeepFool on 1,000
/// images takes ~10 minutes on one core; it agrees too — the number is in the README).
#[test]
fn attacks_on_an_imported_model_agree_with_pytorch() {
    for (name, dataset, attack) in [
        ("mlp-mnist", "mnist", "ifgsm"),
        ("mlp-mnist", "mnist", "ifgm"),
        ("mlp-mnist", "mnist", "deepfool"),
        ("resnet8-fmnist", "fashion-mnist", "ifgsm"),
        ("resnet8-fmnist", "fashion-mnist", "ifgm"),
    ] {
        let reference = pytorch(name);
        let out = advcomp(&[
            "attack",
            "--source",
            &model_file(&format!("{name}.onnx")),
            "--dataset",
            dataset,
            "--attack",
            attack,
            "--limit",
            "1000",
            "--backend",
            "cpu",
            "--json",
        ]);
        let cell = &json(&out)["cells"][0]["metrics"];
        let theirs = &reference["attacks"][attack];
        let (acc, their_acc) = (
            cell["adversarial_accuracy"].as_f64().unwrap(),
            theirs["adv_acc"].as_f64().unwrap(),
        );
        assert!(
            (acc - their_acc).abs() <= 0.01,
            "{name} {attack}: adversarial accuracy {acc} vs {their_acc}"
        );
        let (l2, their_l2) = (
            cell["l2"].as_f64().unwrap(),
            theirs["mean_l2"].as_f64().unwrap(),
        );
        assert!(
            (l2 / their_l2 - 1.0).abs() <= 0.05,
            "{name} {attack}: mean L2 {l2} vs {their_l2}"
        );
    }
}

#[test]
fn imported_models_compress_fine_tune_and_reload_from_their_checkpoint() {
    let out = Scratch::path("onnx-d05.safetensors");
    let compressed = advcomp(&[
        "compress",
        "--checkpoint",
        &model_file("mlp-mnist.onnx"),
        "--dataset",
        "mnist",
        "--prune",
        "dns",
        "--density",
        "0.5",
        "--bits",
        "8",
        "--finetune-epochs",
        "1",
        "--train-limit",
        "2000",
        "--limit",
        "1000",
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    let outcome = json(&compressed)["outcome"].clone();
    let density = outcome["record"]["overall_density"].as_f64().unwrap();
    assert!((density - 0.5).abs() < 0.01, "density {density}");
    let accuracy = outcome["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "DNS 0.5 + Q(8,2), fine-tuned: {accuracy}");
    // The checkpoint holds the ONNX initialiser names and masks, and names the graph.
    let bytes = std::fs::read(&out).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "fc1.weight_mask",
            "fc2.bias",
            "fc2.weight",
            "fc2.weight_mask"
        ]
    );
    let eval = advcomp(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--limit",
        "1000",
        "--backend",
        "cpu",
        "--json",
    ]);
    let reloaded = json(&eval);
    assert_eq!(
        reloaded["accuracy"].as_f64().unwrap(),
        accuracy,
        "same model after reload"
    );
    assert_eq!(
        reloaded["metadata"]["model_sha256"],
        "b569487fa848cf595c9fb37b2a59f958266d656a7df6d43f0aba4b97392367ea"
    );
    // The same checkpoint onto another graph is refused.
    let other = advcomp(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--model",
        &model_file("resnet8-fmnist.onnx"),
        "--backend",
        "cpu",
    ]);
    assert_eq!(other.status.code(), Some(2));
}

#[test]
fn onnx_files_advcomp_cannot_use_are_refused_by_name() {
    let cases = [
        ("garbage.onnx", "not a readable ONNX model"),
        ("truncated.onnx", "not a readable ONNX model"),
        (
            "unsupported-op.onnx",
            "node 'the_erf' (Erf): op Erf is not supported",
        ),
        (
            "auto-pad.onnx",
            "node 'the_conv' (Conv): auto_pad SameUpper is not supported",
        ),
        ("two-inputs.onnx", "the graph has 2 inputs (images, other)"),
        ("int-input.onnx", "a classifier takes float images"),
        ("not-logits.onnx", "a classifier's is [N, classes]"),
        (
            "shapes-do-not-fit.onnx",
            "node 'fc' (Gemm): a [1, 784] matrix cannot be multiplied by a [100, 10] one",
        ),
    ];
    for (file, expected) in cases {
        let path = model_file(&format!("bad/{file}"));
        for args in [
            &["info", "--model", &path][..],
            &["eval", "--model", &path, "--dataset", "mnist"],
            &[
                "attack",
                "--source",
                &path,
                "--dataset",
                "mnist",
                "--limit",
                "4",
            ],
        ] {
            let command = args[0];
            let mut args = args.to_vec();
            args.extend(["--backend", "cpu"]);
            let out = advcomp(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {file}: {stderr}");
            assert!(
                stderr.contains(&format!("error: model {path}: ")) && stderr.contains(expected),
                "{command} {file}: {stderr}"
            );
        }
    }
    // A Softmax at the end is removed (attacks need logits), and said.
    let out = advcomp(&[
        "info",
        "--model",
        &model_file("bad/softmax-last.onnx"),
        "--backend",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the final node 'the_softmax' (Softmax) was removed"),
        "{stderr}"
    );
    // A dataset whose images do not fit is refused with both shapes.
    let out = advcomp(&[
        "eval",
        "--model",
        &model_file("mlp-mnist.onnx"),
        "--dataset",
        "cifar10",
        "--data-dir",
        "/nonexistent",
        "--backend",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("takes [1, 28, 28] images but dataset cifar10 has [3, 32, 32]"),
        "{stderr}"
    );
}

/// The built-in LeNet5 (`lenet5.safetensors`) and the same model as an ONNX graph
/// (`lenet5.onnx`, written from that checkpoint by `lenet5_to_onnx.py`) on `device`.
fn lenet5_pair(device: &Device) -> (advcomp::model::Network, advcomp::model::Network) {
    use advcomp::model::{self, KeyMap};
    let load = |file: &str| {
        model::load(&models().join(file), None, &KeyMap::default(), device)
            .unwrap()
            .network
    };
    (load("lenet5.safetensors"), load("lenet5.onnx"))
}

struct Compressed(advcomp::model::Network, Compression);

impl Differentiable for Compressed {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.0.forward_compressed(images, &self.1)
    }
}

/// The built-in LeNet5 and its ONNX import agree: logits and input gradients, plain and
/// through Q(8,2) / Q(4,1) (weights and activations), and the DNS masks at density 0.2.
fn lenet5_equivalence(device: &Device, backend: &str) {
    use advcomp::compress::{self, CompressConfig};
    use advcomp::data::{self, DatasetKind, Split};
    use advcomp::prune::{PruneConfig, PruneKind};
    use advcomp::quant::FixedPoint;
    use advcomp::train::TrainConfig;
    let (builtin, imported) = lenet5_pair(device);
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    let (x, y) = test.batch(&(0..32).collect::<Vec<_>>(), device);
    for format in [
        None,
        Some(FixedPoint::new(8, 2).unwrap()),
        Some(FixedPoint::new(4, 1).unwrap()),
    ] {
        let compression = Compression::fixed_point(format, format);
        let a = Compressed(builtin.clone(), compression.clone());
        let b = Compressed(imported.clone(), compression);
        let (la, lb) = (host(a.logits(x.clone())), host(b.logits(x.clone())));
        let diff = max_abs_diff(&la, &lb);
        assert!(diff < 1e-4, "{backend} {format:?}: logits differ by {diff}");
        let (ga, gb) = (
            host(attack::loss_gradient(&a, &x, &y)),
            host(attack::loss_gradient(&b, &x, &y)),
        );
        let scale = ga.iter().map(|v| v.abs()).fold(1e-12, f32::max);
        let diff = max_abs_diff(&ga, &gb) / scale;
        assert!(
            diff < 1e-4,
            "{backend} {format:?}: gradients differ by {diff} (relative)"
        );
    }
    // DNS to density 0.2 (no fine-tuning): the same weights kept in every layer.
    let config = CompressConfig {
        prune: Some(PruneConfig::at(PruneKind::Dns, 0.2)),
        ..CompressConfig::new(TrainConfig {
            epochs: 0,
            ..TrainConfig::new("lenet5", "mnist")
        })
    };
    let config = CompressConfig {
        finetune: TrainConfig {
            epochs: 0,
            ..config.finetune.clone()
        },
        ..config
    };
    let pruned = |network: &advcomp::model::Network| {
        let c = compress::compress(network, &config, device, &test, &test, |_| {}).unwrap();
        let layers = advcomp::model::weight_layers(&c.network);
        layers
            .into_iter()
            .map(|l| {
                // Kept positions in PyTorch's layout ([out, in] for linear layers).
                let mut kept = host(l.values).iter().map(|v| *v != 0.0).collect::<Vec<_>>();
                if l.shape.len() == 2 && matches!(network, advcomp::model::Network::LeNet5(_)) {
                    let (rows, cols) = (l.shape[0], l.shape[1]);
                    kept = (0..rows * cols)
                        .map(|i| kept[(i % rows) * cols + i / rows])
                        .collect();
                }
                (l.name, kept)
            })
            .collect::<Vec<_>>()
    };
    let (ma, mb) = (pruned(&builtin), pruned(&imported));
    assert_eq!(
        ma.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        ["conv0", "conv1", "fc1", "logits"]
    );
    for ((name, a), (other, b)) in ma.iter().zip(&mb) {
        assert_eq!(name, other);
        let differ = a.iter().zip(b).filter(|(p, q)| p != q).count();
        assert_eq!(
            differ,
            0,
            "{backend}: {name}'s DNS mask differs at {differ} of {} weights",
            a.len()
        );
    }
}

#[test]
fn lenet5_imported_from_onnx_equals_the_built_in_one_on_the_cpu() {
    lenet5_equivalence(&advcomp::backend::cpu().device, "cpu");
}

#[test]
fn lenet5_imported_from_onnx_equals_the_built_in_one_on_wgpu() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    lenet5_equivalence(&gpu.device, "wgpu");
}

#[test]
fn the_whole_study_runs_on_an_imported_model() {
    let out = Scratch::path("onnx-sweep");
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-sweep.toml");
    let model = model_file("mlp-mnist.onnx");
    let run = advcomp(&[
        "sweep",
        "--config",
        tiny,
        "--model",
        &model,
        "--dataset",
        "mnist",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The imported model is the baseline as given (not retrained), then compressed 5 ways.
    let models = std::fs::read_to_string(out.join("models.csv")).unwrap();
    let rows: Vec<&str> = models.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{models}");
    assert!(
        rows[0].starts_with("1,full,full,")
            && rows[0].ends_with(&format!(
                "{model},b569487fa848cf595c9fb37b2a59f958266d656a7df6d43f0aba4b97392367ea"
            )),
        "{models}"
    );
    let cells = std::fs::read_to_string(out.join("cells.csv")).unwrap();
    assert_eq!(
        cells.lines().count(),
        1 + (3 + 2) * 6 * 6 + 3 * 3 * 6,
        "(3 attacks and auto at 2 budgets) x 6 sources x 6 targets, and 3 attacks through \
         BPDA on the 3 quantised sources"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("SHA-256 b569487fa848cf595c9fb37b2a59f958266d656a7df6d43f0aba4b97392367ea"),
        "the report names the model file and its hash"
    );
    // Without a dataset the sweep is refused before anything is written.
    let other = Scratch::path("onnx-sweep-nodata");
    let refused = advcomp(&[
        "sweep",
        "--config",
        tiny,
        "--model",
        &model,
        "--backend",
        "cpu",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(!other.exists());
}
