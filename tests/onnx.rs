//! ONNX models imported at run time compute what PyTorch computed on the same weights: logits
//! within 1e-4 and input gradients within 1e-4 (relative to their largest magnitude), on the
//! CPU backend and on wgpu (lavapipe in CI); the vendored files are the ones PyTorch wrote.

mod common;
use common::onnx as proto;
use common::{Scratch, advcomp, assert_refused};

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
    let file = common::Golden::read(&models().join(format!("{name}.golden.safetensors")));
    let f32s = |n: &str| file.f32s(n);
    let labels = file.i64s("y");
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
    for folder in ["", "zoo/", "ops/"] {
        let sums = std::fs::read_to_string(models().join(folder).join("SHA256SUMS")).unwrap();
        for line in sums.lines() {
            let (sum, file) = line.split_once("  ").unwrap();
            let bytes = std::fs::read(models().join(folder).join(file)).unwrap();
            let actual: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(actual, sum, "{folder}{file}");
        }
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

/// The zoo (tests/data/models/zoo): small torchvision architectures for MNIST, each as both
/// of PyTorch's exporters write it (the default, dynamo, with its weights in an external data
/// file; and the legacy TorchScript one), with PyTorch's logits and input gradients.
const ZOO: [&str; 4] = ["resnet", "mobilenet_v2", "shufflenet_v2", "vit"];
const EXPORTERS: [&str; 2] = ["dynamo", "legacy"];

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Every zoo file on `device`, on its 16 golden images: the same predictions as
/// PyTorch, logits within 1e-4 and gradients of the summed cross-entropy within 1e-3 (both
/// absolute; PyTorch's logits reach about 10, its gradients about 3; measured: within 4e-6
/// and 3e-6 on both backends).
fn zoo_matches_pytorch(device: &Device, backend: &str) {
    for name in ZOO {
        let Golden { x, y, logits, grad } = golden(&format!("zoo/{name}"), device);
        for exporter in EXPORTERS {
            let file = models().join(format!("zoo/{name}.{exporter}.onnx"));
            let model = onnx::import(&file, device).unwrap();
            let ours = host(Imported(model.clone()).logits(x.clone()));
            let diff = max_abs_diff(&ours, &logits);
            let which = format!("{name}.{exporter} on {backend}");
            println!("{which}: logits differ by {diff:e}");
            assert!(diff < 1e-4, "{which}: logits differ by {diff}");
            for (i, (a, b)) in ours.chunks(10).zip(logits.chunks(10)).enumerate() {
                assert_eq!(argmax(a), argmax(b), "{which}: image {i}'s prediction");
            }
            let ours = host(attack::loss_gradient(&Imported(model), &x, &y));
            let diff = max_abs_diff(&ours, &grad);
            let scale = grad.iter().map(|v| v.abs()).fold(0.0, f32::max);
            println!("{which}: gradients differ by {diff:e} (largest {scale:e})");
            assert!(diff < 1e-3, "{which}: gradients differ by {diff}");
        }
    }
}

#[test]
fn zoo_models_from_both_exporters_match_pytorch_on_the_cpu() {
    zoo_matches_pytorch(&advcomp::backend::cpu().device, "cpu");
}

#[test]
fn zoo_models_from_both_exporters_match_pytorch_on_wgpu() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    zoo_matches_pytorch(&gpu.device, "wgpu");
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

/// What one zoo file does under every command, on the CPU.
#[derive(Debug)]
struct ZooRun {
    parameters: u64,
    adversarial_accuracy: f64,
    l2: f64,
    /// Test accuracy after DNS to density 0.3, and after Q(8,2), each fine-tuned.
    compressed: [f64; 2],
}

/// `info`, `eval`, `attack --attack ifgsm` (100 images), `compress --prune dns --density 0.3` and
/// `compress --bits 8` (fine-tuned on 256 images) on both exporters' files of zoo model `name`:
/// the evaluation makes PyTorch's predictions on its first 1,000 test images, the compressed
/// checkpoints reload to the same accuracy, and the two files (the same weights) give the same
/// numbers under every command.
fn zoo_commands(name: &str) -> [ZooRun; 2] {
    let reference = pytorch(&format!("zoo/{name}"));
    let clean = reference["attacks"]["ifgsm"]["clean_acc"].as_f64().unwrap();
    let runs = EXPORTERS.map(|exporter| {
        let file = model_file(&format!("zoo/{name}.{exporter}.onnx"));
        let run = |args: &[&str]| json(&advcomp(&[args, &["--backend", "cpu", "--json"]].concat()));
        let parameters = run(&["info", "--model", &file])["parameters"]
            .as_u64()
            .unwrap();
        let data = ["--dataset", "mnist"];
        let eval = run(&[&["eval", "--model", &file, "--limit", "1000"][..], &data].concat());
        let accuracy = eval["accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - clean).abs() < 0.0005,
            "{name}.{exporter}: accuracy {accuracy}, PyTorch's {clean} on the same 1,000 images"
        );
        let attack = run(&[
            &[
                "attack", "--source", &file, "--attack", "ifgsm", "--limit", "100",
            ][..],
            &data,
        ]
        .concat());
        let cell = &attack["cells"][0]["metrics"];
        let mut compressed = [0.0; 2];
        for (i, flags) in [
            &["--prune", "dns", "--density", "0.3"][..],
            &["--bits", "8"],
        ]
        .into_iter()
        .enumerate()
        {
            let out = Scratch::path(&format!("zoo-{name}-{exporter}-{i}.safetensors"));
            let out = out.to_str().unwrap();
            let args = [
                &["compress", "--checkpoint", &file][..],
                &data,
                flags,
                &[
                    "--finetune-epochs",
                    "1",
                    "--train-limit",
                    "256",
                    "--limit",
                    "200",
                ],
                &["--out", out],
            ]
            .concat();
            let outcome = run(&args)["outcome"].clone();
            if i == 0 {
                let density = outcome["record"]["overall_density"].as_f64().unwrap();
                assert!(
                    (density - 0.3).abs() < 0.01,
                    "{name}.{exporter}: density {density}"
                );
            }
            compressed[i] = outcome["test_accuracy"].as_f64().unwrap();
            let reloaded = run(&["eval", "--checkpoint", out, "--limit", "200"]);
            assert_eq!(
                reloaded["accuracy"].as_f64().unwrap(),
                compressed[i],
                "{name}.{exporter} {flags:?}: the same model after reload"
            );
        }
        ZooRun {
            parameters,
            adversarial_accuracy: cell["adversarial_accuracy"].as_f64().unwrap(),
            l2: cell["l2"].as_f64().unwrap(),
            compressed,
        }
    });
    let [dynamo, legacy] = &runs;
    assert_eq!(dynamo.parameters, legacy.parameters, "{name}");
    let close = |a: f64, b: f64, tolerance: f64| (a - b).abs() <= tolerance;
    assert!(
        close(
            dynamo.adversarial_accuracy,
            legacy.adversarial_accuracy,
            0.01
        ) && close(dynamo.l2, legacy.l2, 0.01 * legacy.l2)
            && close(dynamo.compressed[0], legacy.compressed[0], 0.02)
            && close(dynamo.compressed[1], legacy.compressed[1], 0.02),
        "{name}: the two exporters' files differ: {runs:?}"
    );
    runs
}

#[test]
fn zoo_resnet_from_both_exporters_runs_every_command() {
    let [run, _] = zoo_commands("resnet");
    assert!(run.compressed[1] > 0.8, "{run:?}");
}

#[test]
fn zoo_mobilenet_v2_from_both_exporters_runs_every_command() {
    let [run, _] = zoo_commands("mobilenet_v2");
    assert!(run.compressed[1] > 0.8, "{run:?}");
}

#[test]
fn zoo_shufflenet_v2_from_both_exporters_runs_every_command() {
    let [run, _] = zoo_commands("shufflenet_v2");
    assert!(run.compressed[1] > 0.8, "{run:?}");
}

/// The ViT too; and fine-tuning it works: pruned to density 0.3 it loses most of its accuracy,
/// and one epoch on 2,000 images wins much of it back.
#[test]
fn zoo_vit_from_both_exporters_runs_every_command_and_fine_tunes() {
    let [run, _] = zoo_commands("vit");
    assert!(run.compressed[1] > 0.6, "{run:?}");
    let file = model_file("zoo/vit.dynamo.onnx");
    let pruned = |epochs: &str| {
        let out = Scratch::path(&format!("zoo-vit-finetune-{epochs}.safetensors"));
        let outcome = json(&advcomp(&[
            "compress",
            "--checkpoint",
            &file,
            "--dataset",
            "mnist",
            "--prune",
            "dns",
            "--density",
            "0.3",
            "--finetune-epochs",
            epochs,
            "--train-limit",
            "2000",
            "--limit",
            "1000",
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
            "--json",
        ]))["outcome"]
            .clone();
        outcome["test_accuracy"].as_f64().unwrap()
    };
    let (before, after) = (pruned("0"), pruned("1"));
    assert!(
        after > before + 0.15,
        "pruned ViT: {before} without fine-tuning, {after} after"
    );
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
    assert_refused(&other, "the checkpoint onto another graph", &[]);
}

#[test]
fn onnx_files_advcomp_cannot_use_are_refused_by_name() {
    let cases = [
        ("garbage.onnx", "not a readable ONNX model"),
        ("truncated.onnx", "not a readable ONNX model"),
        (
            "unsupported-op.onnx",
            "node 'the_hardmax' (Hardmax): op Hardmax is not supported",
        ),
        (
            "auto-pad.onnx",
            "node 'the_conv' (Conv): auto_pad SAME_UPPER is not supported",
        ),
        ("two-inputs.onnx", "the graph has 2 inputs (images, other)"),
        ("int-input.onnx", "a classifier takes float images"),
        ("not-logits.onnx", "a classifier's is [N, classes]"),
        (
            "shapes-do-not-fit.onnx",
            "node 'fc' (Gemm): a [N, 784] matrix cannot be multiplied by a [100, 10] one",
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
            let start = format!("error: model {path}: ");
            assert_refused(
                &advcomp(&args),
                &format!("{command} {file}"),
                &[&start, expected],
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
    assert_refused(
        &out,
        "a model for other images",
        &["takes [1, 28, 28] images but dataset cifar10 has [3, 32, 32]"],
    );
}

/// Ops and attribute forms beyond the zoo's (tests/data/models/ops: elementwise functions and
/// activations, reductions, slices, gathers, pads, windows, normalisations, Resize, an
/// attention block; at opsets 13, 17 and 20) compute what ONNX Runtime computes, within 1e-5
/// of the largest output, and their gradients to the pixels are those of central differences.
#[test]
fn every_op_computes_what_onnx_runtime_computes_with_gradients_to_the_pixels() {
    let device = advcomp::backend::cpu().device;
    let file = common::Golden::read(&models().join("ops/ops.golden.safetensors"));
    let f32s = |n: &str| file.f32s(n);
    let pixels = f32s("x");
    let images =
        |p: &[f32]| Tensor::<4>::from_data(TensorData::new(p.to_vec(), [3, 2, 6, 6]), &device);
    for name in [
        "elementwise.opset17",
        "shapes.opset13",
        "windows.opset17",
        "resize.opset20",
        "attention.opset20",
    ] {
        let model = onnx::import(&models().join(format!("ops/{name}.onnx")), &device).unwrap();
        let none = Compression::default();
        let theirs = f32s(&name.replace('.', "_"));
        let ours = host(model.forward(images(&pixels), &none));
        let scale = theirs.iter().map(|v| v.abs()).fold(1.0, f32::max);
        let diff = max_abs_diff(&ours, &theirs);
        assert!(
            diff <= 1e-5 * scale,
            "{name}: outputs differ by {diff} (largest {scale})"
        );
        // L = sum of the outputs, each weighted: its gradient by autodiff and by differences.
        let weights: Vec<f32> = (0..ours.len()).map(|i| (i as f32 * 0.7).sin()).collect();
        let loss = |logits: Vec<f32>| -> f64 {
            logits
                .iter()
                .zip(&weights)
                .map(|(a, w)| f64::from(*a) * f64::from(*w))
                .sum()
        };
        let x = images(&pixels).autodiff().require_grad();
        let logits = model.forward(x.clone(), &none);
        let [n, k] = logits.dims();
        let w = Tensor::<2>::from_data(TensorData::new(weights.clone(), [n, k]), &device);
        let grad = host(x.grad(&(logits * w.autodiff()).sum().backward()).unwrap());
        // Pixels away from the kinks of Relu, Abs, Clip, Min and Max (multiples of 0.1).
        let probes = (0..pixels.len())
            .step_by(13)
            .filter(|&i| ((pixels[i] * 10.0).fract() - 0.5).abs() < 0.4)
            .take(8);
        let h = 1e-3;
        for i in probes {
            let mut plus = pixels.clone();
            plus[i] += h;
            let mut minus = pixels.clone();
            minus[i] -= h;
            let f = |p: &[f32]| loss(host(model.forward(images(p), &none)));
            let numeric = (f(&plus) - f(&minus)) / (2.0 * f64::from(h));
            let exact = f64::from(grad[i]);
            assert!(
                (numeric - exact).abs() <= 2e-2 + 1e-2 * exact.abs(),
                "{name}: pixel {i}: gradient {exact}, central difference {numeric}"
            );
        }
    }
}

/// `advcomp ARGS --backend cpu` failed with exit code 2 and `error: model FILE: ...expected`.
fn refused(args: &[&str], file: &std::path::Path, expected: &str) {
    let out = advcomp(&[args, &["--backend", "cpu"]].concat());
    let start = format!("error: model {}: ", file.display());
    assert_refused(&out, &format!("{args:?}"), &[&start, expected]);
    assert!(out.stdout.is_empty(), "{args:?}: nothing printed on stdout");
}

/// Flatten -> Gemm to 10 logits, with the Gemm's weight [10, 784] as given.
fn mnist_gemm(weight: proto::Message) -> Vec<u8> {
    proto::model(
        &[
            proto::node("Flatten", "flat", &["images"], &["features"], &[]),
            proto::node(
                "Gemm",
                "fc",
                &["features", "fc.weight"],
                &["logits"],
                &[("transB", proto::Attr::Int(1))],
            ),
        ],
        &[weight],
        &[proto::value("images", &[None, Some(1), Some(28), Some(28)])],
        &[proto::value("logits", &[None, Some(10)])],
    )
}

#[test]
fn external_data_is_read_beside_the_model_and_refused_outside_its_folder_missing_or_short() {
    let root = Scratch::path("onnx-external");
    let dir = root.join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let weights: Vec<u8> = (0..7840u32)
        .flat_map(|i| ((i % 7) as f32 * 1e-3).to_le_bytes())
        .collect();
    let bytes = 7840 * 4;
    std::fs::write(dir.join("w.bin"), [&[0u8; 16][..], &weights].concat()).unwrap();
    std::fs::write(root.join("outside.bin"), &weights).unwrap();
    std::fs::write(dir.join("short.bin"), &weights[..bytes as usize - 4]).unwrap();
    std::os::unix::fs::symlink(root.join("outside.bin"), dir.join("link.bin")).unwrap();
    let model = |name: &str, location: &str, offset: u64| {
        let path = dir.join(name);
        let tensor = proto::external_tensor("fc.weight", &[10, 784], location, offset, bytes);
        std::fs::write(&path, mnist_gemm(tensor)).unwrap();
        path
    };
    // Read at its offset; the model's SHA-256 covers the model file, then the data file.
    let good = model("good.onnx", "w.bin", 16);
    let info = json(&advcomp(&[
        "info",
        "--model",
        good.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]));
    let mut digest = sha2::Sha256::new();
    digest.update(std::fs::read(&good).unwrap());
    digest.update(std::fs::read(dir.join("w.bin")).unwrap());
    let expected: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(info["model_sha256"], expected.as_str());
    assert_eq!(info["parameters"], 7840);
    let outside = root.join("outside.bin");
    let cases = [
        (
            model("parent.onnx", "../outside.bin", 0),
            "initialiser 'fc.weight': external data file '../outside.bin' is outside the model's \
             folder",
        ),
        (
            model("absolute.onnx", outside.to_str().unwrap(), 0),
            "is outside the model's folder",
        ),
        (
            model("symlink.onnx", "link.bin", 0),
            "initialiser 'fc.weight': external data file 'link.bin' leads outside the model's \
             folder",
        ),
        (
            model("missing.onnx", "nope.bin", 0),
            &format!(
                "initialiser 'fc.weight': external data file {}: file not found",
                dir.join("nope.bin").display()
            ),
        ),
        (
            model("short.onnx", "short.bin", 0),
            "initialiser 'fc.weight': its data in 'short.bin' (bytes 0..31360) lie past the end \
             of the file, which holds 31356 bytes",
        ),
    ];
    for (path, expected) in &cases {
        let p = path.to_str().unwrap();
        refused(&["info", "--model", p], path, expected);
        refused(
            &["eval", "--model", p, "--dataset", "mnist"],
            path,
            expected,
        );
    }
}

#[test]
fn shapes_and_masks_computed_from_the_image_values_are_refused_naming_the_node() {
    let dir = Scratch::path("onnx-data-dependent");
    std::fs::create_dir_all(&dir).unwrap();
    let weight = proto::tensor("fc.weight", &[10, 784], 0.01);
    let int64 = proto::Attr::Int(7);
    let cases = [
        (
            // A shape read from the pixels: Reshape(images, Cast(ReduceMax(images))).
            "reshape-by-pixels.onnx",
            vec![
                proto::node(
                    "ReduceMax",
                    "brightest",
                    &["images"],
                    &["m"],
                    &[
                        ("axes", proto::Attr::Ints(vec![1, 2, 3])),
                        ("keepdims", proto::Attr::Int(0)),
                    ],
                ),
                proto::node("Cast", "to_int", &["m"], &["shape"], &[("to", int64)]),
                proto::node("Reshape", "reshape", &["images", "shape"], &["x"], &[]),
                proto::node("Flatten", "flat", &["x"], &["features"], &[]),
            ],
            "node 'reshape' (Reshape): input 'shape' is computed from the image values (by \
             node 'to_int' (Cast)) as integers or booleans",
        ),
        (
            // A mask read from the pixels: Where(images > 0.5, images, 0).
            "mask-by-pixels.onnx",
            vec![
                proto::node("Greater", "bright", &["images", "half"], &["mask"], &[]),
                proto::node("Where", "select", &["mask", "images", "zero"], &["x"], &[]),
                proto::node("Flatten", "flat", &["x"], &["features"], &[]),
            ],
            "node 'select' (Where): input 'mask' is computed from the image values (by node \
             'bright' (Greater))",
        ),
        (
            // Exported for one image: a constant batch size of 1 in a Reshape.
            "fixed-batch.onnx",
            vec![proto::node(
                "Reshape",
                "reshape",
                &["images", "one_by_784"],
                &["features"],
                &[],
            )],
            "node 'reshape' (Reshape): shape [1, 784] holds 784 elements, the input [N, 1, 28, \
             28] has 784N: the graph was exported for one batch size",
        ),
    ];
    let ints = |name: &str, values: &[i64]| {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        proto::Message::default()
            .int(1, values.len() as i64)
            .int(2, 7)
            .text(8, name)
            .bytes(9, &raw)
    };
    for (name, mut nodes, expected) in cases {
        nodes.push(proto::node(
            "Gemm",
            "fc",
            &["features", "fc.weight"],
            &["logits"],
            &[("transB", proto::Attr::Int(1))],
        ));
        let inits = [
            weight.clone(),
            proto::tensor("half", &[], 0.5),
            proto::tensor("zero", &[], 0.0),
            ints("one_by_784", &[1, 784]),
        ];
        let bytes = proto::model(
            &nodes,
            &inits,
            &[proto::value("images", &[None, Some(1), Some(28), Some(28)])],
            &[proto::value("logits", &[None, Some(10)])],
        );
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.to_str().unwrap();
        refused(&["info", "--model", p], &path, expected);
        refused(
            &[
                "attack",
                "--source",
                p,
                "--dataset",
                "mnist",
                "--limit",
                "4",
            ],
            &path,
            expected,
        );
    }
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
            ..TrainConfig::new(advcomp::model::ModelKind::LeNet5, DatasetKind::Mnist)
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
    assert_refused(&refused, "a sweep on an ONNX model without a dataset", &[]);
    assert!(!other.exists());
}

/// The op list the README and docs/design.md print (between `<!-- ops -->` markers) is the one
/// the importer runs, word for word.
#[test]
fn documented_op_lists_are_the_importers() {
    let (run, folded): (Vec<_>, Vec<_>) = onnx::supported_ops()
        .into_iter()
        .partition(|(_, per_batch)| *per_batch);
    let names =
        |ops: Vec<(&'static str, bool)>| ops.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let expected = format!(
        "{}; on shapes and constants only: {}",
        names(run).join(", "),
        names(folded).join(", ")
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "docs/design.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let start = text
            .find("<!-- ops -->")
            .unwrap_or_else(|| panic!("{doc}: no <!-- ops -->"));
        let end = text
            .find("<!-- /ops -->")
            .unwrap_or_else(|| panic!("{doc}: no <!-- /ops -->"));
        let listed = text[start + "<!-- ops -->".len()..end]
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(
            listed.join(" "),
            expected,
            "{doc}'s op list is not the importer's"
        );
    }
}
