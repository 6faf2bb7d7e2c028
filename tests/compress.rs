//! Compression: DNS and magnitude pruning reach their density (counted from the masks),
//! quantised weights lie on the fixed-point grid, 4-bit activations take at most 16 values,
//! affine int8 per-channel quantisation keeps a trained LeNet5's accuracy with every weight on
//! its channel's grid, compressed checkpoints keep masks, formats and grids, and bad options
//! are refused.

mod common;
use common::{Scratch, advcomp, assert_refused};

use std::path::Path;
use std::sync::{Arc, Mutex};

use advcomp::backend;
use advcomp::compress::{self, CompressConfig};
use advcomp::data::{self, DatasetKind, Split};
use advcomp::model::{self, CheckpointMeta, Compression, KeyMap, ModelKind};
use advcomp::prune::{PruneConfig, PruneKind};
use advcomp::quant::{FixedPoint, FixedPointSettings, QuantConfig};
use advcomp::train::TrainConfig;
use burn::prelude::*;
use safetensors::SafeTensors;

fn temp(name: &str) -> Scratch {
    Scratch::path(&format!("compress-{name}"))
}

/// A freshly initialised LeNet5 saved as a baseline checkpoint.
fn baseline(name: &str) -> Scratch {
    let device = backend::cpu().device;
    device.seed(5);
    let path = temp(name);
    let meta = CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        dataset: Some(DatasetKind::Mnist.into()),
        ..Default::default()
    };
    model::save_checkpoint(&path, &ModelKind::LeNet5.init(&device), &meta).unwrap();
    path
}

fn config(epochs: usize) -> CompressConfig {
    let mut config = CompressConfig::new(TrainConfig {
        batch_size: 64,
        train_limit: Some(512),
        ..TrainConfig::new(ModelKind::LeNet5, DatasetKind::Mnist)
    });
    config.finetune.epochs = epochs;
    config
}

fn run(base: &Path, config: &CompressConfig, out: &Path) -> compress::CompressOutcome {
    compress::compress_checkpoint(
        base,
        &advcomp::data::DataChoice::default(),
        config,
        Some(200),
        &backend::cpu().device,
        out,
        |_| {},
    )
    .unwrap()
}

fn load(path: &Path) -> model::Checkpoint {
    model::load_checkpoint(path, None, &KeyMap::default(), &backend::cpu().device).unwrap()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Every tensor the file stores, by name.
fn stored(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            (name, view.shape().to_vec(), values)
        })
        .collect()
}

fn masks(ckpt: &model::Checkpoint) -> Vec<(String, Vec<f32>)> {
    ckpt.compression
        .masks
        .iter()
        .map(|(name, m)| (name.clone(), host(m.values.clone())))
        .collect()
}

#[test]
fn dns_reaches_the_target_density_in_every_layer_and_pruned_weights_recover() {
    let base = baseline("dns-base.safetensors");
    let (one_shot, tuned) = (temp("dns0.safetensors"), temp("dns1.safetensors"));
    let mut c = config(0);
    c.prune = Some(PruneConfig::at(PruneKind::Dns, 0.1));
    let outcome = run(&base, &c, &one_shot);
    assert_eq!(outcome.record.density.len(), 4, "conv0, conv1, fc1, logits");
    for (layer, density) in &outcome.record.density {
        assert!((density - 0.1).abs() <= 0.005, "{layer}: density {density}");
    }
    assert!((outcome.record.overall_density - 0.1).abs() <= 0.005);

    // Fine-tuning with a mask update every step: densities stay on target, and some weights
    // pruned by the first mask come back (DNS's update reaches every weight).
    c.finetune.epochs = 1;
    c.finetune.learning_rate = 3e-3;
    c.prune = c.prune.map(|p| {
        p.with("mask_interval", 1)
            .and_then(|p| p.with("mask_freeze", 1.0))
            .unwrap()
    });
    run(&base, &c, &tuned);
    let (first, last) = (load(&one_shot), load(&tuned));
    let mut recovered = 0;
    for ((layer, before), (_, after)) in masks(&first).iter().zip(masks(&last)) {
        let density = after.iter().sum::<f32>() / after.len() as f32;
        assert!(
            (density - 0.1).abs() <= 0.005,
            "{layer} after fine-tuning: {density}"
        );
        recovered += before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b == 0.0 && **a == 1.0)
            .count();
    }
    assert!(
        recovered > 0,
        "no pruned weight came back during DNS fine-tuning"
    );

    // Stored weights are already masked: zero wherever the mask is.
    let tensors = stored(&tuned);
    for (layer, mask) in masks(&last) {
        let (_, shape, weight) = tensors
            .iter()
            .find(|(n, ..)| *n == format!("{layer}.weight"))
            .unwrap();
        let (_, mask_shape, stored_mask) = tensors
            .iter()
            .find(|(n, ..)| *n == format!("{layer}.weight_mask"))
            .unwrap();
        assert_eq!(shape, mask_shape, "{layer}: mask in PyTorch's layout");
        assert_eq!(stored_mask.iter().sum::<f32>(), mask.iter().sum::<f32>());
        for (w, m) in weight.iter().zip(stored_mask) {
            assert!(
                *m == 1.0 || *w == 0.0,
                "{layer}: a pruned weight is stored as {w}"
            );
        }
    }
}

#[test]
fn magnitude_pruning_keeps_the_largest_weights_and_never_regrows() {
    let base = baseline("mag-base.safetensors");
    let out = temp("mag.safetensors");
    let mut c = config(0);
    c.prune = Some(PruneConfig::at(PruneKind::Magnitude, 0.25));
    run(&base, &c, &out);
    let original = load(&base);
    let pruned = load(&out);
    for layer in model::weight_layers(&original.network) {
        let weights = host(layer.values.clone());
        let mask = host(pruned.compression.masks[&layer.name].values.clone());
        let kept = mask.iter().filter(|m| **m == 1.0).count();
        assert_eq!(
            kept,
            (0.25 * weights.len() as f64).round() as usize,
            "{}",
            layer.name
        );
        let smallest_kept = weights
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m == 1.0)
            .map(|(w, _)| w.abs())
            .fold(f32::INFINITY, f32::min);
        let largest_pruned = weights
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m == 0.0)
            .map(|(w, _)| w.abs())
            .fold(0.0, f32::max);
        assert!(smallest_kept >= largest_pruned, "{}", layer.name);
    }

    // Iterative: three rounds with fine-tuning between; each round's mask is inside the last.
    let iterative = temp("mag3.safetensors");
    c.finetune.epochs = 1;
    c.prune = c.prune.map(|p| p.with("rounds", 3).unwrap());
    let outcome = run(&base, &c, &iterative);
    let last = load(&iterative);
    let mut first_round = c.clone();
    first_round.finetune.epochs = 0;
    first_round.prune = Some(PruneConfig::at(
        PruneKind::Magnitude,
        0.25f64.powf(1.0 / 3.0),
    ));
    let first_out = temp("mag-r1.safetensors");
    run(&base, &first_round, &first_out);
    let first = load(&first_out);
    for ((layer, a), (_, b)) in masks(&first).iter().zip(masks(&last)) {
        assert!(
            a.iter().zip(&b).all(|(a, b)| *b <= *a),
            "{layer}: a weight pruned in round 1 came back"
        );
    }
    for (layer, density) in &outcome.record.density {
        assert!((density - 0.25).abs() <= 0.005, "{layer}: {density}");
    }
}

/// Every value of every stored weight and bias of a conv / linear layer lies on Q(W, P)'s grid.
fn assert_on_grid(path: &Path, format: FixedPoint) {
    let mut checked = 0;
    for (name, _, values) in stored(path) {
        let layer_param = name.ends_with(".weight") || name.ends_with(".bias");
        if !layer_param || name.starts_with("bn") {
            continue;
        }
        for v in values {
            assert_eq!(
                format.quantise(v).to_bits(),
                v.to_bits(),
                "{name}: {v} is off the {format} grid"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 431_080, "every LeNet5 parameter checked");
}

#[test]
fn quantised_weights_lie_on_the_grid_and_4_bit_activations_take_at_most_16_values() {
    let base = baseline("q-base.safetensors");
    for bits in [4, 8] {
        let out = temp(&format!("q{bits}.safetensors"));
        let mut c = config(1);
        let format = FixedPoint::paper(bits).unwrap();
        c.quant = Some(QuantConfig::Fixed(FixedPointSettings::paper(bits).unwrap()));
        // Pruned and quantised together.
        c.prune = Some(PruneConfig::at(PruneKind::Dns, 0.5));
        let outcome = run(&base, &c, &out);
        assert_on_grid(&out, format);
        assert!((outcome.record.overall_density - 0.5).abs() <= 0.005);
        let ckpt = load(&out);
        assert_eq!(
            ckpt.compression.quant.as_ref().map(|q| &q.config),
            c.quant.as_ref()
        );

        // A forward pass records every layer output: on the grid, at most 2^bits values.
        for (layer, values) in layer_outputs(&ckpt.network, &ckpt.compression) {
            assert!(
                values.iter().all(|v| format.quantise(*v) == *v),
                "{layer} off grid"
            );
            assert!(
                distinct(&values) <= 1 << bits,
                "{layer}: {} values",
                distinct(&values)
            );
        }
    }

    // With 8-bit weights (4-bit weights zero most of a fresh network's small weights, which
    // would make the check trivial), 4-bit activations use several of their 16 codes.
    let fresh = load(&base);
    let compression = Compression::fixed_point(
        Some(FixedPoint::paper(8).unwrap()),
        Some(FixedPoint::paper(4).unwrap()),
    );
    for (layer, values) in layer_outputs(&fresh.network, &compression) {
        let n = distinct(&values);
        assert!(
            (3..=16).contains(&n),
            "{layer}: {n} distinct 4-bit activations"
        );
    }
}

fn distinct(values: &[f32]) -> usize {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    sorted.len()
}

/// Every layer output of `network` under `compression` on 64 test images, by layer.
fn layer_outputs(network: &model::Network, compression: &Compression) -> Vec<(String, Vec<f32>)> {
    let device = backend::cpu().device;
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    let (images, _) = test.batch(&(0..64).collect::<Vec<_>>(), &device);
    let log = Arc::new(Mutex::new(Vec::new()));
    let recording = Compression {
        recorder: Some(log.clone()),
        ..compression.clone()
    };
    network.forward_compressed(images, &recording);
    let layers = std::mem::take(&mut *log.lock().unwrap());
    let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["conv0", "conv1", "fc1", "logits"]);
    layers.into_iter().map(|(n, t)| (n, host(t))).collect()
}

#[test]
fn a_compressed_checkpoint_loads_back_with_the_same_masks_formats_and_outputs() {
    let base = baseline("rt-base.safetensors");
    let out = temp("rt.safetensors");
    let mut c = config(0);
    c.prune = Some(PruneConfig::at(PruneKind::Magnitude, 0.3));
    c.quant = Some(QuantConfig::Fixed(FixedPointSettings {
        weights: Some(FixedPoint::new(6, 2).unwrap()),
        activations: None,
    }));
    let outcome = run(&base, &c, &out);
    let ckpt = load(&out);
    let record = ckpt.record().expect("compression record in the metadata");
    assert_eq!(record, outcome.record);
    assert_eq!(record.pruner, c.prune);
    assert!(!ckpt.compression.quantises_activations());

    // The baked weights give the same logits with or without applying the compression again.
    let device = backend::cpu().device;
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    let (images, _) = test.batch(&(0..32).collect::<Vec<_>>(), &device);
    let again = host(
        ckpt.network
            .forward_compressed(images.clone(), &ckpt.compression),
    );
    let plain = host(ckpt.network.forward(images));
    assert_eq!(again, plain, "compression is idempotent on baked weights");

    // Saved again and reloaded: identical tensors.
    let resaved = temp("rt2.safetensors");
    model::save_compressed(&resaved, &ckpt.network, &ckpt.compression, &ckpt.meta).unwrap();
    let (mut a, mut b) = (stored(&resaved), stored(&out));
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x == y,
            "tensor {} differs after a save/load round trip",
            x.0
        );
    }
}

/// `--quantiser` reaches any quantiser by its settings in JSON: the same compression as the
/// built-in one's own flags, bit for bit.
#[test]
fn a_quantiser_given_by_its_settings_compresses_as_its_own_flags_do() {
    let base = baseline("json-base.safetensors");
    let base = base.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = temp(name);
        let mut args = vec![
            "compress",
            "--checkpoint",
            base,
            "--finetune-epochs",
            "0",
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let result = advcomp(&args);
        assert!(result.status.success(), "{extra:?}: {result:?}");
        std::fs::read(&out).unwrap()
    };
    let flags = run("flags-q6.safetensors", &["--bits", "6"]);
    let json = run(
        "json-q6.safetensors",
        &[
            "--quantiser",
            r#"{"kind": "fixed", "weights": {"bits": 6, "int_bits": 4}, "activations": {"bits": 6, "int_bits": 4}}"#,
        ],
    );
    assert!(flags == json, "the two checkpoints differ");
    let affine = run(
        "json-int8.safetensors",
        &[
            "--quantiser",
            r#"{"kind": "affine", "weights": "int8", "calibration_images": 64}"#,
        ],
    );
    assert!(
        affine != flags,
        "the affine quantiser made the fixed-point model"
    );
}

#[test]
fn impossible_compression_options_are_refused_and_write_nothing() {
    let base = baseline("bad-base.safetensors");
    let base = base.to_str().unwrap();
    let out = temp("never.safetensors");
    let out_str = out.to_str().unwrap();
    let cases: [(&[&str], &str); 17] = [
        (&["--density", "0"], "must lie in (0, 1]"),
        (&["--density", "1.5"], "must lie in (0, 1]"),
        (&["--prune", "dns"], "needs --density"),
        (&["--bits", "1"], "between 2 and 32"),
        (&["--bits", "33"], "between 2 and 32"),
        (
            &["--bits", "8", "--int-bits", "0"],
            "between 1 (the sign bit)",
        ),
        (
            &["--bits", "8", "--int-bits", "9"],
            "between 1 (the sign bit) and the width 8",
        ),
        (&[], "nothing to compress"),
        (
            &["--prune", "snip", "--density", "0.5"],
            "unknown pruner 'snip'",
        ),
        (&["--per-channel"], "--quant"),
        (&["--quant", "int8", "--bits", "8"], "cannot be used with"),
        (&["--quant", "uint8"], "weights are quantised symmetrically"),
        (&["--quant", "int16"], "unknown integer type 'int16'"),
        (
            &["--quantiser", r#"{"kind": "kmeans"}"#],
            "unknown quantiser 'kmeans'",
        ),
        (
            &["--quantiser", r#"{"kind": "fixed", "speed": 2}"#],
            "unknown field `speed`",
        ),
        (
            &[
                "--quantiser",
                r#"{"kind": "fixed", "weights": {"bits": 8, "int_bits": 9}}"#,
            ],
            "between 1 (the sign bit) and the width 8",
        ),
        (
            &[
                "--quantiser",
                r#"{"kind": "fixed", "weights": {"bits": 8, "int_bits": 2}}"#,
                "--bits",
                "8",
            ],
            "cannot be used with",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "compress",
            "--checkpoint",
            base,
            "--out",
            out_str,
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        assert_refused(&advcomp(&args), &format!("{extra:?}"), &[expected]);
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }

    // A checkpoint whose mask does not fit its weight.
    let device = backend::cpu().device;
    let network = ModelKind::LeNet5.init(&device);
    let mut compression = Compression::default();
    let wrong = model::Mask {
        values: Tensor::ones([10], &device),
        shape: vec![10],
    };
    compression.masks.insert("conv0".into(), wrong);
    let bad = temp("bad-mask.safetensors");
    model::save_compressed(&bad, &network, &compression, &CheckpointMeta::default()).unwrap();
    let result = advcomp(&[
        "info",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_refused(
        &result,
        "a mask that does not fit its weight",
        &["mask 'conv0.weight_mask' has shape [10], the weight has [20, 1, 5, 5]"],
    );
}

#[test]
fn stats_writes_weight_and_activation_cdfs_and_info_shows_the_compression() {
    let base = baseline("stats-base.safetensors");
    let out = temp("stats-q4.safetensors");
    let mut c = config(0);
    c.quant = Some(QuantConfig::Fixed(FixedPointSettings::paper(4).unwrap()));
    c.prune = Some(PruneConfig::at(PruneKind::Dns, 0.2));
    run(&base, &c, &out);
    let csv = temp("stats.csv");
    let result = advcomp(&[
        "stats",
        "--checkpoint",
        out.to_str().unwrap(),
        "--activations",
        "10",
        "--out",
        csv.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("tensor,layer,value,cdf"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for tensor in ["weight", "activation"] {
        for layer in ["conv0", "conv1", "fc1", "logits", "all"] {
            let points: Vec<(f32, f64)> = rows
                .iter()
                .filter(|r| r[0] == tensor && r[1] == layer)
                .map(|r| (r[2].parse().unwrap(), r[3].parse().unwrap()))
                .collect();
            // At 4 bits a CDF has at most 16 steps and ends at 1.
            assert!(
                !points.is_empty() && points.len() <= 16,
                "{tensor} {layer}: {}",
                points.len()
            );
            assert_eq!(points.last().unwrap().1, 1.0, "{tensor} {layer}");
            assert!(
                points
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            );
        }
    }

    let result = advcomp(&[
        "info",
        "--checkpoint",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let table = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success());
    assert!(
        table.contains("compression: weights Q(4,1), activations Q(4,1), overall density 0.2"),
        "{table}"
    );
    // One row per weight layer; its density counts non-zero weights as the layer uses them,
    // at most the mask's (4-bit rounding zeroes more of a fresh network's small weights).
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("compression:"))
        .collect();
    for layer in ["conv0", "conv1", "fc1", "logits"] {
        let row = rows.iter().find(|l| l.starts_with(layer));
        let row = row.unwrap_or_else(|| panic!("no row for {layer}: {table}"));
        let density: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(density <= 0.2 + 1e-9, "{layer}: {row}");
    }
}

#[test]
fn affine_int8_per_channel_keeps_a_trained_lenet5_and_puts_every_weight_on_its_grid() {
    use advcomp::quant::{AffineSettings, IntType};
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/lenet5.safetensors");
    let out = temp("int8-pc.safetensors");
    let mut c = config(0);
    c.quant = Some(QuantConfig::Affine(AffineSettings {
        weights: Some(IntType::Int8),
        activations: Some(IntType::Uint8),
        per_channel: true,
        calibration_images: 300,
        ..AffineSettings::default()
    }));
    let device = backend::cpu().device;
    let outcome = compress::compress_checkpoint(
        &base,
        &advcomp::data::DataChoice::default(),
        &c,
        Some(1000),
        &device,
        &out,
        |_| {},
    )
    .unwrap();
    // Post-training quantisation alone (no fine-tuning) stays within 3 of 1,000 images.
    let drop = outcome.base_accuracy - outcome.test_accuracy;
    assert!(
        drop.abs() <= 0.003,
        "accuracy {} -> {}",
        outcome.base_accuracy,
        outcome.test_accuracy
    );

    let ckpt = load(&out);
    let quant = ckpt.compression.quant.clone().expect("quantised");
    let grids = &quant.grids;
    // One scale per output channel: conv weights [out, in, kh, kw] along 0, burn's linear
    // weights [in, out] along 1.
    let expected = [
        ("conv0", 0, 20),
        ("conv1", 0, 50),
        ("fc1", 1, 500),
        ("logits", 1, 10),
    ];
    for (layer, axis, channels) in expected {
        let grid = &grids.weights[layer];
        assert_eq!(
            (grid.axis, grid.channels()),
            (Some(axis), channels),
            "{layer}"
        );
        assert_eq!((grid.qmin, grid.qmax), (-127, 127), "{layer}");
        // Every stored weight is its channel's scale times an integer code, and each channel
        // uses its largest code (scale = max |w| / 127). The file has PyTorch's layouts, the
        // output channel first.
        let (_, shape, values) = stored(&out)
            .into_iter()
            .find(|(n, ..)| *n == format!("{layer}.weight"))
            .unwrap();
        assert_eq!(shape[0], channels);
        let inner: usize = shape[1..].iter().product();
        let mut top = vec![0i64; channels];
        for (i, w) in values.iter().enumerate() {
            let ch = (i / inner) % channels;
            let code = grid.code(*w, ch);
            assert!(code.abs() <= 127, "{layer}: code {code}");
            assert_eq!(
                (code as f32 * grid.scale[ch]).to_bits(),
                w.to_bits(),
                "{layer}: {w} is off its channel's grid"
            );
            top[ch] = top[ch].max(code.abs());
        }
        assert!(top.iter().all(|t| *t == 127), "{layer}: {top:?}");
        // Biases: int32 codes of scale input scale x weight scale, as ONNX Runtime's.
        let input = &grids.activations[&format!("{layer}:input")];
        let bias = &grids.biases[layer];
        for (b, w) in bias.scale.iter().zip(&grid.scale) {
            assert_eq!(b.to_bits(), (input.scale[0] * w).to_bits(), "{layer}");
        }
    }
    // Activations: uint8 with a zero point at the input of every layer and at the logits.
    let mut sites: Vec<&str> = grids.activations.keys().map(String::as_str).collect();
    sites.sort();
    assert_eq!(
        sites,
        [
            "conv0:input",
            "conv1:input",
            "fc1:input",
            "logits",
            "logits:input"
        ]
    );
    for grid in grids.activations.values() {
        assert_eq!((grid.axis, grid.qmin, grid.qmax), (None, 0, 255));
    }
    // The image input (2x - 1 in [-1, 1]) takes a middle code as its zero point.
    let zero = grids.activations["conv0:input"].zero[0];
    assert!((127..=128).contains(&zero), "{zero}");

    // The checkpoint runs as it was made: the weights baked once or quantised again give the
    // same logits, on 256 grid values at most.
    let (images, _) = common::mnist_test_batch(64, &device);
    let classifier = ckpt.classifier();
    let logits = host(classifier.logits(images.clone()));
    assert_eq!(logits, host(classifier.frozen().logits(images)));
    assert!(distinct(&logits) <= 256);
}

/// The sweep's cache keys are hashes of these configs' JSON: a change to a field's name,
/// order or spelling (or to a default) would orphan every model a sweep has cached. The
/// strings are those of the code that trained the cached models.
#[test]
fn the_json_and_hash_of_the_default_configs_do_not_move() {
    let train = TrainConfig::new(ModelKind::LeNet5, DatasetKind::Mnist);
    let finetune = TrainConfig {
        epochs: 3,
        ..train.clone()
    };
    let grid = advcomp::sweep::SweepConfig::default().grid;
    let dns = CompressConfig {
        prune: Some(grid.pruner_at(0.1)),
        ..CompressConfig::new(finetune.clone())
    };
    let q8 = CompressConfig {
        quant: Some(QuantConfig::Fixed(FixedPointSettings::paper(8).unwrap())),
        ..CompressConfig::new(finetune)
    };
    let finetune_json = r#""finetune":{"model":"lenet5","dataset":"mnist","epochs":3,"batch_size":128,"learning_rate":0.001,"optimizer":"adam","schedule":"cosine","seed":1,"train_limit":null}"#;
    for (config, json, hash, expected_json, expected_hash) in [
        (
            "train",
            serde_json::to_string(&train).unwrap(),
            train.hash(),
            r#"{"model":"lenet5","dataset":"mnist","epochs":6,"batch_size":128,"learning_rate":0.001,"optimizer":"adam","schedule":"cosine","seed":1,"train_limit":null}"#.to_string(),
            "c4e4cb1cd90a624a",
        ),
        (
            "dns",
            serde_json::to_string(&dns).unwrap(),
            dns.hash(),
            format!(
                r#"{{"prune":{{"kind":"dns","density":0.1,"density_ramp":0.34,"mask_freeze":0.75,"mask_interval":50}},"quant":null,"grad":"ste",{finetune_json}}}"#
            ),
            "3dd1a122575c6cc4",
        ),
        (
            "q8",
            serde_json::to_string(&q8).unwrap(),
            q8.hash(),
            format!(
                r#"{{"prune":null,"quant":{{"kind":"fixed","activations":{{"bits":8,"int_bits":2}},"weights":{{"bits":8,"int_bits":2}}}},"grad":"ste",{finetune_json}}}"#
            ),
            "4caf972ee8a0e51f",
        ),
    ] {
        assert_eq!(json, expected_json, "{config}");
        assert_eq!(hash, expected_hash, "{config}");
    }
    // The sweep builds the same configs from its defaults.
    let sweep = advcomp::sweep::SweepConfig::default();
    let baseline = sweep
        .baseline
        .config(ModelKind::LeNet5, DatasetKind::Mnist, 1);
    assert_eq!(baseline.hash(), "c4e4cb1cd90a624a");
    let dns = CompressConfig {
        prune: Some(grid.pruner_at(0.1)),
        ..sweep
            .finetune
            .config(ModelKind::LeNet5, DatasetKind::Mnist, 1)
    };
    assert_eq!(dns.hash(), "3dd1a122575c6cc4");
    // Slurm's tasks read the sweep config back from TOML.
    for config in [sweep, advcomp::sweep::SweepConfig::preset("quick").unwrap()] {
        let text = toml::to_string(&config).unwrap();
        let back: advcomp::sweep::SweepConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config, "{text}");
    }
}

/// An imported model (by its digest, as the sweep records it, or by its path) and the user's
/// own data are written into the training config as the text they always were, and read back.
#[test]
fn imported_models_and_own_data_keep_their_text_in_the_config() {
    use advcomp::data::DatasetRecord;
    use advcomp::model::{ModelIdentity, ModelRef};
    let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let own = DatasetRecord::Own("train pets/train, test pets/test".into());
    for (model, dataset, expected) in [
        (
            ModelIdentity::digest(sha),
            own.clone(),
            r#"{"model":"onnx-0123456789abcdef","dataset":"own data: train pets/train, test pets/test","#,
        ),
        (
            ModelRef::Onnx("models/resnet8.onnx".into()).into(),
            DatasetKind::FashionMnist.into(),
            r#"{"model":"models/resnet8.onnx","dataset":"fashion-mnist","#,
        ),
    ] {
        let config = TrainConfig::new(model.clone(), dataset.clone());
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.starts_with(expected), "{json}");
        assert_eq!(model.to_string().parse::<ModelIdentity>().unwrap(), model);
        assert_eq!(
            dataset.to_string().parse::<DatasetRecord>().unwrap(),
            dataset
        );
    }
    // A file whose name only looks like a digest is still a file.
    assert_eq!(
        "onnx-0123456789abcdef.onnx"
            .parse::<ModelIdentity>()
            .unwrap(),
        ModelRef::Onnx("onnx-0123456789abcdef.onnx".into()).into()
    );
}
