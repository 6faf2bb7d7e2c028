//! Throughput measurements. Warm-up runs are excluded, every number is the median of timed
//! repeats, and each repeat ends by waiting for the device.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use crate::kernels::{self, FixedPoint, QuantGrad};

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

/// Median seconds of `op` over `repeats` timed runs after two warm-ups.
fn time(device: &Device, repeats: usize, mut op: impl FnMut() -> Tensor<1>) -> f64 {
    for _ in 0..2 {
        let _ = op();
        device.sync().expect("device sync");
    }
    let samples = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = op();
            device.sync().expect("device sync");
            let seconds = start.elapsed().as_secs_f64();
            drop(out);
            seconds
        })
        .collect();
    median(samples)
}

/// A kernel to time: name, bytes moved per call, the call.
type Case<'a> = (&'static str, usize, Box<dyn FnMut() -> Tensor<1> + 'a>);

/// q(x) written as a chain of stock burn tensor ops: what the fixed-point kernel replaces.
fn fixed_point_with_stock_ops(x: Tensor<1>, format: FixedPoint) -> Tensor<1> {
    let (lo, hi) = format.code_range();
    let code = (x.clone() * format.scale()).round().clamp(lo, hi);
    let zero = code.clone().equal_elem(0.0);
    let q = (code * (1.0 / format.scale())).mask_fill(zero, 0.0);
    q.mask_where(x.clone().is_nan(), x)
}

/// Throughput of the compression kernels on `elements` random values on `device`: the
/// fixed-point quantiser (and the same formula as stock burn ops), its STE backward, the mask
/// and the DNS update.
pub fn kernel_throughput(device: &Device, elements: usize, repeats: usize) -> Vec<KernelTiming> {
    let format = FixedPoint::paper(8).expect("valid format");
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
            "fixed_point (q, Q(8,2))",
            2 * f32s,
            Box::new(|| kernels::fixed_point(x.clone(), format, QuantGrad::Ste)),
        ),
        (
            "fixed_point as stock burn ops",
            2 * f32s,
            Box::new(|| fixed_point_with_stock_ops(x.clone(), format)),
        ),
        (
            "one stock op (x * 2), for scale",
            2 * f32s,
            Box::new(|| x.clone() * 2.0),
        ),
        (
            "fixed_point_ste (backward)",
            3 * f32s,
            Box::new(|| kernels::fixed_point_ste(x.clone(), g.clone(), format)),
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
            let seconds = time(device, repeats, &mut op);
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
