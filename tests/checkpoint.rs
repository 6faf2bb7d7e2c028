//! Models and checkpoints: parameter counts, PyTorch names and layouts, round trips, a user's
//! PyTorch-exported file, `--map`, and refusals that name the tensor.

mod common;
use common::Scratch;

use std::collections::HashMap;
use std::path::Path;

use advcomp::data::{self, DatasetKind, Split};
use advcomp::model::{self, CheckpointMeta, KeyMap, ModelKind, Network};
use burn::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

fn temp_file(name: &str) -> Scratch {
    Scratch::path(&format!("ckpt-{name}.safetensors"))
}

fn cpu() -> Device {
    advcomp::backend::cpu().device
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        dataset: Some(DatasetKind::Mnist.into()),
        seed: 3,
        accuracy: Some(0.5),
        compression: None,
        tool_version: advcomp::VERSION.into(),
        config_hash: "abc".into(),
        model_sha256: None,
    }
}

fn mnist_batch(n: usize) -> Tensor<4> {
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    test.batch(&(0..n).collect::<Vec<_>>(), &cpu()).0
}

fn logits(network: &Network, images: Tensor<4>) -> Vec<f32> {
    network
        .forward(images)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn parameter_counts_match_the_paper() {
    let device = cpu();
    assert_eq!(ModelKind::LeNet5.init(&device).parameter_count(), 431_080);
    let cifarnet = ModelKind::CifarNet.init(&device);
    assert_eq!(cifarnet.parameter_count(), 1_296_074);
    for kind in ModelKind::ALL {
        let table: usize = kind.layers().iter().map(|l| l.params).sum();
        assert_eq!(
            table,
            kind.init(&device).parameter_count(),
            "{kind} layer table"
        );
    }
    let out = cifarnet.forward(Tensor::zeros([2, 3, 32, 32], &device));
    assert_eq!(out.dims(), [2, 10]);
}

#[test]
fn checkpoint_uses_pytorch_names_layouts_and_metadata() {
    let device = cpu();
    let network = ModelKind::LeNet5.init(&device);
    let path = temp_file("names");
    model::save_checkpoint(&path, &network, &meta()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    shapes.sort();
    let expected = [
        ("conv0.bias", vec![20]),
        ("conv0.weight", vec![20, 1, 5, 5]),
        ("conv1.bias", vec![50]),
        ("conv1.weight", vec![50, 20, 5, 5]),
        ("fc1.bias", vec![500]),
        ("fc1.weight", vec![500, 800]),
        ("logits.bias", vec![10]),
        ("logits.weight", vec![10, 500]),
    ];
    let expected: Vec<(String, Vec<usize>)> = expected
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
    assert_eq!(shapes, expected);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let header = header.metadata().clone().unwrap();
    assert_eq!(header["model"], "lenet5");
    assert_eq!(header["dataset"], "mnist");
    assert_eq!(header["seed"], "3");
    assert_eq!(header["accuracy"], "0.5");
    assert_eq!(header["tool_version"], advcomp::VERSION);

    let cifar = temp_file("cifar-names");
    model::save_checkpoint(&cifar, &ModelKind::CifarNet.init(&device), &meta()).unwrap();
    let bytes = std::fs::read(&cifar).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "conv7.weight",
        "bn3.weight",
        "bn3.bias",
        "bn3.running_mean",
        "bn3.running_var",
        "logits.bias",
    ] {
        assert!(file.names().contains(&name), "{name} missing");
    }
    assert_eq!(
        file.tensor("logits.weight").unwrap().shape(),
        &[10, 192, 1, 1]
    );
    assert_eq!(
        file.tensor("conv2.weight").unwrap().shape(),
        &[128, 64, 3, 3]
    );
}

#[test]
fn checkpoints_round_trip_to_identical_logits() {
    let device = cpu();
    for kind in ModelKind::ALL {
        device.seed(11);
        let network = kind.init(&device);
        let path = temp_file(&format!("roundtrip-{kind}"));
        model::save_checkpoint(
            &path,
            &network,
            &CheckpointMeta {
                model: Some(kind.into()),
                ..meta()
            },
        )
        .unwrap();
        let loaded = model::load_checkpoint(&path, None, &KeyMap::default(), &device).unwrap();
        assert_eq!(loaded.network.builtin(), Some(kind));
        assert_eq!(loaded.meta.seed, 3);
        let [c, h, w] = kind.input_shape();
        let images =
            Tensor::<4>::random([4, c, h, w], burn::tensor::Distribution::Default, &device);
        assert_eq!(
            logits(&network, images.clone()),
            logits(&loaded.network, images)
        );
    }
}

/// LeNet5's forward pass written from PyTorch's definitions (conv2d cross-correlation with
/// [out, in, kh, kw] weights, linear y = x W^T + b with [out, in] weights, flatten in C,H,W
/// order) on the raw tensors of a checkpoint: the reference that pins our layouts.
fn pytorch_semantics_lenet5(
    t: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    image: &[f32],
) -> Vec<f32> {
    fn conv(x: &[f32], cin: usize, size: usize, w: &[f32], b: &[f32], cout: usize) -> Vec<f32> {
        let out = size - 4;
        let mut y = vec![0.0; cout * out * out];
        for o in 0..cout {
            for i in 0..out {
                for j in 0..out {
                    let mut acc = b[o];
                    for c in 0..cin {
                        for ki in 0..5 {
                            for kj in 0..5 {
                                acc += x[(c * size + i + ki) * size + j + kj]
                                    * w[((o * cin + c) * 5 + ki) * 5 + kj];
                            }
                        }
                    }
                    y[(o * out + i) * out + j] = acc.max(0.0);
                }
            }
        }
        y
    }
    fn pool(x: &[f32], c: usize, size: usize) -> Vec<f32> {
        let h = size / 2;
        let mut y = vec![f32::MIN; c * h * h];
        for ch in 0..c {
            for i in 0..size {
                for j in 0..size {
                    let v = &mut y[(ch * h + i / 2) * h + j / 2];
                    *v = v.max(x[(ch * size + i) * size + j]);
                }
            }
        }
        y
    }
    fn linear(x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
        b.iter()
            .enumerate()
            .map(|(o, &bias)| {
                let acc = bias
                    + x.iter()
                        .enumerate()
                        .map(|(i, v)| v * w[o * x.len() + i])
                        .sum::<f32>();
                if relu { acc.max(0.0) } else { acc }
            })
            .collect()
    }
    let g = |n: &str| &t[n].1[..];
    let x: Vec<f32> = image.iter().map(|p| 2.0 * p - 1.0).collect();
    let x = pool(
        &conv(&x, 1, 28, g("conv0.weight"), g("conv0.bias"), 20),
        20,
        24,
    );
    let x = pool(
        &conv(&x, 20, 12, g("conv1.weight"), g("conv1.bias"), 50),
        50,
        8,
    );
    let x = linear(&x, g("fc1.weight"), g("fc1.bias"), true);
    linear(&x, g("logits.weight"), g("logits.bias"), false)
}

fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(n, v)| {
            let values = match v.dtype() {
                Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(v.data())
                    .iter()
                    .map(|&x| x as f32)
                    .collect(),
                _ => bytemuck::pod_collect_to_vec::<u8, f32>(v.data()),
            };
            (n, (v.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn stored_layouts_compute_the_same_logits_under_pytorch_semantics() {
    let device = cpu();
    device.seed(5);
    let network = ModelKind::LeNet5.init(&device);
    let path = temp_file("pytorch-semantics");
    model::save_checkpoint(&path, &network, &meta()).unwrap();
    let tensors = read_tensors(&path);
    let images = mnist_batch(2);
    let ours = logits(&network, images.clone());
    let pixels = images.into_data().try_to_vec::<f32>().unwrap();
    for n in 0..2 {
        let reference = pytorch_semantics_lenet5(&tensors, &pixels[n * 784..(n + 1) * 784]);
        for (a, b) in ours[n * 10..(n + 1) * 10].iter().zip(&reference) {
            assert!(
                (a - b).abs() < 1e-4,
                "image {n}: ours {a}, PyTorch semantics {b}"
            );
        }
    }
}

/// Writes tensors as a PyTorch exporter would: no metadata, names as given, f64 allowed.
fn write_user_file(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>, Dtype)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b, d)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

/// The tensors of one LeNet5 (the same for every call: tests run in parallel and share the
/// RNG, so the weights are drawn once), renamed and partly in f64 as a PyTorch export may be.
fn user_tensors(rename: impl Fn(&str) -> String) -> Vec<(String, Vec<usize>, Vec<u8>, Dtype)> {
    type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;
    static SOURCE: std::sync::OnceLock<Tensors> = std::sync::OnceLock::new();
    let tensors = SOURCE.get_or_init(|| {
        let path = temp_file("user-src");
        model::save_checkpoint(&path, &ModelKind::LeNet5.init(&cpu()), &meta()).unwrap();
        read_tensors(&path)
    });
    let mut out: Vec<_> = tensors
        .clone()
        .into_iter()
        .map(|(n, (s, v))| {
            if n == "fc1.bias" {
                // One tensor in f64, as `model.double()` would export it.
                let v64: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                (
                    rename(&n),
                    s,
                    bytemuck::cast_slice(&v64).to_vec(),
                    Dtype::F64,
                )
            } else {
                (rename(&n), s, bytemuck::cast_slice(&v).to_vec(), Dtype::F32)
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_users_pytorch_file_loads_with_and_without_a_key_map() {
    let device = cpu();
    let plain = temp_file("user-plain");
    write_user_file(&plain, &user_tensors(|n| n.to_string()));
    let loaded = model::load_checkpoint(&plain, None, &KeyMap::default(), &device).unwrap();
    assert_eq!(loaded.network.builtin(), Some(ModelKind::LeNet5));
    let reference = read_tensors(&plain);
    let images = mnist_batch(1);
    let ours = logits(&loaded.network, images.clone());
    let expected =
        pytorch_semantics_lenet5(&reference, &images.into_data().try_to_vec::<f32>().unwrap());
    for (a, b) in ours.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }

    let renamed = temp_file("user-renamed");
    write_user_file(
        &renamed,
        &user_tensors(|n| n.replace("fc1", "features.fc").replace("logits", "head")),
    );
    let err = model::load_checkpoint(
        &renamed,
        Some(model::ModelRef::BuiltIn(ModelKind::LeNet5)),
        &KeyMap::default(),
        &device,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("missing tensor 'fc1.weight'"), "{err}");
    assert!(
        err.contains("features.fc.weight"),
        "unknown names should be listed: {err}"
    );
    let map: KeyMap = "features.fc.weight=fc1.weight,features.fc.bias=fc1.bias,head.weight=logits.weight,head.bias=logits.bias"
        .parse()
        .unwrap();
    let mapped = model::load_checkpoint(
        &renamed,
        Some(model::ModelRef::BuiltIn(ModelKind::LeNet5)),
        &map,
        &device,
    )
    .unwrap();
    assert_eq!(logits(&mapped.network, mnist_batch(1)), ours);
}

#[test]
fn wrong_shapes_missing_tensors_and_bad_files_are_refused_by_name() {
    let device = cpu();
    let mut tensors = user_tensors(|n| n.to_string());
    let fc1 = tensors.iter_mut().find(|t| t.0 == "fc1.weight").unwrap();
    fc1.1 = vec![800, 500]; // transposed: a TensorFlow-style layout
    let path = temp_file("wrong-shape");
    write_user_file(&path, &tensors);
    let err = model::load_checkpoint(&path, None, &KeyMap::default(), &device)
        .err()
        .unwrap();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("'fc1.weight' has shape [800, 500], the model needs [500, 800]"),
        "{msg}"
    );

    let missing: Vec<_> = user_tensors(|n| n.to_string())
        .into_iter()
        .filter(|t| t.0 != "conv1.bias")
        .collect();
    write_user_file(&path, &missing);
    let msg = model::load_checkpoint(&path, None, &KeyMap::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("missing tensor 'conv1.bias'"), "{msg}");

    let mut half = user_tensors(|n| n.to_string());
    half[0].3 = Dtype::F16;
    let len = half[0].2.len() / 2;
    half[0].2.truncate(len);
    write_user_file(&path, &half);
    let msg = model::load_checkpoint(&path, None, &KeyMap::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!("'{}' has dtype F16", half[0].0)),
        "{msg}"
    );

    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    let msg = model::load_checkpoint(&path, None, &KeyMap::default(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("not a safetensors file"), "{msg}");

    let msg = "fc1.weight".parse::<KeyMap>().err().unwrap().to_string();
    assert!(msg.contains("old=new"), "{msg}");
}

#[test]
fn eval_cli_reports_json_for_a_checkpoint() {
    let device = cpu();
    let path = temp_file("cli-eval");
    model::save_checkpoint(&path, &ModelKind::LeNet5.init(&device), &meta()).unwrap();
    let out = common::command()
        .args([
            "eval",
            "--backend",
            "cpu",
            "--limit",
            "200",
            "--json",
            "--checkpoint",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["images"], 200);
    assert_eq!(json["model"], "lenet5");
    assert_eq!(json["backend"], "cpu");
    let acc = json["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend: cpu on Flex"));

    let out = common::advcomp(&[
        "eval",
        "--backend",
        "cpu",
        "--checkpoint",
        "/nonexistent/model.safetensors",
    ]);
    common::assert_refused(
        &out,
        "a checkpoint that is not there",
        &["/nonexistent/model.safetensors: file not found"],
    );
}
