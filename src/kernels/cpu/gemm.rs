//! The matrix product: one single-threaded GEMM call (the convolutions' too), and blocks of
//! rows of a product spread over rayon's pool.

use ::gemm::Parallelism;
use burn::backend::DType;
use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::{contiguous, f32_tensor, values, zeros};

/// dst (m x n, row-major) = a (m x k) * b (k x n), or dst += when `accumulate`; the strides
/// say how each operand is laid out (row stride, column stride). Single-threaded (callers
/// spread images over rayon), so the result does not depend on the thread count.
///
/// The `gemm` crate (the one burn-flex uses, with its AVX-512 kernels on): 100–150 GFLOP/s
/// per core on LeNet5's shapes on the test machine, 1.3–2.5× `matrixmultiply` at each of
/// them. It needs the dev profile's `debug-assertions = false` for dependencies (Cargo.toml).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_strides.0 + (k - 1) * a_strides.1);
    assert!(k == 0 || n == 0 || b.len() > (k - 1) * b_strides.0 + (n - 1) * b_strides.1);
    // SAFETY: the asserts keep every index the strides reach inside the slices; dst is
    // written only through its own exclusive borrow.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_strides.1 as isize,
            a_strides.0 as isize,
            b.as_ptr(),
            b_strides.1 as isize,
            b_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Rows of a matrix product per rayon task.
const ROWS_PER_TASK: usize = 128;

/// A 2D f32 tensor as (values from its first element, row stride, column stride), without a
/// copy where its layout has positive strides (a transposed view, say); `None` otherwise.
fn matrix(t: &FlexTensor) -> Option<(&[f32], (usize, usize))> {
    let layout = t.layout();
    let strides = layout.strides();
    if t.dtype() != DType::F32 || strides.len() != 2 || strides.iter().any(|&s| s < 1) {
        return None;
    }
    let storage: &[f32] = t.storage();
    let values = storage.get(layout.start_offset()..)?;
    Some((values, (strides[0] as usize, strides[1] as usize)))
}

/// a [m, k] · b [k, n], blocks of rows of the product spread over rayon's pool.
pub(super) fn matmul(a: &FlexTensor, b: &FlexTensor) -> Option<FlexTensor> {
    let (a_shape, b_shape) = (a.layout().shape(), b.layout().shape());
    if a_shape.num_dims() != 2 || b_shape.num_dims() != 2 || a_shape[1] != b_shape[0] {
        return None;
    }
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return None;
    }
    let (m, k, n) = (a_shape[0], a_shape[1], b_shape[1]);
    let (a_contiguous, b_contiguous);
    let (av, a_strides) = match matrix(a) {
        Some(view) => view,
        None => {
            a_contiguous = contiguous(a);
            (values(&a_contiguous), (k, 1))
        }
    };
    let (bv, b_strides) = match matrix(b) {
        Some(view) => view,
        None => {
            b_contiguous = contiguous(b);
            (values(&b_contiguous), (n, 1))
        }
    };
    // Blocks of 128 rows: every block packs all of b, so few, large blocks; a fixed size, not
    // one per thread, because a GEMM crate may sum a block of other shape in another order.
    let rows_per_task = ROWS_PER_TASK;
    let mut out = zeros(m * n);
    out.par_chunks_mut((rows_per_task * n).max(1))
        .enumerate()
        .for_each(|(block, dst)| {
            let rows = dst.len() / n.max(1);
            let first = block * rows_per_task * a_strides.0;
            gemm(
                rows,
                n,
                k,
                dst,
                false,
                &av[first..],
                a_strides,
                bv,
                b_strides,
            );
        });
    Some(f32_tensor(out, &[m, n]))
}
