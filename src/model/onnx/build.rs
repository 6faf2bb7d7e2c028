//! From onnx-ir's graph to [`Step`]s: each supported node's inputs resolved to earlier values,
//! parameters or constants, its attributes checked; what cannot run is refused by name.

use std::path::Path;

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use onnx_ir::{ArgType, Argument, Node};

use super::{Binary, Initialiser, Op, Operand, Step, shapes};
use crate::{Error, Result};

/// What the file's graph becomes: everything [`super::Graph`] holds but its file and hash.
pub(super) struct Parsed {
    pub input_shape: [usize; 3],
    pub classes: usize,
    /// Numbers the graph's values hold for one image, all together.
    pub elements: usize,
    pub steps: Vec<Step>,
    pub slots: usize,
    pub output: usize,
    pub stripped: Option<String>,
    pub params: Vec<Initialiser>,
    pub consts: Vec<Initialiser>,
    pub weights: Vec<usize>,
    pub biases: Vec<usize>,
}

/// Turns onnx-ir's `graph` of the file `bytes` (at `path`, for messages) into steps.
pub(super) fn parse(path: &Path, bytes: &[u8], graph: &onnx_ir::OnnxGraph) -> Result<Parsed> {
    let mut builder = Builder {
        path,
        file_nodes: node_names(bytes).unwrap_or_default(),
        initialisers: initialiser_names(bytes).unwrap_or_default(),
        constant_ids: graph
            .nodes
            .iter()
            .filter_map(
                |node| match (node, node.inputs().first(), node.outputs().first()) {
                    (Node::Constant(_), Some(input), Some(output)) => match input.value_source {
                        onnx_ir::ValueSource::Static(id) => Some((output.name.clone(), id)),
                        _ => None,
                    },
                    _ => None,
                },
            )
            .collect(),
        names: Vec::new(),
        shapes: Vec::new(),
        elements: 0,
        params: Vec::new(),
        consts: Vec::new(),
        weights: Vec::new(),
        biases: Vec::new(),
    };
    let (input_shape, classes, steps, output, stripped) = builder.build(graph)?;
    Ok(Parsed {
        input_shape,
        classes,
        elements: builder.elements,
        steps,
        slots: builder.names.len(),
        output,
        stripped,
        params: builder.params,
        consts: builder.consts,
        weights: builder.weights,
        biases: builder.biases,
    })
}

struct Builder<'a> {
    path: &'a Path,
    /// The file's initialiser names, in file order (= onnx-ir's data ids).
    initialisers: Vec<String>,
    /// The file's nodes (op type, name), in file order: onnx-ir renames nodes `<op><k>`, so
    /// messages name the k-th node of that op type as the file does.
    file_nodes: Vec<(String, String)>,
    /// onnx-ir's Constant nodes: output name -> the data number of their value.
    constant_ids: std::collections::HashMap<String, usize>,
    /// Value names, by slot.
    names: Vec<String>,
    /// Value shapes, by slot, for one image (batch axis 1), as [`shapes`] infers them.
    shapes: Vec<Vec<usize>>,
    /// Elements of every value so far (and the largest workspace) for one image: what the
    /// dry run holds at once.
    elements: usize,
    params: Vec<Initialiser>,
    consts: Vec<Initialiser>,
    weights: Vec<usize>,
    biases: Vec<usize>,
}

type Built = ([usize; 3], usize, Vec<Step>, usize, Option<String>);

/// The most numbers the graph's values may hold for one image, all together (1 GiB of f32):
/// the one-image dry run at import holds them all at once, and a batch holds that many per
/// image. Far above a CNN for images (ResNet-50 on 224x224 images: about 25 million).
const MAX_PROBE_ELEMENTS: usize = 1 << 28;

impl Builder<'_> {
    fn refuse(&self, problem: String) -> Error {
        Error::model(self.path, problem)
    }

    /// `node` as the file names it: "'conv_7' (Conv)", or onnx-ir's name when the file's
    /// cannot be told.
    fn label(&self, node: &Node) -> String {
        let parsed = node.node_type().to_string();
        let op = match parsed.as_str() {
            "Conv2d" => "Conv",
            "MaxPool2d" => "MaxPool",
            "AveragePool2d" => "AveragePool",
            other => other,
        };
        let name = node.name();
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let k: Option<usize> = name[name.len() - digits..].parse().ok();
        let original = k.and_then(|k| {
            self.file_nodes
                .iter()
                .filter(|(t, _)| t == op)
                .nth(k.checked_sub(1)?)
                .map(|(_, name)| name.clone())
        });
        match original {
            Some(name) if !name.is_empty() => format!("'{name}' ({op})"),
            _ => format!("'{}' ({op})", node.name()),
        }
    }

    /// A new slot for the value `name` of shape `shape` (one image), counted against
    /// [`MAX_PROBE_ELEMENTS`] with `workspace` more elements while it is computed. The error
    /// says what is wrong with the value; the caller says which it is (the parser renames
    /// values, so `name` is not the file's).
    fn slot(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        workspace: usize,
    ) -> std::result::Result<usize, String> {
        if self.names.iter().any(|n| n == name) {
            // ONNX graphs are in single static assignment form.
            return Err(
                "is defined twice; each value has one producer (single static assignment)".into(),
            );
        }
        let total = shapes::elements(&shape)
            .and_then(|n| self.elements.checked_add(n))
            .filter(|&n| n.saturating_add(workspace) <= MAX_PROBE_ELEMENTS);
        let Some(total) = total else {
            return Err(format!(
                "has shape {shape:?}: for one image the graph's values would hold more than \
                 {MAX_PROBE_ELEMENTS} numbers ({}), more than a classifier advcomp runs",
                crate::files::bytes_text(MAX_PROBE_ELEMENTS as u64 * 4)
            ));
        };
        self.elements = total;
        self.names.push(name.to_string());
        self.shapes.push(shape);
        Ok(self.names.len() - 1)
    }

    /// The shape of what `operand` names.
    fn shape_of(&self, operand: Operand) -> Vec<usize> {
        match operand {
            Operand::Value(i) => self.shapes[i].clone(),
            Operand::Param(i) => self.params[i].shape.clone(),
            Operand::Const(i) => self.consts[i].shape.clone(),
        }
    }

    /// The initialiser or constant behind `arg`, as f32.
    fn constant(&self, node: &str, arg: &Argument) -> Result<Option<Initialiser>> {
        let Some(data) = arg.value() else {
            return Ok(None);
        };
        let shape = data.shape().to_vec();
        let values: Vec<f32> = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| {
            self.refuse(format!(
                "node '{node}': tensor '{}' cannot be read as numbers: {e:?}",
                arg.name
            ))
        })?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.refuse(format!(
                "tensor '{}' holds {} at index {i}: weights must be finite numbers",
                arg.name, values[i]
            )));
        }
        // onnx-ir numbers the file's initialisers in file order and forgets their names; an
        // argument holds the number itself, or names the Constant node that does.
        let id = match arg.value_source {
            onnx_ir::ValueSource::Static(id) => Some(id),
            _ => self.constant_ids.get(&arg.name).copied(),
        };
        let name = id
            .and_then(|id| self.initialisers.get(id).cloned())
            .unwrap_or_else(|| format!("{node}.{}", arg.name));
        Ok(Some(Initialiser {
            name,
            shape,
            values,
        }))
    }

    /// `arg` as a parameter (a trainable initialiser of node `node`).
    fn param(&mut self, node: &str, arg: &Argument) -> Result<usize> {
        match self.constant(node, arg)? {
            Some(init) => {
                if let Some(i) = self.params.iter().position(|p| p.name == init.name) {
                    return Ok(i);
                }
                self.params.push(init);
                Ok(self.params.len() - 1)
            }
            None => Err(self.refuse(format!(
                "node '{node}': '{}' is computed at run time; only weights stored in the file are supported here",
                arg.name
            ))),
        }
    }

    /// `arg` as an operand: a constant when the file holds its value, else an earlier value.
    fn operand(&mut self, node: &str, arg: &Argument) -> Result<Operand> {
        if let Some(init) = self.constant(node, arg)? {
            if init.shape.len() > 4 {
                return Err(self.refuse(format!(
                    "node '{node}': constant '{}' has rank {}; at most 4 is supported",
                    arg.name,
                    init.shape.len()
                )));
            }
            self.consts.push(init);
            return Ok(Operand::Const(self.consts.len() - 1));
        }
        match self.names.iter().position(|n| *n == arg.name) {
            Some(i) => Ok(Operand::Value(i)),
            None => Err(self.refuse(format!(
                "node '{node}': input '{}' is produced by no supported node",
                arg.name
            ))),
        }
    }

    fn input(&mut self, node: &Node, i: usize) -> Result<Operand> {
        let arg = node.inputs().get(i).ok_or_else(|| {
            self.refuse(format!(
                "node '{}' ({}): missing input {i}",
                node.name(),
                node.node_type()
            ))
        })?;
        self.operand(node.name(), arg)
    }

    fn build(&mut self, graph: &onnx_ir::OnnxGraph) -> Result<Built> {
        if graph.inputs.len() != 1 {
            return Err(self.refuse(format!(
                "the graph has {} inputs ({}); a classifier takes one, the images",
                graph.inputs.len(),
                graph
                    .inputs
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let input = &graph.inputs[0];
        let input_shape = match &input.ty {
            ArgType::Tensor(t) if t.dtype.is_float() && t.rank == 4 => {
                match t.static_shape.as_deref() {
                    Some([_, Some(c), Some(h), Some(w)]) => [*c, *h, *w],
                    _ => {
                        return Err(self.refuse(format!(
                            "input '{}' has no fixed image shape (channels, height, width): {:?}",
                            input.name, t.static_shape
                        )));
                    }
                }
            }
            other => {
                return Err(self.refuse(format!(
                    "input '{}' is {other:?}; a classifier takes float images [N, C, H, W]",
                    input.name
                )));
            }
        };
        let [c, h, w] = input_shape;
        self.slot(&input.name, vec![1, c, h, w], 0)
            .map_err(|why| self.refuse(format!("input '{}' {why}", input.name)))?;
        let mut steps = Vec::new();
        let mut stripped = None;
        let last = graph.nodes.len().saturating_sub(1);
        for (i, node) in graph.nodes.iter().enumerate() {
            let name = node.name().to_string();
            let op = match node {
                Node::Constant(_) => continue,
                Node::Softmax(_) | Node::LogSoftmax(_) if i == last => {
                    stripped = Some(self.label(node));
                    let from = self.input(node, 0)?;
                    Op::Identity(from)
                }
                Node::Conv2d(conv) => {
                    let c = &conv.config;
                    self.refuse_auto_pad(node, &c.auto_pad)?;
                    let x = self.input(node, 0)?;
                    let (weight, bias) = self.weight_and_bias(node)?;
                    shapes::conv_kernel(c.kernel_size, &self.params[weight].shape)
                        .map_err(|why| self.refuse(format!("node {}: {why}", self.label(node))))?;
                    Op::Conv {
                        x,
                        weight,
                        bias,
                        options: ConvOptions {
                            stride: c.stride,
                            padding: pairs(&c.padding),
                            dilation: c.dilation,
                            groups: c.groups,
                        },
                    }
                }
                Node::Linear(linear) => {
                    let x = self.input(node, 0)?;
                    let (weight, bias) = self.weight_and_bias(node)?;
                    Op::Linear {
                        x,
                        weight,
                        bias,
                        transposed: linear.config.transpose_weight,
                    }
                }
                Node::Gemm(gemm) => {
                    let c = &gemm.config;
                    let a = self.input(node, 0)?;
                    let b = match self.constant(&name, &node.inputs()[1])? {
                        Some(_) => {
                            let w = self.param(&name, &node.inputs()[1])?;
                            self.weights.push(w);
                            Operand::Param(w)
                        }
                        None => self.input(node, 1)?,
                    };
                    let bias = match node.inputs().get(2) {
                        Some(arg) if !arg.is_optional() => {
                            Some(match self.constant(&name, arg)? {
                                Some(_) => {
                                    let b = self.param(&name, arg)?;
                                    self.biases.push(b);
                                    Operand::Param(b)
                                }
                                None => self.input(node, 2)?,
                            })
                        }
                        _ => None,
                    };
                    Op::Gemm {
                        a,
                        b,
                        c: bias,
                        alpha: c.alpha,
                        beta: c.beta,
                        trans_a: c.trans_a != 0,
                        trans_b: c.trans_b != 0,
                    }
                }
                Node::MatMul(_) => Op::MatMul {
                    a: self.input(node, 0)?,
                    b: self.input(node, 1)?,
                },
                Node::Add(_) | Node::Sub(_) | Node::Mul(_) | Node::Div(_) => {
                    let kind = match node {
                        Node::Add(_) => Binary::Add,
                        Node::Sub(_) => Binary::Sub,
                        Node::Mul(_) => Binary::Mul,
                        _ => Binary::Div,
                    };
                    Op::Binary {
                        kind,
                        a: self.input(node, 0)?,
                        b: self.input(node, 1)?,
                    }
                }
                Node::Relu(_) => Op::Relu(self.input(node, 0)?),
                Node::LeakyRelu(l) => Op::LeakyRelu(self.input(node, 0)?, l.config.alpha),
                Node::Sigmoid(_) => Op::Sigmoid(self.input(node, 0)?),
                Node::Tanh(_) => Op::Tanh(self.input(node, 0)?),
                Node::Clip(clip) => {
                    let bound = |b: &Option<onnx_ir::node::clip::ClipInput>, default: f32| match b {
                        None => Ok(default),
                        Some(onnx_ir::node::clip::ClipInput::Static(v)) => Ok(*v as f32),
                        Some(onnx_ir::node::clip::ClipInput::Runtime(_)) => Err(()),
                    };
                    match (
                        bound(&clip.config.min, f32::NEG_INFINITY),
                        bound(&clip.config.max, f32::INFINITY),
                    ) {
                        (Ok(min), Ok(max)) => Op::Clip {
                            x: self.input(node, 0)?,
                            min,
                            max,
                        },
                        _ => {
                            return Err(self.refuse(format!(
                                "node '{name}' (Clip): bounds computed at run time are not supported"
                            )));
                        }
                    }
                }
                Node::MaxPool2d(pool) => {
                    let c = &pool.config;
                    self.refuse_auto_pad(node, &c.auto_pad)?;
                    Op::MaxPool {
                        x: self.input(node, 0)?,
                        options: MaxPoolOptions {
                            kernel_size: c.kernel_size,
                            stride: c.strides,
                            padding: pairs(&c.padding),
                            dilation: c.dilation,
                            ceil_mode: c.ceil_mode,
                        },
                    }
                }
                Node::AveragePool2d(pool) => {
                    let c = &pool.config;
                    self.refuse_auto_pad(node, &c.auto_pad)?;
                    if c.dilation != [1, 1] {
                        return Err(self.refuse(format!(
                            "node '{name}' (AveragePool): dilations {:?} are not supported",
                            c.dilation
                        )));
                    }
                    Op::AvgPool {
                        x: self.input(node, 0)?,
                        options: AvgPoolOptions {
                            kernel_size: c.kernel_size,
                            stride: c.strides,
                            padding: pairs(&c.padding),
                            count_include_pad: c.count_include_pad,
                            ceil_mode: c.ceil_mode,
                        },
                    }
                }
                Node::GlobalAveragePool(_) => Op::GlobalAvgPool(self.input(node, 0)?),
                Node::BatchNormalization(bn) => {
                    let epsilon = match &bn.config {
                        onnx_ir::node::batch_norm::BatchNormConfig::Static(c) => c.epsilon,
                        onnx_ir::node::batch_norm::BatchNormConfig::Runtime(c) => c.epsilon,
                    };
                    let x = self.input(node, 0)?;
                    let scale = Operand::Param(self.param(&name, &node.inputs()[1])?);
                    let shift = Operand::Param(self.param(&name, &node.inputs()[2])?);
                    // Running statistics stay as they are (frozen also when fine-tuning).
                    let mean = self.input(node, 3)?;
                    let var = self.input(node, 4)?;
                    // sqrt(var + epsilon) of a negative number is NaN, in every logit after.
                    if let Operand::Const(i) = var
                        && let Some((channel, v)) = self.consts[i]
                            .values
                            .iter()
                            .enumerate()
                            .find(|(_, v)| f64::from(**v) + epsilon <= 0.0)
                    {
                        return Err(self.refuse(format!(
                            "node {}: input_var holds {v} at channel {channel}: with epsilon \
                             {epsilon} it has no square root (the outputs would be NaN)",
                            self.label(node)
                        )));
                    }
                    Op::BatchNorm {
                        x,
                        scale,
                        shift,
                        mean,
                        var,
                        epsilon,
                    }
                }
                Node::Flatten(f) => Op::Flatten {
                    x: self.input(node, 0)?,
                    axis: f.config.axis,
                },
                Node::Reshape(r) => match &r.config.shape {
                    onnx_ir::node::reshape::ReshapeInput::Static(shape) => Op::Reshape {
                        x: self.input(node, 0)?,
                        shape: shape.clone(),
                    },
                    onnx_ir::node::reshape::ReshapeInput::Runtime(_) => {
                        return Err(self.refuse(format!(
                            "node '{name}' (Reshape): a shape computed at run time is not supported"
                        )));
                    }
                },
                Node::Identity(_) | Node::Dropout(_) => Op::Identity(self.input(node, 0)?),
                Node::Concat(c) => Op::Concat {
                    inputs: (0..node.inputs().len())
                        .map(|i| self.input(node, i))
                        .collect::<Result<_>>()?,
                    axis: c.config.axis,
                },
                other => {
                    return Err(self.refuse(format!(
                        "node {}: op {} is not supported (supported: Conv, Gemm, MatMul, \
                         Add, Sub, Mul, Div, Relu, LeakyRelu, Sigmoid, Tanh, Clip, MaxPool, \
                         AveragePool, GlobalAveragePool, BatchNormalization, Flatten, Reshape, \
                         Identity, Dropout, Concat, Constant, and Softmax / LogSoftmax as the last node)",
                        self.label(other),
                        other.node_type()
                    )));
                }
            };
            let out_name = node
                .outputs()
                .first()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            let shape_of = |o: Operand| self.shape_of(o);
            let shape = shapes::output_shape(&op, &shape_of)
                .map_err(|why| self.refuse(format!("node {}: {why}", self.label(node))))?;
            let workspace = shapes::workspace(&op, &shape_of, &shape);
            let out = self
                .slot(&out_name, shape.clone(), workspace)
                .map_err(|why| {
                    self.refuse(format!("node {}: its output {why}", self.label(node)))
                })?;
            steps.push(Step {
                node: name,
                op,
                out,
                shape: shape.get(1..).unwrap_or_default().to_vec(),
            });
        }
        if graph.outputs.len() != 1 {
            return Err(self.refuse(format!(
                "the graph has {} outputs; a classifier has one, the logits [N, classes]",
                graph.outputs.len()
            )));
        }
        let out_arg = &graph.outputs[0];
        // What the file declares (the parser may not know the classes, e.g. after a Softmax).
        let declared = match &out_arg.ty {
            ArgType::Tensor(t) if t.rank == 2 => t
                .static_shape
                .as_deref()
                .and_then(|s| s.get(1).copied().flatten()),
            other => {
                return Err(self.refuse(format!(
                    "output '{}' is {other:?}; a classifier's is [N, classes]",
                    out_arg.name
                )));
            }
        };
        let output = match self.names.iter().position(|n| *n == out_arg.name) {
            Some(i) => i,
            None => {
                return Err(
                    self.refuse(format!("output '{}' is produced by no node", out_arg.name))
                );
            }
        };
        let classes = match self.shapes[output].as_slice() {
            [_, k] if *k >= 2 => *k,
            other => {
                return Err(self.refuse(format!(
                    "output '{}' has shape {other:?} for one image; a classifier's is \
                     [N, classes] with at least 2 classes",
                    out_arg.name
                )));
            }
        };
        if let Some(d) = declared
            && d != classes
        {
            return Err(self.refuse(format!(
                "output '{}' is declared with {d} classes, but the graph computes {classes}",
                out_arg.name
            )));
        }
        Ok((input_shape, classes, steps, output, stripped))
    }

    fn refuse_auto_pad(
        &self,
        node: &Node,
        auto_pad: &onnx_ir::node::padding::AutoPad,
    ) -> Result<()> {
        use onnx_ir::node::padding::AutoPad;
        match auto_pad {
            AutoPad::NotSet | AutoPad::Valid => Ok(()),
            other => Err(self.refuse(format!(
                "node {}: auto_pad {other:?} is not supported; export with explicit pads",
                self.label(node)
            ))),
        }
    }

    /// A Conv / Linear node's weight (input 1, a weight layer) and optional bias (input 2).
    fn weight_and_bias(&mut self, node: &Node) -> Result<(usize, Option<usize>)> {
        let name = node.name().to_string();
        let weight_arg = node
            .inputs()
            .get(1)
            .ok_or_else(|| self.refuse(format!("node {}: missing its weight", self.label(node))))?;
        let weight = self.param(&name, weight_arg)?;
        self.weights.push(weight);
        let bias = match node.inputs().get(2) {
            Some(b) if !b.is_optional() => Some(self.param(&name, b)?),
            _ => None,
        };
        self.biases.extend(bias);
        Ok((weight, bias))
    }
}

/// The length-delimited fields number `number` of the protobuf message `bytes`: the message
/// is parsed as `Empty` with the protobuf runtime, so all its fields are unknown fields.
fn protobuf_fields(bytes: &[u8], number: u32) -> Option<Vec<Vec<u8>>> {
    use protobuf::well_known_types::empty::Empty;
    use protobuf::{Message, UnknownValueRef};
    let message = Empty::parse_from_bytes(bytes).ok()?;
    Some(
        message
            .special_fields
            .unknown_fields()
            .iter()
            .filter(|(n, _)| *n == number)
            .filter_map(|(_, v)| match v {
                UnknownValueRef::LengthDelimited(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect(),
    )
}

/// Refuses a graph that defines a value twice, as ONNX's checker does ("Graph must be in
/// single static assignment (SSA) form"): a second node writing a value, or a node writing a
/// graph input or an initialiser. (An initialiser may also be listed as a graph input, as
/// files of IR version 3 do.) Read from the file itself: the parser renames what it reads.
///
/// A file that is no protobuf message at all is refused here too, before the parser copies it.
pub(super) fn defined_once(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(fields) = protobuf_fields(bytes, 7) else {
        return Err("not a readable ONNX model: not a protobuf message".into());
    };
    let Some(graph) = fields.into_iter().next() else {
        return Ok(()); // no graph: the parser says what is wrong
    };
    let strings = |message: &[u8], number| -> Vec<String> {
        protobuf_fields(message, number)
            .unwrap_or_default()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    };
    // GraphProto field 11: inputs (ValueInfoProto, name = field 1).
    let inputs: Vec<String> = protobuf_fields(&graph, 11)
        .unwrap_or_default()
        .iter()
        .filter_map(|info| strings(info, 1).into_iter().next())
        .collect();
    let mut defined = std::collections::HashSet::new();
    for input in &inputs {
        if !defined.insert(input.clone()) {
            return Err(format!("graph input '{input}' is listed twice"));
        }
    }
    for name in initialiser_names(bytes).unwrap_or_default() {
        if !inputs.contains(&name) && !defined.insert(name.clone()) {
            return Err(format!("initialiser '{name}' is defined twice"));
        }
    }
    // NodeProto field 2: outputs; field 3: the node's name.
    for node in protobuf_fields(&graph, 1).unwrap_or_default() {
        for output in strings(&node, 2).into_iter().filter(|o| !o.is_empty()) {
            if !defined.insert(output.clone()) {
                let name = strings(&node, 3).into_iter().next().unwrap_or_default();
                return Err(format!(
                    "value '{output}' is defined twice (again by node '{name}'): an ONNX graph \
                     assigns each value once"
                ));
            }
        }
    }
    Ok(())
}

/// The names of the graph's initialisers in file order: ModelProto field 7 (graph) ->
/// GraphProto field 5 (initializer) -> TensorProto field 8 (name).
fn initialiser_names(bytes: &[u8]) -> Option<Vec<String>> {
    let graph = protobuf_fields(bytes, 7)?.into_iter().next()?;
    protobuf_fields(&graph, 5)?
        .iter()
        .map(|tensor| {
            let name = protobuf_fields(tensor, 8)?.into_iter().next()?;
            Some(String::from_utf8_lossy(&name).into_owned())
        })
        .collect()
}

/// The graph's nodes as (op type, name), in file order: GraphProto field 1 (node) ->
/// NodeProto field 4 (op_type) and 3 (name).
fn node_names(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let graph = protobuf_fields(bytes, 7)?.into_iter().next()?;
    protobuf_fields(&graph, 1)?
        .iter()
        .map(|node| {
            let text = |n| {
                protobuf_fields(node, n)
                    .and_then(|f| f.into_iter().next())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            Some((text(4), text(3)))
        })
        .collect()
}

/// ONNX's (top, left, bottom, right) pads as burn's (begin, end) per spatial axis.
fn pairs(padding: &onnx_ir::node::padding::PaddingConfig2d) -> [(usize, usize); 2] {
    match *padding {
        onnx_ir::node::padding::PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        onnx_ir::node::padding::PaddingConfig2d::Explicit(top, left, bottom, right) => {
            [(top, bottom), (left, right)]
        }
    }
}
