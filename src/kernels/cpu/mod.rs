//! The Flex CPU backend's convolution, matrix product, max pooling and quantiser, for f32
//! tensors (NCHW images).
//!
//! Why not Flex's own: at LeNet5's shapes (1 or 20 input channels, 28x28 and 12x12 planes) its
//! generic 3D paths spend most of their time outside the arithmetic (per-output divisions in
//! max pooling, the transposed-convolution route of the input gradient); attacks run these
//! ops a forward and a backward pass per step.
//!
//! Convolution is im2col + GEMM, a group of images per GEMM, groups spread over rayon's pool
//! (see [`gemm::gemm`] for the GEMM crate), or, padded or strided, a direct kernel image by
//! image (see `conv`). Every output element is computed by one GEMM call or one register of
//! the direct kernel in a fixed order, blocks of work do not depend on the thread count, and the weight gradient
//! sums fixed chunks of images in order, so results do not depend on the number of threads.
//!
//! Shapes these paths do not cover (grouped convolutions, padded, dilated or ceil-mode max
//! pooling, other dtypes) go to Flex's own implementation: see [`conv::Conv::of`],
//! [`pool::Pool::of`].
//!
//! One module per operation: [`gemm`] (the matrix product and the GEMM call under the
//! convolutions), [`maps`] (elementwise maps per channel: the quantiser), [`conv`], [`pool`],
//! and [`ops`], the [`KernelOps`](super::KernelOps) implementation that chooses between them
//! and Flex's own; here, what they share.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{DType, Shape};
use burn::tensor::Bytes;
use rayon::prelude::*;

fn f32_tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// The tensor's values in row-major order (a copy only when its layout is not contiguous).
fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// `len` zeros, written by rayon's pool. `vec![0; len]` zeroes on the calling thread alone
/// (freed memory is reused, never fresh zero pages: `backend::keep_freed_memory`), which was
/// about 8% of an IFGSM run on LeNet5 with the other core idle.
fn zeros<T: Copy + Default + Send>(len: usize) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    values
        .spare_capacity_mut()
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(T::default())));
    // SAFETY: the chunks above cover all `len` elements of the spare capacity, each written.
    unsafe { values.set_len(len) };
    values
}

/// Elements per rayon task of the elementwise ops.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// Whether the CPU kernels may run their AVX-512 copies (tests turn them off to hold the
/// baseline copies to the same bits on a machine with AVX-512).
pub(super) static AVX512_ALLOWED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// The AVX-512 copies run: the CPU has AVX-512F and they are allowed.
pub(super) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        AVX512_ALLOWED.load(std::sync::atomic::Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Defines `$name`, which runs `$any` (its body, `#[inline(always)]`, and what that inlines)
/// compiled for AVX-512 where the CPU has it, and as built otherwise. advcomp is built for
/// baseline x86-64 (SSE2), which leaves its loops a quarter of the vector width this machine
/// has: im2col, col2im and pooling took 28% of an IFGSM run on LeNet5 built so; compiled for
/// AVX-512 they take about 45% less time (perf, on the test machine).
macro_rules! avx512_or_baseline {
    ($(#[$doc:meta])* fn $name:ident = $owner:ident::$any:ident(&self $(, $arg:ident: $ty:ty)*) $(-> $ret:ty)?) => {
        $(#[$doc])*
        fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                #[target_feature(enable = "avx512f")]
                fn avx512(this: &$owner $(, $arg: $ty)*) $(-> $ret)? {
                    this.$any($($arg),*)
                }
                // SAFETY: the CPU has AVX-512F (`avx512()` checked it just above).
                return unsafe { avx512(self $(, $arg)*) };
            }
            self.$any($($arg),*)
        }
    };
}

mod conv;
mod gemm;
mod maps;
mod ops;
mod pool;
