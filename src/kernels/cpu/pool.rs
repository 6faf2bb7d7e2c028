//! Max pooling: the window maximum and its index, and the backward pass that adds each gradient
//! at its index.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{DType, Shape};
use burn::tensor::Bytes;
use burn::tensor::ops::MaxPoolOptions;
use rayon::prelude::*;

use super::{avx512, contiguous, f32_tensor, values, zeros};

/// A max pooling's geometry: unpadded, undilated, floor mode.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pool {
    planes: usize,
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    out_height: usize,
    out_width: usize,
}

impl Pool {
    /// The geometry of pooling `x` [n, c, h, w], or `None` where this module does not cover it.
    pub(super) fn of(x: &FlexTensor, options: &MaxPoolOptions<2>) -> Option<Self> {
        let xs = x.layout().shape();
        let simple = x.dtype() == DType::F32
            && xs.num_dims() == 4
            && options.padding == [(0, 0); 2]
            && options.dilation == [1, 1]
            && !options.ceil_mode
            && xs[2] >= options.kernel_size[0]
            && xs[3] >= options.kernel_size[1];
        simple.then(|| Self {
            planes: xs[0] * xs[1],
            shape: [xs[0], xs[1], xs[2], xs[3]],
            kernel: options.kernel_size,
            stride: options.stride,
            out_height: (xs[2] - options.kernel_size[0]) / options.stride[0] + 1,
            out_width: (xs[3] - options.kernel_size[1]) / options.stride[1] + 1,
        })
    }

    fn plane_len(&self) -> usize {
        self.shape[2] * self.shape[3]
    }

    fn out_plane_len(&self) -> usize {
        self.out_height * self.out_width
    }

    fn output_shape(&self) -> [usize; 4] {
        [
            self.shape[0],
            self.shape[1],
            self.out_height,
            self.out_width,
        ]
    }

    /// Planes per rayon task: enough work per task for small planes.
    fn planes_per_task(&self) -> usize {
        (4096 / self.plane_len().max(1)).max(1)
    }

    avx512_or_baseline! {
        /// The maximum of each window and, with `index`, its index in the plane (row times
        /// width plus column); the first of equal values wins and the last NaN wins over any
        /// number, as in PyTorch. The common 2x2 and 3x3 windows get their own unrolled loops.
        fn plane = Pool::plane_any(&self, x: &[f32], out: &mut [f32], index: Option<&mut [i64]>)
    }

    #[inline(always)]
    fn plane_any(&self, x: &[f32], out: &mut [f32], index: Option<&mut [i64]>) {
        if self.kernel == [2, 2] && self.stride == [2, 2] {
            return match index {
                Some(index) => self.plane_2x2::<true>(x, out, index),
                None => self.plane_2x2::<false>(x, out, &mut []),
            };
        }
        match (self.kernel, index) {
            ([2, 2], Some(index)) => self.plane_of::<2, 2, true>(x, out, index),
            ([2, 2], None) => self.plane_of::<2, 2, false>(x, out, &mut []),
            ([3, 3], Some(index)) => self.plane_of::<3, 3, true>(x, out, index),
            ([3, 3], None) => self.plane_of::<3, 3, false>(x, out, &mut []),
            (_, Some(index)) => self.plane_of::<0, 0, true>(x, out, index),
            (_, None) => self.plane_of::<0, 0, false>(x, out, &mut []),
        }
    }

    /// [`Pool::plane`] for LeNet5's 2x2 windows at stride 2, on row pairs split into
    /// non-overlapping pairs of columns (no index arithmetic or bounds checks per value).
    #[inline(always)]
    fn plane_2x2<const INDEX: bool>(&self, x: &[f32], out: &mut [f32], index: &mut [i64]) {
        let w = self.shape[3];
        let ow = self.out_width;
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let top = &x[2 * oy * w..][..2 * ow];
            let bottom = &x[(2 * oy + 1) * w..][..2 * ow];
            for (ox, ((out, t), b)) in out_row
                .iter_mut()
                .zip(top.chunks_exact(2))
                .zip(bottom.chunks_exact(2))
                .enumerate()
            {
                let (mut max, mut best) = (t[0], 0);
                for (v, at) in [(t[1], 1), (b[0], w), (b[1], w + 1)] {
                    let take = (v > max) | v.is_nan();
                    max = if take { v } else { max };
                    best = if take { at } else { best };
                }
                *out = max;
                if INDEX {
                    index[oy * ow + ox] = (2 * oy * w + 2 * ox + best) as i64;
                }
            }
        }
    }

    /// [`Pool::plane`] for a KH x KW window (0 x 0: the window of `self.kernel`), writing
    /// `index` when INDEX.
    #[inline(always)]
    fn plane_of<const KH: usize, const KW: usize, const INDEX: bool>(
        &self,
        x: &[f32],
        out: &mut [f32],
        index: &mut [i64],
    ) {
        let w = self.shape[3];
        let [kh, kw] = if KH == 0 { self.kernel } else { [KH, KW] };
        for (oy, out_row) in out.chunks_exact_mut(self.out_width).enumerate() {
            let y0 = oy * self.stride[0];
            for (ox, out) in out_row.iter_mut().enumerate() {
                let x0 = ox * self.stride[1];
                let mut best = y0 * w + x0;
                let mut max = x[best];
                for i in 0..kh {
                    let row = (y0 + i) * w + x0;
                    for (j, &v) in x[row..row + kw].iter().enumerate() {
                        // v > max, or v is NaN (the last NaN wins, as PyTorch's CPU kernel);
                        // `|`, not `||`, and selects rather than branches: the comparison is
                        // a coin toss, and mispredictions cost more than the arithmetic.
                        let take = (v > max) | v.is_nan();
                        max = if take { v } else { max };
                        best = if take { row + j } else { best };
                    }
                }
                *out = max;
                if INDEX {
                    index[oy * self.out_width + ox] = best as i64;
                }
            }
        }
    }
}

/// Max pooling alone (no indices: a forward pass nothing differentiates).
pub(super) fn max_pool2d(pool: Pool, x: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let xv = values(&x);
    let (len, out_len, task) = (
        pool.plane_len(),
        pool.out_plane_len(),
        pool.planes_per_task(),
    );
    let mut out = zeros(pool.planes * out_len);
    out.par_chunks_mut((out_len * task).max(1))
        .zip(xv.par_chunks((len * task).max(1)))
        .for_each(|(out, x)| {
            for (out, x) in out.chunks_mut(out_len.max(1)).zip(x.chunks(len.max(1))) {
                pool.plane(x, out, None);
            }
        });
    f32_tensor(out, &pool.output_shape())
}

/// Max pooling and the argmax indices its backward pass needs.
pub(super) fn max_pool2d_with_indices(pool: Pool, x: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let x = contiguous(x);
    let xv = values(&x);
    let (len, out_len, task) = (
        pool.plane_len(),
        pool.out_plane_len(),
        pool.planes_per_task(),
    );
    let mut out = zeros(pool.planes * out_len);
    let mut index = zeros(pool.planes * out_len);
    out.par_chunks_mut((out_len * task).max(1))
        .zip(index.par_chunks_mut((out_len * task).max(1)))
        .zip(xv.par_chunks((len * task).max(1)))
        .for_each(|((out, index), x)| {
            for ((out, index), x) in out
                .chunks_mut(out_len.max(1))
                .zip(index.chunks_mut(out_len.max(1)))
                .zip(x.chunks(len.max(1)))
            {
                pool.plane(x, out, Some(index));
            }
        });
    let shape = pool.output_shape();
    let index = FlexTensor::new(
        Bytes::from_elems(index),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::I64,
    );
    (f32_tensor(out, &shape), index)
}

/// dL/dx of max pooling: each output's gradient added at its argmax.
pub(super) fn max_pool2d_backward(pool: Pool, grad: &FlexTensor, index: &FlexTensor) -> FlexTensor {
    let (grad, index) = (contiguous(grad), contiguous(index));
    let gv = values(&grad);
    let iv = index.as_slice::<i64>().expect("i64 pooling indices");
    let (len, out_len, task) = (
        pool.plane_len(),
        pool.out_plane_len(),
        pool.planes_per_task(),
    );
    let mut dx = zeros(pool.planes * len);
    dx.par_chunks_mut((len * task).max(1))
        .zip(gv.par_chunks((out_len * task).max(1)))
        .zip(iv.par_chunks((out_len * task).max(1)))
        .for_each(|((dx, g), i)| {
            for ((dx, g), i) in dx
                .chunks_mut(len.max(1))
                .zip(g.chunks(out_len.max(1)))
                .zip(i.chunks(out_len.max(1)))
            {
                for (g, &i) in g.iter().zip(i) {
                    dx[i as usize] += g;
                }
            }
        });
    f32_tensor(dx, &pool.shape)
}
