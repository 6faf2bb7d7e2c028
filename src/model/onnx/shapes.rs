//! Shape inference at import, as ONNX's checker and shape inference do it: each step's output
//! shape from its inputs' shapes and its attributes, one function per op, refusing what ONNX
//! Runtime refuses (channels that do not fit a Conv's weight, a group that does not divide
//! them, a zero stride or dilation, a pooling window larger than its padded input, pads not
//! smaller than the window, shapes that do not broadcast, ...). Nothing is allocated: a graph
//! whose values for one image would not fit in memory is refused before the one-image dry run
//! that would otherwise abort on it.
//!
//! Shapes include the batch axis, at 1 (the dry run's batch). A new op adds its variant to
//! [`Op`]; the match in [`output_shape`] then wants its function here.

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::{Binary, Op, Operand};

/// The largest attribute value (kernel, stride, dilation, pad) taken: ONNX stores them as
/// int64, and a negative one arrives as a huge unsigned number.
const MAX_ATTRIBUTE: usize = i32::MAX as usize;

/// `op`'s output shape, given the shape of each operand; `Err` says what does not fit.
pub(super) fn output_shape(
    op: &Op,
    shape: &dyn Fn(Operand) -> Vec<usize>,
) -> Result<Vec<usize>, String> {
    match op {
        Op::Conv {
            x,
            weight,
            bias,
            options,
        } => conv(
            &shape(*x),
            &shape(Operand::Param(*weight)),
            bias.map(|b| shape(Operand::Param(b))).as_deref(),
            options,
        ),
        Op::Linear {
            x,
            weight,
            bias,
            transposed,
        } => linear(
            &shape(*x),
            &shape(Operand::Param(*weight)),
            bias.map(|b| shape(Operand::Param(b))).as_deref(),
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
        Op::Binary { kind, a, b } => broadcast(*kind, &shape(*a), &shape(*b)),
        Op::Relu(x) | Op::LeakyRelu(x, _) | Op::Sigmoid(x) | Op::Tanh(x) | Op::Identity(x) => {
            Ok(shape(*x))
        }
        Op::Clip { x, min, max } => clip(&shape(*x), *min, *max),
        Op::MaxPool { x, options } => max_pool(&shape(*x), options),
        Op::AvgPool { x, options } => avg_pool(&shape(*x), options),
        Op::GlobalAvgPool(x) => global_avg_pool(&shape(*x)),
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
        Op::Flatten { x, axis } => flatten(&shape(*x), *axis),
        Op::Reshape { x, shape: to } => reshape(&shape(*x), to),
        Op::Concat { inputs, axis } => {
            concat(&inputs.iter().map(|i| shape(*i)).collect::<Vec<_>>(), *axis)
        }
    }
}

/// Elements of one value of `shape`, `None` when the count overflows.
pub(super) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Elements the op needs beside its inputs and output while it runs on one image: a
/// convolution's im2col matrix (input channels per group × kernel × output pixels).
pub(super) fn workspace(op: &Op, shape: &dyn Fn(Operand) -> Vec<usize>, out: &[usize]) -> usize {
    match op {
        Op::Conv { weight, .. } => {
            let w = shape(Operand::Param(*weight));
            elements(&w[1..])
                .and_then(|k| k.checked_mul(out[2]))
                .and_then(|k| k.checked_mul(out[3]))
                .unwrap_or(usize::MAX)
        }
        _ => 0,
    }
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

fn pads_in_range(pads: &[(usize, usize); 2]) -> Result<(), String> {
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

/// The output height and width of a sliding window over the image `x` [N, C, H, W].
fn spatial(
    x: &[usize],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: &[(usize, usize); 2],
    ceil: bool,
) -> Result<[usize; 2], String> {
    let mut out = [0; 2];
    for axis in 0..2 {
        out[axis] = windows(
            x[2 + axis],
            pads[axis],
            kernel[axis],
            stride[axis],
            dilation[axis],
            ceil,
        )
        .ok_or_else(|| {
            format!(
                "a window of {kernel:?} (dilations {dilation:?}) is larger than the input {:?} \
                 padded by {pads:?}: the output would be empty",
                &x[2..]
            )
        })?;
    }
    Ok(out)
}

fn conv(
    x: &[usize],
    w: &[usize],
    bias: Option<&[usize]>,
    o: &ConvOptions<2>,
) -> Result<Vec<usize>, String> {
    rank("the input", x, 4)?;
    rank("the weight", w, 4)?;
    positive("strides", &o.stride)?;
    positive("dilations", &o.dilation)?;
    positive("group", &[o.groups])?;
    pads_in_range(&o.padding)?;
    let (channels, groups, out) = (x[1], o.groups, w[0]);
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
    let [h, width] = spatial(x, [w[2], w[3]], o.stride, o.dilation, &o.padding, false)?;
    Ok(vec![x[0], out, h, width])
}

/// A Conv's `kernel_shape` attribute against its weight [M, C/group, kH, kW].
pub(super) fn conv_kernel(kernel_shape: [usize; 2], weight: &[usize]) -> Result<(), String> {
    if weight.len() == 4 && kernel_shape != [weight[2], weight[3]] {
        return Err(format!(
            "kernel_shape {kernel_shape:?} does not match the weight's {:?}",
            &weight[2..]
        ));
    }
    Ok(())
}

/// A value the runtime reads as a matrix: [rows, columns], or [columns] as one row.
fn matrix(what: &str, shape: &[usize]) -> Result<[usize; 2], String> {
    match *shape {
        [rows, columns] => Ok([rows, columns]),
        [columns] => Ok([1, columns]),
        _ => Err(format!(
            "{what} has shape {shape:?}; a matrix (rank 1 or 2) is needed here"
        )),
    }
}

fn product(a: [usize; 2], b: [usize; 2]) -> Result<Vec<usize>, String> {
    if a[1] != b[0] {
        return Err(format!(
            "a {a:?} matrix cannot be multiplied by a {b:?} one (inner sizes {} and {})",
            a[1], b[0]
        ));
    }
    Ok(vec![a[0], b[1]])
}

fn linear(
    x: &[usize],
    w: &[usize],
    bias: Option<&[usize]>,
    transposed: bool,
) -> Result<Vec<usize>, String> {
    rank("the weight", w, 2)?;
    let w = if transposed {
        [w[1], w[0]]
    } else {
        [w[0], w[1]]
    };
    let out = product(matrix("the input", x)?, w)?;
    if let Some(b) = bias
        && elements(b) != Some(out[1])
    {
        return Err(format!("the bias has shape {b:?}; [{}] is needed", out[1]));
    }
    Ok(out)
}

fn gemm(
    a: &[usize],
    b: &[usize],
    c: Option<&[usize]>,
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<usize>, String> {
    let flip = |m: [usize; 2], t: bool| if t { [m[1], m[0]] } else { m };
    let out = product(
        flip(matrix("input A", a)?, trans_a),
        flip(matrix("input B", b)?, trans_b),
    )?;
    if let Some(c) = c {
        let [rows, columns] = matrix("input C", c)?;
        let fits = |d: usize, n: usize| d == n || d == 1;
        if !(fits(rows, out[0]) && fits(columns, out[1])) {
            return Err(format!(
                "input C {c:?} does not broadcast to the product's {out:?}"
            ));
        }
    }
    Ok(out)
}

fn matmul(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    product(matrix("input A", a)?, matrix("input B", b)?)
}

/// NumPy broadcasting of `a` and `b` (ranks up to 4: what the runtime's values hold).
fn broadcast(kind: Binary, a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    if rank > 4 {
        return Err(format!("inputs of rank {rank}: at most 4 is supported"));
    }
    let padded = |s: &[usize]| {
        let mut out = vec![1; rank - s.len()];
        out.extend_from_slice(s);
        out
    };
    let (pa, pb) = (padded(a), padded(b));
    pa.iter()
        .zip(&pb)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!(
                "{kind:?}: shapes {a:?} and {b:?} do not broadcast (NumPy rules)"
            )),
        })
        .collect()
}

fn clip(x: &[usize], min: f32, max: f32) -> Result<Vec<usize>, String> {
    if min.is_nan() || max.is_nan() {
        return Err(format!("bounds min {min}, max {max}: NaN is no bound"));
    }
    Ok(x.to_vec())
}

/// What the pooling ops share: rank, positive attributes, pads smaller than the window
/// (ONNX Runtime's rule: a window that lies wholly in the padding has nothing to pool).
fn pool(
    x: &[usize],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: &[(usize, usize); 2],
    ceil: bool,
) -> Result<Vec<usize>, String> {
    rank("the input", x, 4)?;
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
    let [h, w] = spatial(x, kernel, stride, dilation, pads, ceil)?;
    Ok(vec![x[0], x[1], h, w])
}

fn max_pool(x: &[usize], o: &MaxPoolOptions<2>) -> Result<Vec<usize>, String> {
    pool(
        x,
        o.kernel_size,
        o.stride,
        o.dilation,
        &o.padding,
        o.ceil_mode,
    )
}

fn avg_pool(x: &[usize], o: &AvgPoolOptions<2>) -> Result<Vec<usize>, String> {
    pool(x, o.kernel_size, o.stride, [1, 1], &o.padding, o.ceil_mode)
}

fn global_avg_pool(x: &[usize]) -> Result<Vec<usize>, String> {
    rank("the input", x, 4)?;
    Ok(vec![x[0], x[1], 1, 1])
}

fn batch_norm(x: &[usize], params: [Vec<usize>; 4], epsilon: f64) -> Result<Vec<usize>, String> {
    rank("the input", x, 4)?;
    let channels = x[1];
    let names = ["scale", "B", "input_mean", "input_var"];
    for (name, shape) in names.iter().zip(&params) {
        if elements(shape) != Some(channels) {
            return Err(format!(
                "{name} has shape {shape:?}; the input's {channels} channels need [{channels}]"
            ));
        }
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(format!("epsilon {epsilon} is not a number >= 0"));
    }
    Ok(x.to_vec())
}

fn flatten(x: &[usize], axis: usize) -> Result<Vec<usize>, String> {
    if axis > x.len() {
        return Err(format!(
            "axis {axis} is past the input's rank {} (shape {x:?})",
            x.len()
        ));
    }
    let rows = elements(&x[..axis]).ok_or("too many elements")?;
    let columns = elements(&x[axis..]).ok_or("too many elements")?;
    Ok(vec![rows, columns])
}

/// ONNX Reshape with a constant shape: 0 copies the input's dim, one -1 takes what is left.
fn reshape(x: &[usize], to: &[i64]) -> Result<Vec<usize>, String> {
    if to.is_empty() || to.len() > 4 {
        return Err(format!("shape {to:?}: ranks 1 to 4 are supported"));
    }
    if to.iter().any(|&d| d < -1) || to.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(format!(
            "shape {to:?}: dims are positive, 0 (copy the input's) or one -1 (the rest)"
        ));
    }
    let total = elements(x).ok_or("too many elements")?;
    let mut dims = Vec::with_capacity(to.len());
    for (i, &d) in to.iter().enumerate() {
        dims.push(match d {
            0 => *x
                .get(i)
                .ok_or_else(|| format!("shape {to:?}: 0 at axis {i}, past the input's rank"))?,
            -1 => 1,
            d => usize::try_from(d).map_err(|_| format!("shape {to:?}: too large"))?,
        });
    }
    let known = elements(&dims).ok_or("too many elements")?;
    if let Some(i) = to.iter().position(|&d| d == -1) {
        if known == 0 || total % known != 0 {
            return Err(format!(
                "shape {to:?} cannot hold the input's {total} elements (shape {x:?})"
            ));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(format!(
            "shape {to:?} holds {known} elements, the input {x:?} has {total}"
        ));
    }
    Ok(dims)
}

fn concat(inputs: &[Vec<usize>], axis: usize) -> Result<Vec<usize>, String> {
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
                "inputs of shapes {first:?} and {other:?} differ outside axis {axis}"
            ));
        }
        out[axis] = out[axis]
            .checked_add(other[axis])
            .ok_or("too many elements")?;
    }
    Ok(out)
}
