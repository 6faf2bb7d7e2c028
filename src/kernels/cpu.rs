//! The Flex CPU backend's convolution, matrix product, max pooling and quantiser, for f32
//! tensors (NCHW images).
//!
//! Why not Flex's own: at LeNet5's shapes (1 or 20 input channels, 28x28 and 12x12 planes) its
//! generic 3D paths spend most of their time outside the arithmetic (per-output divisions in
//! max pooling, the transposed-convolution route of the input gradient); attacks run these
//! ops a forward and a backward pass per step.
//!
//! Convolution is im2col + GEMM, a group of images per GEMM, groups spread over rayon's pool
//! (see [`gemm`] for the two GEMM crates). Every output element is computed by one GEMM call in
//! a fixed order, blocks of work do not depend on the thread count, and the weight gradient
//! sums fixed chunks of images in order, so results do not depend on the number of threads.
//!
//! Shapes these paths do not cover (grouped convolutions, padded, dilated or ceil-mode max
//! pooling, other dtypes) go to Flex's own implementation: see [`Conv::of`], [`Pool::of`].

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{DType, Flex, IntDType, Shape};
use burn::tensor::Bytes;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{Channel, KernelOps, QuantGrad, StepSettings, Table, burn_pool, reference};

/// Images per chunk of the weight gradient's sum: fixed, so the summation order is too.
const IMAGES_PER_CHUNK: usize = 16;

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

/// dst (m x n, row-major) = a (m x k) * b (k x n), or dst += when `accumulate`; the strides
/// say how each operand is laid out (row stride, column stride). Single-threaded (callers
/// spread images over rayon), so the result does not depend on the thread count.
///
/// The `gemm` crate (the one burn-flex uses, with its AVX-512 kernels on): 100–150 GFLOP/s
/// per core on LeNet5's shapes on the test machine, 1.3–2.5× `matrixmultiply` at each of
/// them. It needs the dev profile's `debug-assertions = false` for dependencies (Cargo.toml).
#[allow(clippy::too_many_arguments)]
fn gemm(
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
        gemm::gemm(
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

/// `dst` = `src` for the short runs im2col copies (8 to 32 values in LeNet5): in blocks of
/// 8, whose fixed size compiles to register moves where `copy_from_slice` of a run-time length
/// is a `memcpy` call per run.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let mut blocks = dst.chunks_exact_mut(8);
    let mut sources = src.chunks_exact(8);
    for (d, s) in (&mut blocks).zip(&mut sources) {
        d.copy_from_slice(s);
    }
    for (d, s) in blocks.into_remainder().iter_mut().zip(sources.remainder()) {
        *d = *s;
    }
}

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

/// A 2D convolution's geometry (groups of 1).
#[derive(Clone, Copy, Debug)]
pub(super) struct Conv {
    batch: usize,
    in_channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding before the first row and column (what the kernel's offsets start from).
    padding: [usize; 2],
    /// Whether any side, end included, is padded (im2col then zero-fills).
    padded: bool,
    dilation: [usize; 2],
    out_height: usize,
    out_width: usize,
}

impl Conv {
    /// The geometry of `x` [n, c, h, w] with `weight` [o, c, kh, kw], or `None` where this
    /// module does not cover it.
    pub(super) fn of(
        x: &FlexTensor,
        weight: &FlexTensor,
        options: &ConvOptions<2>,
    ) -> Option<Self> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || options.groups != 1 {
            return None;
        }
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        if xs.num_dims() != 4 || ws.num_dims() != 4 || xs[1] != ws[1] {
            return None;
        }
        let out = |i: usize, size: usize| {
            let (begin, end) = options.padding[i];
            let reach = options.dilation[i] * (ws[2 + i] - 1) + 1;
            (size + begin + end)
                .checked_sub(reach)
                .map(|room| room / options.stride[i] + 1)
        };
        Some(Self {
            batch: xs[0],
            in_channels: xs[1],
            height: xs[2],
            width: xs[3],
            out_channels: ws[0],
            kernel: [ws[2], ws[3]],
            stride: options.stride,
            padding: [options.padding[0].0, options.padding[1].0],
            padded: options.padding != [(0, 0); 2],
            dilation: options.dilation,
            out_height: out(0, xs[2])?,
            out_width: out(1, xs[3])?,
        })
    }

    /// Rows of the im2col matrix: c * kh * kw.
    fn taps(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Columns of the im2col matrix: output pixels per channel.
    fn pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    fn image_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.out_channels * self.pixels()
    }

    fn output_shape(&self) -> [usize; 4] {
        [
            self.batch,
            self.out_channels,
            self.out_height,
            self.out_width,
        ]
    }

    /// For kernel row `i` (or column, `axis` 1) and output row `o`: the input row, if inside.
    fn source(&self, axis: usize, o: usize, tap: usize) -> Option<usize> {
        let size = [self.height, self.width][axis];
        (o * self.stride[axis] + tap * self.dilation[axis])
            .checked_sub(self.padding[axis])
            .filter(|&i| i < size)
    }

    /// Stride 1, no padding, no dilation: every output row reads one unbroken run of inputs.
    fn is_plain(&self) -> bool {
        self.stride == [1, 1] && !self.padded && self.dilation == [1, 1]
    }

    /// For a plain convolution, the image offset of each im2col row's first input, in row
    /// order: row (c, i, j) reads `out_width` inputs from there on each of `out_height` rows.
    fn plain_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let [kh, kw] = self.kernel;
        (0..self.in_channels).flat_map(move |c| {
            (0..kh).flat_map(move |i| (0..kw).map(move |j| (c * self.height + i) * self.width + j))
        })
    }

    /// Calls `f(tap row, column range in that row, input offset of its first pixel)` for every
    /// run of output pixels of one output row that read consecutive inputs (stride 1) or
    /// single pixels, so im2col and col2im share one walk. Pixels outside the input are
    /// skipped (their im2col entries stay zero).
    fn walk(&self, mut f: impl FnMut(usize, std::ops::Range<usize>, usize, usize)) {
        let [kh, kw] = self.kernel;
        // Per kernel column j: the output columns whose input column lies inside the image,
        // and the input column of the first.
        let columns: Vec<Option<(usize, usize, usize)>> = (0..kw)
            .map(|j| {
                let first = (0..self.out_width).find(|&ox| self.source(1, ox, j).is_some())?;
                let last = (first..self.out_width)
                    .take_while(|&ox| self.source(1, ox, j).is_some())
                    .last()
                    .unwrap_or(first);
                Some((first, last, self.source(1, first, j)?))
            })
            .collect();
        for c in 0..self.in_channels {
            for i in 0..kh {
                for (j, columns) in columns.iter().enumerate() {
                    let row = (c * kh + i) * kw + j;
                    let Some((first, last, ix)) = *columns else {
                        continue;
                    };
                    for oy in 0..self.out_height {
                        let Some(iy) = self.source(0, oy, i) else {
                            continue;
                        };
                        let start = oy * self.out_width;
                        let input = (c * self.height + iy) * self.width + ix;
                        f(row, start + first..start + last + 1, input, self.stride[1]);
                    }
                }
            }
        }
    }

    /// Images per GEMM: enough output pixels (about 256) that packing the weight once and the
    /// micro-kernel's tiles pay off, a power of two up to 16 (so groups tile the weight
    /// gradient's chunks).
    fn group(&self) -> usize {
        256usize
            .div_ceil(self.pixels().max(1))
            .next_power_of_two()
            .min(IMAGES_PER_CHUNK)
    }

    avx512_or_baseline! {
        /// col [taps, n * pixels] of n images side by side (zero where the kernel reads
        /// padding); returns n * pixels, the row length.
        fn im2col = Conv::im2col_any(&self, images: &[f32], col: &mut [f32]) -> usize
    }

    #[inline(always)]
    fn im2col_any(&self, images: &[f32], col: &mut [f32]) -> usize {
        let width = images.len() / self.image_len().max(1) * self.pixels();
        let col = &mut col[..self.taps() * width];
        if self.padded {
            col.fill(0.0);
        }
        let (pixels, ow, w) = (
            self.pixels().max(1),
            self.out_width.max(1),
            self.width.max(1),
        );
        if self.is_plain() {
            // Row by row of col, image by image, run by run: slices all the way down, no
            // per-run index arithmetic (this copy is a fifth of an attack on LeNet5).
            for (col_row, first) in col.chunks_exact_mut(width.max(1)).zip(self.plain_offsets()) {
                let images = images.chunks(self.image_len().max(1));
                for (dst, image) in col_row.chunks_exact_mut(pixels).zip(images) {
                    let src = image[first..].chunks(w);
                    for (d, s) in dst.chunks_exact_mut(ow).zip(src) {
                        copy_run(d, &s[..ow]);
                    }
                }
            }
            return width;
        }
        for (i, image) in images.chunks(self.image_len().max(1)).enumerate() {
            let offset = i * self.pixels();
            self.walk(|row, range, input, stride| {
                let start = row * width + offset;
                let dst = &mut col[start + range.start..start + range.end];
                if stride == 1 {
                    copy_run(dst, &image[input..input + dst.len()]);
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = image[input + k * stride];
                    }
                }
            });
        }
        width
    }

    avx512_or_baseline! {
        /// Adds col [taps, n * pixels] back onto n images' gradients (im2col's transpose).
        fn col2im = Conv::col2im_any(&self, col: &[f32], images: &mut [f32])
    }

    #[inline(always)]
    fn col2im_any(&self, col: &[f32], images: &mut [f32]) {
        let width = images.len() / self.image_len().max(1) * self.pixels();
        let (pixels, ow, w) = (
            self.pixels().max(1),
            self.out_width.max(1),
            self.width.max(1),
        );
        if self.is_plain() {
            // As im2col's plain path; each input still receives its terms in row order.
            for (col_row, first) in col[..self.taps() * width]
                .chunks_exact(width.max(1))
                .zip(self.plain_offsets())
            {
                let images = images.chunks_mut(self.image_len().max(1));
                for (src, image) in col_row.chunks_exact(pixels).zip(images) {
                    let dst = image[first..].chunks_mut(w);
                    for (d, s) in dst.zip(src.chunks_exact(ow)) {
                        for (d, s) in d[..ow].iter_mut().zip(s) {
                            *d += s;
                        }
                    }
                }
            }
            return;
        }
        for (i, image) in images.chunks_mut(self.image_len().max(1)).enumerate() {
            let offset = i * self.pixels();
            self.walk(|row, range, input, stride| {
                let start = row * width + offset;
                let src = &col[start + range.start..start + range.end];
                if stride == 1 {
                    for (d, s) in image[input..input + src.len()].iter_mut().zip(src) {
                        *d += s;
                    }
                } else {
                    for (k, s) in src.iter().enumerate() {
                        image[input + k * stride] += s;
                    }
                }
            });
        }
    }

    /// n images' outputs [out channels, pixels] (image after image in `planes`) as one
    /// [out channels, n * pixels] matrix in `wide`.
    fn gather(&self, planes: &[f32], wide: &mut [f32]) {
        let (pixels, per_image) = (self.pixels().max(1), self.output_len().max(1));
        let width = planes.len() / per_image * pixels;
        for (i, image) in planes.chunks(per_image).enumerate() {
            for (c, plane) in image.chunks(pixels).enumerate() {
                wide[c * width + i * pixels..][..pixels].copy_from_slice(plane);
            }
        }
    }

    /// The inverse of [`Conv::gather`].
    fn scatter(&self, wide: &[f32], planes: &mut [f32]) {
        let (pixels, per_image) = (self.pixels().max(1), self.output_len().max(1));
        let width = planes.len() / per_image * pixels;
        for (i, image) in planes.chunks_mut(per_image).enumerate() {
            for (c, plane) in image.chunks_mut(pixels).enumerate() {
                plane.copy_from_slice(&wide[c * width + i * pixels..][..pixels]);
            }
        }
    }
}

/// y = conv(x, weight) + bias, a group of images per GEMM.
pub(super) fn conv2d(
    conv: Conv,
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> FlexTensor {
    let (x, weight) = (contiguous(x), contiguous(weight));
    let bias = bias.map(contiguous);
    let (xv, wv) = (values(&x), values(&weight));
    let bv = bias.as_ref().map(values);
    let (taps, pixels, group) = (conv.taps(), conv.pixels(), conv.group());
    let mut out = zeros(conv.batch * conv.output_len());
    out.par_chunks_mut((conv.output_len() * group).max(1))
        .zip(xv.par_chunks((conv.image_len() * group).max(1)))
        .for_each_init(
            || {
                let wide = vec![0f32; conv.output_len() * group];
                (vec![0f32; taps * pixels * group], wide)
            },
            |(col, wide), (y, images)| {
                let width = conv.im2col(images, col);
                let single = width == pixels;
                // One image: the GEMM writes its output in place.
                let dst = match single {
                    true => &mut y[..],
                    false => &mut wide[..conv.out_channels * width],
                };
                if let Some(b) = bv {
                    for (row, b) in dst.chunks_mut(width.max(1)).zip(b) {
                        row.fill(*b);
                    }
                }
                gemm(
                    conv.out_channels,
                    width,
                    taps,
                    dst,
                    bv.is_some(),
                    wv,
                    (taps, 1),
                    col,
                    (width, 1),
                );
                if !single {
                    conv.scatter(wide, y);
                }
            },
        );
    f32_tensor(out, &conv.output_shape())
}

/// dL/dx from dL/dy: col2im(weightᵀ · dy), a group of images per GEMM.
pub(super) fn conv2d_x_backward(conv: Conv, weight: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (weight, grad) = (contiguous(weight), contiguous(grad));
    let (wv, gv) = (values(&weight), values(&grad));
    let (taps, pixels, group) = (conv.taps(), conv.pixels(), conv.group());
    let mut out = zeros(conv.batch * conv.image_len());
    out.par_chunks_mut((conv.image_len() * group).max(1))
        .zip(gv.par_chunks((conv.output_len() * group).max(1)))
        .for_each_init(
            || {
                let wide = vec![0f32; conv.output_len() * group];
                (vec![0f32; taps * pixels * group], wide)
            },
            |(col, wide), (dx, dy)| {
                let width = dy.len() / conv.output_len().max(1) * pixels;
                let rhs = match width == pixels {
                    true => dy,
                    false => {
                        conv.gather(dy, wide);
                        &wide[..conv.out_channels * width]
                    }
                };
                gemm(
                    taps,
                    width,
                    conv.out_channels,
                    col,
                    false,
                    wv,
                    (1, taps),
                    rhs,
                    (width, 1),
                );
                conv.col2im(col, dx);
            },
        );
    f32_tensor(
        out,
        &[conv.batch, conv.in_channels, conv.height, conv.width],
    )
}

/// dL/dweight from dL/dy: the sum over images of dy · im2col(x)ᵀ, in fixed chunks of images
/// added in order (groups of images per GEMM inside a chunk).
pub(super) fn conv2d_weight_backward(conv: Conv, x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (x, grad) = (contiguous(x), contiguous(grad));
    let (xv, gv) = (values(&x), values(&grad));
    let (taps, pixels, group) = (conv.taps(), conv.pixels(), conv.group());
    let weight_len = conv.out_channels * taps;
    let chunk_sums: Vec<Vec<f32>> = xv
        .par_chunks((conv.image_len() * IMAGES_PER_CHUNK).max(1))
        .zip(gv.par_chunks((conv.output_len() * IMAGES_PER_CHUNK).max(1)))
        .map(|(images, dys)| {
            let mut sum = vec![0f32; weight_len];
            let mut col = vec![0f32; taps * pixels * group];
            let mut wide = vec![0f32; conv.output_len() * group];
            for (images, dy) in images
                .chunks((conv.image_len() * group).max(1))
                .zip(dys.chunks((conv.output_len() * group).max(1)))
            {
                let width = conv.im2col(images, &mut col);
                conv.gather(dy, &mut wide);
                gemm(
                    conv.out_channels,
                    taps,
                    width,
                    &mut sum,
                    true,
                    &wide,
                    (width, 1),
                    &col,
                    (1, width),
                );
            }
            sum
        })
        .collect();
    let mut total = vec![0f32; weight_len];
    for sum in chunk_sums {
        for (t, s) in total.iter_mut().zip(sum) {
            *t += s;
        }
    }
    f32_tensor(
        total,
        &[
            conv.out_channels,
            conv.in_channels,
            conv.kernel[0],
            conv.kernel[1],
        ],
    )
}

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

/// Elements per rayon task of the elementwise ops.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// One run of [`map_channels`], compiled for AVX-512 where the CPU has it (as
/// `avx512_or_baseline!`).
fn map_chunk<F: Fn(f32, f32) -> f32>(
    out: &mut [std::mem::MaybeUninit<f32>],
    x: &[f32],
    y: &[f32],
    f: &F,
) {
    #[inline(always)]
    fn any<F: Fn(f32, f32) -> f32>(
        out: &mut [std::mem::MaybeUninit<f32>],
        x: &[f32],
        y: &[f32],
        f: &F,
    ) {
        for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
            o.write(f(x, y));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[target_feature(enable = "avx512f")]
        fn avx512<F: Fn(f32, f32) -> f32>(
            out: &mut [std::mem::MaybeUninit<f32>],
            x: &[f32],
            y: &[f32],
            f: &F,
        ) {
            any(out, x, y, f)
        }
        // SAFETY: the CPU has AVX-512F (`avx512()` checked it just above).
        return unsafe { avx512(out, x, y, f) };
    }
    any(out, x, y, f)
}

/// `f(row)` applied to every element of `x` (and `y`, when given) with the row of its channel,
/// in one pass over rayon's pool: runs of one channel go through [`map_chunk`], whose loop
/// vectorises; a channel axis that is the last (a [in, out] matrix per output) goes element by
/// element.
fn map_channels<F: Fn(f32, f32) -> f32 + Sync>(
    x: &FlexTensor,
    y: Option<&FlexTensor>,
    table: &Table,
    f: impl Fn(Channel) -> F + Sync,
) -> FlexTensor {
    let x = contiguous(x);
    let y = y.map(contiguous);
    let xv = values(&x);
    let yv = y.as_ref().map_or(xv, values);
    assert_eq!(xv.len(), yv.len(), "elementwise operands of one size");
    let (_, channels, inner) = table.layout(x.layout().shape());
    let fs: Vec<F> = table.rows.iter().map(|&row| f(row)).collect();
    let mut out: Vec<f32> = Vec::with_capacity(xv.len());
    out.spare_capacity_mut()
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(
            xv.par_chunks(ELEMENTS_PER_TASK)
                .zip(yv.par_chunks(ELEMENTS_PER_TASK)),
        )
        .enumerate()
        .for_each(|(task, (out, (x, y)))| {
            let mut at = task * ELEMENTS_PER_TASK;
            let (mut out, mut x, mut y) = (out, x, y);
            while !x.is_empty() {
                let channel = (at / inner.max(1)) % channels;
                let run = (inner.max(1) - at % inner.max(1)).min(x.len());
                let (o, rest_o) = out.split_at_mut(run);
                let ((xs, rest_x), (ys, rest_y)) = (x.split_at(run), y.split_at(run));
                match run {
                    1 => {
                        o[0].write(fs[channel](xs[0], ys[0]));
                    }
                    _ => map_chunk(o, xs, ys, &fs[channel]),
                }
                (out, x, y) = (rest_o, rest_x, rest_y);
                at += run;
            }
        });
    // SAFETY: the chunks above cover the whole spare capacity, each element written once.
    unsafe { out.set_len(xv.len()) };
    f32_tensor(out, x.layout().shape())
}

impl KernelOps for Flex {
    /// One pass of each channel's [`Channel::quantiser`] (the tests hold it to the reference's
    /// tensor ops, bit for bit).
    fn quantise(x: FloatTensor<Self>, table: Table, _grad: QuantGrad) -> FloatTensor<Self> {
        match x.dtype() {
            DType::F32 => map_channels(&x, None, &table, |row| {
                let q = row.quantiser();
                move |x, _| q(x)
            }),
            _ => reference::quantise::<Self>(x, &table),
        }
    }
    fn quantise_ste(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        table: Table,
    ) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return reference::quantise_ste::<Self>(x, grad, &table);
        }
        map_channels(&x, Some(&grad), &table, |row| {
            let passes = row.ste_passes();
            move |x, g| if passes(x) { g } else { 0.0 }
        })
    }
    fn apply_mask(weight: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::apply_mask::<Self>(weight, mask)
    }
    fn dns_update(
        weight: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        t_low: f32,
        t_high: f32,
    ) -> FloatTensor<Self> {
        reference::dns_update::<Self>(weight, mask, t_low, t_high)
    }
    fn attack_step(
        x: FloatTensor<Self>,
        x0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        factor: FloatTensor<Self>,
        step: StepSettings,
    ) -> FloatTensor<Self> {
        reference::attack_step::<Self>(x, x0, grad, factor, step)
    }
    fn conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options) {
            Some(conv) => conv2d(conv, &x, &weight, None),
            None => <Flex as ModuleOps<Flex>>::conv2d(x, weight, None, options),
        }
    }
    fn conv_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let fits = |conv: &Conv| {
            bias.dtype() == DType::F32 && bias.layout().shape().as_slice() == [conv.out_channels]
        };
        match Conv::of(&x, &weight, &options).filter(fits) {
            Some(conv) => conv2d(conv, &x, &weight, Some(&bias)),
            None => <Flex as ModuleOps<Flex>>::conv2d(x, weight, Some(bias), options),
        }
    }
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options).filter(|_| output_grad.dtype() == DType::F32) {
            Some(conv) => conv2d_x_backward(conv, &weight, &output_grad),
            None => <Flex as ModuleOps<Flex>>::conv2d_x_backward(x, weight, output_grad, options),
        }
    }
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv::of(&x, &weight, &options).filter(|_| output_grad.dtype() == DType::F32) {
            Some(conv) => conv2d_weight_backward(conv, &x, &output_grad),
            None => {
                <Flex as ModuleOps<Flex>>::conv2d_weight_backward(x, weight, output_grad, options)
            }
        }
    }
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match matmul(&a, &b) {
            Some(product) => product,
            None => <Flex as FloatTensorOps<Flex>>::float_matmul(a, b),
        }
    }
    fn max_pool(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        match Pool::of(&x, &options) {
            Some(pool) => max_pool2d(pool, &x),
            None => burn_pool::max_pool::<Flex>(x, &options),
        }
    }
    fn max_pool_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        match Pool::of(&x, &options) {
            Some(pool) => max_pool2d_with_indices(pool, &x),
            None => burn_pool::max_pool_with_indices::<Flex>(x, &options, IntDType::I64),
        }
    }
    fn max_pool_input_grad(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        match Pool::of(&x, &options).filter(|_| indices.dtype() == DType::I64) {
            Some(pool) => max_pool2d_backward(pool, &output_grad, &indices),
            None => burn_pool::max_pool_input_grad::<Flex>(x, &options, output_grad, indices),
        }
    }
}
