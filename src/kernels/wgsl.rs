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

pub(super) const QUANTISE: &str = include_str!("../../shaders/quantise.wgsl");
pub(super) const MASK: &str = include_str!("../../shaders/mask.wgsl");
pub(super) const DNS_UPDATE: &str = include_str!("../../shaders/dns_update.wgsl");
pub(super) const ATTACK_STEP: &str = include_str!("../../shaders/attack_step.wgsl");

/// Invocations per workgroup: the `@workgroup_size` of every shader here.
const WORKGROUP: u32 = 256;
/// Consecutive elements each invocation handles (the loop in every shader here).
const PER_INVOCATION: u64 = 4;
/// The most workgroups the first dispatch dimension may have: WebGPU's limit, 65,535, as for
/// the second. Tests lower it to make small tensors take the two-dimensional path (software Vulkan cannot allocate a
/// tensor that needs it: 65,536 workgroups x 1,024 elements is 256 MiB in one binding).
pub(super) static MAX_GROUPS_PER_DIM: AtomicU32 = AtomicU32::new(65_535);

/// One WGSL file, named for the kernel cache.
struct Wgsl {
    name: &'static str,
    source: &'static str,
}

impl KernelSource for Wgsl {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.source)
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Wgsl>().info(self.name)
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

fn wgsl(name: &'static str, source: &'static str) -> Wgsl {
    Wgsl { name, source }
}

/// Workgroup counts covering `len` elements: one row while it fits, then a 2D grid (the shaders
/// flatten the workgroup index and skip the tail).
fn dispatch(len: usize) -> CubeCount {
    let limit = MAX_GROUPS_PER_DIM.load(Ordering::Relaxed) as u64;
    let groups = (len as u64).div_ceil(WORKGROUP as u64 * PER_INVOCATION);
    let x = groups.min(limit);
    let y = groups.div_ceil(x);
    assert!(
        y <= 65_535,
        "tensor of {len} elements is too large for one dispatch"
    );
    CubeCount::Static(x as u32, y as u32, 1)
}

/// Launches `shader` with bindings `inputs..., output, params` and returns the output, shaped
/// like the first input. `params` starts with the element count, which the caller leaves out.
/// The first `same_size` inputs have the output's number of elements (the rest are smaller
/// side tables, such as one factor per image).
fn launch(shader: Wgsl, inputs: Vec<CubeTensor>, same_size: usize, params: &[u32]) -> CubeTensor {
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
    // The shaders index with u32 and step up to 4 * 256 past the last element.
    assert!(
        len < (u32::MAX - 4 * WORKGROUP) as usize,
        "{}: tensors of 2^32 elements or more are not supported",
        shader.name
    );
    let mut words = vec![len as u32];
    words.extend_from_slice(params);
    let params = client.create_from_slice(bytemuck::cast_slice(&words));

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

/// The quantiser shader's parameters after the length: mode, channels, elements per channel
/// run, then each channel's row (1/s, s, lo, hi).
fn quantise_params(x: &CubeTensor, mode: u32, table: &Table) -> Vec<u32> {
    let (_, channels, inner) = table.layout(&x.shape());
    let mut params = vec![mode, channels as u32, inner.max(1) as u32];
    for c in table.rows.iter() {
        params.extend([c.inv_scale, c.scale, c.lo, c.hi].map(f32::to_bits));
    }
    params
}

impl KernelOps for CubeBackend {
    fn quantise(x: FloatTensor<Self>, table: Table, _grad: QuantGrad) -> FloatTensor<Self> {
        let params = quantise_params(&x, 0, &table);
        // Mode 0 never reads `grad`; bind the input there too.
        launch(wgsl("quantise", QUANTISE), vec![x.clone(), x], 2, &params)
    }

    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
    ) -> FloatTensor<Self> {
        let params = quantise_params(&x, 1, &table);
        launch(wgsl("quantise", QUANTISE), vec![x, grad], 2, &params)
    }

    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        let shader = wgsl("mask", MASK);
        launch(shader, vec![weight, mask], 2, &[])
    }

    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self> {
        let shader = wgsl("dns_update", DNS_UPDATE);
        launch(
            shader,
            vec![weight, mask],
            2,
            &[t_low.to_bits(), t_high.to_bits()],
        )
    }

    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self> {
        let shader = wgsl("attack_step", ATTACK_STEP);
        let shape = x.shape();
        let per_image = shape.num_elements() / shape[0].max(1);
        let mode = match step.rule {
            StepRule::Sign => 0,
            StepRule::Scaled => 1,
        };
        let params = [
            per_image as u32,
            mode,
            step.eps.to_bits(),
            step.budget.to_bits(),
        ];
        launch(shader, vec![x, x0, grad, factor], 3, &params)
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
