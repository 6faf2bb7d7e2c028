//! Distributions of a (compressed) network's weights and activations: per-layer summaries
//! for `advcomp info` and the CDF data of the paper's Figure 5 for `advcomp stats`.

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use serde::Serialize;

use crate::model::{Compression, Network, bake, weight_layers};

/// Above this many distinct values a CDF is sampled at quantiles instead of listed exactly.
const MAX_EXACT_POINTS: usize = 512;
/// Quantile points of a sampled CDF.
const QUANTILE_POINTS: usize = 513;

/// One point of an empirical CDF: the fraction of values <= `value`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cdf {
    /// `weight` or `activation`.
    pub tensor: &'static str,
    /// A layer name, or `all` for every layer together.
    pub layer: String,
    pub value: f32,
    pub fraction: f64,
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// The CDF of `values` (sorted in place): every distinct value when there are few (a quantised
/// tensor's steps are exact), else values at evenly spaced fractions.
fn cdf_points(values: &mut [f32]) -> Vec<(f32, f64)> {
    values.sort_by(f32::total_cmp);
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let mut distinct: Vec<(f32, f64)> = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        let fraction = (i + 1) as f64 / n as f64;
        match distinct.last_mut() {
            Some(last) if last.0 == v => last.1 = fraction,
            _ => {
                if distinct.len() > MAX_EXACT_POINTS {
                    break;
                }
                distinct.push((v, fraction));
            }
        }
    }
    if distinct.len() <= MAX_EXACT_POINTS {
        return distinct;
    }
    (0..QUANTILE_POINTS)
        .map(|k| {
            let fraction = k as f64 / (QUANTILE_POINTS - 1) as f64;
            let index = ((fraction * n as f64).ceil() as usize).clamp(1, n) - 1;
            (values[index], fraction)
        })
        .collect()
}

fn push_cdfs(rows: &mut Vec<Cdf>, tensor: &'static str, layers: Vec<(String, Vec<f32>)>) {
    let mut all = Vec::new();
    for (layer, mut values) in layers {
        all.extend_from_slice(&values);
        for (value, fraction) in cdf_points(&mut values) {
            rows.push(Cdf {
                tensor,
                layer: layer.clone(),
                value,
                fraction,
            });
        }
    }
    for (value, fraction) in cdf_points(&mut all) {
        rows.push(Cdf {
            tensor,
            layer: "all".into(),
            value,
            fraction,
        });
    }
}

/// CDFs of every weight layer's weights (as the compressed layers use them) and, with
/// `images`, of every layer's output activation on those images.
pub fn cdf_rows(
    network: &Network,
    compression: &Compression,
    images: Option<Tensor<4>>,
) -> Vec<Cdf> {
    let baked = bake(network.clone(), compression);
    let weights = weight_layers(&baked)
        .into_iter()
        .map(|l| (l.name, host(l.values)))
        .collect();
    let mut rows = Vec::new();
    push_cdfs(&mut rows, "weight", weights);
    if let Some(images) = images {
        let log = Arc::new(Mutex::new(Vec::new()));
        let recording = Compression {
            recorder: Some(log.clone()),
            ..compression.clone()
        };
        let _ = baked.forward_compressed(images, &recording);
        let recorded = std::mem::take(&mut *log.lock().expect("activation log"));
        let activations = recorded
            .into_iter()
            .map(|(layer, values)| (layer, host(values)))
            .collect();
        push_cdfs(&mut rows, "activation", activations);
    }
    rows
}

/// One weight layer at a glance.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSummary {
    pub layer: String,
    pub weights: usize,
    /// Non-zero weights / all weights, as the layer uses them.
    pub density: f64,
    pub distinct: usize,
    pub min: f32,
    pub max: f32,
    pub mean_abs: f64,
    /// |w| at the 50th and 99th percentiles of the non-zero weights.
    pub abs_p50: f32,
    pub abs_p99: f32,
    /// Counts in 10 equal bins over [min, max].
    pub histogram: Vec<usize>,
}

/// Per-layer summaries of the weights as the compressed layers use them (masked, quantised).
pub fn weight_summary(network: &Network, compression: &Compression) -> Vec<LayerSummary> {
    let baked = bake(network.clone(), compression);
    weight_layers(&baked)
        .into_iter()
        .map(|layer| {
            let values = host(layer.values);
            let n = values.len();
            let mut magnitudes: Vec<f32> = values
                .iter()
                .filter(|v| **v != 0.0)
                .map(|v| v.abs())
                .collect();
            magnitudes.sort_by(f32::total_cmp);
            let at = |q: f64| {
                magnitudes
                    .get(((q * magnitudes.len() as f64) as usize).min(magnitudes.len().max(1) - 1))
                    .copied()
                    .unwrap_or(0.0)
            };
            let min = values.iter().copied().fold(f32::INFINITY, f32::min);
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut histogram = vec![0usize; 10];
            for &v in &values {
                let bin = if max > min {
                    (((v - min) / (max - min)) * 10.0) as usize
                } else {
                    0
                };
                histogram[bin.min(9)] += 1;
            }
            let mut sorted = values.clone();
            sorted.sort_by(f32::total_cmp);
            sorted.dedup();
            LayerSummary {
                layer: layer.name,
                weights: n,
                density: magnitudes.len() as f64 / n.max(1) as f64,
                distinct: sorted.len(),
                min,
                max,
                mean_abs: values.iter().map(|v| v.abs() as f64).sum::<f64>() / n.max(1) as f64,
                abs_p50: at(0.5),
                abs_p99: at(0.99),
                histogram,
            }
        })
        .collect()
}
