//! Classifiers imported at run time from an ONNX file (e.g. `torch.onnx.export`, either
//! exporter).
//!
//! The file is read with the protobuf bindings of `onnx-ir` (burn's ONNX front end), its
//! external data files beside it ([`proto`]); this module turns its graph into a list of
//! [`Step`]s over burn tensor ops ([`build`]), run by [`OnnxModel::forward`] on any backend,
//! with autodiff reaching the input images ([`run`]). What follows only from the input's shape
//! and the file's constants (a graph reading its own shape to reshape, masks, scales) is
//! computed once at import with the batch size left free ([`fold`]); each step's output shape
//! is inferred and checked there too ([`shapes`]). What a step computes is its kind: one file
//! per kind in [`ops`] (its conversion from ONNX, output shape and forward pass), each one
//! entry of the list in `ops/mod.rs`. The weights and biases of Conv / Gemm / MatMul
//! (`Linear`) and the scale and shift of BatchNormalization and LayerNormalization are
//! parameters (trainable, stored flat with their ONNX shape); everything else the graph holds
//! (batch-norm running statistics, constants of Sub / Div, ...) is a constant.
//!
//! Values between steps are rank-6 tensors padded with leading 1s plus their ONNX rank, so
//! one tensor type carries every rank up to 6 and NumPy-style broadcasting is burn's own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::prelude::*;

mod build;
mod fold;
mod ops;
mod proto;
mod qdq;
mod run;
mod shapes;

pub use build::supported_ops;
use fold::Dim;
use ops::{Conv, Gemm, Linear, Op};

use super::Compression;
use crate::quant::{Grids, QuantConfig};
use crate::{Error, Result};

/// A tensor the graph holds: its ONNX name, shape and values (row-major).
#[derive(Clone, Debug)]
pub struct Initialiser {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Where a step reads a value from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operand {
    /// The output of an earlier step (or the input, slot 0).
    Value(usize),
    /// A parameter, by index.
    Param(usize),
    /// A constant, by index.
    Const(usize),
}

/// What a QDQ graph's quantisation amounts to: the affine quantiser (its types, per channel or
/// not) and the grids the file holds.
#[derive(Clone, Debug)]
pub struct Qdq {
    pub config: QuantConfig,
    pub grids: Grids,
}

/// One step of the graph: the op, the node it came from, where its output goes.
#[derive(Clone, Debug)]
struct Step {
    /// The node's name in the file (or its position and op type, when it has none).
    node: String,
    /// The node's ONNX op type.
    kind: String,
    op: Op,
    out: usize,
    /// The output's shape, the batch size N left free.
    shape: Vec<Dim>,
}

/// Everything about an imported graph except its trainable parameters' values.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The ONNX file, and the SHA-256 of its bytes followed by those of its external data
    /// files (in the order its initialisers first name them).
    pub file: PathBuf,
    pub sha256: String,
    /// Input image shape (channels, height, width); the batch axis is dynamic.
    pub input_shape: [usize; 3],
    pub classes: usize,
    /// Parameters' names and ONNX shapes (values live in [`OnnxModel::params`]).
    pub params: Vec<(String, Vec<usize>)>,
    pub consts: Vec<Initialiser>,
    /// Weight parameters of Conv / Linear / Gemm, by parameter index: what pruning masks.
    pub weights: Vec<usize>,
    /// Their biases: quantised with the weights, never masked.
    pub biases: Vec<usize>,
    steps: Vec<Step>,
    slots: usize,
    output: usize,
    /// A Softmax / LogSoftmax at the end that was removed (attacks need logits).
    pub stripped: Option<String>,
    /// A QDQ graph's quantisation: the imported model as the file runs it is the graph's
    /// model through this (its full model: through no compression).
    pub qdq: Option<Qdq>,
}

/// An imported classifier: a burn module whose parameters are the graph's trainable tensors.
#[derive(Module, Debug)]
pub struct OnnxModel {
    pub params: Vec<Param<Tensor<1>>>,
    #[module(skip)]
    pub graph: Arc<Graph>,
}

/// Builds the model and its graph from an ONNX file (and the external data files it names).
pub fn import(path: &Path, device: &Device) -> Result<OnnxModel> {
    let file = proto::read(path)?;
    let sha256 = file.sha256.clone();
    let parsed = build::parse(path, file)?;
    // The dry run below holds every value of one image at once (twice over, for what burn
    // allocates beside them): refused here rather than aborted on by the allocator.
    let probe_bytes = (parsed.elements as u64).saturating_mul(8);
    crate::files::check_memory(probe_bytes).map_err(|available| {
        Error::model(
            path,
            format!(
                "running one image through the graph needs {}, more than the {} this process \
                 can still get",
                crate::files::bytes_text(probe_bytes),
                crate::files::bytes_text(available)
            ),
        )
    })?;
    let params = parsed
        .params
        .iter()
        .map(|p| {
            let n = p.values.len();
            // Trainable, like the built-in models' parameters (fine-tuning).
            Param::from_tensor(Tensor::from_data(
                TensorData::new(p.values.clone(), [n]),
                device,
            ))
        })
        .collect();
    let (input_shape, classes) = (parsed.input_shape, parsed.classes);
    let model = OnnxModel {
        params,
        graph: Arc::new(Graph {
            file: path.to_path_buf(),
            sha256,
            input_shape,
            classes,
            params: parsed
                .params
                .into_iter()
                .map(|p| (p.name, p.shape))
                .collect(),
            consts: parsed.consts,
            weights: parsed.weights,
            biases: parsed.biases,
            steps: parsed.steps,
            slots: parsed.slots,
            output: parsed.output,
            stripped: parsed.stripped,
            qdq: parsed.qdq,
        }),
    };
    // One image through the graph: shapes that do not fit each other (which burn reports by
    // panicking) are refused here, with the file's name, rather than in the middle of a run.
    // (Shape inference at import refuses them first; this dry run is the backstop.)
    let [c, h, w] = input_shape;
    {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.forward(Tensor::zeros([1, c, h, w], device), &Compression::default())
        }));
        std::panic::set_hook(hook);
        run.map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let why = why
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Error::model(path, format!("the graph does not run on one image: {why}"))
        })?;
    }
    Ok(model)
}

impl Graph {
    /// The axis of a weight parameter's output channels: 1 where it is the [in, out] right
    /// operand of a product (MatMul, Gemm without transB), else 0 ([out, in, kh, kw], [out, in]).
    pub fn out_axis(&self, param: usize) -> usize {
        let in_out = self.steps.iter().any(|step| match &step.op {
            Op::Linear(Linear {
                weight, transposed, ..
            }) => *weight == param && !transposed,
            Op::Gemm(Gemm {
                b: Operand::Param(w),
                trans_b,
                ..
            }) => *w == param && !trans_b,
            _ => false,
        });
        usize::from(in_out)
    }

    /// The layer a parameter belongs to, as masks and densities name it: the initialiser's
    /// name without a trailing `.weight` / `.bias` (PyTorch's module name).
    pub fn layer(&self, param: usize) -> String {
        let name = &self.params[param].0;
        name.strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
            .unwrap_or(name)
            .to_string()
    }
}

impl OnnxModel {
    /// The layer table: one row per step (node, op, output shape, parameters it uses).
    pub fn layers(&self) -> Vec<super::LayerInfo> {
        let graph = &self.graph;
        let size = |i: usize| graph.params[i].1.iter().product::<usize>();
        graph
            .steps
            .iter()
            .map(|step| {
                let own = match &step.op {
                    Op::Conv(Conv { weight, bias, .. })
                    | Op::Linear(Linear { weight, bias, .. }) => {
                        size(*weight) + bias.map_or(0, size)
                    }
                    _ => 0,
                };
                let read: usize = step
                    .op
                    .operands()
                    .into_iter()
                    .map(|o| match o {
                        Operand::Param(i) => size(i),
                        _ => 0,
                    })
                    .sum();
                // One image's output: the batch axis left out, the first three lengths.
                let mut output = [1; 3];
                let per_image = step.shape.iter().filter(|&&d| d != Dim::BATCH);
                for (o, d) in output.iter_mut().zip(per_image) {
                    *o = d.at(1);
                }
                super::LayerInfo {
                    name: step.node.clone(),
                    kind: step.kind.clone(),
                    output,
                    params: own + read,
                }
            })
            .collect()
    }

    /// Every parameter under its ONNX name and shape, values row-major.
    pub(crate) fn export(&self) -> Vec<super::checkpoint::NamedTensor> {
        self.graph
            .params
            .iter()
            .zip(&self.params)
            .map(|((name, shape), p)| super::checkpoint::NamedTensor {
                name: name.clone(),
                shape: shape.clone(),
                values: p
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The weight layers (Conv / Linear / Gemm weights): what pruning sees.
    pub(crate) fn weight_layers(&self) -> Vec<super::WeightLayer> {
        self.graph
            .weights
            .iter()
            .map(|&i| super::WeightLayer {
                name: self.graph.layer(i),
                values: self.params[i].val().inner(),
                shape: self.graph.params[i].1.clone(),
                out_axis: self.graph.out_axis(i),
            })
            .collect()
    }

    /// The model with every weight masked and quantised and every bias quantised as
    /// `compression` says.
    pub(crate) fn bake(self, compression: &Compression) -> Self {
        let graph = self.graph.clone();
        let params = self
            .params
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let masked = graph.weights.contains(&i);
                if !masked && !graph.biases.contains(&i) {
                    return p;
                }
                let layer = graph.layer(i);
                let shape = &graph.params[i].1;
                p.map(|t| compression.flat_weight(&layer, masked, shape, t.inner()))
            })
            .collect();
        OnnxModel { params, graph }
    }

    /// The model with its parameters read from `tensors` (ONNX names and shapes), marking
    /// each name it used; a missing tensor or a wrong shape is a problem.
    pub(crate) fn with_tensors(
        self,
        tensors: &std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        used: &mut Vec<String>,
        problems: &mut Vec<String>,
    ) -> Self {
        let graph = self.graph.clone();
        let params = self
            .params
            .into_iter()
            .zip(&graph.params)
            .map(|(p, (name, shape))| match tensors.get(name) {
                None => {
                    problems.push(format!("missing tensor '{name}' (shape {shape:?})"));
                    p
                }
                Some((s, _)) if s != shape => {
                    problems.push(format!(
                        "tensor '{name}' has shape {s:?}, the graph needs {shape:?}"
                    ));
                    p
                }
                Some((_, values)) => {
                    used.push(name.clone());
                    let n = values.len();
                    p.map(|old| {
                        Tensor::from_data(TensorData::new(values.clone(), [n]), &old.device())
                    })
                }
            })
            .collect();
        OnnxModel { params, graph }
    }

    /// Which parameters training may change: all of them (batch-norm statistics are
    /// constants, so they stay frozen).
    pub fn parameter_count(&self) -> usize {
        self.graph
            .params
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}
