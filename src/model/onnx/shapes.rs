//! Shape inference at import, as ONNX's checker and shape inference do it: each step's output
//! shape from its inputs' shapes and its attributes, one function per op, refusing what ONNX
//! Runtime refuses (channels that do not fit a Conv's weight, a group that does not divide
//! them, a zero stride or dilation, a pooling window larger than its padded input, pads not
//! smaller than the window, shapes that do not broadcast, ...). Nothing is allocated: a graph
//! whose values for one image would not fit in memory is refused before the one-image dry run
//! that would otherwise abort on it.
//!
//! Shapes are [`Dim`]s: the batch size N stays free (a length may be N, or 17N after a
//! reshape). An op that would mix the images of a batch (a reduction, a softmax, a product
//! over an axis whose length grows with N) is refused. A new op adds its variant to [`Op`];
//! the match in [`output_shape`] then wants its function here.

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::fold::{self, Dim, shape_text};
use super::{Binary, Op, Operand};

/// The largest attribute value (kernel, stride, dilation, pad) taken: ONNX stores them as
/// int64, and a negative one arrives as a huge unsigned number.
const MAX_ATTRIBUTE: usize = i32::MAX as usize;

/// The most axes a value may have (the runtime's tensors are rank 6).
pub(super) const MAX_RANK: usize = 6;

/// `op`'s output shape, given the shape of each operand; `Err` says what does not fit.
pub(super) fn output_shape(
    op: &Op,
    shape: &dyn Fn(Operand) -> Vec<Dim>,
) -> Result<Vec<Dim>, String> {
    let out = match op {
        Op::Conv {
            x,
            weight,
            bias,
            options,
        } => conv(
            &shape(*x),
            &fixed(&shape(Operand::Param(*weight))),
            bias.map(|b| fixed(&shape(Operand::Param(b)))).as_deref(),
            options,
        ),
        Op::Linear {
            x,
            weight,
            bias,
            transposed,
        } => linear(
            &shape(*x),
            &fixed(&shape(Operand::Param(*weight))),
            bias.map(|b| fixed(&shape(Operand::Param(b)))).as_deref(),
            *transposed,
        ),
        Op::Gemm {
            a,
            b,
            c,
            trans_a,
            trans_b,
            ..
        } => gemm(
            &shape(*a),
            &shape(*b),
            c.map(shape).as_deref(),
            *trans_a,
            *trans_b,
        ),
        Op::MatMul { a, b } => matmul(&shape(*a), &shape(*b)),
        Op::Binary { kind, a, b } => {
            broadcast(&[&shape(*a), &shape(*b)]).map_err(|why| format!("{kind:?}: {why}"))
        }
        Op::Unary { kind, x } => match kind {
            super::Unary::Clip { min, max } if min.is_nan() || max.is_nan() => {
                Err(format!("bounds min {min}, max {max}: NaN is no bound"))
            }
            _ => Ok(shape(*x)),
        },
        Op::MaxPool { x, options } => max_pool(&shape(*x), options),
        Op::AvgPool { x, options } => avg_pool(&shape(*x), options),
        Op::BatchNorm {
            x,
            scale,
            shift,
            mean,
            var,
            epsilon,
        } => batch_norm(
            &shape(*x),
            [scale, shift, mean, var].map(|o| shape(*o)),
            *epsilon,
        ),
        Op::LayerNorm {
            x,
            scale,
            bias,
            axis,
            epsilon,
        } => layer_norm(
            &shape(*x),
            &shape(*scale),
            bias.map(shape).as_deref(),
            *axis,
            *epsilon,
        ),
        Op::Softmax { x, axis, .. } => {
            let x = shape(*x);
            per_image(&x, &[*axis], "softmax")?;
            Ok(x)
        }
        Op::Reduce { x, axes, keep, .. } => reduce(&shape(*x), axes, *keep),
        Op::Reshape { x, shape: to } => fold::reshaped(&shape(*x), to, true),
        Op::Transpose { x, perm } => {
            let x = shape(*x);
            if perm.len() != x.len() {
                return Err(format!("perm {perm:?} for an input of rank {}", x.len()));
            }
            Ok(perm.iter().map(|&p| x[p]).collect())
        }
        Op::Slice { x, ranges } => slice(&shape(*x), ranges),
        Op::Concat { inputs, axis } => {
            concat(&inputs.iter().map(|i| shape(*i)).collect::<Vec<_>>(), *axis)
        }
        Op::Expand { x, shape: to } => fold::expanded(&shape(*x), to),
        Op::Pad { x, pads, .. } => pad(&shape(*x), pads),
        Op::Gather {
            x,
            axis,
            indices,
            shape: index_shape,
        } => gather(&shape(*x), *axis, indices, index_shape),
        Op::Where { condition, a, b } => broadcast(&[&shape(*condition), &shape(*a), &shape(*b)]),
        Op::Quantise { x, .. } => Ok(shape(*x)),
        Op::Resize { x, axes } => {
            let mut out = shape(*x);
            for a in axes {
                per_image(&out, &[a.axis], "resize")?;
                out[a.axis] = Dim::new(a.taps[0].0.len() as i64);
            }
            Ok(out)
        }
    }?;
    if out.len() > MAX_RANK {
        return Err(format!(
            "its output has rank {} ({}); at most {MAX_RANK} axes are supported",
            out.len(),
            shape_text(&out)
        ));
    }
    Ok(out)
}

/// Elements of one image's value of `shape` (N = 1), `None` when the count overflows.
pub(super) fn elements(shape: &[Dim]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.at(1)))
}

/// Elements the op needs beside its inputs and output while it runs on one image: a
/// convolution's im2col matrix (input channels per group × kernel × output pixels).
pub(super) fn workspace(op: &Op, shape: &dyn Fn(Operand) -> Vec<Dim>, out: &[Dim]) -> usize {
    match op {
        Op::Conv { weight, .. } => {
            let w = fixed(&shape(Operand::Param(*weight)));
            w[1..]
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|k| k.checked_mul(out[2].at(1)))
                .and_then(|k| k.checked_mul(out[3].at(1)))
                .unwrap_or(usize::MAX)
        }
        _ => 0,
    }
}

/// The lengths of a tensor the file holds (they never depend on the batch size).
fn fixed(shape: &[Dim]) -> Vec<usize> {
    shape.iter().map(|d| d.at(1)).collect()
}

/// Refuses an op over `axes` of `x` whose length grows with the batch: it would mix images.
fn per_image(x: &[Dim], axes: &[usize], what: &str) -> Result<(), String> {
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
fn image(x: &[Dim]) -> Result<(Dim, [usize; 3]), String> {
    if x.len() != 4 {
        return Err(format!(
            "the input has shape {}; rank 4 (images [N, C, H, W]) is needed here",
            shape_text(x)
        ));
    }
    per_image(x, &[1, 2, 3], "window")?;
    Ok((x[0], [x[1].at(1), x[2].at(1), x[3].at(1)]))
}

fn rank(what: &str, shape: &[usize], expected: usize) -> Result<(), String> {
    if shape.len() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} has shape {shape:?}; rank {expected} is needed here"
        ))
    }
}

/// Each of `values` (named `what`) between 1 and [`MAX_ATTRIBUTE`].
fn positive(what: &str, values: &[usize]) -> Result<(), String> {
    match values.iter().find(|&&v| v == 0 || v > MAX_ATTRIBUTE) {
        Some(_) => Err(format!(
            "{what} {values:?}: each must be a positive number (at most {MAX_ATTRIBUTE})"
        )),
        None => Ok(()),
    }
}

fn pads_in_range(pads: &[(usize, usize)]) -> Result<(), String> {
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
fn spatial(
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

fn conv(
    x: &[Dim],
    w: &[usize],
    bias: Option<&[usize]>,
    o: &ConvOptions<2>,
) -> Result<Vec<Dim>, String> {
    let (n, [channels, h, width]) = image(x)?;
    rank("the weight", w, 4)?;
    positive("strides", &o.stride)?;
    positive("dilations", &o.dilation)?;
    positive("group", &[o.groups])?;
    pads_in_range(&o.padding)?;
    let (groups, out) = (o.groups, w[0]);
    if channels % groups != 0 {
        return Err(format!(
            "group {groups} does not divide the input's {channels} channels"
        ));
    }
    if out % groups != 0 {
        return Err(format!(
            "group {groups} does not divide the weight's {out} output channels"
        ));
    }
    if w[1] * groups != channels {
        return Err(format!(
            "the weight {w:?} takes {} input channels (x group {groups}), the input has \
             {channels}",
            w[1] * groups
        ));
    }
    if let Some(b) = bias
        && b != [out]
    {
        return Err(format!("the bias has shape {b:?}; [{out}] is needed"));
    }
    let [oh, ow] = spatial(
        [h, width],
        [w[2], w[3]],
        o.stride,
        o.dilation,
        &o.padding,
        false,
    )?;
    Ok(vec![n, Dim::new(out as i64), oh, ow])
}

/// A Conv's `kernel_shape` attribute against its weight [M, C/group, kH, kW].
pub(super) fn conv_kernel(kernel_shape: &[usize], weight: &[usize]) -> Result<(), String> {
    if weight.len() == 4 && kernel_shape != [weight[2], weight[3]] {
        return Err(format!(
            "kernel_shape {kernel_shape:?} does not match the weight's {:?}",
            &weight[2..]
        ));
    }
    Ok(())
}

/// The inner lengths of a product `a` · `b` must be equal and the same for every batch.
fn inner(a: &[Dim], b: &[Dim], k: Dim, l: Dim) -> Result<(), String> {
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

fn linear(
    x: &[Dim],
    w: &[usize],
    bias: Option<&[usize]>,
    transposed: bool,
) -> Result<Vec<Dim>, String> {
    rank("the weight", w, 2)?;
    let [k, n] = if transposed {
        [w[1], w[0]]
    } else {
        [w[0], w[1]]
    };
    let last = *x
        .last()
        .ok_or("the input is a scalar; a vector or more is needed")?;
    inner(x, &fold::fixed_shape(&[k, n]), last, Dim::new(k as i64))?;
    if let Some(b) = bias
        && b.iter().product::<usize>() != n
    {
        return Err(format!("the bias has shape {b:?}; [{n}] is needed"));
    }
    let mut out = x.to_vec();
    *out.last_mut().expect("rank >= 1") = Dim::new(n as i64);
    Ok(out)
}

/// A value read as a matrix: [rows, columns], or [columns] as one row.
fn matrix(what: &str, shape: &[Dim]) -> Result<[Dim; 2], String> {
    match *shape {
        [rows, columns] => Ok([rows, columns]),
        [columns] => Ok([Dim::new(1), columns]),
        _ => Err(format!(
            "{what} has shape {}; a matrix (rank 1 or 2) is needed here",
            shape_text(shape)
        )),
    }
}

fn gemm(
    a: &[Dim],
    b: &[Dim],
    c: Option<&[Dim]>,
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<Dim>, String> {
    let flip = |m: [Dim; 2], t: bool| if t { [m[1], m[0]] } else { m };
    let (ma, mb) = (
        flip(matrix("input A", a)?, trans_a),
        flip(matrix("input B", b)?, trans_b),
    );
    inner(&ma, &mb, ma[1], mb[0])?;
    let out = vec![ma[0], mb[1]];
    if let Some(c) = c {
        let [rows, columns] = matrix("input C", c)?;
        let fits = |d: Dim, n: Dim| d == n || d == Dim::new(1);
        if !(fits(rows, out[0]) && fits(columns, out[1])) {
            return Err(format!(
                "input C {} does not broadcast to the product's {}",
                shape_text(c),
                shape_text(&out)
            ));
        }
    }
    Ok(out)
}

/// NumPy's matmul: rank-1 operands promoted (and their axis removed after), batch axes
/// broadcast.
fn matmul(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("a scalar operand; MatMul takes vectors or more".into());
    }
    let one = Dim::new(1);
    let pa: Vec<Dim> = if a.len() == 1 {
        vec![one, a[0]]
    } else {
        a.to_vec()
    };
    let pb: Vec<Dim> = if b.len() == 1 {
        vec![b[0], one]
    } else {
        b.to_vec()
    };
    let (m, k) = (pa[pa.len() - 2], pa[pa.len() - 1]);
    let (l, n) = (pb[pb.len() - 2], pb[pb.len() - 1]);
    inner(&pa, &pb, k, l)?;
    let mut out = broadcast(&[&pa[..pa.len() - 2], &pb[..pb.len() - 2]])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
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

/// What the pooling ops share: rank, positive attributes, pads smaller than the window
/// (ONNX Runtime's rule: a window that lies wholly in the padding has nothing to pool).
fn pool(
    x: &[Dim],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: &[(usize, usize); 2],
    ceil: bool,
) -> Result<Vec<Dim>, String> {
    let (n, [c, h, w]) = image(x)?;
    positive("kernel_shape", &kernel)?;
    positive("strides", &stride)?;
    positive("dilations", &dilation)?;
    pads_in_range(pads)?;
    if pads
        .iter()
        .zip(kernel)
        .any(|(&(begin, end), k)| begin >= k || end >= k)
    {
        return Err(format!(
            "pads {pads:?} must be smaller than the kernel {kernel:?}"
        ));
    }
    let [oh, ow] = spatial([h, w], kernel, stride, dilation, pads, ceil)?;
    Ok(vec![n, Dim::new(c as i64), oh, ow])
}

fn max_pool(x: &[Dim], o: &MaxPoolOptions<2>) -> Result<Vec<Dim>, String> {
    pool(
        x,
        o.kernel_size,
        o.stride,
        o.dilation,
        &o.padding,
        o.ceil_mode,
    )
}

fn avg_pool(x: &[Dim], o: &AvgPoolOptions<2>) -> Result<Vec<Dim>, String> {
    pool(x, o.kernel_size, o.stride, [1, 1], &o.padding, o.ceil_mode)
}

fn batch_norm(x: &[Dim], params: [Vec<Dim>; 4], epsilon: f64) -> Result<Vec<Dim>, String> {
    if x.len() < 2 {
        return Err(format!(
            "the input has shape {}; [N, C, ...] is needed",
            shape_text(x)
        ));
    }
    per_image(x, &[1], "normalisation")?;
    let channels = x[1].at(1);
    let names = ["scale", "B", "input_mean", "input_var"];
    for (name, shape) in names.iter().zip(&params) {
        if elements(shape) != Some(channels) {
            return Err(format!(
                "{name} has shape {}; the input's {channels} channels need [{channels}]",
                shape_text(shape)
            ));
        }
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(format!("epsilon {epsilon} is not a number >= 0"));
    }
    Ok(x.to_vec())
}

fn layer_norm(
    x: &[Dim],
    scale: &[Dim],
    bias: Option<&[Dim]>,
    axis: usize,
    epsilon: f64,
) -> Result<Vec<Dim>, String> {
    let axes: Vec<usize> = (axis..x.len()).collect();
    per_image(x, &axes, "normalisation")?;
    for (name, p) in [("Scale", Some(scale)), ("B", bias)] {
        if let Some(p) = p
            && broadcast(&[&x[axis..], p]).ok().as_deref() != Some(&x[axis..])
        {
            return Err(format!(
                "{name} has shape {}; it must broadcast to the normalised axes {}",
                shape_text(p),
                shape_text(&x[axis..])
            ));
        }
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(format!("epsilon {epsilon} is not a number >= 0"));
    }
    Ok(x.to_vec())
}

fn reduce(x: &[Dim], axes: &[usize], keep: bool) -> Result<Vec<Dim>, String> {
    per_image(x, axes, "reduction")?;
    Ok(x.iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d),
            (true, true) => Some(Dim::new(1)),
            (true, false) => None,
        })
        .collect())
}

fn slice(x: &[Dim], ranges: &[(usize, i64, i64, i64)]) -> Result<Vec<Dim>, String> {
    let mut out = x.to_vec();
    for &(axis, start, end, step) in ranges {
        per_image(x, &[axis], "slice")?;
        out[axis] = Dim::new(fold::slice_len((start, end, step)) as i64);
    }
    Ok(out)
}

fn concat(inputs: &[Vec<Dim>], axis: usize) -> Result<Vec<Dim>, String> {
    let first = inputs.first().ok_or("no inputs")?;
    if axis >= first.len() {
        return Err(format!(
            "axis {axis} is past the inputs' rank {}",
            first.len()
        ));
    }
    let mut out = first.clone();
    for other in &inputs[1..] {
        let same = other.len() == first.len()
            && (0..first.len()).all(|i| i == axis || other[i] == first[i]);
        if !same {
            return Err(format!(
                "inputs of shapes {} and {} differ outside axis {axis}",
                shape_text(first),
                shape_text(other)
            ));
        }
        out[axis] = out[axis].add(other[axis]).ok_or("too many elements")?;
    }
    Ok(out)
}

fn pad(x: &[Dim], pads: &[(usize, usize)]) -> Result<Vec<Dim>, String> {
    pads_in_range(pads)?;
    x.iter()
        .zip(pads)
        .enumerate()
        .map(|(a, (&d, &(b, e)))| {
            if b + e == 0 {
                return Ok(d);
            }
            per_image(x, &[a], "padding")?;
            Ok(Dim::new((d.at(1) + b + e) as i64))
        })
        .collect()
}

fn gather(
    x: &[Dim],
    axis: usize,
    indices: &[usize],
    index_shape: &[usize],
) -> Result<Vec<Dim>, String> {
    per_image(x, &[axis], "gather")?;
    let len = x[axis].at(1);
    if let Some(i) = indices.iter().find(|&&i| i >= len) {
        return Err(format!("index {i} is outside axis {axis} of length {len}"));
    }
    let mut out = x[..axis].to_vec();
    out.extend(fold::fixed_shape(index_shape));
    out.extend_from_slice(&x[axis + 1..]);
    Ok(out)
}

impl std::fmt::Display for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
