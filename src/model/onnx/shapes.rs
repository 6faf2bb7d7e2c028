//! Shape inference at import, as ONNX's checker and shape inference do it: each step's output
//! shape from its inputs' shapes and its attributes (each step kind's own rule, in its file in
//! `ops/`; what the kinds share is here), refusing what ONNX
//! Runtime refuses (channels that do not fit a Conv's weight, a group that does not divide
//! them, a zero stride or dilation, a pooling window larger than its padded input, pads not
//! smaller than the window, shapes that do not broadcast, ...). Nothing is allocated: a graph
//! whose values for one image would not fit in memory is refused before the one-image dry run
//! that would otherwise abort on it.
//!
//! Shapes are [`Dim`]s: the batch size N stays free (a length may be N, or 17N after a
//! reshape). An op that would mix the images of a batch (a reduction, a softmax, a product
//! over an axis whose length grows with N) is refused.

use super::fold::{Dim, shape_text};

/// The largest attribute value (kernel, stride, dilation, pad) taken: ONNX stores them as
/// int64, and a negative one arrives as a huge unsigned number.
const MAX_ATTRIBUTE: usize = i32::MAX as usize;

/// The most axes a value may have (the runtime's tensors are rank 6).
pub(super) const MAX_RANK: usize = 6;

/// `out` as an output shape: at most [`MAX_RANK`] axes.
pub(super) fn within_rank(out: Vec<Dim>) -> Result<Vec<Dim>, String> {
    if out.len() > MAX_RANK {
        return Err(format!(
            "its output has rank {} ({}); at most {MAX_RANK} axes are supported",
            out.len(),
            shape_text(&out)
        ));
    }
    Ok(out)
}

/// A normalisation's epsilon: a number >= 0.
pub(super) fn epsilon(epsilon: f64) -> Result<(), String> {
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(format!("epsilon {epsilon} is not a number >= 0"));
    }
    Ok(())
}

/// Elements of one image's value of `shape` (N = 1), `None` when the count overflows.
pub(super) fn elements(shape: &[Dim]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.at(1)))
}

/// The lengths of a tensor the file holds (they never depend on the batch size).
pub(super) fn fixed(shape: &[Dim]) -> Vec<usize> {
    shape.iter().map(|d| d.at(1)).collect()
}

/// Refuses an op over `axes` of `x` whose length grows with the batch: it would mix images.
pub(super) fn per_image(x: &[Dim], axes: &[usize], what: &str) -> Result<(), String> {
    for &a in axes {
        let d = x.get(a).ok_or_else(|| {
            format!(
                "axis {a} is outside the {} axes of its input {}",
                x.len(),
                shape_text(x)
            )
        })?;
        if d.known().is_none() {
            return Err(format!(
                "its {what} runs over axis {a} of {}, whose length {d} depends on the batch \
                 size: each image's result would depend on the other images of its batch",
                shape_text(x)
            ));
        }
    }
    Ok(())
}

/// An image [N, C, H, W]: the batch length and C, H, W.
pub(super) fn image(x: &[Dim]) -> Result<(Dim, [usize; 3]), String> {
    if x.len() != 4 {
        return Err(format!(
            "the input has shape {}; rank 4 (images [N, C, H, W]) is needed here",
            shape_text(x)
        ));
    }
    per_image(x, &[1, 2, 3], "window")?;
    Ok((x[0], [x[1].at(1), x[2].at(1), x[3].at(1)]))
}

pub(super) fn rank(what: &str, shape: &[usize], expected: usize) -> Result<(), String> {
    if shape.len() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} has shape {shape:?}; rank {expected} is needed here"
        ))
    }
}

/// Each of `values` (named `what`) between 1 and [`MAX_ATTRIBUTE`].
pub(super) fn positive(what: &str, values: &[usize]) -> Result<(), String> {
    match values.iter().find(|&&v| v == 0 || v > MAX_ATTRIBUTE) {
        Some(_) => Err(format!(
            "{what} {values:?}: each must be a positive number (at most {MAX_ATTRIBUTE})"
        )),
        None => Ok(()),
    }
}

pub(super) fn pads_in_range(pads: &[(usize, usize)]) -> Result<(), String> {
    if pads
        .iter()
        .any(|&(b, e)| b > MAX_ATTRIBUTE || e > MAX_ATTRIBUTE)
    {
        return Err(format!(
            "pads {pads:?}: each must be between 0 and {MAX_ATTRIBUTE}"
        ));
    }
    Ok(())
}

/// One spatial axis of a sliding window: `input` padded by `pads`, a window of `kernel`
/// taps `dilation` apart, moved by `stride`; `ceil` as ONNX's `ceil_mode` (the last window
/// may run past the end, if it starts inside the input or its leading pad). `None` when the
/// window is larger than the padded input.
fn windows(
    input: usize,
    (begin, end): (usize, usize),
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    // Attributes are at most 2^31 (checked before); a huge input saturates, and its output is
    // then refused as too large.
    let padded = input.saturating_add(begin).saturating_add(end);
    let extent = dilation * (kernel - 1) + 1;
    let room = padded.checked_sub(extent)?;
    if !ceil {
        return Some(room / stride + 1);
    }
    let out = room.div_ceil(stride) + 1;
    Some(
        if out > 1 && (out - 1).saturating_mul(stride) >= input.saturating_add(begin) {
            out - 1
        } else {
            out
        },
    )
}

/// The output height and width of a sliding window over an image of `hw`.
pub(super) fn spatial(
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: &[(usize, usize); 2],
    ceil: bool,
) -> Result<[Dim; 2], String> {
    let mut out = [Dim::new(0); 2];
    for axis in 0..2 {
        let n = windows(
            hw[axis],
            pads[axis],
            kernel[axis],
            stride[axis],
            dilation[axis],
            ceil,
        )
        .ok_or_else(|| {
            format!(
                "a window of {kernel:?} (dilations {dilation:?}) is larger than the input {hw:?} \
                 padded by {pads:?}: the output would be empty"
            )
        })?;
        out[axis] = Dim::new(n as i64);
    }
    Ok(out)
}

/// The inner lengths of a product `a` · `b` must be equal and the same for every batch.
pub(super) fn inner(a: &[Dim], b: &[Dim], k: Dim, l: Dim) -> Result<(), String> {
    if k != l {
        return Err(format!(
            "a {} matrix cannot be multiplied by a {} one (inner sizes {k} and {l})",
            shape_text(a),
            shape_text(b)
        ));
    }
    per_image(a, &[a.len() - 1], "product").map_err(|_| {
        format!(
            "a {} matrix times a {} one sums over a length {k} that depends on the batch size: \
             each image's result would depend on the other images",
            shape_text(a),
            shape_text(b)
        )
    })
}

/// NumPy broadcasting of `shapes`.
pub(super) fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let one = Dim::new(1);
    let mut out = vec![one; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == one {
                *o = d;
            } else if d != one && d != *o {
                return Err(format!(
                    "shapes {} do not broadcast (NumPy rules)",
                    shapes
                        .iter()
                        .map(|s| shape_text(s))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        }
    }
    Ok(out)
}
