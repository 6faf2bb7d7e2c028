// Dynamic network surgery mask update (Guo et al. 2016), in one pass:
//   M <- (M or |W| > t_high) and (|W| > t_low),   t_high = 1.1 t, t_low = 0.9 t.
// Output is 1.0 (kept) or 0.0 (pruned); a NaN weight is pruned (its comparisons are
// false). PER_INVOCATION elements per invocation; the dispatch may be two-dimensional
// (see prelude.wgsl).

struct Params {
    len: u32,
    t_low: f32,
    t_high: f32,
}

// Every binding is read_write although inputs are only read: cubecl sub-allocates tensors
// from shared wgpu buffers, and wgpu refuses one buffer bound read-only and read-write
// in the same dispatch.
@group(0) @binding(0) var<storage, read_write> weight: array<f32>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
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
    let p = params;
    let first = first_element(group, groups, local);
    for (var i = first; i < min(first + PER_INVOCATION, p.len); i++) {
        let magnitude = abs(weight[i]);
        let keep = (mask[i] != 0.0 || magnitude > p.t_high) && magnitude > p.t_low;
        output[i] = select(0.0, 1.0, keep);
    }
}
