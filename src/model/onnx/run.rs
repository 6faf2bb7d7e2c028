//! Running the steps: burn tensor ops on any backend, with autodiff to the images.

use burn::prelude::*;

use super::shapes::MAX_RANK;
use super::{Compression, OnnxModel, Operand};

/// A value between steps: a rank-6 tensor padded with leading 1s, and its ONNX rank.
#[derive(Clone)]
pub(super) struct Value {
    pub t: Tensor<MAX_RANK>,
    pub rank: usize,
}

impl Value {
    pub fn new<const D: usize>(t: Tensor<D>) -> Self {
        let dims = t.dims();
        Value {
            t: t.reshape(padded(&dims)),
            rank: D,
        }
    }

    pub fn of_shape(t: Tensor<MAX_RANK>, dims: &[usize]) -> Self {
        Value {
            t: t.reshape(padded(dims)),
            rank: dims.len(),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        self.t.dims()[MAX_RANK - self.rank..].to_vec()
    }

    /// The value as a tensor of rank `D` (its own rank, or fewer leading axes merged).
    pub fn as_rank<const D: usize>(&self) -> Tensor<D> {
        let dims = self.t.dims();
        let mut out = [1; D];
        out.copy_from_slice(&dims[MAX_RANK - D..]);
        out[0] = dims[..=MAX_RANK - D].iter().product();
        self.t.clone().reshape(out)
    }

    /// The tensor axis of ONNX axis `axis`.
    pub fn axis(&self, axis: usize) -> usize {
        MAX_RANK - self.rank + axis
    }

    pub fn map(self, f: impl FnOnce(Tensor<MAX_RANK>) -> Tensor<MAX_RANK>) -> Self {
        Value {
            t: f(self.t),
            rank: self.rank,
        }
    }
}

/// `shape` left-padded with 1s to rank 6.
pub(super) fn padded(shape: &[usize]) -> [usize; MAX_RANK] {
    let mut out = [1; MAX_RANK];
    out[MAX_RANK - shape.len()..].copy_from_slice(shape);
    out
}

/// What a step runs with: the model, the compression it runs through, the values computed so
/// far.
pub(super) struct Env<'a> {
    model: &'a OnnxModel,
    pub compression: &'a Compression,
    values: &'a [Option<Value>],
    pub device: &'a Device,
    /// The batch size.
    pub batch: usize,
}

impl Env<'_> {
    /// What `o` names: an earlier step's value, a parameter (as it is), a constant.
    pub fn get(&self, o: Operand) -> Value {
        let graph = &self.model.graph;
        match o {
            Operand::Value(i) => self.values[i].clone().expect("a value is set before use"),
            Operand::Param(i) => {
                let shape = self.shape(i);
                Value::of_shape(
                    self.model.params[i]
                        .val()
                        .reshape(padded(&[shape.iter().product()])),
                    shape,
                )
            }
            Operand::Const(i) => {
                let c = &graph.consts[i];
                let t: Tensor<1> = Tensor::from_data(
                    TensorData::new(c.values.clone(), [c.values.len()]),
                    self.device,
                );
                Value::of_shape(t.reshape(padded(&[c.values.len()])), &c.shape)
            }
        }
    }

    /// Parameter `i`'s ONNX shape.
    pub fn shape(&self, i: usize) -> &[usize] {
        &self.model.graph.params[i].1
    }

    /// Parameter `i` flat, masked (a weight) and quantised (a weight or bias) as the
    /// compression says.
    pub fn weight(&self, i: usize) -> Tensor<1> {
        let graph = &self.model.graph;
        self.compression.flat_weight(
            &graph.layer(i),
            graph.weights.contains(&i),
            self.shape(i),
            self.model.params[i].val(),
        )
    }

    /// The input `x` of the layer of weight `w`, quantised where the quantiser quantises
    /// layer inputs.
    pub fn input(&self, w: usize, x: Value) -> Value {
        Value {
            t: self
                .compression
                .layer_input(&self.model.graph.layer(w), x.t),
            rank: x.rank,
        }
    }
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
        for step in &graph.steps {
            let env = Env {
                model: self,
                compression,
                values: &values,
                device: &device,
                batch,
            };
            let out = step.op.run(&env);
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
pub(super) fn broadcast_dims(a: &[usize], b: &[usize]) -> [usize; MAX_RANK] {
    std::array::from_fn(|i| a[i].max(b[i]))
}
