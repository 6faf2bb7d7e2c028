// Put before every shader here by src/kernels/wgsl.rs, which fills in the numbers from its own
// constants (the one place they are written).
//
// Every shader is one loop over the elements: each invocation handles PER_INVOCATION
// consecutive ones (the per-invocation cost dominates on software Vulkan), a workgroup has
// WORKGROUP invocations, and the dispatch may be two-dimensional (more than 65,535
// workgroups): see first_element.

// Every shader binds every buffer read_write although it only reads its inputs: cubecl
// sub-allocates tensors from shared wgpu buffers, and wgpu refuses one buffer bound read-only
// and read-write in the same dispatch.

// Invocations per workgroup: every entry point's @workgroup_size.
const WORKGROUP: u32 = {{workgroup}}u;
// Consecutive elements each invocation handles.
const PER_INVOCATION: u32 = {{per_invocation}}u;

// The first element of an invocation: (flattened workgroup index * WORKGROUP + local index)
// * PER_INVOCATION. Its elements are first .. min(first + PER_INVOCATION, len).
fn first_element(group: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    return ((group.y * groups.x + group.x) * WORKGROUP + local) * PER_INVOCATION;
}

// Bit test: compilers may assume that `x != x` is false.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

