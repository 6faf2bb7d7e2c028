// Fake quantisation on a grid (docs/design.md "Fixed-point quantisation" and "Affine integer
// quantisation"), per tensor or per channel, and its straight-through gradient.
//
// Element i is in channel c = (i / inner) % channels, whose row of the parameters holds
// (1/s, s, lo, hi): the host-computed f32 reciprocal of the scale, the scale, and the code
// range less the zero point (lo = qmin - z, hi = qmax - z, integer-valued).
//
// MODE_VALUE: output = q(input) = clamp(round_half_even(input * (1/s)), lo, hi) * s
//   - WGSL round() rounds half to even; a product of two f32s is correctly rounded, so the
//     result is the CPU's bit for bit (a division would not be: WGSL's is not correctly
//     rounded, which is why the reciprocal comes from the host).
//   - a zero result is +0 (a code has one zero), NaN stays NaN, and +-Inf saturate like any
//     value beyond the range.
// MODE_STE: output = grad where lo <= input * (1/s) <= hi, else 0 (STE: the gradient passes
//   inside the representable range and is zero where q clamps; 0 for NaN).
// Fixed point Q(W, P) is one row: 1/s = 2^F, s = 2^-F, lo = -2^(W-1), hi = 2^(W-1) - 1.
//
// Each invocation handles PER_INVOCATION consecutive elements; the dispatch may be
// two-dimensional (see prelude.wgsl).

// The modes, filled in from src/kernels/wgsl.rs's QuantiseMode.
const MODE_VALUE: u32 = {{quantise_value}}u;
const MODE_STE: u32 = {{quantise_ste}}u;

struct Row {
    inv_scale: f32,
    scale: f32,
    lo: f32,
    hi: f32,
}

struct Sizes {
    len: u32,
    mode: u32,
    channels: u32,
    inner: u32,
}

// One upload per launch: the sizes, then a row per channel (src/kernels/wgsl.rs's
// QuantiseSizes and Row).
struct Params {
    len: u32,
    mode: u32,
    channels: u32,
    inner: u32,
    rows: array<Row>,
}

// Bindings (every one read_write: see prelude.wgsl).
@group(0) @binding(0) var<storage, read_write> input: array<f32>;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: Params;

@compute @workgroup_size(WORKGROUP)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Read the parameters once: every binding is read_write, so the compiler may not assume
    // that writes to `output` leave `params` unchanged.
    let p = Sizes(params.len, params.mode, params.channels, params.inner);
    let first = first_element(group, groups, local);
    let end = min(first + PER_INVOCATION, p.len);
    if (p.channels == 1u) {
        let row = params.rows[0];
        for (var i = first; i < end; i++) {
            quantise(i, p, row);
        }
        return;
    }
    // Per channel: the first element's channel, then stepped along (two integer divisions
    // per invocation, not one per element: they are slow on software Vulkan).
    var channel = (first / p.inner) % p.channels;
    var offset = first % p.inner;
    var row = params.rows[channel];
    for (var i = first; i < end; i++) {
        quantise(i, p, row);
        offset += 1u;
        if (offset == p.inner) {
            offset = 0u;
            channel = (channel + 1u) % p.channels;
            row = params.rows[channel];
        }
    }
}

fn quantise(i: u32, p: Sizes, row: Row) {
    let x = input[i];
    let scaled = x * row.inv_scale;
    if (p.mode == MODE_VALUE) {
        if (is_nan(x)) {
            output[i] = x;
            return;
        }
        let code = clamp(round(scaled), row.lo, row.hi);
        output[i] = select(code * row.scale, 0.0, code == 0.0);
    } else {
        let inside = !is_nan(x) && scaled >= row.lo && scaled <= row.hi;
        output[i] = select(0.0, grad[i], inside);
    }
}
