//! Convolution: im2col + GEMM, a group of images per GEMM; its input gradient (col2im) and its
//! weight gradient (fixed chunks of images added in order).

use burn::backend::DType;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::gemm::gemm;
use super::{avx512, contiguous, f32_tensor, values, zeros};

/// Images per chunk of the weight gradient's sum: fixed, so the summation order is too.
const IMAGES_PER_CHUNK: usize = 16;

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

/// A 2D convolution's geometry (groups of 1).
#[derive(Clone, Copy, Debug)]
pub(super) struct Conv {
    batch: usize,
    in_channels: usize,
    height: usize,
    width: usize,
    pub(super) out_channels: usize,
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
