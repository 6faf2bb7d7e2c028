// One step of an iterative gradient attack (FGSM, FGM, IFGSM, IFGM, PGD), fused:
//   step = eps * sign(g)                        (mode 0: the sign attacks)
//        = factor[sample] * g                   (mode 1: gradient-amplitude attacks,
//                                                the per-image factor scales g)
//   a NaN gradient or step is no step;
//   out  = clamp(x + step, x - eps, x + eps)    (each step stays in an eps interval of x)
//   out  = clamp(out, x0 - budget, x0 + budget) (total L-inf budget; budget = +Inf: none)
//   out  = clamp(out, 0, 1)                     (pixel range)
// Four elements per invocation; the dispatch may be two-dimensional (see
// fixed_point.wgsl).

struct Params {
    len: u32,
    // Elements per image: the sample of element i is i / per_sample.
    per_sample: u32,
    mode: u32,
    eps: f32,
    budget: f32,
}

// Every binding is read_write although inputs are only read: cubecl sub-allocates tensors
// from shared wgpu buffers, and wgpu refuses one buffer bound read-only and read-write
// in the same dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> x0: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> factor: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: Params;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
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
        let gi = g[i];
        var step = p.eps * sign(gi);
        if (p.mode == 1u) {
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
}
