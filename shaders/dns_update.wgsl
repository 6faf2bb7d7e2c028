// Dynamic network surgery mask update (Guo et al. 2016), in one pass:
//   M <- (M or |W| > t_high) and (|W| > t_low),   t_high = 1.1 t, t_low = 0.9 t.
// Output is 1.0 (kept) or 0.0 (pruned); a NaN weight is pruned (its comparisons are
// false). PER_INVOCATION elements per invocation; the dispatch may be two-dimensional
// (see prelude.wgsl); the entry point is elementwise.wgsl's.

struct Params {
    len: u32,
    t_low: f32,
    t_high: f32,
}

// Bindings (every one read_write: see prelude.wgsl).
@group(0) @binding(0) var<storage, read_write> weight: array<f32>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: Params;

// Element i (the entry point, in elementwise.wgsl, calls it for each of its elements).
fn element(i: u32, p: Params) {
    let magnitude = abs(weight[i]);
    let keep = (mask[i] != 0.0 || magnitude > p.t_high) && magnitude > p.t_low;
    output[i] = select(0.0, 1.0, keep);
}
