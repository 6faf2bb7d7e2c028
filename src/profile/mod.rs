//! Throughput measurements: the compression kernels (GB/s) and the attacks (images/s per
//! bitwidth, density and batch size, with the time split of one iteration). Warm-up runs are excluded, every number is the median of timed
//! repeats, and each repeat ends by waiting for the device.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use crate::Result;
use crate::attack::{self, AttackConfig, AttackKind};
use crate::backend::Backend;
use crate::compress::{self, CompressConfig};
use crate::data::{Dataset, Images};
use crate::kernels::{self, QuantGrad, StepRule, StepSettings};
use crate::model::{Classifier, Compression, ModelLabel, Network, weight_layers};
use crate::prune::{PruneConfig, PruneKind};
use crate::quant::{FixedPoint, FixedPointSettings, Grid, QuantConfig};
use crate::report::{Categories, LineFigure, Panel, Point, Series};
use crate::train::TrainConfig;

/// One kernel's measured throughput.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    pub kernel: String,
    pub elements: usize,
    /// Bytes read and written per call (f32 in, f32 out).
    pub bytes: usize,
    pub median_seconds: f64,
    pub gb_per_second: f64,
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A kernel to time: name, bytes moved per call, the call.
type Case<'a> = (&'static str, usize, Box<dyn FnMut() -> Tensor<1> + 'a>);

/// q(x) on a per-tensor grid written as a chain of stock burn tensor ops: what the quantiser
/// kernel replaces.
fn quantise_with_stock_ops(x: Tensor<1>, grid: &Grid) -> Tensor<1> {
    let c = grid.table()[0];
    let code = (x.clone() * c.inv_scale).round().clamp(c.lo, c.hi);
    let zero = code.clone().equal_elem(0.0);
    let q = (code * c.scale).mask_fill(zero, 0.0);
    q.mask_where(x.clone().is_nan(), x)
}

/// Throughput of the compression kernels on `elements` random values on `device`: the
/// quantiser on Q(8,2)'s grid (and the same formula as stock burn ops), its STE backward, the
/// mask and the DNS update.
pub fn kernel_throughput(device: &Device, elements: usize, repeats: usize) -> Vec<KernelTiming> {
    let grid = FixedPoint::paper(8).expect("valid format").grid();
    let x: Tensor<1> = Tensor::random(
        [elements],
        burn::tensor::Distribution::Uniform(-3.0, 3.0),
        device,
    );
    let g: Tensor<1> = Tensor::random([elements], burn::tensor::Distribution::Default, device);
    let m: Tensor<1> = Tensor::random(
        [elements],
        burn::tensor::Distribution::Bernoulli(0.5),
        device,
    );
    let f32s = elements * size_of::<f32>();
    let cases: Vec<Case> = vec![
        (
            "quantise (q, Q(8,2))",
            2 * f32s,
            Box::new(|| kernels::quantise(x.clone(), &grid, QuantGrad::Ste)),
        ),
        (
            "quantise as stock burn ops",
            2 * f32s,
            Box::new(|| quantise_with_stock_ops(x.clone(), &grid)),
        ),
        (
            "one stock op (x * 2), for scale",
            2 * f32s,
            Box::new(|| x.clone() * 2.0),
        ),
        (
            "quantise_ste (backward)",
            3 * f32s,
            Box::new(|| kernels::quantise_ste(x.clone(), g.clone(), &grid)),
        ),
        (
            "mask",
            3 * f32s,
            Box::new(|| kernels::apply_mask(x.clone(), m.clone())),
        ),
        (
            "dns_update",
            3 * f32s,
            Box::new(|| kernels::dns_update(x.clone(), m.clone(), 0.9, 1.1)),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, mut op)| {
            let seconds = median_time(device, 2, repeats, || drop(op()));
            KernelTiming {
                kernel: name.into(),
                elements,
                bytes,
                median_seconds: seconds,
                gb_per_second: bytes as f64 / seconds / 1e9,
            }
        })
        .collect()
}

/// A model to profile attacks on: the baseline, quantised to `bits`, or pruned to `density`.
/// Made without fine-tuning: speed does not depend on it.
#[derive(Clone)]
pub struct Variant {
    pub label: ModelLabel,
    pub bits: Option<u32>,
    pub density: f64,
    pub classifier: Classifier,
}

/// The baseline and its quantised (weights and activations, the paper's P rule) and
/// magnitude-pruned variants (`dataset`: what `base` was made on, as the pruned variants'
/// configs record it).
pub fn variants(
    base: &Network,
    dataset: &Dataset,
    bits: &[u32],
    densities: &[f64],
    device: &Device,
    test: &Images,
) -> Result<Vec<Variant>> {
    let mut out = vec![Variant {
        label: ModelLabel::full(),
        bits: None,
        density: 1.0,
        classifier: Classifier {
            network: base.clone(),
            compression: Compression::default(),
        },
    }];
    let no_finetune = TrainConfig {
        epochs: 0,
        ..TrainConfig::new(base.model_ref(), dataset.record())
    };
    for &b in bits {
        let format = Some(FixedPoint::paper(b)?);
        let quantiser = QuantConfig::Fixed(FixedPointSettings {
            weights: format,
            activations: format,
        });
        out.push(Variant {
            label: ModelLabel::compressed(None, Some(&quantiser)),
            bits: Some(b),
            density: 1.0,
            classifier: Classifier {
                network: base.clone(),
                compression: Compression::fixed_point(format, format),
            },
        });
    }
    for &d in densities {
        let config = CompressConfig {
            prune: Some(PruneConfig::at(PruneKind::Magnitude, d)),
            finetune: no_finetune.clone(),
            ..CompressConfig::new(no_finetune.clone())
        };
        config.validate()?;
        let pruned = compress::compress(base, &config, device, test, test, |_| {})?;
        out.push(Variant {
            label: config.label(),
            bits: None,
            density: d,
            classifier: Classifier {
                network: pruned.network,
                compression: pruned.compression,
            },
        });
    }
    Ok(out)
}

/// One attack's measured throughput on one variant at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct AttackTiming {
    pub attack: AttackKind,
    pub model: ModelLabel,
    pub bits: Option<u32>,
    pub density: f64,
    pub batch_size: usize,
    pub median_seconds: f64,
    pub images_per_second: f64,
    pub mean_iterations: f64,
}

/// Where one attack iteration's time goes, for one variant and batch size (medians).
#[derive(Clone, Debug, Serialize)]
pub struct TimeSplit {
    pub model: ModelLabel,
    pub batch_size: usize,
    /// Forward pass (compression included).
    pub forward_seconds: f64,
    /// Backward pass to the images: forward + backward minus forward.
    pub backward_seconds: f64,
    /// The masks and quantisers of one forward pass run on their own: the weights' mask and
    /// fixed-point kernels and the fixed-point kernel on every layer output.
    pub compression_kernel_seconds: f64,
    /// The fused attack-step kernel on the batch.
    pub attack_step_seconds: f64,
}

/// Median seconds of `op` over `repeats` timed runs after `warmups` untimed ones; each run
/// ends by waiting for `device`.
fn median_time(device: &Device, warmups: usize, repeats: usize, mut op: impl FnMut()) -> f64 {
    for _ in 0..warmups {
        op();
        device.sync().expect("device sync");
    }
    let samples = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            op();
            device.sync().expect("device sync");
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

/// Throughput of `config`'s attack on `variant`, on the first `batch` test images (repeated
/// when there are fewer), median of `repeats` after a warm-up.
pub fn attack_throughput(
    variant: &Variant,
    config: &AttackConfig,
    test: &Images,
    batch: usize,
    repeats: usize,
    device: &Device,
) -> Result<AttackTiming> {
    let indices: Vec<usize> = (0..batch).map(|i| i % test.len()).collect();
    let (x, y) = test.batch(&indices, device);
    let mut iterations = 0.0;
    let mut failure = None;
    // As the sweep attacks: weights compressed once per attack (`Classifier::frozen`).
    let seconds = median_time(device, 1, repeats, || {
        let views = crate::transfer::Views::of(&variant.classifier, config);
        let batch = attack::Batch {
            images: x.clone(),
            labels: y.clone(),
            first_image: 0,
        };
        match config.run(&views.target(), batch) {
            Ok(out) => {
                iterations =
                    out.iterations.iter().sum::<usize>() as f64 / out.iterations.len() as f64;
                // Reading the result back is part of the attack's cost.
                let _ = out.adversarial.into_data();
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(AttackTiming {
        attack: config.kind(),
        model: variant.label.clone(),
        bits: variant.bits,
        density: variant.density,
        batch_size: batch,
        median_seconds: seconds,
        images_per_second: batch as f64 / seconds,
        mean_iterations: iterations,
    })
}

/// Splits one attack iteration on `variant` at `batch` into its parts.
pub fn time_split(
    variant: &Variant,
    test: &Images,
    batch: usize,
    repeats: usize,
    device: &Device,
) -> TimeSplit {
    let indices: Vec<usize> = (0..batch).map(|i| i % test.len()).collect();
    let (x, y) = test.batch(&indices, device);
    let model = &variant.classifier;
    let forward = median_time(device, 1, repeats, || {
        let _ = model.logits(x.clone());
    });
    let forward_backward = median_time(device, 1, repeats, || {
        let _ = attack::loss_gradient(model, &x, &y);
    });
    // The compression ops of one forward pass, on tensors of the same sizes.
    let log = Arc::new(Mutex::new(Vec::new()));
    let recording = Compression {
        recorder: Some(log.clone()),
        ..model.compression.clone()
    };
    let _ = model.network.forward_compressed(x.clone(), &recording);
    let outputs = std::mem::take(&mut *log.lock().expect("activation log"));
    let layers = weight_layers(&model.network);
    let compression = &model.compression;
    let compression_kernels = median_time(device, 1, repeats, || {
        for layer in &layers {
            drop(compression.weight(&layer.name, &layer.shape, layer.values.clone()));
        }
        for (site, out) in &outputs {
            drop(compression.activation(site, out.clone()));
        }
    });
    let grad = attack::loss_gradient(model, &x, &y);
    let ones = Tensor::<1>::ones([batch], device);
    let settings = StepSettings {
        rule: StepRule::Sign,
        eps: 0.02,
        budget: f32::INFINITY,
    };
    let step = median_time(device, 1, repeats, || {
        let _ = kernels::attack_step(x.clone(), x.clone(), grad.clone(), ones.clone(), settings);
    });
    TimeSplit {
        model: variant.label.clone(),
        batch_size: batch,
        forward_seconds: forward,
        backward_seconds: (forward_backward - forward).max(0.0),
        compression_kernel_seconds: compression_kernels,
        attack_step_seconds: step,
    }
}

/// `attacks.csv` (images/s per attack, model and batch size), `split.csv` (where one iteration's
/// time goes) and the throughput figure (PNG and SVG) in `out`; returns the files written.
pub fn write_files(
    out: &Path,
    timings: &[AttackTiming],
    splits: &[TimeSplit],
    attacks: &[AttackKind],
    batch_sizes: &[usize],
    backend: &Backend,
) -> Result<Vec<PathBuf>> {
    let mut csv = String::from(
        "attack,model,bits,density,batch_size,median_seconds,images_per_second,mean_iterations,backend,adapter\n",
    );
    for t in timings {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},\"{}\"\n",
            t.attack,
            t.model,
            t.bits.map_or(String::new(), |b| b.to_string()),
            t.density,
            t.batch_size,
            t.median_seconds,
            t.images_per_second,
            t.mean_iterations,
            backend.name,
            backend.adapter
        ));
    }
    let attacks_csv = out.join("attacks.csv");
    crate::write_atomically(&attacks_csv, csv.as_bytes())?;
    let mut split_csv = String::from(
        "model,batch_size,forward_seconds,backward_seconds,compression_kernel_seconds,attack_step_seconds,backend,adapter\n",
    );
    for s in splits {
        split_csv.push_str(&format!(
            "{},{},{},{},{},{},{},\"{}\"\n",
            s.model,
            s.batch_size,
            s.forward_seconds,
            s.backward_seconds,
            s.compression_kernel_seconds,
            s.attack_step_seconds,
            backend.name,
            backend.adapter
        ));
    }
    let split = out.join("split.csv");
    crate::write_atomically(&split, split_csv.as_bytes())?;
    let figure = throughput_figure(timings, attacks, batch_sizes, backend);
    let fig = crate::report::save_lines(out, "throughput", "Attack throughput".into(), &figure)?;
    Ok(vec![attacks_csv, split, fig.png])
}

/// Images/s against bitwidth (the 32-bit float model at the axis' end), one panel per attack,
/// one line per batch size.
fn throughput_figure(
    timings: &[AttackTiming],
    attacks: &[AttackKind],
    batch_sizes: &[usize],
    backend: &Backend,
) -> LineFigure {
    let bits = |t: &AttackTiming| t.bits.unwrap_or(32) as f64;
    let dense = timings.iter().filter(|t| t.density == 1.0);
    let axis = Categories::new(dense.clone().map(bits), |b| {
        if b == 32.0 {
            "32 (float)".into()
        } else {
            format!("{b}")
        }
    });
    let panels: Vec<Panel> = attacks
        .iter()
        .map(|kind| {
            let series: Vec<Series> = batch_sizes
                .iter()
                .map(|&batch| {
                    let mut points: Vec<(f64, Point)> = dense
                        .clone()
                        .filter(|t| t.attack == *kind && t.batch_size == batch)
                        .map(|t| {
                            let y = t.images_per_second;
                            (axis.x(bits(t)), Point::new(y, y, y))
                        })
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series::new(format!("batch {batch}"), points)
                })
                .collect();
            let top = series
                .iter()
                .flat_map(|s| s.points.iter().map(|(_, p)| p.y))
                .fold(0.0, f64::max);
            Panel {
                title: kind.name().to_uppercase(),
                x_axis: axis.axis(),
                x_label: "bitwidth".into(),
                y_label: "images / s".into(),
                series,
                y_range: Some((0.0, 1.1 * top.max(1e-3))),
                cdf: false,
            }
        })
        .collect();
    LineFigure {
        title: format!("Attack throughput on {backend}"),
        columns: panels.len(),
        panels,
        footer: crate::report::build_version(),
    }
}
