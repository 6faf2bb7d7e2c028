//! Running the steps: burn tensor ops on any backend, with autodiff to the images.

use burn::prelude::*;
use burn::tensor::activation::{leaky_relu, log_softmax, relu, sigmoid, softmax, tanh};
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::PadMode;

use crate::kernels::{conv2d, matmul, max_pool2d};

use super::shapes::MAX_RANK;
use super::{Binary, Compression, OnnxModel, Op, Operand, Reduce, Unary};

/// A value between steps: a rank-6 tensor padded with leading 1s, and its ONNX rank.
#[derive(Clone)]
struct Value {
    t: Tensor<MAX_RANK>,
    rank: usize,
}

impl Value {
    fn new<const D: usize>(t: Tensor<D>) -> Self {
        let dims = t.dims();
        Value {
            t: t.reshape(padded(&dims)),
            rank: D,
        }
    }

    fn of_shape(t: Tensor<MAX_RANK>, dims: &[usize]) -> Self {
        Value {
            t: t.reshape(padded(dims)),
            rank: dims.len(),
        }
    }

    fn dims(&self) -> Vec<usize> {
        self.t.dims()[MAX_RANK - self.rank..].to_vec()
    }

    /// The value as a tensor of rank `D` (its own rank, or fewer leading axes merged).
    fn as_rank<const D: usize>(&self) -> Tensor<D> {
        let dims = self.t.dims();
        let mut out = [1; D];
        out.copy_from_slice(&dims[MAX_RANK - D..]);
        out[0] = dims[..=MAX_RANK - D].iter().product();
        self.t.clone().reshape(out)
    }

    /// The tensor axis of ONNX axis `axis`.
    fn axis(&self, axis: usize) -> usize {
        MAX_RANK - self.rank + axis
    }

    fn map(self, f: impl FnOnce(Tensor<MAX_RANK>) -> Tensor<MAX_RANK>) -> Self {
        Value {
            t: f(self.t),
            rank: self.rank,
        }
    }
}

/// `shape` left-padded with 1s to rank 6.
fn padded(shape: &[usize]) -> [usize; MAX_RANK] {
    let mut out = [1; MAX_RANK];
    out[MAX_RANK - shape.len()..].copy_from_slice(shape);
    out
}

impl OnnxModel {
    /// Logits [batch, classes] for images [batch, C, H, W] in [0, 1], through `compression`
    /// (weights of Conv / Linear / Gemm masked and quantised, every nonlinearity's output and
    /// the logits quantised, as the built-in models do).
    pub fn forward(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2> {
        let graph = &self.graph;
        let device = images.device();
        let batch = images.dims()[0];
        let mut values: Vec<Option<Value>> = vec![None; graph.slots];
        values[0] = Some(Value::new(images));
        let param = |i: usize| -> Value {
            let (_, shape) = &graph.params[i];
            Value::of_shape(
                self.params[i]
                    .val()
                    .reshape(padded(&[shape.iter().product()])),
                shape,
            )
        };
        let weight = |i: usize| -> Tensor<1> {
            compression.flat_weight(
                &graph.layer(i),
                graph.weights.contains(&i),
                &graph.params[i].1,
                self.params[i].val(),
            )
        };
        // A weight layer's input, quantised where the quantiser quantises layer inputs.
        let input = |w: usize, x: Value| -> Value {
            Value {
                t: compression.layer_input(&graph.layer(w), x.t),
                rank: x.rank,
            }
        };
        for step in &graph.steps {
            let get = |o: Operand| -> Value {
                match o {
                    Operand::Value(i) => values[i].clone().expect("a value is set before use"),
                    Operand::Param(i) => param(i),
                    Operand::Const(i) => {
                        let c = &graph.consts[i];
                        let t: Tensor<1> = Tensor::from_data(
                            TensorData::new(c.values.clone(), [c.values.len()]),
                            &device,
                        );
                        Value::of_shape(t.reshape(padded(&[c.values.len()])), &c.shape)
                    }
                }
            };
            let out = match &step.op {
                Op::Conv {
                    x,
                    weight: w,
                    bias,
                    options,
                } => {
                    let (_, shape) = &graph.params[*w];
                    let w4: Tensor<4> =
                        weight(*w).reshape([shape[0], shape[1], shape[2], shape[3]]);
                    let b = bias.map(&weight);
                    let x = input(*w, get(*x)).as_rank::<4>();
                    Value::new(conv2d(x, w4, b, options.clone()))
                }
                Op::Linear {
                    x,
                    weight: w,
                    bias,
                    transposed,
                } => {
                    let x = input(*w, get(*x));
                    let (_, shape) = &graph.params[*w];
                    let w2: Tensor<2> = weight(*w).reshape([shape[0], shape[1]]);
                    let w2 = if *transposed { w2.transpose() } else { w2 };
                    let mut dims = x.dims();
                    let mut y = matmul(x.as_rank::<2>(), w2);
                    if let Some(b) = bias {
                        y = y + weight(*b).unsqueeze::<2>();
                    }
                    let [rows, columns] = y.dims();
                    let last = dims.len() - 1;
                    dims[last] = columns;
                    Value::of_shape(y.reshape(padded(&[rows * columns])), &dims)
                }
                Op::Gemm {
                    a,
                    b,
                    c,
                    alpha,
                    beta,
                    trans_a,
                    trans_b,
                } => {
                    let a = match b {
                        Operand::Param(w) => input(*w, get(*a)),
                        _ => get(*a),
                    };
                    let a = a.as_rank::<2>();
                    let b = match b {
                        Operand::Param(w) => {
                            let (_, shape) = &graph.params[*w];
                            weight(*w).reshape([shape[0], shape[1]])
                        }
                        other => get(*other).as_rank::<2>(),
                    };
                    let a = if *trans_a { a.transpose() } else { a };
                    let b = if *trans_b { b.transpose() } else { b };
                    let mut y = matmul(a, b);
                    if *alpha != 1.0 {
                        y = y * *alpha;
                    }
                    if let Some(c) = c {
                        let c = match c {
                            Operand::Param(i) => {
                                let t = weight(*i);
                                Value::of_shape(
                                    t.reshape(padded(&[graph.params[*i].1.iter().product()])),
                                    &graph.params[*i].1,
                                )
                            }
                            other => get(*other),
                        };
                        let c: Tensor<2> = c.t.squeeze_dims(&[0, 1, 2, 3]);
                        y = y + c * *beta;
                    }
                    Value::new(y)
                }
                Op::MatMul { a, b } => batched_matmul(get(*a), get(*b)),
                Op::Binary { kind, a, b } => {
                    let (a, b) = (get(*a), get(*b));
                    let rank = a.rank.max(b.rank);
                    let t = match kind {
                        Binary::Add => a.t + b.t,
                        Binary::Sub => a.t - b.t,
                        Binary::Mul => a.t * b.t,
                        Binary::Div => a.t / b.t,
                        Binary::Pow => {
                            let shape = broadcast_dims(&a.t.dims(), &b.t.dims());
                            a.t.expand(shape).powf(b.t.expand(shape))
                        }
                        Binary::Min | Binary::Max => {
                            let shape = broadcast_dims(&a.t.dims(), &b.t.dims());
                            let (a, b) = (a.t.expand(shape), b.t.expand(shape));
                            match kind {
                                Binary::Min => a.min_pair(b),
                                _ => a.max_pair(b),
                            }
                        }
                    };
                    Value { t, rank }
                }
                Op::Unary { kind, x } => get(*x).map(|t| unary(*kind, t)),
                Op::MaxPool { x, options } => {
                    Value::new(max_pool2d(get(*x).as_rank::<4>(), options.clone()))
                }
                Op::AvgPool { x, options } => {
                    Value::new(avg_pool2d(get(*x).as_rank::<4>(), options.clone()))
                }
                Op::BatchNorm {
                    x,
                    scale,
                    shift,
                    mean,
                    var,
                    epsilon,
                } => {
                    let x = get(*x);
                    let mut channel = vec![1; x.rank];
                    channel[1] = x.dims()[1];
                    let per_channel = |v: Value| v.t.reshape(padded(&channel));
                    let (scale, shift) = (per_channel(get(*scale)), per_channel(get(*shift)));
                    let (mean, var) = (per_channel(get(*mean)), per_channel(get(*var)));
                    // x · a + b with a and b per channel: two passes over x (and two in the
                    // backward pass) where (x - mean) / sd · scale + shift took four.
                    let a = (var + *epsilon as f32).sqrt().recip() * scale;
                    let b = shift - mean * a.clone();
                    x.map(|t| t * a + b)
                }
                Op::LayerNorm {
                    x,
                    scale,
                    bias,
                    axis,
                    epsilon,
                } => {
                    let x = get(*x);
                    let dims = x.dims();
                    let rows: usize = dims[..*axis].iter().product();
                    let columns: usize = dims[*axis..].iter().product();
                    let m: Tensor<2> = x.t.reshape([rows, columns]);
                    let centred = m.clone() - m.mean_dim(1);
                    let var = centred.clone().powi_scalar(2).mean_dim(1);
                    let normed = centred / (var + *epsilon as f32).sqrt();
                    let mut t = Value::of_shape(normed.reshape(padded(&[rows * columns])), &dims).t;
                    t = t * get(*scale).t;
                    if let Some(b) = bias {
                        t = t + get(*b).t;
                    }
                    Value {
                        t,
                        rank: dims.len(),
                    }
                }
                Op::Softmax { x, axis, log } => {
                    let x = get(*x);
                    let a = x.axis(*axis);
                    x.map(|t| {
                        if *log {
                            log_softmax(t, a)
                        } else {
                            softmax(t, a)
                        }
                    })
                }
                Op::Reduce {
                    kind,
                    x,
                    axes,
                    keep,
                } => {
                    let x = get(*x);
                    let dims = x.dims();
                    let mut t = x.t.clone();
                    for &a in axes {
                        let a = x.axis(a);
                        t = match kind {
                            Reduce::Mean => t.mean_dim(a),
                            Reduce::Sum => t.sum_dim(a),
                            Reduce::Max => t.max_dim(a),
                        };
                    }
                    let out: Vec<usize> = dims
                        .iter()
                        .enumerate()
                        .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
                            (false, _) => Some(d),
                            (true, true) => Some(1),
                            (true, false) => None,
                        })
                        .collect();
                    Value::of_shape(t, &out)
                }
                Op::Reshape { x, shape } => {
                    let dims: Vec<usize> = shape.iter().map(|d| d.at(batch)).collect();
                    Value::of_shape(get(*x).t, &dims)
                }
                Op::Transpose { x, perm } => {
                    let x = get(*x);
                    let offset = MAX_RANK - x.rank;
                    let mut axes: [usize; MAX_RANK] = std::array::from_fn(|i| i);
                    for (i, &p) in perm.iter().enumerate() {
                        axes[offset + i] = offset + p;
                    }
                    x.map(|t| t.permute(axes))
                }
                Op::Slice { x, ranges } => {
                    let x = get(*x);
                    let mut slices: Vec<burn::tensor::Slice> =
                        x.t.dims()
                            .iter()
                            .map(|&d| burn::tensor::Slice::new(0, Some(d as isize), 1))
                            .collect();
                    for &(axis, start, end, step) in ranges {
                        slices[x.axis(axis)] = if step > 0 {
                            burn::tensor::Slice::new(
                                start as isize,
                                Some(end as isize),
                                step as isize,
                            )
                        } else {
                            // ONNX's start..end backwards, as burn's slice of end+1..start+1
                            // taken from its end.
                            burn::tensor::Slice::new(
                                (end + 1) as isize,
                                Some((start + 1) as isize),
                                step as isize,
                            )
                        };
                    }
                    let rank = x.rank;
                    Value {
                        t: x.t.slice(slices.as_slice()),
                        rank,
                    }
                }
                Op::Concat { inputs, axis } => {
                    let parts: Vec<Value> = inputs.iter().map(|o| get(*o)).collect();
                    let rank = parts[0].rank;
                    let a = parts[0].axis(*axis);
                    Value {
                        t: Tensor::cat(parts.into_iter().map(|v| v.t).collect(), a),
                        rank,
                    }
                }
                Op::Expand { x, shape } => {
                    let x = get(*x);
                    let target: Vec<usize> = shape.iter().map(|d| d.at(batch)).collect();
                    let rank = x.rank.max(target.len());
                    let out = broadcast_dims(&x.t.dims(), &padded(&target));
                    Value {
                        t: x.t.expand(out),
                        rank,
                    }
                }
                Op::Pad { x, pads, value } => {
                    let x = get(*x);
                    let mut all = [(0, 0); MAX_RANK];
                    all[MAX_RANK - pads.len()..].copy_from_slice(pads);
                    x.map(|t| t.pad(all, PadMode::Constant(*value)))
                }
                Op::Gather {
                    x,
                    axis,
                    indices,
                    shape,
                } => {
                    let x = get(*x);
                    let mut dims = x.dims();
                    let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
                    let index = Tensor::<1, Int>::from_data(
                        TensorData::new(index, [indices.len()]),
                        &device,
                    );
                    let t = x.t.clone().select(x.axis(*axis), index);
                    dims.splice(*axis..=*axis, shape.iter().copied());
                    Value::of_shape(t, &dims)
                }
                Op::Where { condition, a, b } => {
                    let (c, a, b) = (get(*condition), get(*a), get(*b));
                    let rank = c.rank.max(a.rank).max(b.rank);
                    let shape =
                        broadcast_dims(&broadcast_dims(&c.t.dims(), &a.t.dims()), &b.t.dims());
                    let mask = c.t.expand(shape).greater_elem(0.5);
                    Value {
                        t: b.t.expand(shape).mask_where(mask, a.t.expand(shape)),
                        rank,
                    }
                }
                Op::Quantise { x, site, relu: r } => {
                    let x = get(*x);
                    let quantised = compression
                        .quant
                        .as_ref()
                        .is_some_and(|q| q.activation_grid(site, false).is_some());
                    match (quantised, *r) {
                        (true, _) => x.map(|t| compression.activation(site, t)),
                        (false, true) => x.map(relu),
                        (false, false) => x,
                    }
                }
                Op::Resize { x, axes } => {
                    let mut x = get(*x);
                    for interpolation in axes {
                        let a = x.axis(interpolation.axis);
                        let mut sum: Option<Tensor<MAX_RANK>> = None;
                        for (indices, weights) in &interpolation.taps {
                            let n = indices.len();
                            let index = Tensor::<1, Int>::from_data(
                                TensorData::new(
                                    indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                                    [n],
                                ),
                                &device,
                            );
                            let mut along = [1; MAX_RANK];
                            along[a] = n;
                            let w: Tensor<1> =
                                Tensor::from_data(TensorData::new(weights.clone(), [n]), &device);
                            let term = x.t.clone().select(a, index) * w.reshape(along);
                            sum = Some(match sum {
                                Some(s) => s + term,
                                None => term,
                            });
                        }
                        x = Value {
                            t: sum.expect("one tap at least"),
                            rank: x.rank,
                        };
                    }
                    x
                }
            };
            let out = if step.op.is_activation() {
                out.map(|t| compression.activation(&step.node, t))
            } else {
                out
            };
            values[step.out] = Some(out);
        }
        let logits = values[graph.output]
            .clone()
            .expect("the output is computed")
            .as_rank::<2>();
        compression.activation("logits", logits)
    }
}

/// NumPy broadcasting of two rank-6 shapes.
fn broadcast_dims(a: &[usize], b: &[usize]) -> [usize; MAX_RANK] {
    std::array::from_fn(|i| a[i].max(b[i]))
}

fn unary(kind: Unary, t: Tensor<MAX_RANK>) -> Tensor<MAX_RANK> {
    match kind {
        Unary::Relu => relu(t),
        Unary::LeakyRelu(alpha) => leaky_relu(t, f64::from(alpha)),
        Unary::Sigmoid => sigmoid(t),
        Unary::Tanh => tanh(t),
        Unary::Clip { min, max } => t.clamp(min, max),
        Unary::HardSigmoid { alpha, beta } => (t * alpha + beta).clamp(0.0, 1.0),
        Unary::HardSwish => t.clone() * (t / 6.0 + 0.5).clamp(0.0, 1.0),
        Unary::Gelu { tanh: false } => {
            t.clone() * ((t / std::f32::consts::SQRT_2).erf() + 1.0) * 0.5
        }
        Unary::Gelu { tanh: true } => {
            let inner = (t.clone() + t.clone().powi_scalar(3) * 0.044_715)
                * (2.0 / std::f32::consts::PI).sqrt();
            t * (inner.tanh() + 1.0) * 0.5
        }
        Unary::Elu(alpha) => {
            let negative = (t.clone().exp() - 1.0) * alpha;
            let mask = t.clone().lower_equal_elem(0.0);
            t.mask_where(mask, negative)
        }
        Unary::Selu { alpha, gamma } => {
            let negative = (t.clone().exp() - 1.0) * alpha;
            let mask = t.clone().lower_equal_elem(0.0);
            t.mask_where(mask, negative) * gamma
        }
        // log(1 + e^x), stable for large |x|.
        Unary::Softplus => relu(t.clone()) + (t.abs().neg().exp() + 1.0).log(),
        Unary::Erf => t.erf(),
        Unary::Exp => t.exp(),
        Unary::Log => t.log(),
        Unary::Sqrt => t.sqrt(),
        Unary::Neg => t.neg(),
        Unary::Abs => t.abs(),
        Unary::Reciprocal => t.recip(),
    }
}

/// NumPy's matmul of two values: batch axes broadcast, rank-1 operands promoted.
fn batched_matmul(a: Value, b: Value) -> Value {
    let (mut da, mut db) = (a.dims(), b.dims());
    let (a_vector, b_vector) = (da.len() == 1, db.len() == 1);
    if a_vector {
        da.insert(0, 1);
    }
    if b_vector {
        db.push(1);
    }
    let (m, k, n) = (da[da.len() - 2], da[da.len() - 1], db[db.len() - 1]);
    let (ba, bb) = (&da[..da.len() - 2], &db[..db.len() - 2]);
    let rank = ba.len().max(bb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ba, bb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = ba.iter().zip(&bb).map(|(x, y)| *x.max(y)).collect();
    let count: usize = batch.iter().product();
    let mut out = batch.clone();
    let product: Tensor<3> = if bb.iter().all(|&d| d == 1) {
        // One right-hand matrix for every batch: one GEMM over all rows.
        let rows: usize = ba.iter().product::<usize>() * m;
        let a2: Tensor<2> = a.t.reshape([rows, k]);
        let b2: Tensor<2> = b.t.reshape([k, n]);
        let y = matmul(a2, b2);
        let y: Tensor<3> = y.reshape([rows / m, m, n]);
        if rows / m == count {
            y
        } else {
            y.expand([count, m, n])
        }
    } else {
        let full = |t: Tensor<MAX_RANK>, s: &[usize], r: usize, c: usize| -> Tensor<3> {
            let mut shape = s.to_vec();
            shape.extend([r, c]);
            let t = t.reshape(padded(&shape));
            let mut target = batch.clone();
            target.extend([r, c]);
            t.expand(padded(&target)).reshape([count, r, c])
        };
        full(a.t, &ba, m, k).matmul(full(b.t, &bb, k, n))
    };
    if !a_vector {
        out.push(m);
    }
    if !b_vector {
        out.push(n);
    }
    Value::of_shape(product.reshape(padded(&[count * m * n])), &out)
}
