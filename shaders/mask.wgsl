// Pruning mask: output = weight where mask != 0, else +0 (a pruned weight is exactly
// zero, whatever it held: even Inf or NaN). PER_INVOCATION elements per invocation; the
// dispatch may be two-dimensional (see prelude.wgsl).

struct Params {
    len: u32,
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
        output[i] = select(0.0, weight[i], mask[i] != 0.0);
    }
}
