// Fixed-point fake quantisation (DESIGN.md "Fixed-point quantisation") and its
// straight-through gradient.
//
// mode 0: output = q(input) = clamp(round_half_even(input * 2^F), lo, hi) * 2^-F
//   - WGSL round() rounds half to even; 2^F and 2^-F are exact powers of two, so the
//     only rounding is round() itself.
//   - a zero result is +0 (a fixed-point code has one zero), NaN stays NaN, and
//     +-Inf saturate like any value beyond the range.
// mode 1: output = grad where lo <= input * 2^F <= hi, else 0 (STE: the gradient
//   passes inside the representable range and is zero where q clamps; 0 for NaN).
//
// Each invocation handles 4 consecutive elements (the per-invocation cost dominates on
// software Vulkan); the dispatch may be two-dimensional (more than 65535 workgroups): the
// first element is (flattened workgroup index * 256 + local index) * 4.

struct Params {
    len: u32,
    mode: u32,
    scale: f32,
    inv_scale: f32,
    lo: f32,
    hi: f32,
}

// Every binding is read_write although inputs are only read: cubecl sub-allocates tensors
// from shared wgpu buffers, and wgpu refuses one buffer bound read-only and read-write
// in the same dispatch.
@group(0) @binding(0) var<storage, read_write> input: array<f32>;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: Params;

// Bit test: compilers may assume that `x != x` is false.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Read the parameters once: every binding is read_write, so the compiler may not assume
    // that writes to `output` leave `params` unchanged.
    let p = params;
    let first = ((group.y * groups.x + group.x) * 256u + local) * 4u;
    for (var i = first; i < min(first + 4u, p.len); i++) {
        quantise(i, p);
    }
}

fn quantise(i: u32, p: Params) {
    let x = input[i];
    let scaled = x * p.scale;
    if (p.mode == 0u) {
        if (is_nan(x)) {
            output[i] = x;
            return;
        }
        let code = clamp(round(scaled), p.lo, p.hi);
        output[i] = select(code * p.inv_scale, 0.0, code == 0.0);
    } else {
        let inside = !is_nan(x) && scaled >= p.lo && scaled <= p.hi;
        output[i] = select(0.0, grad[i], inside);
    }
}
