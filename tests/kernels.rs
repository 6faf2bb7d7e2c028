//! The compression kernels: every WGSL file validates with naga; on wgpu (lavapipe in CI) each
//! kernel equals the CPU reference bit for bit (NaN compared as "both NaN"), on ties at .5,
//! values beyond the range, +-0, NaN, +-Inf, tensors needing a 2D dispatch and non-contiguous
//! views, for fixed-point grids and affine ones (per tensor with a zero point, per channel
//! along any axis, int32 bias ranges); gradients through the STE equal the reference's. The CPU kernels (fused quantiser,
//! im2col + GEMM convolution, max pooling) equal the reference and burn's own ops, forward and
//! backward, on every geometry, and do not depend on the number of threads.

mod common;

use advcomp::backend;
use advcomp::kernels::{self, Grid, QuantGrad, StepRule, StepSettings};
use advcomp::quant::FixedPoint;
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FORMATS: [(u32, u32); 9] = [
    (2, 1),
    (4, 1),
    (8, 2),
    (8, 8),
    (16, 4),
    (24, 4),
    (25, 4),
    (32, 4),
    (32, 1),
];

fn format(bits: u32, int_bits: u32) -> FixedPoint {
    FixedPoint::new(bits, int_bits).unwrap()
}

/// Values that exercise every branch of q for `format`: random values well beyond the range,
/// exact ties between two codes, +-0, NaN, +-Inf, the range ends and just past them, tiny and
/// subnormal values.
fn probe_values(format: FixedPoint, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let step = 1.0 / format.scale();
    let (min, max) = format.value_range();
    let mut values = vec![
        0.0,
        -0.0,
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        min,
        max,
        min - step,
        max + step,
        0.5 * step,
        -0.5 * step,
        1.5 * step,
        -1.5 * step,
        2.5 * step,
        -2.5 * step,
        1e-40,
        -1e-40,
        f32::MAX,
        f32::MIN,
    ];
    while values.len() < n {
        let v = match rng.random_range(0..4) {
            // Exact ties: an odd number of half steps, within and beyond the range.
            0 => (2 * rng.random_range(-40_000i32..40_000) + 1) as f32 * 0.5 * step,
            1 => rng.random_range(-3.0 * max.abs().max(1.0)..3.0 * max.abs().max(1.0)),
            2 => rng.random_range(-4.0f32..4.0),
            _ => rng.random_range(-1e-3f32..1e-3),
        };
        values.push(v);
    }
    values
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let equal = (g.is_nan() && w.is_nan()) || g.to_bits() == w.to_bits();
        assert!(
            equal,
            "{what}: element {i}: got {g:e} ({:#010x}), reference {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn mask_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| if rng.random_bool(0.4) { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn every_shader_parses_and_validates_with_naga() {
    for (name, source) in &kernels::shaders() {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == "main"),
            "{name}: no `main` entry point"
        );
    }
}

#[test]
fn the_reference_quantiser_is_the_designs_formula() {
    let cpu = backend::cpu().device;
    // W=4, P=1: F=3, codes -8..7, values -1..0.875 in steps of 1/8.
    let q4 = format(4, 1);
    let cases: [(f32, f32); 12] = [
        (0.0625, 0.0),  // tie 0.5 code -> 0 (even)
        (0.1875, 0.25), // tie 1.5 -> 2
        (0.3125, 0.25), // tie 2.5 -> 2
        (-0.0625, 0.0), // tie -0.5 -> +0, not -0
        (-0.3125, -0.25),
        (0.9, 0.875), // saturates at 2^(P-1) - 2^-F
        (5.0, 0.875),
        (-1.0, -1.0),
        (-7.0, -1.0),
        (-0.01, 0.0), // rounds to zero: +0
        (f32::INFINITY, 0.875),
        (f32::NEG_INFINITY, -1.0),
    ];
    let input: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let expected: Vec<f32> = cases.iter().map(|c| c.1).collect();
    let got = values(kernels::quantise(
        tensor(&input, &cpu),
        &q4.grid(),
        QuantGrad::Ste,
    ));
    same_bits("Q(4,1) on cpu", &got, &expected);
    assert!(got.iter().all(|v| v.to_bits() != (-0.0f32).to_bits()));

    // The paper's P rule and the range of each format.
    assert_eq!(FixedPoint::paper(4).unwrap(), format(4, 1));
    assert_eq!(FixedPoint::paper(8).unwrap(), format(8, 2));
    assert_eq!(FixedPoint::paper(16).unwrap(), format(16, 4));
    assert_eq!(format(8, 2).value_range(), (-2.0, 2.0 - 1.0 / 64.0));

    // The CPU kernel (one fused pass) equals the reference's tensor ops and the host formula
    // on every probe value of every format, for q and for the STE gradient.
    for (bits, int_bits) in FORMATS {
        let f = format(bits, int_bits);
        let input = probe_values(f, 4096, bits as u64);
        let grad = probe_values(f, input.len(), 11);
        let got = values(kernels::quantise(
            tensor(&input, &cpu),
            &f.grid(),
            QuantGrad::Ste,
        ));
        let reference = values(kernels::quantise_reference(tensor(&input, &cpu), &f.grid()));
        same_bits(&format!("{f} cpu kernel vs reference"), &got, &reference);
        let host: Vec<f32> = input.iter().map(|&x| f.quantise(x)).collect();
        same_bits(&format!("{f} reference vs host"), &reference, &host);
        let ste = |kernel: bool| {
            let (x, g) = (tensor(&input, &cpu), tensor(&grad, &cpu));
            values(match kernel {
                true => kernels::quantise_ste(x, g, &f.grid()),
                false => kernels::quantise_ste_reference(x, g, &f.grid()),
            })
        };
        same_bits(
            &format!("{f} STE cpu kernel vs reference"),
            &ste(true),
            &ste(false),
        );
    }
}

#[test]
fn wgsl_kernels_equal_the_reference_bit_for_bit() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let cpu = backend::cpu().device;
    let gpu = gpu.device;
    for (bits, int_bits) in FORMATS {
        let f = format(bits, int_bits);
        let input = probe_values(f, 20_000, 100 + bits as u64);
        let grad: Vec<f32> = probe_values(f, input.len(), 7);
        let on = |device: &Device| {
            let q = kernels::quantise(tensor(&input, device), &f.grid(), QuantGrad::Ste);
            let ste =
                kernels::quantise_ste(tensor(&input, device), tensor(&grad, device), &f.grid());
            (values(q), values(ste))
        };
        let (q_gpu, ste_gpu) = on(&gpu);
        let (q_cpu, ste_cpu) = on(&cpu);
        same_bits(&format!("{f} on wgpu"), &q_gpu, &q_cpu);
        same_bits(&format!("{f} STE gradient on wgpu"), &ste_gpu, &ste_cpu);
    }

    let weights = probe_values(format(8, 2), 50_000, 3);
    let mask = mask_values(weights.len(), 4);
    let masked = |device: &Device| {
        values(kernels::apply_mask(
            tensor(&weights, device),
            tensor(&mask, device),
        ))
    };
    same_bits("mask on wgpu", &masked(&gpu), &masked(&cpu));

    for (t_low, t_high) in [
        (0.9f32, 1.1f32),
        (0.0, 0.0),
        (0.45, 0.55),
        (f32::INFINITY, f32::INFINITY),
    ] {
        let updated = |device: &Device| {
            values(kernels::dns_update(
                tensor(&weights, device),
                tensor(&mask, device),
                t_low,
                t_high,
            ))
        };
        let on_gpu = updated(&gpu);
        same_bits(
            &format!("dns_update t={t_low}..{t_high}"),
            &on_gpu,
            &updated(&cpu),
        );
        assert!(on_gpu.iter().all(|&m| m == 0.0 || m == 1.0));
    }
}

/// Affine grids and the shapes they quantise: per tensor with a zero point (uint8, int4
/// activations), per channel along the first axis (a conv weight), along the last (burn's
/// [in, out] linear weight: every element changes channel), along a middle one, and an int32
/// bias range (codes beyond 2^22: the CPU's exact rounding path).
fn affine_cases() -> Vec<(&'static str, Grid, Vec<usize>)> {
    let channels = |n: usize, base: f32| (0..n).map(|c| base * (1.0 + 0.37 * c as f32)).collect();
    vec![
        (
            "uint8 per tensor",
            Grid::per_tensor(0.0371, 37, 0, 255).unwrap(),
            vec![4, 3, 7, 5],
        ),
        (
            "int4 per tensor",
            Grid::per_tensor(0.21, -3, -8, 7).unwrap(),
            vec![1000],
        ),
        (
            "int8 per channel, axis 0",
            Grid::new(Some(0), channels(6, 0.013), vec![0; 6], -127, 127).unwrap(),
            vec![6, 3, 5, 5],
        ),
        (
            "int8 per channel, last axis",
            Grid::new(Some(1), channels(7, 0.02), vec![0; 7], -127, 127).unwrap(),
            vec![300, 7],
        ),
        (
            "uint8 per channel, middle axis, zero points",
            Grid::new(Some(1), channels(3, 0.05), vec![0, 128, 255], 0, 255).unwrap(),
            vec![5, 3, 64],
        ),
        (
            "int32 bias per channel",
            Grid::new(
                Some(0),
                channels(500, 1e-7),
                vec![0; 500],
                i32::MIN as i64,
                i32::MAX as i64,
            )
            .unwrap(),
            vec![500],
        ),
    ]
}

/// Values for `grid`: the fixed-point probes at its first channel's step (ties between codes,
/// the range's ends, NaN, ±Inf, ±0, subnormals), repeated to `n`.
fn affine_probes(grid: &Grid, n: usize, seed: u64) -> Vec<f32> {
    let c = grid.table()[0];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = vec![
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        c.lo * c.scale,
        c.hi * c.scale,
        (c.lo - 1.0) * c.scale,
        (c.hi + 1.0) * c.scale,
        0.5 * c.scale,
        -0.5 * c.scale,
        2.5 * c.scale,
        1e-40,
        f32::MAX,
    ];
    let reach = c.hi.abs().max(c.lo.abs()).min(1e6) * c.scale;
    while values.len() < n {
        let v = match rng.random_range(0..3) {
            0 => (2 * rng.random_range(-300i32..300) + 1) as f32 * 0.5 * c.scale,
            1 => rng.random_range(-1.5 * reach..1.5 * reach),
            _ => rng.random_range(-4.0f32..4.0),
        };
        values.push(v);
    }
    values.truncate(n);
    values
}

/// q of every element of a tensor of `shape` on the host, channel by channel.
fn host_quantise(grid: &Grid, shape: &[usize], values: &[f32]) -> Vec<f32> {
    let (channels, inner) = match grid.axis {
        None => (1, values.len()),
        Some(a) => (shape[a], shape[a + 1..].iter().product()),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| grid.quantise(x, (i / inner) % channels))
        .collect()
}

#[test]
fn affine_grids_quantise_as_onnx_defines_it_on_every_backend() {
    let cpu = backend::cpu().device;
    // uint8, scale 0.1, zero point 3: x / s rounds half to even, the zero point shifts the
    // code, saturation is at the type's codes, q = (code - z) * s.
    let grid = Grid::per_tensor(0.1, 3, 0, 255).unwrap();
    let cases: [(f32, f32); 6] = [
        (0.25, 0.2),  // 2.5 -> 2 (even), code 5, (5 - 3) * 0.1
        (0.35, 0.4),  // 3.5 -> 4
        (-0.5, -0.3), // code -2 saturates at 0: (0 - 3) * 0.1
        (30.0, 25.2), // code 303 saturates at 255
        (-0.04, 0.0), // rounds to the zero point: +0
        (f32::NAN, f32::NAN),
    ];
    let input: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let got = values(kernels::quantise(
        tensor(&input, &cpu),
        &grid,
        QuantGrad::Ste,
    ));
    for ((x, want), got) in cases.iter().zip(&got) {
        let close = (got - want).abs() <= 1e-6 || (got.is_nan() && want.is_nan());
        assert!(close, "q({x}) = {got}, expected {want}");
    }
    assert_eq!(got[4].to_bits(), 0, "a zero result is +0");
    assert_eq!(
        (grid.code(0.25, 0), grid.code(-0.5, 0), grid.code(30.0, 0)),
        (5, 0, 255)
    );

    // A multiply by the host's f32 reciprocal, as ONNX's x / s except near ties: wherever the
    // two give different codes, x / s lies within a few ulps of a half-integer.
    let onnx = |x: f32, s: f32| (x / s).round_ties_even();
    let mut rng = StdRng::seed_from_u64(3);
    let mut differ = 0;
    for _ in 0..200_000 {
        let s = rng.random_range(1e-4f32..1.0);
        let x = rng.random_range(-100.0f32..100.0) * s;
        let ours = (x * (1.0 / s)).round_ties_even();
        if ours != onnx(x, s) {
            differ += 1;
            let tie = ((x / s).abs().fract() - 0.5).abs();
            assert!(
                tie < 1e-5 * (x / s).abs().max(1.0),
                "x {x} s {s}: not at a tie"
            );
        }
    }
    assert!(differ < 200, "{differ} of 200,000 codes differ from x / s");

    // Fixed point is the grid of scale 2^-F: its kernel results are unchanged (held to the
    // reference above); here every affine grid, per tensor and per channel on any axis: the
    // fused CPU kernel, the reference's tensor ops and the host formula, q and its STE.
    let gpu = common::wgpu_or_skip().map(|g| g.device);
    for (name, grid, shape) in affine_cases() {
        let n: usize = shape.iter().product();
        let input = affine_probes(&grid, n, 21);
        let grad = affine_probes(&grid, n, 22);
        let shaped = |v: &[f32], device: &Device| -> Tensor<4> {
            let mut dims = [1; 4];
            dims[4 - shape.len()..].copy_from_slice(&shape);
            tensor(v, device).reshape(dims)
        };
        // The grid's axis is the shape's, so the rank-4 view shifts it.
        let lifted = Grid {
            axis: grid.axis.map(|a| a + 4 - shape.len()),
            ..grid.clone()
        };
        let on = |device: &Device| {
            let q = values(kernels::quantise(
                shaped(&input, device),
                &lifted,
                QuantGrad::Ste,
            ));
            let ste = values(kernels::quantise_ste(
                shaped(&input, device),
                shaped(&grad, device),
                &lifted,
            ));
            (q, ste)
        };
        let (q, ste) = on(&cpu);
        let reference = values(kernels::quantise_reference(shaped(&input, &cpu), &lifted));
        same_bits(&format!("{name}: cpu kernel vs reference"), &q, &reference);
        same_bits(
            &format!("{name}: reference vs host"),
            &reference,
            &host_quantise(&grid, &shape, &input),
        );
        let ste_reference = values(kernels::quantise_ste_reference(
            shaped(&input, &cpu),
            shaped(&grad, &cpu),
            &lifted,
        ));
        same_bits(
            &format!("{name}: STE cpu vs reference"),
            &ste,
            &ste_reference,
        );
        assert!(ste.contains(&0.0) && ste.iter().any(|g| *g != 0.0));
        if let Some(gpu) = &gpu {
            let (q_gpu, ste_gpu) = on(gpu);
            same_bits(&format!("{name}: on wgpu"), &q_gpu, &q);
            same_bits(&format!("{name}: STE on wgpu"), &ste_gpu, &ste);
        }
    }

    // What no kernel can compute is refused when the grid is made.
    for (scale, zero, what) in [
        (0.0, 0, "scale 0"),
        (-1.0, 0, "scale -1"),
        (f32::NAN, 0, "scale NaN"),
        (1e-45, 0, "reciprocal"),
        (0.1, 256, "zero point 256"),
        (0.1, -1, "zero point -1"),
    ] {
        let e = Grid::per_tensor(scale, zero, 0, 255)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what.split(' ').next().unwrap()), "{what}: {e}");
    }
    assert!(Grid::new(Some(0), vec![0.1; 3], vec![0; 2], -127, 127).is_err());
    let grid = Grid::new(Some(0), vec![0.1; 3], vec![0; 3], -127, 127).unwrap();
    assert!(grid.fits(&[3, 4]).is_ok());
    assert!(grid.fits(&[4, 3]).unwrap_err().contains("3 scales"));
    assert!(
        grid.fits(&[3]).is_ok()
            && Grid {
                axis: Some(2),
                ..grid
            }
            .fits(&[3, 4])
            .is_err()
    );
}

#[test]
fn wgsl_kernels_tile_large_dispatches_and_read_strided_views() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let cpu = backend::cpu().device;
    let gpu = gpu.device;
    let f = format(8, 2);

    // A dispatch wider than the per-dimension limit must tile into a second dimension. A
    // tensor needing 65,536 workgroups of 1,024 elements (256 MiB) exceeds what lavapipe can
    // bind, so the limit is lowered instead: 1,000,003 elements are 977 workgroups, which with
    // at most 3 per dimension is a 3 x 326 grid with a ragged tail.
    let n = 1_000_003;
    let mut rng = StdRng::seed_from_u64(11);
    let input: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let quantised = |device: &Device| {
        values(kernels::quantise(
            tensor(&input, device),
            &f.grid(),
            QuantGrad::Ste,
        ))
    };
    let reference = quantised(&cpu);
    let one_row = quantised(&gpu);
    kernels::limit_groups_per_dimension(3);
    let tiled = quantised(&gpu);
    kernels::limit_groups_per_dimension(65_535);
    same_bits("1M elements on wgpu", &one_row, &reference);
    same_bits(
        "1M elements on wgpu, 3 x 326 workgroups",
        &tiled,
        &reference,
    );
    // The last element too: a dispatch that missed the tail would leave it unwritten.
    assert_eq!(tiled[n - 1], f.quantise(input[n - 1]));

    // A transposed (non-contiguous) view.
    let (rows, cols) = (300, 517);
    let data = probe_values(f, rows * cols, 12);
    let mask = mask_values(rows * cols, 13);
    let strided = |device: &Device, v: &[f32]| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device).swap_dims(0, 1)
    };
    let run = |device: &Device| {
        let q = kernels::quantise(strided(device, &data), &f.grid(), QuantGrad::Ste);
        let m = kernels::apply_mask(strided(device, &data), strided(device, &mask));
        let d = kernels::dns_update(strided(device, &data), strided(device, &mask), 0.5, 0.7);
        assert_eq!(q.dims(), [cols, rows]);
        (values(q), values(m), values(d))
    };
    let (q_gpu, m_gpu, d_gpu) = run(&gpu);
    let (q_cpu, m_cpu, d_cpu) = run(&cpu);
    same_bits("transposed fixed point", &q_gpu, &q_cpu);
    same_bits("transposed mask", &m_gpu, &m_cpu);
    same_bits("transposed dns update", &d_gpu, &d_cpu);
    // And the layout is the view's, not the buffer's: element [1, 0] of the transpose is
    // element [0, 1] of the original.
    assert_eq!(q_cpu[rows], f.quantise(data[1]));
}

/// d/dx sum(c * q(x)) on `device`, and d/dw sum(c * (w ⊙ m)).
fn gradients(device: &Device, x: &[f32], mask: &[f32], grad: QuantGrad) -> (Vec<f32>, Vec<f32>) {
    let device = device.clone().autodiff();
    let f = format(4, 1);
    let weights: Vec<f32> = (0..x.len()).map(|i| i as f32 * 0.25 + 1.0).collect();
    let c = tensor(&weights, &device);
    let input = tensor(x, &device).require_grad();
    let loss = (kernels::quantise(input.clone(), &f.grid(), grad) * c.clone()).sum();
    let dx = values(input.grad(&loss.backward()).expect("gradient of x"));

    let w = tensor(x, &device).require_grad();
    let loss = (kernels::apply_mask(w.clone(), tensor(mask, &device)) * c).sum();
    let dw = values(w.grad(&loss.backward()).expect("gradient of w"));
    (dx, dw)
}

#[test]
fn gradients_pass_straight_through_inside_the_range_and_reach_pruned_weights() {
    let cpu = backend::cpu().device;
    // Q(4,1): range [-1, 0.875].
    let x = [
        0.3f32,
        -0.99,
        0.875,
        0.9,
        -1.0,
        -1.01,
        5.0,
        f32::NAN,
        0.0,
        -0.2,
    ];
    let mask = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    let c: Vec<f32> = (0..x.len()).map(|i| i as f32 * 0.25 + 1.0).collect();
    let inside = [
        true, true, true, false, true, false, false, false, true, true,
    ];
    let expected_ste: Vec<f32> = c
        .iter()
        .zip(inside)
        .map(|(&c, inside)| if inside { c } else { 0.0 })
        .collect();

    let (ste, masked) = gradients(&cpu, &x, &mask, QuantGrad::Ste);
    same_bits("STE gradient on cpu", &ste, &expected_ste);
    // Every weight gets its gradient, pruned or not (DNS lets pruned weights recover).
    same_bits("mask gradient on cpu", &masked, &c);
    let (identity, _) = gradients(&cpu, &x, &mask, QuantGrad::Identity);
    same_bits("identity (BPDA) gradient on cpu", &identity, &c);

    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let (ste_gpu, masked_gpu) = gradients(&gpu.device, &x, &mask, QuantGrad::Ste);
    same_bits("STE gradient on wgpu", &ste_gpu, &expected_ste);
    same_bits("mask gradient on wgpu", &masked_gpu, &c);
    let (identity_gpu, _) = gradients(&gpu.device, &x, &mask, QuantGrad::Identity);
    same_bits("identity gradient on wgpu", &identity_gpu, &c);
}

/// Inputs of an attack step: 7 images of 3 x 5 x 5, a gradient with zeros and a NaN, factors
/// with an infinite one (a vanished gradient norm).
fn attack_inputs(device: &Device) -> [Tensor<4>; 3] {
    let mut rng = StdRng::seed_from_u64(21);
    let n = 7 * 3 * 5 * 5;
    let x0: Vec<f32> = (0..n).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let x: Vec<f32> = x0
        .iter()
        .map(|v| (v + rng.random_range(-0.05f32..0.05)).clamp(0.0, 1.0))
        .collect();
    let mut g: Vec<f32> = (0..n)
        .map(|i| match i % 11 {
            0 => 0.0,
            _ => rng.random_range(-2.0f32..2.0),
        })
        .collect();
    g[5] = f32::NAN;
    let shaped = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [7, 3, 5, 5]), device);
    [shaped(x), shaped(x0), shaped(g)]
}

#[test]
fn the_attack_step_moves_clips_and_matches_on_wgpu() {
    let cpu = backend::cpu().device;
    let factors = [0.01f32, 0.5, 0.0, f32::INFINITY, 0.02, 1.0, 0.03];
    let settings = [
        StepSettings {
            rule: StepRule::Sign,
            eps: 0.02,
            budget: f32::INFINITY,
        },
        StepSettings {
            rule: StepRule::Sign,
            eps: 0.02,
            budget: 0.03,
        },
        StepSettings {
            rule: StepRule::Scaled,
            eps: 0.05,
            budget: f32::INFINITY,
        },
        StepSettings {
            rule: StepRule::Scaled,
            eps: 0.05,
            budget: 0.01,
        },
    ];
    let run = |device: &Device, step: StepSettings| {
        let [x, x0, g] = attack_inputs(device);
        let f = tensor(&factors, device);
        values(kernels::attack_step(x, x0, g, f, step))
    };
    // The definition, on the host, element by element.
    let [x, x0, g] = attack_inputs(&cpu).map(values);
    for step in settings {
        let got = run(&cpu, step);
        for i in 0..got.len() {
            let delta = match step.rule {
                StepRule::Sign if g[i] > 0.0 => step.eps,
                StepRule::Sign if g[i] < 0.0 => -step.eps,
                StepRule::Sign => 0.0,
                StepRule::Scaled => factors[i / 75] * g[i],
            };
            let delta = if delta.is_nan() || g[i].is_nan() {
                0.0
            } else {
                delta
            };
            let want = (x[i] + delta)
                .clamp(x[i] - step.eps, x[i] + step.eps)
                .clamp(x0[i] - step.budget, x0[i] + step.budget)
                .clamp(0.0, 1.0);
            assert_eq!(got[i], want, "{step:?}: element {i}");
            assert!((0.0..=1.0).contains(&got[i]));
        }
    }
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    for step in settings {
        let (on_gpu, on_cpu) = (run(&gpu.device, step), run(&cpu, step));
        // Compared as floats: clamping may give either sign of zero.
        for (i, (a, b)) in on_gpu.iter().zip(&on_cpu).enumerate() {
            assert_eq!(a, b, "{step:?} on wgpu: element {i}");
        }
    }
}

fn random_tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// |got - want| <= 1e-4 (1 + |want|) everywhere: the sums run in another order.
fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, burn {w}"
        );
    }
}

/// A convolution's output and the gradients of x, weight and bias of sum(y * r) (r random, so
/// every output has its own gradient), through advcomp's kernel or burn's own conv2d.
fn conv_pass(
    device: &Device,
    x: [usize; 4],
    w: [usize; 4],
    bias: bool,
    options: &ConvOptions<2>,
    ours: bool,
) -> Vec<Vec<f32>> {
    let x = random_tensor(x, 1, device).autodiff().require_grad();
    let weight = random_tensor(w, 2, device).autodiff().require_grad();
    let b = bias.then(|| random_tensor([w[0]], 3, device).autodiff().require_grad());
    let y = match ours {
        true => kernels::conv2d(x.clone(), weight.clone(), b.clone(), options.clone()),
        false => {
            burn::tensor::module::conv2d(x.clone(), weight.clone(), b.clone(), options.clone())
        }
    };
    let r = random_tensor(y.dims(), 4, device).autodiff();
    let grads = (y.clone() * r).sum().backward();
    let mut out = vec![
        values(y.inner()),
        values(x.grad(&grads).unwrap()),
        values(weight.grad(&grads).unwrap()),
    ];
    if let Some(b) = b {
        out.push(values(b.grad(&grads).unwrap()));
    }
    out
}

fn devices() -> Vec<(String, Device)> {
    let mut devices = vec![("cpu".to_string(), backend::cpu().device)];
    if let Some(gpu) = common::wgpu_or_skip() {
        devices.push(("wgpu".to_string(), gpu.device));
    }
    devices
}

#[test]
fn convolution_and_its_gradients_equal_burns_on_every_geometry() {
    let plain = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    // (name, x shape, weight shape, bias, options)
    type Case = (&'static str, [usize; 4], [usize; 4], bool, ConvOptions<2>);
    let cases: Vec<Case> = vec![
        (
            "LeNet5 conv0",
            [3, 1, 28, 28],
            [20, 1, 5, 5],
            true,
            plain.clone(),
        ),
        (
            "LeNet5 conv1",
            [2, 20, 12, 12],
            [50, 20, 5, 5],
            true,
            plain.clone(),
        ),
        // More images than one chunk of the weight gradient's sum (16).
        (
            "37 images",
            [37, 3, 6, 6],
            [4, 3, 3, 3],
            true,
            plain.clone(),
        ),
        (
            "stride 2, padding 1",
            [2, 3, 9, 9],
            [4, 3, 3, 3],
            true,
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        ),
        (
            "dilation 2, asymmetric padding, stride (1, 2), no bias",
            [2, 2, 7, 8],
            [3, 2, 3, 2],
            false,
            ConvOptions::new_with_padding([1, 2], [(0, 2), (1, 0)], [2, 2], 1),
        ),
        // End-only padding (burn's "same" with an even kernel, ONNX pads like (0, 0, 1, 1)):
        // plain stride, and strided over more images than one group of the GEMM.
        (
            "end-only padding",
            [3, 2, 6, 6],
            [3, 2, 2, 2],
            true,
            ConvOptions::new_with_padding([1, 1], [(0, 1), (0, 1)], [1, 1], 1),
        ),
        (
            "end-only padding, stride 2, 37 images",
            [37, 2, 7, 7],
            [3, 2, 3, 3],
            true,
            ConvOptions::new_with_padding([2, 2], [(0, 2), (0, 1)], [1, 1], 1),
        ),
        // Stride 1 and padded within the kernel's reach: the direct kernel, forward and as its
        // own input gradient; output channels past a whole block of 8, positions past a
        // whole register of 16.
        (
            "3x3, padding 1, 20 output channels",
            [3, 6, 9, 9],
            [20, 6, 3, 3],
            true,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            "5x5, padding 2, a 5x7 image, 8 output channels",
            [2, 3, 5, 7],
            [8, 3, 5, 5],
            false,
            ConvOptions::new([1, 1], [2, 2], [1, 1], 1),
        ),
        (
            "padding wider than the kernel reaches",
            [1, 2, 4, 4],
            [2, 2, 3, 3],
            true,
            ConvOptions::new([1, 1], [3, 3], [1, 1], 1),
        ),
        // Grouped: Flex's own convolution.
        (
            "2 groups",
            [2, 4, 6, 6],
            [6, 2, 3, 3],
            true,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 2),
        ),
    ];
    for (device_name, device) in devices() {
        for (name, x, w, bias, options) in &cases {
            let ours = conv_pass(&device, *x, *w, *bias, options, true);
            let burn = conv_pass(&device, *x, *w, *bias, options, false);
            for (part, (o, b)) in ["output", "x gradient", "weight gradient", "bias gradient"]
                .iter()
                .zip(ours.iter().zip(&burn))
            {
                close(&format!("{name} on {device_name}: {part}"), o, b);
            }
        }
    }
}

/// Max pooling's output and the gradient of sum(y * r), through advcomp's kernel or burn's.
fn pool_pass(
    device: &Device,
    input: &Tensor<4>,
    options: &MaxPoolOptions<2>,
    ours: bool,
) -> [Vec<f32>; 2] {
    let x = input.clone().autodiff().require_grad();
    let y = match ours {
        true => kernels::max_pool2d(x.clone(), options.clone()),
        false => burn::tensor::module::max_pool2d(x.clone(), options.clone()),
    };
    let r = random_tensor(y.dims(), 5, device).autodiff();
    let grads = (y.clone() * r).sum().backward();
    [values(y.inner()), values(x.grad(&grads).unwrap())]
}

#[test]
fn max_pooling_equals_burns_with_ties_and_lets_nan_win() {
    let cases = [
        ("2x2 / 2", [2, 3, 8, 8], MaxPoolOptions::new([2, 2])),
        (
            "3x3 / 2, overlapping",
            [2, 3, 9, 9],
            MaxPoolOptions::new([3, 3]).with_stride([2, 2]),
        ),
        (
            "2x3 / (1, 2)",
            [1, 2, 7, 7],
            MaxPoolOptions::new([2, 3]).with_stride([1, 2]),
        ),
        // Padded and ceil mode: Flex's own pooling.
        (
            "padded",
            [1, 2, 6, 6],
            MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        ),
        (
            "ceil mode",
            [1, 2, 7, 7],
            MaxPoolOptions::new([2, 2]).with_ceil_mode(true),
        ),
    ];
    for (device_name, device) in devices() {
        for (name, shape, options) in &cases {
            // Few distinct values, so windows hold ties: the first maximum takes the gradient.
            // (+ 0.0 turns -0 into +0: which of two signed zeros a tie keeps is not specified.)
            let x = (random_tensor(*shape, 6, &device) * 2.0).round() + 0.0;
            let ours = pool_pass(&device, &x, options, true);
            let burn = pool_pass(&device, &x, options, false);
            same_bits(
                &format!("{name} on {device_name}: output"),
                &ours[0],
                &burn[0],
            );
            close(
                &format!("{name} on {device_name}: x gradient"),
                &ours[1],
                &burn[1],
            );
        }
    }
    // A NaN wins its window, forward and backward (the gradient goes to the NaN).
    let cpu = backend::cpu().device;
    let x = Tensor::<4>::from_data(
        TensorData::new(
            vec![1.0, f32::NAN, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0],
            [1, 1, 2, 4],
        ),
        &cpu,
    )
    .autodiff()
    .require_grad();
    let y = kernels::max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]));
    let got = values(y.clone().inner());
    assert!(got[0].is_nan() && got[1] == 7.0, "pooled {got:?}");
    let dx = values(x.grad(&y.sum().backward()).unwrap());
    assert_eq!(dx, vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn cpu_convolution_and_matrix_product_give_the_same_bits_on_any_number_of_threads() {
    let cpu = backend::cpu().device;
    let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| conv_pass(&cpu, [40, 20, 12, 12], [50, 20, 5, 5], true, &options, true))
    };
    let one = on(1);
    // The matrix product of a linear layer, forward and both gradients.
    let product = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                // A linear layer (deep products) and a logits layer's shallow ones (k = 10).
                let mut parts = Vec::new();
                for (m, k, n) in [(300, 800, 500), (3, 10, 500)] {
                    let a = random_tensor([m, k], 7, &cpu).autodiff().require_grad();
                    let b = random_tensor([k, n], 8, &cpu).autodiff().require_grad();
                    let y = kernels::matmul(a.clone(), b.clone());
                    let r = random_tensor([m, n], 9, &cpu).autodiff();
                    let grads = (y.clone() * r).sum().backward();
                    parts.push(values(y.inner()));
                    parts.push(values(a.grad(&grads).unwrap()));
                    parts.push(values(b.grad(&grads).unwrap()));
                }
                parts
            })
    };
    let product_one = product(1);
    for threads in [2, 3] {
        for (part, (a, b)) in product_one.iter().zip(&product(threads)).enumerate() {
            same_bits(&format!("matmul part {part}, 1 vs {threads} threads"), b, a);
        }
    }
    for threads in [2, 3] {
        for (part, (a, b)) in one.iter().zip(&on(threads)).enumerate() {
            same_bits(&format!("part {part}, 1 vs {threads} threads"), b, a);
        }
    }
}

#[test]
fn cpu_kernels_compiled_for_avx512_and_for_baseline_x86_give_the_same_bits() {
    let cpu = backend::cpu().device;
    let plain = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let strided = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let pool_input = (random_tensor([4, 6, 11, 11], 6, &cpu) * 2.0).round() + 0.0;
    let formats = [format(4, 1), format(8, 2), format(16, 4)];
    let run = || {
        let mut parts = conv_pass(&cpu, [9, 20, 12, 12], [50, 20, 5, 5], true, &plain, true);
        parts.extend(conv_pass(
            &cpu,
            [5, 3, 9, 9],
            [4, 3, 3, 3],
            false,
            &strided,
            true,
        ));
        parts.extend(conv_pass(
            &cpu,
            [3, 6, 9, 9],
            [20, 6, 3, 3],
            true,
            &ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            true,
        ));
        for options in [
            MaxPoolOptions::new([2, 2]),
            MaxPoolOptions::new([3, 3]).with_stride([2, 2]),
        ] {
            parts.extend(pool_pass(&cpu, &pool_input, &options, true));
            // Without autodiff: the forward-only pooling (no indices) of a clean evaluation.
            parts.push(values(kernels::max_pool2d(pool_input.clone(), options)));
        }
        for f in formats {
            let input = probe_values(f, 4096, 3);
            let x = || tensor(&input, &cpu);
            parts.push(values(kernels::quantise(x(), &f.grid(), QuantGrad::Ste)));
            parts.push(values(kernels::quantise_ste(x(), x() * 0.5, &f.grid())));
        }
        parts
    };
    // Where the CPU has no AVX-512 both runs take the baseline copies; say which was compared.
    /// Allows the AVX-512 copies again however the baseline run ends (the flag is global).
    struct AllowAgain;
    impl Drop for AllowAgain {
        fn drop(&mut self) {
            kernels::allow_avx512(true);
        }
    }
    let avx512 = kernels::allow_avx512(true);
    let with = run();
    let without = {
        let _allow_again = AllowAgain;
        kernels::allow_avx512(false);
        run()
    };
    eprintln!("AVX-512 copies compared with the baseline ones: {avx512}");
    assert_eq!(with.len(), without.len());
    for (part, (a, b)) in with.iter().zip(&without).enumerate() {
        same_bits(&format!("part {part}, AVX-512 vs baseline"), a, b);
    }
}

#[test]
fn matrix_product_and_its_gradients_equal_burns_also_on_transposed_views() {
    for (device_name, device) in devices() {
        // (a shape, b shape, transpose a, transpose b): a linear layer, a transposed weight (an
        // ONNX Gemm with transB), a transposed input, and shapes smaller than one block.
        let cases = [
            ([70, 800], [800, 500], false, false),
            ([70, 800], [500, 800], false, true),
            ([30, 70], [30, 9], true, false),
            ([1, 3], [3, 1], false, false),
        ];
        for (a_shape, b_shape, ta, tb) in cases {
            let pass = |ours: bool| {
                let a = random_tensor(a_shape, 10, &device)
                    .autodiff()
                    .require_grad();
                let b = random_tensor(b_shape, 11, &device)
                    .autodiff()
                    .require_grad();
                let a_used = if ta { a.clone().transpose() } else { a.clone() };
                let b_used = if tb { b.clone().transpose() } else { b.clone() };
                let y = match ours {
                    true => kernels::matmul(a_used, b_used),
                    false => a_used.matmul(b_used),
                };
                let r = random_tensor(y.dims(), 12, &device).autodiff();
                let grads = (y.clone() * r).sum().backward();
                [
                    values(y.inner()),
                    values(a.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                ]
            };
            let (ours, burn) = (pass(true), pass(false));
            for (part, (o, b)) in ["product", "a gradient", "b gradient"]
                .iter()
                .zip(ours.iter().zip(&burn))
            {
                close(
                    &format!("{a_shape:?}·{b_shape:?} ({ta}, {tb}) on {device_name}: {part}"),
                    o,
                    b,
                );
            }
        }
    }
}
