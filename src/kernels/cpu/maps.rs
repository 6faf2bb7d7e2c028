//! Elementwise maps with a row of constants per channel (the quantiser and its STE), over
//! rayon's pool.

use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::{ELEMENTS_PER_TASK, avx512, contiguous, f32_tensor, values};
use crate::kernels::{Channel, Table};

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
pub(super) fn map_channels<F: Fn(f32, f32) -> f32 + Sync>(
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
