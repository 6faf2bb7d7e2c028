//! The cubecl (wgpu) implementation: each compression op and the attack step launch their WGSL
//! file from `shaders/` on the tensors' device buffers. Inputs are made contiguous first (a
//! transposed or sliced view is copied on the device, never through the host); the output is
//! a fresh contiguous tensor. Convolution and max pooling are burn's own cubecl kernels.

use burn::backend::get_or_init_device_settings;
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{
    CubeBackend, CubeDim, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{DType, TensorMetadata};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use std::sync::atomic::{AtomicU32, Ordering};

use cubecl::CubeCount;
use cubecl::prelude::KernelId;
use cubecl::server::KernelArguments;

use super::{KernelOps, QuantGrad, StepRule, StepSettings, Table, burn_pool};

/// Put before every shader: its constants, first element and `is_nan`.
const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");
/// The entry point of the element-wise shaders (a loop calling the shader's `element`), put
/// between the prelude and such a shader.
const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");

pub(super) const QUANTISE: Shader = Shader {
    name: "quantise",
    body: include_str!("../../shaders/quantise.wgsl"),
    // Its own entry point: it steps along the channels.
    elementwise: false,
};
pub(super) const MASK: Shader = Shader {
    name: "mask",
    body: include_str!("../../shaders/mask.wgsl"),
    elementwise: true,
};
pub(super) const DNS_UPDATE: Shader = Shader {
    name: "dns_update",
    body: include_str!("../../shaders/dns_update.wgsl"),
    elementwise: true,
};
pub(super) const ATTACK_STEP: Shader = Shader {
    name: "attack_step",
    body: include_str!("../../shaders/attack_step.wgsl"),
    elementwise: true,
};

/// Invocations per workgroup: the `@workgroup_size` of every shader here.
const WORKGROUP: u32 = 256;
/// Consecutive elements each invocation handles (the loop in every shader here).
const PER_INVOCATION: u32 = 4;
/// The most workgroups the first dispatch dimension may have: WebGPU's limit, 65,535, as for
/// the second. Tests lower it to make small tensors take the two-dimensional path (software Vulkan cannot allocate a
/// tensor that needs it: 65,536 workgroups x 1,024 elements is 256 MiB in one binding).
pub(super) static MAX_GROUPS_PER_DIM: AtomicU32 = AtomicU32::new(65_535);

/// The quantiser shader's modes: its `MODE_*` constants are filled in from these.
#[repr(u32)]
#[derive(Clone, Copy)]
enum QuantiseMode {
    /// The quantised value.
    Value = 0,
    /// The straight-through gradient.
    Ste = 1,
}

/// Every placeholder of the shaders and what fills it in.
fn placeholders() -> [(&'static str, u32); 6] {
    [
        ("workgroup", WORKGROUP),
        ("per_invocation", PER_INVOCATION),
        ("quantise_value", QuantiseMode::Value as u32),
        ("quantise_ste", QuantiseMode::Ste as u32),
        ("step_sign", StepRule::Sign as u32),
        ("step_scaled", StepRule::Scaled as u32),
    ]
}

/// One WGSL file of `shaders/`, named for the kernel cache; the prelude goes before it, and
/// the element-wise entry point where the file only defines `element`.
#[derive(Clone, Copy)]
pub(super) struct Shader {
    name: &'static str,
    body: &'static str,
    elementwise: bool,
}

impl Shader {
    /// The file's name in `shaders/`.
    pub(super) fn file(&self) -> String {
        format!("{}.wgsl", self.name)
    }

    /// The WGSL that runs: the prelude (and the element-wise entry point) and the file, their
    /// placeholders filled in.
    pub(super) fn complete(&self) -> String {
        self.template().complete()
    }

    fn template(&self) -> SourceTemplate {
        placeholders().into_iter().fold(
            SourceTemplate::new(PRELUDE)
                .add_template(if self.elementwise { ELEMENTWISE } else { "" })
                .add_template(self.body),
            |template, (name, value)| template.register(name, value.to_string()),
        )
    }
}

impl KernelSource for Shader {
    fn source(&self) -> SourceTemplate {
        self.template()
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Shader>().info(self.name)
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The mask shader's parameters (its `Params`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MaskParams {
    len: u32,
}

/// The DNS update shader's parameters (its `Params`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DnsParams {
    len: u32,
    t_low: f32,
    t_high: f32,
}

/// The attack-step shader's parameters (its `Params`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    len: u32,
    /// Elements per image.
    per_sample: u32,
    /// A [`StepRule`] (the shader's `MODE_*`).
    mode: u32,
    eps: f32,
    budget: f32,
}

/// The quantiser shader's parameters before its rows (its `Sizes`, the head of `Params`;
/// the rows are [`Table`]'s channels).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantiseSizes {
    len: u32,
    /// A [`QuantiseMode`].
    mode: u32,
    channels: u32,
    /// Elements per channel run.
    inner: u32,
}

/// Workgroup counts covering `len` elements: one row while it fits, then a 2D grid (the shaders
/// flatten the workgroup index and skip the tail).
fn dispatch(len: usize) -> CubeCount {
    let limit = MAX_GROUPS_PER_DIM.load(Ordering::Relaxed) as u64;
    let groups = (len as u64).div_ceil(WORKGROUP as u64 * PER_INVOCATION as u64);
    let x = groups.min(limit);
    let y = groups.div_ceil(x);
    assert!(
        y <= 65_535,
        "tensor of {len} elements is too large for one dispatch"
    );
    CubeCount::Static(x as u32, y as u32, 1)
}

/// Launches `shader` with bindings `inputs..., output, params` and returns the output, shaped
/// like the first input. `params` gives the parameters' bytes for the element count. The first
/// `same_size` inputs have the output's number of elements (the rest are smaller side tables,
/// such as one factor per image).
fn launch(
    shader: Shader,
    inputs: Vec<CubeTensor>,
    same_size: usize,
    params: impl FnOnce(u32) -> Vec<u8>,
) -> CubeTensor {
    let inputs: Vec<CubeTensor> = inputs.into_iter().map(into_contiguous).collect();
    let first = &inputs[0];
    assert!(
        inputs.iter().all(|t| t.dtype == DType::F32),
        "{}: the kernels take f32 tensors",
        shader.name
    );
    let shape = first.shape();
    let len = shape.num_elements();
    assert!(
        inputs[..same_size]
            .iter()
            .all(|t| t.shape().num_elements() == len),
        "{}: inputs differ in size",
        shader.name
    );
    let client = first.client.clone();
    let device = first.device.clone();
    let output = CubeTensor::new_contiguous(
        client.clone(),
        device,
        shape,
        client.empty(len.max(1) * size_of::<f32>()),
        DType::F32,
    );
    if len == 0 {
        return output;
    }
    // The shaders index with u32 and step up to PER_INVOCATION * WORKGROUP past the last
    // element.
    assert!(
        len < (u32::MAX - PER_INVOCATION * WORKGROUP) as usize,
        "{}: tensors of 2^32 elements or more are not supported",
        shader.name
    );
    let params = client.create_from_slice(&params(len as u32));

    let mut arguments = KernelArguments::new();
    for input in &inputs {
        arguments = arguments.with_buffer(input.handle.clone().binding());
    }
    let arguments = arguments
        .with_buffer(output.handle.clone().binding())
        .with_buffer(params.binding());
    client.launch(
        Box::new(SourceKernel::new(shader, CubeDim::new_1d(WORKGROUP))),
        dispatch(len),
        arguments,
    );
    output
}

/// The quantiser shader's parameters for `len` elements of `shape`: the sizes, then each
/// channel's row.
fn quantise_params(len: u32, shape: &[usize], mode: QuantiseMode, table: &Table) -> Vec<u8> {
    let (_, channels, inner) = table.layout(shape);
    let sizes = QuantiseSizes {
        len,
        mode: mode as u32,
        channels: channels as u32,
        inner: inner.max(1) as u32,
    };
    [
        bytemuck::bytes_of(&sizes),
        bytemuck::cast_slice(&table.rows[..]),
    ]
    .concat()
}

impl KernelOps for CubeBackend {
    fn quantise(x: FloatTensor<Self>, table: Table, _grad: QuantGrad) -> FloatTensor<Self> {
        let shape = x.shape();
        let params = |len| quantise_params(len, &shape, QuantiseMode::Value, &table);
        // The value mode never reads `grad`; bind the input there too.
        launch(QUANTISE, vec![x.clone(), x], 2, params)
    }

    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let params = |len| quantise_params(len, &shape, QuantiseMode::Ste, &table);
        launch(QUANTISE, vec![x, grad], 2, params)
    }

    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        let params = |len| bytemuck::bytes_of(&MaskParams { len }).to_vec();
        launch(MASK, vec![weight, mask], 2, params)
    }

    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self> {
        let params = |len| bytemuck::bytes_of(&DnsParams { len, t_low, t_high }).to_vec();
        launch(DNS_UPDATE, vec![weight, mask], 2, params)
    }

    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let per_image = shape.num_elements() / shape[0].max(1);
        let params = |len| {
            let params = StepParams {
                len,
                per_sample: per_image as u32,
                mode: step.rule as u32,
                eps: step.eps,
                budget: step.budget,
            };
            bytemuck::bytes_of(&params).to_vec()
        };
        launch(ATTACK_STEP, vec![x, x0, grad, factor], 3, params)
    }

    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, weight, None, options)
    }

    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, weight, Some(bias), options)
    }

    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, output_grad, options)
    }

    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, output_grad, options)
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as FloatTensorOps<Self>>::float_matmul(a, b)
    }

    fn max_pool(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        burn_pool::max_pool::<Self>(x, &options)
    }

    fn max_pool_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let int_dtype = get_or_init_device_settings::<Self>(&x.device()).int_dtype;
        burn_pool::max_pool_with_indices::<Self>(x, &options, int_dtype)
    }

    fn max_pool_input_grad(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_pool::max_pool_input_grad::<Self>(x, &options, output_grad, indices)
    }
}
