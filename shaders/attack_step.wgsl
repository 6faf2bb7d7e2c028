// One step of an iterative gradient attack (FGSM, FGM, IFGSM, IFGM, PGD), fused:
//   step = eps * sign(g)                        (MODE_SIGN: the sign attacks)
//        = factor[sample] * g                   (MODE_SCALED: gradient-amplitude attacks,
//                                                the per-image factor scales g)
//   a NaN gradient or step is no step;
//   out  = clamp(x + step, x - eps, x + eps)    (each step stays in an eps interval of x)
//   out  = clamp(out, x0 - budget, x0 + budget) (total L-inf budget; budget = +Inf: none)
//   out  = clamp(out, 0, 1)                     (pixel range)
// PER_INVOCATION elements per invocation; the dispatch may be two-dimensional (see
// prelude.wgsl); the entry point is elementwise.wgsl's.

// The modes, filled in from src/kernels/mod.rs's StepRule.
const MODE_SIGN: u32 = {{step_sign}}u;
const MODE_SCALED: u32 = {{step_scaled}}u;

// src/kernels/wgsl.rs's StepParams.
struct Params {
    len: u32,
    // Elements per image: the sample of element i is i / per_sample.
    per_sample: u32,
    mode: u32,
    eps: f32,
    budget: f32,
}

// Bindings (every one read_write: see prelude.wgsl).
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> x0: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> factor: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: Params;

// Element i (the entry point, in elementwise.wgsl, calls it for each of its elements).
fn element(i: u32, p: Params) {
    let gi = g[i];
    var step = p.eps * sign(gi);
    if (p.mode == MODE_SCALED) {
        step = factor[i / p.per_sample] * gi;
    }
    if (is_nan(gi) || is_nan(step)) {
        step = 0.0;
    }
    let xi = x[i];
    let x0i = x0[i];
    var out = clamp(xi + step, xi - p.eps, xi + p.eps);
    out = clamp(out, x0i - p.budget, x0i + p.budget);
    output[i] = clamp(out, 0.0, 1.0);
}
