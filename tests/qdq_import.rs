//! Quantised ONNX in: QDQ files made by ONNX Runtime's static quantiser
//! (tests/data/models/qdq, with the script that made them and ONNX Runtime's logits) import as
//! a compressed model whose integer arithmetic is emulated (logits within one step of the
//! output's grid of ONNX Runtime's, the same predictions, ties to the lowest class; on cpu and
//! on wgpu), and as a full model (the graph with its QuantizeLinear/DequantizeLinear pairs
//! removed, a ReLU where a removed QuantizeLinear's zero point was its type's minimum);
//! malformed QDQ files that ONNX Runtime runs silently are refused naming the file and the
//! node, exit code 2.

mod common;
use common::onnx as proto;
use common::{advcomp, assert_error, assert_refused};

use std::path::PathBuf;

use advcomp::backend;
use advcomp::model::{self, Compression, KeyMap, Network};
use burn::prelude::*;

fn qdq() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/qdq")
}

struct Golden {
    x: Tensor<4>,
    y: Vec<i64>,
    /// ONNX Runtime, optimisations disabled (the graph as written).
    ort: Vec<f32>,
    /// ONNX Runtime on the float model the file was quantised from.
    float: Vec<f32>,
}

fn golden(name: &str, device: &Device) -> Golden {
    let file = common::Golden::read(&qdq().join(format!("{name}.golden.safetensors")));
    let f32s = |n: &str| file.f32s(n);
    let y = file.i64s("y");
    Golden {
        x: Tensor::from_data(TensorData::new(f32s("x"), [y.len(), 1, 28, 28]), device),
        y,
        ort: f32s("logits_ort"),
        float: f32s("logits_float"),
    }
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// The lowest-index argmax of each row of 10.
fn argmax(logits: &[f32]) -> Vec<usize> {
    logits
        .chunks(10)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// `step`: the scale of the graph's output DequantizeLinear (the logits' grid, README.md).
fn check_file(name: &str, step: f32, device: &Device) {
    let path = qdq().join(format!("{name}.onnx"));
    let checkpoint = model::load(&path, None, &KeyMap::default(), device).unwrap();
    let g = golden(name, device);
    // The compressed model: the file's grids, per channel for the weights.
    let quant = checkpoint
        .compression
        .quant
        .as_ref()
        .expect("a QDQ file is quantised");
    // Its record reads back (calibration `file`: the grids are the file's).
    let record = checkpoint.record().expect("the record reads back");
    assert_eq!(record.quantiser.as_ref(), Some(&quant.config));
    assert!(!quant.grids.weights.is_empty() && !quant.grids.activations.is_empty());
    assert!(quant.grids.weights.values().all(|g| g.axis == Some(0)));
    let ours = host(
        checkpoint
            .network
            .forward_compressed(g.x.clone(), &checkpoint.compression),
    );
    let mut equal = 0;
    for (a, b) in ours.iter().zip(&g.ort) {
        let steps = (a - b).abs() / step;
        assert!(
            steps < 1.01,
            "{name}: logit {a} against ONNX Runtime's {b} ({steps} steps of {step})"
        );
        equal += usize::from(a == b);
    }
    assert!(
        equal * 100 >= 95 * ours.len(),
        "{name}: only {equal} of {} logits equal ONNX Runtime's",
        ours.len()
    );
    assert_eq!(argmax(&ours), argmax(&g.ort), "{name}: predictions");
    // The full model: no quantiser runs; a ReLU where the quantiser deleted one. Its logits
    // are the float model's with int8 weights: close to them, and nowhere on the grid alone.
    let full = host(
        checkpoint
            .network
            .forward_compressed(g.x.clone(), &Compression::default()),
    );
    let largest = g.float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = full
        .iter()
        .zip(&g.float)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 0.1 * largest,
        "{name}: the full model's logits are {worst} from the float model's (largest {largest})"
    );
    let right = argmax(&full)
        .iter()
        .zip(&g.y)
        .filter(|(p, y)| **p as i64 == **y)
        .count();
    let float_right = argmax(&g.float)
        .iter()
        .zip(&g.y)
        .filter(|(p, y)| **p as i64 == **y)
        .count();
    assert!(
        right + 1 >= float_right,
        "{name}: the full model gets {right} of 16 right, the float model {float_right}"
    );
    assert!(matches!(checkpoint.network, Network::Onnx(_)));
}

#[test]
fn onnx_runtimes_int8_models_import_and_compute_what_onnx_runtime_computes() {
    let devices =
        std::iter::once(backend::cpu().device).chain(common::wgpu_or_skip().map(|g| g.device));
    for device in devices {
        check_files(&device);
    }
}

fn check_files(device: &Device) {
    for (name, step) in [
        ("resnet8-fmnist.int8", 0.0980),
        ("resnet8-fmnist.int8-s8act", 0.0980),
        ("lenet5.int8", 0.1058),
        ("lenet5.int8-s8act", 0.1058),
    ] {
        check_file(name, step, device);
    }
}

/// `advcomp info` on each malformed file: exit code 2, an error naming the file, the node and
/// what is wrong.
#[test]
fn malformed_qdq_files_are_refused_naming_the_file_and_the_node() {
    let cases: &[(&str, &str, &str)] = &[
        ("zero-scale", "QuantizeLinear", "is 0e0"),
        (
            "zero-scale-weight",
            "DequantizeLinear",
            "is 0e0 (element 1)",
        ),
        (
            "zero-point-out-of-range",
            "QuantizeLinear",
            "is 300 (element 0), outside uint8's range [0, 255]",
        ),
        (
            "zero-point-out-of-range-weight",
            "DequantizeLinear",
            "is -200 (element 1), outside int8's range [-128, 127]",
        ),
        (
            "per-axis-wrong-length",
            "DequantizeLinear",
            "has 3 elements, but axis 0 of the input has length 4",
        ),
        (
            "per-axis-bad-axis",
            "DequantizeLinear",
            "axis 4 is outside the input's 4 axes",
        ),
        ("int16", "QuantizeLinear", "int16"),
        ("uint16", "QuantizeLinear", "uint16"),
        ("int4-weight", "DequantizeLinear", "4-bit integer"),
        ("float8", "QuantizeLinear", "float8"),
        (
            "int32-weight",
            "Conv",
            "is int32; advcomp emulates int8 weights",
        ),
    ];
    let bad = qdq().join("bad");
    for (file, op, what) in cases {
        let path = bad.join(format!("{file}.onnx"));
        let out = advcomp(&[
            "info",
            "--backend",
            "cpu",
            "--model",
            path.to_str().unwrap(),
        ]);
        let (name, op) = (format!("{file}.onnx"), format!("({op})"));
        assert_error(&out, "", &[&name, &op, what]);
        assert!(out.stdout.is_empty(), "{file}: wrote {:?}", out.stdout);
    }
}

/// `advcomp sweep --model my-int8.onnx`: the study on the pair (the graph without its
/// quantisers as the full model, or the float file given with `--reference`; the file as
/// quantised) with no compression step.
#[test]
fn the_study_runs_on_a_qdq_file_and_its_reference() {
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-sweep.toml");
    let model = qdq().join("lenet5.int8.onnx");
    let float = qdq().join("../lenet5.onnx");
    for reference in [None, Some(&float)] {
        let out = common::Scratch::path("qdq-sweep");
        let mut args = vec![
            "sweep",
            "--config",
            tiny,
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            "mnist",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(r) = reference {
            args.extend(["--reference", r.to_str().unwrap()]);
        }
        let run = advcomp(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let models = std::fs::read_to_string(out.join("models.csv")).unwrap();
        let rows: Vec<&str> = models.lines().skip(1).collect();
        assert_eq!(rows.len(), 2, "{models}");
        let full_file = reference.unwrap_or(&model).to_str().unwrap().to_string();
        assert!(
            rows[0].starts_with("1,full,full,") && rows[0].contains(&format!(",{full_file},")),
            "{models}"
        );
        assert!(
            rows[1].starts_with("1,int8-pc-qdq,quantised,1.0,8,affine per channel (QDQ file),"),
            "{models}"
        );
        let cells = std::fs::read_to_string(out.join("cells.csv")).unwrap();
        assert_eq!(
            cells.lines().count(),
            1 + (3 + 2) * 2 * 2 + 3 * 2,
            "(3 attacks and auto at 2 budgets) x 2 sources x 2 targets, and 3 attacks through \
             BPDA on the quantised source"
        );
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            report.contains("no compression step"),
            "the report's scope says so"
        );
    }
    // --reference names the float model of a QDQ file only.
    let run = advcomp(&[
        "sweep",
        "--config",
        tiny,
        "--model",
        float.to_str().unwrap(),
        "--reference",
        float.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--backend",
        "cpu",
        "--out",
        common::Scratch::path("qdq-sweep-refused").to_str().unwrap(),
    ]);
    assert_refused(
        &run,
        "a float file as QDQ",
        &["is not a quantised (QDQ) ONNX file"],
    );
}

/// A QDQ file is not exported again: ONNX Runtime runs it as it is.
#[test]
fn a_qdq_file_is_not_exported_again() {
    let out = common::Scratch::path("qdq-export.onnx");
    let model = qdq().join("lenet5.int8.onnx");
    let run = advcomp(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_refused(
        &run,
        "a QDQ file exported again",
        &["lenet5.int8.onnx: is a quantised (QDQ) ONNX file already"],
    );
    assert!(!out.exists());
}

/// An integer initialiser: ONNX type `dtype` (2 uint8, 3 int8), one byte per value.
fn int8_tensor(name: &str, shape: &[i64], dtype: i64, values: &[i8]) -> proto::Message {
    let mut t = proto::Message::default();
    for d in shape {
        t = t.int(1, *d);
    }
    let raw: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    t.int(2, dtype).text(8, name).bytes(9, &raw)
}

/// PyTorch's and Brevitas' form: a float weight behind QuantizeLinear → DequantizeLinear
/// (per channel), computed at import as ONNX defines QuantizeLinear (round half to even,
/// saturate, zero point); the input image quantised per tensor with a uint8 zero point.
#[test]
fn a_float_weight_behind_quantize_linear_is_quantised_at_import() {
    use proto::{Attr, node};
    // Channel 0 (scale 0.5, zero point 0): ties at 0.5, 1.5, 2.5 codes, saturation both ways.
    // Channel 1 (scale 0.25, zero point 3).
    let w0 = [0.25f32, 0.75, 1.25, -0.25, -0.75, 100.0, -100.0, 0.0, 0.5];
    let w1 = [0.125f32, 0.375, -0.125, 50.0, -50.0, 0.0, 0.3, -0.3, 1.0];
    let weights: Vec<u8> = w0.iter().chain(&w1).flat_map(|v| v.to_le_bytes()).collect();
    let scales: Vec<u8> = [0.5f32, 0.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let body = [
        node(
            "QuantizeLinear",
            "q_in",
            &["images", "s_in", "z_in"],
            &["x_q"],
            &[],
        ),
        node(
            "DequantizeLinear",
            "dq_in",
            &["x_q", "s_in", "z_in"],
            &["x"],
            &[],
        ),
        node(
            "QuantizeLinear",
            "q_w",
            &["w", "s_w", "z_w"],
            &["w_q"],
            &[("axis", Attr::Int(0))],
        ),
        node(
            "DequantizeLinear",
            "dq_w",
            &["w_q", "s_w", "z_w"],
            &["w_dq"],
            &[("axis", Attr::Int(0))],
        ),
        node("Conv", "conv", &["x", "w_dq"], &["y"], &[]),
        node("Flatten", "flatten", &["y"], &["features"], &[]),
    ];
    let inits = [
        proto::tensor_of("w", &[2, 1, 3, 3], &weights),
        proto::tensor_of("s_w", &[2], &scales),
        int8_tensor("z_w", &[2], 3, &[0, 3]),
        proto::tensor("s_in", &[], 1.0 / 255.0),
        int8_tensor("z_in", &[], 2, &[0]),
    ];
    let file = common::Scratch::path("qdq-float-weight.onnx");
    std::fs::write(
        &file,
        proto::classifier(1, 28, 28, &body, &inits, 2 * 26 * 26),
    )
    .unwrap();
    let device = backend::cpu().device;
    let checkpoint = model::load(&file, None, &KeyMap::default(), &device).unwrap();
    let Network::Onnx(m) = &checkpoint.network else {
        panic!("an ONNX model")
    };
    let i = m
        .graph
        .params
        .iter()
        .position(|(n, _)| n == "conv.weight")
        .unwrap();
    let values: Vec<f32> = m.params[i].val().into_data().try_to_vec::<f32>().unwrap();
    let codes0 = [0i64, 2, 2, 0, -2, 127, -128, 0, 1];
    let codes1 = [3i64, 5, 3, 127, -128, 3, 4, 2, 7];
    let expected: Vec<f32> = codes0
        .iter()
        .map(|&q| q as f32 * 0.5)
        .chain(codes1.iter().map(|&q| (q - 3) as f32 * 0.25))
        .collect();
    assert_eq!(values, expected);
    let quant = checkpoint.compression.quant.as_ref().unwrap();
    let grid = &quant.grids.weights["conv"];
    assert_eq!(
        (grid.axis, grid.zero.clone(), grid.qmin, grid.qmax),
        (Some(0), vec![0, 3], -128, 127)
    );
    assert_eq!(
        quant.grids.activations.len(),
        1,
        "the input's QuantizeLinear"
    );
}

/// `calibration = file` stands for a QDQ file's grids: advcomp does not make them, so neither
/// `compress` nor a sweep's grid takes it (exit code 2, nothing written).
#[test]
fn file_calibration_is_refused_where_advcomp_would_calibrate() {
    let out = common::Scratch::path("qdq-file-calibration.safetensors");
    let base =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/lenet5.safetensors");
    let run = advcomp(&[
        "compress",
        "--backend",
        "cpu",
        "--checkpoint",
        base.to_str().unwrap(),
        "--quant",
        "int8",
        "--calibration",
        "file",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_refused(
        &run,
        "compress --calibration file",
        &["error: --calibration: file: the grids of an imported QDQ model"],
    );
    assert!(!out.exists());
    let config = common::Scratch::path("qdq-file-calibration.toml");
    std::fs::write(
        &config,
        "[[grid.quantisers]]\nkind = \"affine\"\ncalibration = \"file\"\n",
    )
    .unwrap();
    let folder = common::Scratch::path("qdq-file-calibration-sweep");
    let run = advcomp(&[
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert_refused(
        &run,
        "a sweep calibrating from the file",
        &["grid.quantisers.calibration: file"],
    );
    assert!(!folder.exists());
}
