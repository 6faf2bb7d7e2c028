// Pruning mask: output = weight where mask != 0, else +0 (a pruned weight is exactly
// zero, whatever it held: even Inf or NaN). PER_INVOCATION elements per invocation; the
// dispatch may be two-dimensional (see prelude.wgsl); the entry point is elementwise.wgsl's.

struct Params {
    len: u32,
}

// Bindings (every one read_write: see prelude.wgsl).
@group(0) @binding(0) var<storage, read_write> weight: array<f32>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: Params;

// Element i (the entry point, in elementwise.wgsl, calls it for each of its elements).
fn element(i: u32, p: Params) {
    output[i] = select(0.0, weight[i], mask[i] != 0.0);
}
