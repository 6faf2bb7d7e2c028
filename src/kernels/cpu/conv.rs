//! Convolution: plain ones (LeNet5's) by im2col + GEMM, a group of images per GEMM; padded or
//! strided ones (ResNets') by a direct kernel over the image split into its stride phases
//! ([`Conv::is_direct`]); their input gradients (the direct kernel on the transposed
//! convolution, or col2im) and weight gradients (fixed chunks of images added in order).

use burn::backend::DType;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::gemm::gemm;
use super::{avx512, contiguous, f32_tensor, values, zeros};

/// Images per chunk of the weight gradient's sum: fixed, so the summation order is too.
const IMAGES_PER_CHUNK: usize = 16;

/// Output channels one pass of the direct kernel computes together (they share each load of
/// the input), and output positions per pass (one AVX-512 register of f32).
const OUT_BLOCK: usize = 8;
const LANES: usize = 16;

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
    /// Padding after the last row and column.
    padding_end: [usize; 2],
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
            padding_end: [options.padding[0].1, options.padding[1].1],
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

    /// Dilation 1 and not plain (a stride or padding): im2col and col2im go through the image
    /// split into its stride phases ([`Conv::split_phases`]), where every im2col row reads
    /// unbroken runs as in the plain case. The walk below remains for dilated kernels.
    fn is_phased(&self) -> bool {
        self.dilation == [1, 1] && !self.is_plain()
    }

    /// Rows and columns of one phase plane: as many as the kernel reaches at that phase.
    fn phase_shape(&self) -> [usize; 2] {
        let [kh, kw] = self.kernel;
        [
            self.out_height - 1 + kh.div_ceil(self.stride[0]),
            self.out_width - 1 + kw.div_ceil(self.stride[1]),
        ]
    }

    /// Values of one image split into its phases.
    fn phases_len(&self) -> usize {
        let [hq, wq] = self.phase_shape();
        self.in_channels * self.stride[0] * self.stride[1] * hq * wq
    }

    /// [`Conv::phases_len`] where im2col goes through the phases, else 0.
    fn phased_len(&self) -> usize {
        match self.is_phased() {
            true => self.phases_len(),
            false => 0,
        }
    }

    /// `[offset in the phased image, offset in the image, length]` of every run of image
    /// pixels a row of a phase plane holds: the image's pixels from that offset on,
    /// `stride[1]` apart. Plane (c, a, b), in that order, holds the padded image's pixels
    /// (a + s0 y, b + s1 x); everything else in it is padding. A list rather than a walk with
    /// a closure: the closure's calls stay out of line in the AVX-512 copies.
    fn phase_runs(&self) -> Vec<[usize; 3]> {
        let mut runs = Vec::new();
        let ([s0, s1], [hq, wq], [p0, p1]) = (self.stride, self.phase_shape(), self.padding);
        let (h, w) = (self.height, self.width);
        let mut plane = 0;
        for c in 0..self.in_channels {
            for a in 0..s0 {
                for b in 0..s1 {
                    // The plane's columns x whose image column b + s1 x - p1 lies in [0, w).
                    let end = (w + p1).saturating_sub(b).div_ceil(s1).min(wq);
                    let first = p1.saturating_sub(b).div_ceil(s1).min(end);
                    for y in 0..hq {
                        let Some(iy) = (a + s0 * y).checked_sub(p0).filter(|&iy| iy < h) else {
                            continue;
                        };
                        if first < end {
                            let column = b + s1 * first - p1;
                            let (at, from) = (plane + y * wq + first, (c * h + iy) * w + column);
                            runs.push([at, from, end - first]);
                        }
                    }
                    plane += hq * wq;
                }
            }
        }
        runs
    }

    /// `phased` = one image split into its stride phases. Only the runs are written: the
    /// padding is whatever `phased` held there, zero in every caller (buffers allocated zeroed
    /// for one convolution and only ever written here; this was 5% of an attack on ResNet-8).
    #[inline(always)]
    fn split_phases(&self, runs: &[[usize; 3]], image: &[f32], phased: &mut [f32]) {
        let stride = self.stride[1];
        for &[at, from, len] in runs {
            let dst = &mut phased[at..at + len];
            if stride == 1 {
                copy_run(dst, &image[from..from + len]);
            } else {
                let src = &image[from..from + (len - 1) * stride + 1];
                for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                    *d = *s;
                }
            }
        }
    }

    /// Adds a phased image's values back onto the image (the padding's are dropped).
    #[inline(always)]
    fn merge_phases(&self, runs: &[[usize; 3]], phased: &[f32], image: &mut [f32]) {
        let stride = self.stride[1];
        for &[at, from, len] in runs {
            let src = &phased[at..at + len];
            if stride == 1 {
                for (d, s) in image[from..from + len].iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                let dst = &mut image[from..from + (len - 1) * stride + 1];
                for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
                    *d += s;
                }
            }
        }
    }

    /// For a phased convolution, the phased image's offset of each im2col row's first value,
    /// in row order: row (c, i, j) reads `out_width` values there on each of `out_height`
    /// rows of its plane.
    fn phased_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let ([kh, kw], [s0, s1], [hq, wq]) = (self.kernel, self.stride, self.phase_shape());
        (0..self.in_channels).flat_map(move |c| {
            (0..kh).flat_map(move |i| {
                (0..kw).map(move |j| {
                    let plane = (c * s0 + i % s0) * s1 + j % s1;
                    plane * hq * wq + (i / s0) * wq + j / s1
                })
            })
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

    /// Whether the direct kernel ([`Conv::direct`]) computes the output: every phased
    /// convolution (dilation 1, a stride or padding). At ResNet widths (16 to 64 channels,
    /// 3x3 kernels) im2col writes nine copies of every input and col2im reads them back,
    /// which cost as much as the GEMM itself. Plain convolutions (LeNet5's) keep im2col +
    /// GEMM, whose groups of images suit their few channels.
    fn is_direct(&self) -> bool {
        self.is_phased()
    }

    /// Whether the direct kernel computes the input gradient too, as the convolution
    /// [`Conv::transposed`]: stride 1, padded by at most the kernel's reach on each side.
    /// (A strided convolution's transposed one is fractionally strided: col2im.)
    fn is_direct_backward(&self) -> bool {
        let reach = |axis: usize| {
            let most = self.kernel[axis] - 1;
            self.padding[axis] <= most && self.padding_end[axis] <= most
        };
        self.is_direct() && self.stride == [1, 1] && reach(0) && reach(1)
    }

    /// The convolution whose output is this one's input gradient: dy's channels in, x's out,
    /// the kernel flipped, the padding what the kernel's reach leaves (for a direct one).
    fn transposed(&self) -> Self {
        let [kh, kw] = self.kernel;
        let padding = [kh - 1 - self.padding[0], kw - 1 - self.padding[1]];
        let padding_end = [kh - 1 - self.padding_end[0], kw - 1 - self.padding_end[1]];
        Self {
            in_channels: self.out_channels,
            height: self.out_height,
            width: self.out_width,
            out_channels: self.in_channels,
            padding,
            padding_end,
            padded: padding != [0, 0] || padding_end != [0, 0],
            out_height: self.height,
            out_width: self.width,
            ..*self
        }
    }

    /// The weights in the direct kernel's order: blocks of [`OUT_BLOCK`] output channels,
    /// each [taps, OUT_BLOCK] (zero past the last channel); `weight(o, tap)`.
    fn pack(&self, weight: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let (taps, blocks) = (self.taps(), self.out_channels.div_ceil(OUT_BLOCK));
        let mut packed = vec![0f32; blocks * taps * OUT_BLOCK];
        for (block, packed) in packed.chunks_exact_mut(taps * OUT_BLOCK).enumerate() {
            for (tap, packed) in packed.chunks_exact_mut(OUT_BLOCK).enumerate() {
                let channels = block * OUT_BLOCK..self.out_channels.min((block + 1) * OUT_BLOCK);
                for (p, o) in packed.iter_mut().zip(channels) {
                    *p = weight(o, tap);
                }
            }
        }
        packed
    }

    /// Values of the direct kernel's output buffer for one block of output channels: every
    /// position of the padded width, rounded up to whole registers.
    fn direct_wide_len(&self) -> usize {
        OUT_BLOCK * (self.out_height * self.phase_shape()[1]).next_multiple_of(LANES)
    }

    /// Values the direct kernel reads past one phased image (its last register).
    fn direct_slack(&self) -> usize {
        self.kernel[1] + LANES
    }

    avx512_or_baseline! {
        /// One image's output [out channels, pixels] (+ bias), through its padded copy.
        /// Output positions run along the padded width, a register of [`LANES`] at a time,
        /// so every tap reads one unbroken run; the positions in the padding are dropped.
        fn direct = Conv::direct_any(&self, plan: &Direct, image: &[f32], buffers: &mut DirectBuffers, out: &mut [f32])
    }

    #[inline(always)]
    fn direct_any(
        &self,
        plan: &Direct,
        image: &[f32],
        buffers: &mut DirectBuffers,
        out: &mut [f32],
    ) {
        let Direct {
            runs,
            offsets,
            packed,
            bias,
        } = plan;
        let DirectBuffers { phased, wide } = buffers;
        // The slack after the phases stays zero: only the phases' runs are written.
        self.split_phases(runs, image, &mut phased[..self.phases_len()]);
        let phased = &phased[..];
        let (taps, pixels, ow) = (self.taps(), self.pixels(), self.out_width);
        let wq = self.phase_shape()[1];
        let row = (self.out_height * wq).next_multiple_of(LANES);
        for (channels, weights) in packed.chunks_exact(taps * OUT_BLOCK).enumerate() {
            for at in (0..row).step_by(LANES) {
                let block = Block {
                    offsets,
                    weights,
                    phased,
                    at,
                    row,
                };
                accumulate(&block, wide);
            }
            let first = channels * OUT_BLOCK;
            for (b, o) in (first..self.out_channels.min(first + OUT_BLOCK)).enumerate() {
                let b_o = bias.map_or(0.0, |bias| bias[o]);
                let rows = wide[b * row..].chunks(wq);
                for (dst, src) in out[o * pixels..][..pixels].chunks_exact_mut(ow).zip(rows) {
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = s + b_o;
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

    /// Where im2col's runs start in `source` (an image, or its phases in `phased`), with
    /// `source`'s values per image and per row: `None` for dilated kernels, which walk.
    fn runs(&self) -> Option<(Vec<usize>, usize, usize)> {
        if self.is_plain() {
            let offsets = self.plain_offsets().collect();
            return Some((offsets, self.image_len().max(1), self.width.max(1)));
        }
        let offsets = self.is_phased().then(|| self.phased_offsets().collect())?;
        Some((offsets, self.phased_len().max(1), self.phase_shape()[1]))
    }

    avx512_or_baseline! {
        /// col [taps, n * pixels] of n images side by side (zero where the kernel reads
        /// padding); returns n * pixels, the row length. `phased` is scratch space of
        /// n * [`Conv::phased_len`] values.
        fn im2col = Conv::im2col_any(&self, images: &[f32], col: &mut [f32], phased: &mut [f32]) -> usize
    }

    #[inline(always)]
    fn im2col_any(&self, images: &[f32], col: &mut [f32], phased: &mut [f32]) -> usize {
        let count = images.len() / self.image_len().max(1);
        let width = count * self.pixels();
        let col = &mut col[..self.taps() * width];
        let (pixels, ow) = (self.pixels().max(1), self.out_width.max(1));
        if let Some((offsets, per_image, row)) = self.runs() {
            let source = match self.is_phased() {
                true => {
                    let phased = &mut phased[..count * per_image];
                    let runs = self.phase_runs();
                    let images = images.chunks(self.image_len().max(1));
                    for (image, phases) in images.zip(phased.chunks_mut(per_image)) {
                        self.split_phases(&runs, image, phases);
                    }
                    &*phased
                }
                false => images,
            };
            // Row by row of col, image by image, run by run: slices all the way down, no
            // per-run index arithmetic (this copy is a fifth of an attack on LeNet5).
            for (col_row, first) in col.chunks_exact_mut(width.max(1)).zip(offsets) {
                for (dst, image) in col_row
                    .chunks_exact_mut(pixels)
                    .zip(source.chunks(per_image))
                {
                    let src = image[first..].chunks(row);
                    for (d, s) in dst.chunks_exact_mut(ow).zip(src) {
                        copy_run(d, &s[..ow]);
                    }
                }
            }
            return width;
        }
        if self.padded {
            col.fill(0.0);
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
        /// `phased` is scratch space of n * [`Conv::phased_len`] values.
        fn col2im = Conv::col2im_any(&self, col: &[f32], images: &mut [f32], phased: &mut [f32])
    }

    #[inline(always)]
    fn col2im_any(&self, col: &[f32], images: &mut [f32], phased: &mut [f32]) {
        let count = images.len() / self.image_len().max(1);
        let width = count * self.pixels();
        let (pixels, ow) = (self.pixels().max(1), self.out_width.max(1));
        if let Some((offsets, per_image, row)) = self.runs() {
            let phased = &mut phased[..count * self.phased_len()];
            phased.fill(0.0);
            let target = match self.is_phased() {
                true => &mut *phased,
                false => &mut *images,
            };
            // As im2col; each input still receives its terms in row order, so the phased
            // path's sums are the walk's, bit for bit.
            for (col_row, first) in col[..self.taps() * width]
                .chunks_exact(width.max(1))
                .zip(offsets)
            {
                for (src, image) in col_row
                    .chunks_exact(pixels)
                    .zip(target.chunks_mut(per_image))
                {
                    let dst = image[first..].chunks_mut(row);
                    for (d, s) in dst.zip(src.chunks_exact(ow)) {
                        for (d, s) in d[..ow].iter_mut().zip(s) {
                            *d += s;
                        }
                    }
                }
            }
            if self.is_phased() {
                let runs = self.phase_runs();
                let images = images.chunks_mut(self.image_len().max(1));
                for (image, phases) in images.zip(phased.chunks(per_image)) {
                    self.merge_phases(&runs, phases, image);
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

/// One block of the direct kernel: tap t reads `phased` from `offsets[t] + at` on, with the
/// [`OUT_BLOCK`] weights `weights[t * OUT_BLOCK..]`; output rows are `row` values apart.
#[derive(Clone, Copy)]
struct Block<'a> {
    offsets: &'a [usize],
    weights: &'a [f32],
    phased: &'a [f32],
    at: usize,
    row: usize,
}

/// The direct kernel's inner block: for [`OUT_BLOCK`] output channels (`weights`: [taps,
/// OUT_BLOCK]) and the [`LANES`] output positions from `at` on, `wide[b * row + at..]` = the sum
/// over taps, in order, of x · w (fused multiply-adds), where tap t reads `phased` from
/// `offsets[t] + at` on. Written with intrinsics for AVX-512 and for AVX2 + FMA: compiled from
/// plain loops, the compiler vectorised over the channels and gathered and scattered the
/// accumulators, or kept them in memory (30 and 2 times slower). The three copies give the
/// same bits (every lane is the same chain of fused multiply-adds); without FMA in the CPU the
/// plain copy's `mul_add` is a library call, slow but exact.
fn accumulate(block: &Block, wide: &mut [f32]) {
    // The bounds of every read and write, checked here for every copy (offsets increase).
    let read_end = block.offsets.last().map(|o| o + block.at + LANES);
    assert!(block.weights.len() >= block.offsets.len() * OUT_BLOCK);
    assert!(read_end.is_none_or(|end| end <= block.phased.len()));
    assert!((OUT_BLOCK - 1) * block.row + block.at + LANES <= wide.len());
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            // SAFETY: the CPU has AVX-512F (`avx512()` checked it just above).
            return unsafe { accumulate_avx512(block, wide) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { accumulate_avx2(block, wide) };
        }
    }
    accumulate_plain(block, wide);
}

fn accumulate_plain(block: &Block, wide: &mut [f32]) {
    let Block {
        offsets,
        weights,
        phased,
        at,
        row,
    } = *block;
    let mut acc = [[0f32; LANES]; OUT_BLOCK];
    for (&offset, w) in offsets.iter().zip(weights.chunks_exact(OUT_BLOCK)) {
        let x = &phased[offset + at..][..LANES];
        for (acc, &w) in acc.iter_mut().zip(w) {
            for (a, &x) in acc.iter_mut().zip(x) {
                *a = x.mul_add(w, *a);
            }
        }
    }
    for (b, acc) in acc.iter().enumerate() {
        wide[b * row + at..][..LANES].copy_from_slice(acc);
    }
}

/// Defines `$name`, [`accumulate`] in registers of `$width` lanes with the CPU features
/// `$features`: the sixteen lanes as `LANES / $width` parts, one after the other (AVX2's
/// sixteen registers would not hold two parts' accumulators at once).
macro_rules! accumulate_in_registers {
    ($(#[$doc:meta])* $name:ident, $features:literal, $width:literal,
     $vector:ident, $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $store:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name(block: &Block, wide: &mut [f32]) {
            use std::arch::x86_64::{$vector, $fmadd, $load, $splat, $store, $zero};
            let Block { offsets, weights, phased, at, row } = *block;
            for part in (0..LANES).step_by($width) {
                let mut acc: [$vector; OUT_BLOCK] = [$zero(); OUT_BLOCK];
                for (&offset, w) in offsets.iter().zip(weights.chunks_exact(OUT_BLOCK)) {
                    let w: &[f32; OUT_BLOCK] = w.try_into().unwrap();
                    // SAFETY: `accumulate` checked that the LANES values from offset + at are
                    // in `phased`; this part's are among them.
                    let x = unsafe { $load(phased.as_ptr().add(offset + at + part)) };
                    for (a, &w) in acc.iter_mut().zip(w) {
                        *a = $fmadd(x, $splat(w), *a);
                    }
                }
                for (b, a) in acc.into_iter().enumerate() {
                    // SAFETY: `accumulate` checked that row b's LANES values from `at` are in
                    // `wide`; this part's are among them.
                    unsafe { $store(wide.as_mut_ptr().add(b * row + at + part), a) };
                }
            }
        }
    };
}

accumulate_in_registers!(
    /// [`accumulate`] in AVX-512 registers (one part of sixteen lanes).
    accumulate_avx512, "avx512f", 16,
    __m512, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps
);

accumulate_in_registers!(
    /// [`accumulate`] in AVX2 registers (two parts of eight lanes).
    accumulate_avx2, "avx2,fma", 8,
    __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps
);

/// One worker's buffers for a group of images: the im2col matrix, the outputs side by side
/// and the images split into their stride phases.
struct Scratch {
    col: Vec<f32>,
    wide: Vec<f32>,
    phased: Vec<f32>,
}

impl Scratch {
    fn new(conv: &Conv, group: usize) -> Self {
        Self {
            col: vec![0f32; conv.taps() * conv.pixels() * group],
            wide: vec![0f32; conv.output_len() * group],
            phased: vec![0f32; conv.phased_len() * group],
        }
    }
}

/// What the direct kernel needs of one convolution, prepared once for all images.
struct Direct<'a> {
    /// [`Conv::phase_runs`].
    runs: Vec<[usize; 3]>,
    /// [`Conv::phased_offsets`].
    offsets: Vec<usize>,
    /// [`Conv::pack`]ed weights.
    packed: Vec<f32>,
    bias: Option<&'a [f32]>,
}

/// One worker's buffers for the direct kernel: the image's phases followed by
/// [`Conv::direct_slack`] zeros, and one block of output channels at the padded width.
struct DirectBuffers {
    phased: Vec<f32>,
    wide: Vec<f32>,
}

/// `conv` of every image in `images` by the direct kernel (`packed`: [`Conv::pack`]), image by
/// image over rayon's pool.
fn direct_batch(conv: Conv, images: &[f32], packed: Vec<f32>, bias: Option<&[f32]>) -> Vec<f32> {
    let plan = Direct {
        runs: conv.phase_runs(),
        offsets: conv.phased_offsets().collect(),
        packed,
        bias,
    };
    let mut out = zeros(conv.batch * conv.output_len());
    out.par_chunks_mut(conv.output_len().max(1))
        .zip(images.par_chunks(conv.image_len().max(1)))
        .for_each_init(
            || DirectBuffers {
                phased: vec![0f32; conv.phases_len() + conv.direct_slack()],
                wide: vec![0f32; conv.direct_wide_len()],
            },
            |buffers, (y, image)| conv.direct(&plan, image, buffers, y),
        );
    out
}

/// y = conv(x, weight) + bias: the direct kernel where it applies, else a group of images per
/// GEMM.
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
    if conv.is_direct() {
        let taps = conv.taps();
        let packed = conv.pack(|o, tap| wv[o * taps + tap]);
        let out = direct_batch(conv, xv, packed, bv);
        return f32_tensor(out, &conv.output_shape());
    }
    let (taps, pixels, group) = (conv.taps(), conv.pixels(), conv.group());
    let mut out = zeros(conv.batch * conv.output_len());
    out.par_chunks_mut((conv.output_len() * group).max(1))
        .zip(xv.par_chunks((conv.image_len() * group).max(1)))
        .for_each_init(
            || Scratch::new(&conv, group),
            |Scratch { col, wide, phased }, (y, images)| {
                let width = conv.im2col(images, col, phased);
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

/// dL/dx from dL/dy: the transposed convolution by the direct kernel where it applies, else
/// col2im(weightᵀ · dy), a group of images per GEMM.
pub(super) fn conv2d_x_backward(conv: Conv, weight: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (weight, grad) = (contiguous(weight), contiguous(grad));
    let (wv, gv) = (values(&weight), values(&grad));
    let shape = [conv.batch, conv.in_channels, conv.height, conv.width];
    if conv.is_direct_backward() {
        // Tap (o, i, j) of the transposed convolution's channel c is weight (o, c) at the
        // flipped position (kh - 1 - i, kw - 1 - j).
        let [kh, kw] = conv.kernel;
        let transposed = conv.transposed();
        let packed = transposed.pack(|c, tap| {
            let (o, i, j) = (tap / (kh * kw), tap / kw % kh, tap % kw);
            wv[((o * conv.in_channels + c) * kh + kh - 1 - i) * kw + kw - 1 - j]
        });
        return f32_tensor(direct_batch(transposed, gv, packed, None), &shape);
    }
    let (taps, pixels, group) = (conv.taps(), conv.pixels(), conv.group());
    let mut out = zeros(conv.batch * conv.image_len());
    out.par_chunks_mut((conv.image_len() * group).max(1))
        .zip(gv.par_chunks((conv.output_len() * group).max(1)))
        .for_each_init(
            || Scratch::new(&conv, group),
            |Scratch { col, wide, phased }, (dx, dy)| {
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
                conv.col2im(col, dx, phased);
            },
        );
    f32_tensor(out, &shape)
}

/// dL/dweight from dL/dy: the sum over images of dy · im2col(x)ᵀ, in fixed chunks of images
/// added in order (groups of images per GEMM inside a chunk).
pub(super) fn conv2d_weight_backward(conv: Conv, x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (x, grad) = (contiguous(x), contiguous(grad));
    let (xv, gv) = (values(&x), values(&grad));
    let (taps, group) = (conv.taps(), conv.group());
    let weight_len = conv.out_channels * taps;
    let chunk_sums: Vec<Vec<f32>> = xv
        .par_chunks((conv.image_len() * IMAGES_PER_CHUNK).max(1))
        .zip(gv.par_chunks((conv.output_len() * IMAGES_PER_CHUNK).max(1)))
        .map(|(images, dys)| {
            let mut sum = vec![0f32; weight_len];
            let Scratch {
                mut col,
                mut wide,
                mut phased,
            } = Scratch::new(&conv, group);
            for (images, dy) in images
                .chunks((conv.image_len() * group).max(1))
                .zip(dys.chunks((conv.output_len() * group).max(1)))
            {
                let width = conv.im2col(images, &mut col, &mut phased);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every copy of the direct kernel's block gives the plain copy's bits (the plain copy is
    /// what a CPU without FMA runs; the test machine runs the others).
    #[test]
    fn every_copy_of_the_inner_block_gives_the_same_bits() {
        let (taps, row) = (27, 48);
        let offsets: Vec<usize> = (0..taps).map(|t| t * 5 + t % 3).collect();
        let noise = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.1;
        let weights: Vec<f32> = (0..taps * OUT_BLOCK).map(|i| noise(i + 11)).collect();
        let phased: Vec<f32> = (0..offsets[taps - 1] + row + LANES).map(noise).collect();
        let run = |copy: fn(&Block, &mut [f32])| {
            let mut wide = vec![0f32; OUT_BLOCK * row];
            for at in (0..row).step_by(LANES) {
                let block = Block {
                    offsets: &offsets,
                    weights: &weights,
                    phased: &phased,
                    at,
                    row,
                };
                copy(&block, &mut wide);
            }
            wide
        };
        let plain = run(accumulate_plain);
        assert!(plain.iter().any(|v| *v != 0.0));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&run(accumulate)), bits(&plain), "the dispatching copy");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                let avx512 = run(|block, wide| unsafe { accumulate_avx512(block, wide) });
                assert_eq!(bits(&avx512), bits(&plain), "the AVX-512 copy");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                let avx2 = run(|block, wide| unsafe { accumulate_avx2(block, wide) });
                assert_eq!(bits(&avx2), bits(&plain), "the AVX2 copy");
            }
        }
    }
}
