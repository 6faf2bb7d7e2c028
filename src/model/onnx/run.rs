//! Running the steps: burn tensor ops on any backend, with autodiff to the images.

use burn::prelude::*;
use burn::tensor::activation::{leaky_relu, relu, sigmoid, tanh};
use burn::tensor::module::avg_pool2d;

use crate::kernels::{conv2d, matmul, max_pool2d};

use super::{Binary, Compression, OnnxModel, Op, Operand};

/// A value between steps: a rank-4 tensor padded with leading 1s, and its ONNX rank.
#[derive(Clone)]
struct Value {
    t: Tensor<4>,
    rank: usize,
}

impl Value {
    fn from_shape(t: Tensor<1>, shape: &[usize]) -> Self {
        let rank = shape.len();
        Value {
            t: t.reshape(padded(shape)),
            rank,
        }
    }

    fn dims(&self) -> Vec<usize> {
        self.t.dims()[4 - self.rank..].to_vec()
    }

    fn matrix(&self) -> Tensor<2> {
        let d = self.dims();
        let [rows, cols] = match d.as_slice() {
            [r, c] => [*r, *c],
            [c] => [1, *c],
            _ => unreachable!("checked at import"),
        };
        self.t.clone().reshape([rows, cols])
    }

    fn of_matrix(t: Tensor<2>) -> Self {
        let [r, c] = t.dims();
        Value {
            t: t.reshape([1, 1, r, c]),
            rank: 2,
        }
    }

    fn image(t: Tensor<4>) -> Self {
        Value { t, rank: 4 }
    }
}

/// `shape` left-padded with 1s to rank 4.
fn padded(shape: &[usize]) -> [usize; 4] {
    let mut out = [1; 4];
    out[4 - shape.len()..].copy_from_slice(shape);
    out
}

impl OnnxModel {
    /// Logits [batch, classes] for images [batch, C, H, W] in [0, 1], through `compression`
    /// (weights of Conv / Linear / Gemm masked and quantised, every nonlinearity's output and
    /// the logits quantised, as the built-in models do).
    pub fn forward(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2> {
        let graph = &self.graph;
        let device = images.device();
        let mut values: Vec<Option<Value>> = vec![None; graph.slots];
        values[0] = Some(Value::image(images));
        let param = |i: usize| -> Value {
            let (_, shape) = &graph.params[i];
            Value::from_shape(self.params[i].val(), shape)
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
                        let t = Tensor::from_data(
                            TensorData::new(c.values.clone(), [c.values.len()]),
                            &device,
                        );
                        Value::from_shape(t, &c.shape)
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
                    let w4: Tensor<4> = weight(*w).reshape(padded(shape));
                    let b = bias.map(&weight);
                    Value::image(conv2d(input(*w, get(*x)).t, w4, b, options.clone()))
                }
                Op::Linear {
                    x,
                    weight: w,
                    bias,
                    transposed,
                } => {
                    let (_, shape) = &graph.params[*w];
                    let w2: Tensor<2> = weight(*w).reshape([shape[0], shape[1]]);
                    let w2 = if *transposed { w2.transpose() } else { w2 };
                    let mut y = matmul(input(*w, get(*x)).matrix(), w2);
                    if let Some(b) = bias {
                        y = y + weight(*b).unsqueeze::<2>();
                    }
                    Value::of_matrix(y)
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
                    let a = a.matrix();
                    let b = match b {
                        Operand::Param(w) => {
                            let (_, shape) = &graph.params[*w];
                            weight(*w).reshape([shape[0], shape[1]])
                        }
                        other => get(*other).matrix(),
                    };
                    let a = if *trans_a { a.transpose() } else { a };
                    let b = if *trans_b { b.transpose() } else { b };
                    let mut y = matmul(a, b);
                    if *alpha != 1.0 {
                        y = y * *alpha;
                    }
                    if let Some(c) = c {
                        let c = match c {
                            Operand::Param(i) => Value::from_shape(weight(*i), &graph.params[*i].1),
                            other => get(*other),
                        };
                        let c: Tensor<2> = c.t.squeeze_dims(&[0, 1]);
                        y = y + c * *beta;
                    }
                    Value::of_matrix(y)
                }
                Op::MatMul { a, b } => Value::of_matrix(matmul(get(*a).matrix(), get(*b).matrix())),
                Op::Binary { kind, a, b } => {
                    let (a, b) = (get(*a), get(*b));
                    let rank = a.rank.max(b.rank);
                    let t = match kind {
                        Binary::Add => a.t + b.t,
                        Binary::Sub => a.t - b.t,
                        Binary::Mul => a.t * b.t,
                        Binary::Div => a.t / b.t,
                    };
                    Value { t, rank }
                }
                Op::Relu(x) => map(get(*x), relu),
                Op::LeakyRelu(x, alpha) => map(get(*x), |t| leaky_relu(t, *alpha)),
                Op::Sigmoid(x) => map(get(*x), sigmoid),
                Op::Tanh(x) => map(get(*x), tanh),
                Op::Clip { x, min, max } => map(get(*x), |t| t.clamp(*min, *max)),
                Op::MaxPool { x, options } => Value::image(max_pool2d(get(*x).t, options.clone())),
                Op::AvgPool { x, options } => Value::image(avg_pool2d(get(*x).t, options.clone())),
                Op::GlobalAvgPool(x) => {
                    let t = get(*x).t;
                    Value::image(t.mean_dim(3).mean_dim(2))
                }
                Op::BatchNorm {
                    x,
                    scale,
                    shift,
                    mean,
                    var,
                    epsilon,
                } => {
                    let x = get(*x).t;
                    let channels = x.dims()[1];
                    let per_channel = |v: Value| v.t.reshape([1, channels, 1, 1]);
                    let (scale, shift) = (per_channel(get(*scale)), per_channel(get(*shift)));
                    let (mean, var) = (per_channel(get(*mean)), per_channel(get(*var)));
                    let inv = (var + *epsilon as f32).sqrt().recip();
                    Value::image((x - mean) * inv * scale + shift)
                }
                Op::Flatten { x, axis } => {
                    let x = get(*x);
                    let d = x.dims();
                    let rows: usize = d[..*axis].iter().product();
                    let cols: usize = d[*axis..].iter().product();
                    Value {
                        t: x.t.reshape([1, 1, rows, cols]),
                        rank: 2,
                    }
                }
                Op::Reshape { x, shape } => {
                    let x = get(*x);
                    let dims = reshaped(&x.dims(), shape);
                    Value {
                        t: x.t.reshape(padded(&dims)),
                        rank: dims.len(),
                    }
                }
                Op::Identity(x) => get(*x),
                Op::Concat { inputs, axis } => {
                    let parts: Vec<Value> = inputs.iter().map(|o| get(*o)).collect();
                    let rank = parts[0].rank;
                    let t = Tensor::cat(parts.into_iter().map(|v| v.t).collect(), axis + 4 - rank);
                    Value { t, rank }
                }
            };
            let out = if step.op.is_activation() {
                Value {
                    t: compression.activation(&step.node, out.t),
                    rank: out.rank,
                }
            } else {
                out
            };
            values[step.out] = Some(out);
        }
        let logits = values[graph.output]
            .clone()
            .expect("the output is computed")
            .matrix();
        compression.activation("logits", logits)
    }
}

/// `f` applied to a value's tensor, keeping its rank.
fn map(v: Value, f: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Value {
    Value {
        t: f(v.t),
        rank: v.rank,
    }
}

/// ONNX Reshape's target dims for input dims `from`: 0 copies the input's dim, -1 takes what
/// is left.
fn reshaped(from: &[usize], shape: &[i64]) -> Vec<usize> {
    let total: usize = from.iter().product();
    let mut dims: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| match s {
            0 => from.get(i).copied().unwrap_or(1),
            s if s > 0 => s as usize,
            _ => 1,
        })
        .collect();
    if let Some(i) = shape.iter().position(|&s| s == -1) {
        let known: usize = dims
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, d)| *d)
            .product();
        dims[i] = total / known.max(1);
    }
    dims
}
