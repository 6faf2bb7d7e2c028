// The entry point of the element-wise shaders (mask, dns_update, attack_step), put between
// the prelude and the shader by src/kernels/wgsl.rs. The shader declares `Params` (its field
// `len`: the elements), its bindings, `params` among them, and `fn element(i: u32, p: Params)`,
// the work on element i.

@compute @workgroup_size(WORKGROUP)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Read the parameters once: every binding is read_write, so the compiler may not assume
    // that writes to the outputs leave `params` unchanged.
    let p = params;
    let first = first_element(group, groups, local);
    for (var i = first; i < min(first + PER_INVOCATION, p.len); i++) {
        element(i, p);
    }
}
