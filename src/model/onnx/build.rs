//! From the file's graph to [`Step`]s: each node's inputs resolved to earlier values,
//! parameters or constants, its attributes checked (ONNX's defaults where absent, opsets 11
//! on: attributes that became inputs read from either); what follows only from shapes and
//! constants computed at import ([`fold`]); what cannot run refused by name.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use onnx_ir::NodeProto;

use super::fold::{self, Data, Dim, FOLDED, Host, shape_text};
use super::proto::{Attrs, DataType, ModelFile};
use super::{
    Binary, Initialiser, Interpolation, Op, Operand, Qdq, Reduce, Step, Unary, qdq, shapes,
};
use crate::quant::{AffineSettings, Grids, QuantConfig};
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
    /// The quantisation a QDQ graph holds.
    pub qdq: Option<Qdq>,
}

/// How a node's inputs resolve into ops, per batch.
type Convert = fn(&mut Builder, &Node) -> std::result::Result<Built, String>;

/// The ops advcomp runs per batch, each with its conversion: the one list of them (the
/// README's and docs/design.md's are checked against it by a test).
const OPS: &[(&str, Convert)] = &[
    ("Abs", |b, n| unary(b, n, Unary::Abs)),
    ("Add", |b, n| binary(b, n, Binary::Add)),
    ("AveragePool", average_pool),
    ("BatchNormalization", batch_norm),
    ("Cast", cast),
    ("Clip", clip),
    ("Concat", concat),
    ("Conv", conv),
    ("Div", |b, n| binary(b, n, Binary::Div)),
    ("Dropout", |_, _| Ok(Built::Same)),
    ("Elu", |b, n| {
        unary(b, n, Unary::Elu(n.attrs.float("alpha", 1.0)))
    }),
    ("Erf", |b, n| unary(b, n, Unary::Erf)),
    ("Exp", |b, n| unary(b, n, Unary::Exp)),
    ("Expand", expand),
    ("Flatten", flatten),
    ("Gather", gather),
    ("GatherND", gather_nd),
    ("Gelu", gelu),
    ("Gemm", gemm),
    ("GlobalAveragePool", |b, n| global_pool(b, n, Reduce::Mean)),
    ("GlobalMaxPool", |b, n| global_pool(b, n, Reduce::Max)),
    ("HardSigmoid", |b, n| {
        let (alpha, beta) = (n.attrs.float("alpha", 0.2), n.attrs.float("beta", 0.5));
        unary(b, n, Unary::HardSigmoid { alpha, beta })
    }),
    ("HardSwish", |b, n| unary(b, n, Unary::HardSwish)),
    ("Identity", |_, _| Ok(Built::Same)),
    ("LayerNormalization", layer_norm),
    ("LeakyRelu", |b, n| {
        unary(b, n, Unary::LeakyRelu(n.attrs.float("alpha", 0.01)))
    }),
    ("Log", |b, n| unary(b, n, Unary::Log)),
    ("LogSoftmax", |b, n| softmax(b, n, true)),
    ("MatMul", matmul),
    ("Max", |b, n| variadic(b, n, Binary::Max)),
    ("MaxPool", max_pool),
    ("Min", |b, n| variadic(b, n, Binary::Min)),
    ("Mul", |b, n| binary(b, n, Binary::Mul)),
    ("Neg", |b, n| unary(b, n, Unary::Neg)),
    ("Pad", pad),
    ("Pow", |b, n| binary(b, n, Binary::Pow)),
    ("Reciprocal", |b, n| unary(b, n, Unary::Reciprocal)),
    ("ReduceMax", |b, n| reduce(b, n, Reduce::Max)),
    ("ReduceMean", |b, n| reduce(b, n, Reduce::Mean)),
    ("ReduceSum", |b, n| reduce(b, n, Reduce::Sum)),
    ("Relu", |b, n| unary(b, n, Unary::Relu)),
    ("Reshape", reshape),
    ("Resize", resize),
    ("Selu", |b, n| {
        let alpha = n.attrs.float("alpha", 1.673_263_2);
        let gamma = n.attrs.float("gamma", 1.050_701);
        unary(b, n, Unary::Selu { alpha, gamma })
    }),
    ("Sigmoid", |b, n| unary(b, n, Unary::Sigmoid)),
    ("Slice", slice),
    ("Softmax", |b, n| softmax(b, n, false)),
    ("Softplus", |b, n| unary(b, n, Unary::Softplus)),
    ("Split", split),
    ("Sqrt", |b, n| unary(b, n, Unary::Sqrt)),
    ("Squeeze", squeeze),
    ("Sub", |b, n| binary(b, n, Binary::Sub)),
    ("Tanh", |b, n| unary(b, n, Unary::Tanh)),
    ("Transpose", transpose),
    ("Unsqueeze", unsqueeze),
    ("Where", where_),
];

/// The ops computed from the file and from shapes only, at import: beside [`FOLDED`]'s, those
/// that read a value's shape or hold a constant.
const AT_IMPORT: &[&str] = &["Constant", "Shape", "Size"];

/// Every op type advcomp imports, sorted, and whether it also runs on values computed from
/// the images (`false`: only on shapes and constants, computed once at import).
pub fn supported_ops() -> Vec<(&'static str, bool)> {
    let mut ops: Vec<(&str, bool)> = OPS.iter().map(|(name, _)| (*name, true)).collect();
    for name in FOLDED
        .iter()
        .map(|(n, _)| *n)
        .chain(AT_IMPORT.iter().copied())
    {
        if !ops.iter().any(|(o, _)| *o == name) {
            ops.push((name, false));
        }
    }
    // A QDQ graph's quantisers (src/model/onnx/qdq.rs).
    ops.extend([("DequantizeLinear", true), ("QuantizeLinear", true)]);
    ops.sort_unstable();
    ops
}

/// The supported list as the error message says it.
fn supported_text() -> String {
    let (run, folded): (Vec<_>, Vec<_>) = supported_ops().into_iter().partition(|(_, r)| *r);
    let names = |v: Vec<(&'static str, bool)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    format!(
        "{}; on shapes and constants only: {}",
        names(run).join(", "),
        names(folded).join(", ")
    )
}

/// What a node's conversion made.
enum Built {
    /// Steps, one per output of the node.
    Steps(Vec<Op>),
    /// Its output is its first input (Identity, Dropout, a Cast to float, a final Softmax).
    Same,
    /// Integers or booleans computed from the images: an error where they are used.
    Tainted,
}

fn one(op: Op) -> std::result::Result<Built, String> {
    Ok(Built::Steps(vec![op]))
}

/// What a parameter of a weight layer is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Weight,
    Bias,
}

/// A value of the graph as the import knows it.
#[derive(Clone, Debug)]
pub(super) enum Value {
    /// Known at import: an index into [`Builder::known`].
    Known(usize),
    /// Computed per batch from the images: a slot.
    Image(usize),
    /// Integers or booleans computed from the images by the node named.
    Tainted(String),
}

/// A node being converted: the file's node, its attributes, its inputs resolved.
pub(super) struct Node<'a> {
    pub proto: &'a NodeProto,
    pub label: String,
    pub attrs: Attrs<'a>,
    pub inputs: Vec<Option<Value>>,
}

impl Node<'_> {
    pub fn name(&self, i: usize) -> &str {
        self.proto.input.get(i).map_or("", String::as_str)
    }
}

/// The most numbers the graph's values may hold for one image, all together (1 GiB of f32):
/// the one-image dry run at import holds them all at once, and a batch holds that many per
/// image. Far above a CNN for images (ResNet-50 on 224x224 images: about 25 million).
const MAX_PROBE_ELEMENTS: usize = 1 << 28;

/// Turns the graph of `file` (read from `path`, for messages) into steps.
pub(super) fn parse(path: &Path, file: ModelFile) -> Result<Parsed> {
    let graph = &file.graph;
    let mut readers: HashMap<String, usize> = HashMap::new();
    for node in &graph.node {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(input.clone()).or_default() += 1;
        }
    }
    for output in &graph.output {
        *readers.entry(output.name.clone()).or_default() += 1;
    }
    let mut builder = Builder {
        path,
        opset: file.opset,
        values: HashMap::new(),
        known: Vec::new(),
        readers,
        output_name: graph.output.first().map(|o| o.name.clone()),
        shapes: Vec::new(),
        slot_names: Vec::new(),
        producer: Vec::new(),
        elements: 0,
        params: Vec::new(),
        param_names: HashMap::new(),
        consts: Vec::new(),
        const_of: HashMap::new(),
        weights: Vec::new(),
        biases: Vec::new(),
        steps: Vec::new(),
        stripped: None,
        types: file.types,
        dequantised: HashMap::new(),
        quantised: HashMap::new(),
        qdq: Grids::default(),
        activation_types: BTreeSet::new(),
        weight_types: BTreeSet::new(),
    };
    for (name, host) in file.initialisers {
        builder.bind_known(&name, host);
    }
    let input_shape = builder.input(graph)?;
    for (index, proto) in graph.node.iter().enumerate() {
        let label = match proto.name.as_str() {
            "" => format!("#{index} ({})", proto.op_type),
            name => format!("'{name}' ({})", proto.op_type),
        };
        builder
            .node(proto, &label)
            .map_err(|why| builder.refuse(format!("node {label}: {why}")))?;
    }
    let (output, classes) = builder.output(graph)?;
    builder.drop_dead_steps(output);
    let qdq = builder.qdq_config();
    Ok(Parsed {
        input_shape,
        classes,
        elements: builder.elements,
        slots: builder.shapes.len(),
        steps: builder.steps,
        output,
        stripped: builder.stripped,
        params: builder.params,
        consts: builder.consts,
        weights: builder.weights,
        biases: builder.biases,
        qdq,
    })
}

pub(super) struct Builder<'a> {
    path: &'a Path,
    opset: i64,
    /// Every value defined so far, by name.
    pub values: HashMap<String, Value>,
    pub known: Vec<Host>,
    /// How many node inputs (and graph outputs) read each value: fusions need one reader.
    readers: HashMap<String, usize>,
    output_name: Option<String>,
    /// Per slot: shape, the name of the value, the step that computes it.
    pub shapes: Vec<Vec<Dim>>,
    slot_names: Vec<String>,
    producer: Vec<Option<usize>>,
    /// Elements of every value so far (and the largest workspace) for one image: what the
    /// dry run holds at once.
    elements: usize,
    params: Vec<Initialiser>,
    param_names: HashMap<String, usize>,
    consts: Vec<Initialiser>,
    /// Known values already made constants: known index -> constant index.
    const_of: HashMap<usize, usize>,
    weights: Vec<usize>,
    biases: Vec<usize>,
    steps: Vec<Step>,
    stripped: Option<String>,
    /// The ONNX element type of each initialiser and Constant, by name (and of each stored
    /// tensor quantised at import): what a QDQ node's integer type is read from.
    pub types: HashMap<String, i32>,
    /// Known values dequantised at import, with their grids.
    pub dequantised: HashMap<usize, qdq::Dequantised>,
    /// QuantizeLinear outputs computed from the images: read only by DequantizeLinear.
    pub quantised: HashMap<String, qdq::Quantised>,
    /// A QDQ graph's grids: weights and biases by layer, activations by site.
    pub qdq: Grids,
    pub activation_types: BTreeSet<qdq::QType>,
    pub weight_types: BTreeSet<qdq::QType>,
}

impl Builder<'_> {
    fn refuse(&self, problem: String) -> Error {
        Error::model(self.path, problem)
    }

    pub fn bind_known(&mut self, name: &str, host: Host) -> usize {
        self.known.push(host);
        self.values
            .insert(name.to_string(), Value::Known(self.known.len() - 1));
        self.known.len() - 1
    }

    /// The graph's one input: float images [N, C, H, W] with C, H, W fixed.
    fn input(&mut self, graph: &onnx_ir::GraphProto) -> Result<[usize; 3]> {
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !self.values.contains_key(&i.name))
            .collect();
        if inputs.len() != 1 {
            return Err(self.refuse(format!(
                "the graph has {} inputs ({}); a classifier takes one, the images",
                inputs.len(),
                inputs
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let input = inputs[0];
        let tensor = input.type_.as_ref().filter(|t| t.has_tensor_type());
        let Some(tensor) = tensor.map(|t| t.tensor_type()) else {
            return Err(self.refuse(format!(
                "input '{}' is no tensor; a classifier takes float images [N, C, H, W]",
                input.name
            )));
        };
        if DataType::from_onnx(tensor.elem_type.into()) != Ok(DataType::Float) {
            return Err(self.refuse(format!(
                "input '{}' has element type {}; a classifier takes float images [N, C, H, W]",
                input.name, tensor.elem_type
            )));
        }
        let dims: Vec<Option<i64>> = tensor
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| d.has_dim_value().then(|| d.dim_value()))
                    .collect()
            })
            .unwrap_or_default();
        let image = match dims.as_slice() {
            [_, Some(c), Some(h), Some(w)] if *c > 0 && *h > 0 && *w > 0 => {
                [*c as usize, *h as usize, *w as usize]
            }
            [_, _, _, _] => {
                return Err(self.refuse(format!(
                    "input '{}' has no fixed image shape (channels, height, width): {dims:?}",
                    input.name
                )));
            }
            _ => {
                return Err(self.refuse(format!(
                    "input '{}' has rank {}; a classifier takes float images [N, C, H, W]",
                    input.name,
                    dims.len()
                )));
            }
        };
        let [c, h, w] = image;
        let shape = vec![
            Dim::BATCH,
            Dim::new(c as i64),
            Dim::new(h as i64),
            Dim::new(w as i64),
        ];
        let slot = self
            .slot(&input.name, shape, 0)
            .map_err(|why| self.refuse(format!("input '{}' {why}", input.name)))?;
        self.values.insert(input.name.clone(), Value::Image(slot));
        Ok(image)
    }

    /// The graph's one output: logits [N, classes] computed from the images.
    fn output(&mut self, graph: &onnx_ir::GraphProto) -> Result<(usize, usize)> {
        if graph.output.len() != 1 {
            return Err(self.refuse(format!(
                "the graph has {} outputs; a classifier has one, the logits [N, classes]",
                graph.output.len()
            )));
        }
        let out = &graph.output[0];
        let slot = match self.values.get(&out.name) {
            Some(Value::Image(slot)) => *slot,
            Some(_) => {
                return Err(self.refuse(format!(
                    "output '{}' does not depend on the images; a classifier's is the logits \
                     [N, classes] computed from them",
                    out.name
                )));
            }
            None => {
                return Err(self.refuse(format!("output '{}' is produced by no node", out.name)));
            }
        };
        let shape = &self.shapes[slot];
        let classes = match shape.as_slice() {
            [n, k] if *n == Dim::BATCH && k.known().is_some_and(|k| k >= 2) => k.at(1),
            _ => {
                return Err(self.refuse(format!(
                    "output '{}' has shape {}; a classifier's is [N, classes] with at least 2 \
                     classes",
                    out.name,
                    shape_text(shape)
                )));
            }
        };
        // What the file declares.
        let declared = out
            .type_
            .as_ref()
            .filter(|t| t.has_tensor_type())
            .and_then(|t| t.tensor_type().shape.as_ref())
            .and_then(|s| s.dim.get(1))
            .filter(|d| d.has_dim_value())
            .map(|d| d.dim_value());
        if let Some(d) = declared
            && d != classes as i64
        {
            return Err(self.refuse(format!(
                "output '{}' is declared with {d} classes, but the graph computes {classes}",
                out.name
            )));
        }
        Ok((slot, classes))
    }

    /// A new slot for the value `name` of `shape`, counted against [`MAX_PROBE_ELEMENTS`] with
    /// `workspace` more elements while it is computed. The error says what is wrong with the
    /// value; the caller says which it is.
    fn slot(
        &mut self,
        name: &str,
        shape: Vec<Dim>,
        workspace: usize,
    ) -> std::result::Result<usize, String> {
        let total = shapes::elements(&shape)
            .and_then(|n| self.elements.checked_add(n))
            .filter(|&n| n.saturating_add(workspace) <= MAX_PROBE_ELEMENTS);
        let Some(total) = total else {
            return Err(format!(
                "has shape {}: for one image the graph's values would hold more than \
                 {MAX_PROBE_ELEMENTS} numbers ({}), more than a classifier advcomp runs",
                shape_text(&shape),
                crate::files::bytes_text(MAX_PROBE_ELEMENTS as u64 * 4)
            ));
        };
        self.elements = total;
        self.shapes.push(shape);
        self.slot_names.push(name.to_string());
        self.producer.push(None);
        Ok(self.shapes.len() - 1)
    }

    fn node(&mut self, proto: &NodeProto, label: &str) -> std::result::Result<(), String> {
        let op = proto.op_type.as_str();
        if !(proto.domain.is_empty() || proto.domain == "ai.onnx") {
            return Err(format!(
                "op {}.{op} is outside ONNX's default operator set, the only one advcomp runs",
                proto.domain
            ));
        }
        let mut inputs = Vec::with_capacity(proto.input.len());
        for name in &proto.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match self.values.get(name) {
                Some(Value::Tainted(by)) => {
                    return Err(format!(
                        "input '{name}' is computed from the image values (by node {by}) as \
                         integers or booleans: advcomp computes shapes, indices and masks once \
                         at import, from the input's shape and the file's constants, and runs \
                         only float computations per image"
                    ));
                }
                Some(_) if op != "DequantizeLinear" && self.quantised.contains_key(name) => {
                    return Err(format!(
                        "input '{name}' holds the integer codes of a QuantizeLinear; advcomp \
                         reads them only through DequantizeLinear"
                    ));
                }
                Some(v) => inputs.push(Some(v.clone())),
                None => {
                    return Err(format!(
                        "input '{name}' is produced by no node before it (or by an output of a \
                         node that advcomp does not compute)"
                    ));
                }
            }
        }
        let n = Node {
            proto,
            label: label.to_string(),
            attrs: Attrs::new(&proto.attribute, proto.output.len()),
            inputs,
        };
        if op == "QuantizeLinear" || op == "DequantizeLinear" {
            return qdq::node(self, &n);
        }
        if op == "Constant"
            && let (Some(t), Some(out)) = (n.attrs.tensor_type("value"), proto.output.first())
        {
            self.types.insert(out.clone(), t);
        }
        if let Some(outputs) = self.at_import(&n)? {
            if outputs.len() < proto.output.iter().filter(|o| !o.is_empty()).count() {
                return Err("makes fewer outputs than the node names".into());
            }
            for (name, host) in proto.output.iter().zip(outputs) {
                self.bind_known(name, host);
            }
            return Ok(());
        }
        let from_images = n
            .inputs
            .iter()
            .flatten()
            .any(|v| matches!(v, Value::Image(_)));
        let convert = OPS.iter().find(|(name, _)| *name == op).map(|(_, c)| *c);
        let folds = FOLDED.iter().any(|(name, _)| *name == op);
        let built = match convert {
            None if folds && from_images => Built::Tainted,
            None => {
                return Err(format!(
                    "op {op} is not supported (supported: {})",
                    supported_text()
                ));
            }
            Some(_) if op == "Add" && self.fuse_bias(&n)? => return Ok(()),
            Some(_) if op == "Mul" && self.fuse_gelu(&n)? => return Ok(()),
            Some(convert) => convert(self, &n)?,
        };
        match built {
            Built::Same => {
                let first = n.inputs.first().cloned().flatten().ok_or("no input")?;
                if let Some(out) = proto.output.first() {
                    self.values.insert(out.clone(), first);
                }
            }
            Built::Tainted => {
                for out in &proto.output {
                    self.values
                        .insert(out.clone(), Value::Tainted(label.to_string()));
                }
            }
            Built::Steps(ops) => {
                for (op, out) in ops.into_iter().zip(&proto.output) {
                    self.push(op, out, &n)?;
                }
            }
        }
        Ok(())
    }

    /// The node's outputs when they follow from the file and from shapes alone.
    fn at_import(&mut self, n: &Node) -> std::result::Result<Option<Vec<Host>>, String> {
        let op = n.proto.op_type.as_str();
        match op {
            "Constant" => return Ok(Some(vec![n.attrs.constant()?])),
            "Shape" | "Size" => {
                let shape = self.shape_of_input(n, 0)?;
                if op == "Size" {
                    let size = fold::product(&shape).ok_or("too many elements")?;
                    return Ok(Some(vec![Host::ints(vec![], vec![size])]));
                }
                // start / end (opset 15): a slice of the shape.
                let r = shape.len() as i64;
                let bound = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = bound(n.attrs.int("start", 0));
                let end = bound(n.attrs.int("end", r)).max(start);
                return Ok(Some(vec![Host::vector(shape[start..end].to_vec())]));
            }
            _ => {}
        }
        let mut hosts = Vec::with_capacity(n.inputs.len());
        for v in &n.inputs {
            match v {
                None => hosts.push(None),
                Some(Value::Known(k)) => hosts.push(Some(&self.known[*k])),
                Some(_) => return Ok(None),
            }
        }
        match FOLDED.iter().find(|(name, _)| *name == op) {
            Some((_, fold)) => fold(&n.attrs, &hosts, self.opset),
            None => Ok(None),
        }
    }

    /// Adds the step computing `op` into the value `out` of node `n`.
    pub fn push(&mut self, op: Op, out: &str, n: &Node) -> std::result::Result<(), String> {
        let shape_of = |o: Operand| self.shape(o);
        let shape = shapes::output_shape(&op, &shape_of)?;
        let workspace = shapes::workspace(&op, &shape_of, &shape);
        let slot = self
            .slot(out, shape.clone(), workspace)
            .map_err(|why| format!("its output {why}"))?;
        self.values.insert(out.to_string(), Value::Image(slot));
        self.producer[slot] = Some(self.steps.len());
        let node = match n.proto.name.as_str() {
            "" => n.label.clone(),
            name => name.to_string(),
        };
        self.steps.push(Step {
            node,
            kind: n.proto.op_type.clone(),
            op,
            out: slot,
            shape,
        });
        Ok(())
    }

    /// Adds a step of node `n` whose value only the node's next step reads.
    fn intermediate(&mut self, op: Op, n: &Node) -> std::result::Result<Operand, String> {
        let name = format!("{} (inside)", n.label);
        self.push(op, &name, n)?;
        Ok(Operand::Value(self.shapes.len() - 1))
    }

    /// Removes the steps nothing reads (what a fusion replaced, shapes only a Shape read).
    fn drop_dead_steps(&mut self, output: usize) {
        let mut live = vec![false; self.shapes.len()];
        live[output] = true;
        for step in self.steps.iter().rev() {
            if live[step.out] {
                for o in step.op.operands() {
                    if let Operand::Value(v) = o {
                        live[v] = true;
                    }
                }
            }
        }
        self.steps.retain(|s| live[s.out]);
    }

    /// The shape of what `operand` names.
    fn shape(&self, operand: Operand) -> Vec<Dim> {
        match operand {
            Operand::Value(i) => self.shapes[i].clone(),
            Operand::Param(i) => fold::fixed_shape(&self.params[i].shape),
            Operand::Const(i) => fold::fixed_shape(&self.consts[i].shape),
        }
    }

    fn shape_of_input(&self, n: &Node, i: usize) -> std::result::Result<Vec<Dim>, String> {
        match n.inputs.get(i).cloned().flatten() {
            Some(Value::Image(s)) => Ok(self.shapes[s].clone()),
            Some(Value::Known(k)) => Ok(fold::fixed_shape(&self.known[k].shape)),
            _ => Err(format!("missing input {i}")),
        }
    }

    /// Input `i` as an operand: an earlier value, or a constant when known at import.
    fn operand(&mut self, n: &Node, i: usize) -> std::result::Result<Operand, String> {
        match n.inputs.get(i).cloned().flatten() {
            Some(Value::Image(s)) => Ok(Operand::Value(s)),
            Some(Value::Known(k)) => self.constant(k, n.name(i)).map(Operand::Const),
            _ => Err(format!("missing input {i}")),
        }
    }

    fn optional_operand(
        &mut self,
        n: &Node,
        i: usize,
    ) -> std::result::Result<Option<Operand>, String> {
        match n.inputs.get(i) {
            Some(Some(_)) => self.operand(n, i).map(Some),
            _ => Ok(None),
        }
    }

    /// The known value `k` (named `name`) as a constant operand.
    fn constant(&mut self, k: usize, name: &str) -> std::result::Result<usize, String> {
        if let Some(&c) = self.const_of.get(&k) {
            return Ok(c);
        }
        let host = &self.known[k];
        let values = host.to_floats(&format!("constant '{name}'"))?;
        if let Some(i) = values.iter().position(|v| v.is_nan()) {
            return Err(format!("constant '{name}' holds NaN at index {i}"));
        }
        if host.shape.len() > shapes::MAX_RANK {
            return Err(format!(
                "constant '{name}' has rank {}; at most {} is supported",
                host.shape.len(),
                shapes::MAX_RANK
            ));
        }
        self.consts.push(Initialiser {
            name: name.to_string(),
            shape: host.shape.clone(),
            values,
        });
        self.const_of.insert(k, self.consts.len() - 1);
        Ok(self.consts.len() - 1)
    }

    /// Input `i` as a parameter: a float tensor stored in the file (trainable).
    fn param(&mut self, n: &Node, i: usize) -> std::result::Result<usize, String> {
        self.param_named(n, i, n.name(i).to_string())
    }

    /// Input `i` as a parameter named `name`.
    fn param_named(
        &mut self,
        n: &Node,
        i: usize,
        name: String,
    ) -> std::result::Result<usize, String> {
        if let Some(&p) = self.param_names.get(&name) {
            return Ok(p);
        }
        let k = match n.inputs.get(i).cloned().flatten() {
            Some(Value::Known(k)) => k,
            Some(_) => {
                return Err(format!(
                    "'{name}' is computed from the images; only weights stored in the file are \
                     supported here"
                ));
            }
            None => return Err(format!("missing input {i}")),
        };
        let host = &self.known[k];
        let Data::Float(values) = &host.data else {
            return Err(format!(
                "tensor '{name}' holds no floats; a weight is needed"
            ));
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "tensor '{name}' holds {} at index {i}: weights must be finite numbers",
                values[i]
            ));
        }
        self.params.push(Initialiser {
            name: name.clone(),
            shape: host.shape.clone(),
            values: values.clone(),
        });
        self.param_names.insert(name, self.params.len() - 1);
        Ok(self.params.len() - 1)
    }

    /// Input `i` as a weight: a parameter that pruning masks and quantisation rounds.
    fn weight(&mut self, n: &Node, i: usize) -> std::result::Result<usize, String> {
        let w = self.quantised_param(n, i, Role::Weight)?;
        if !self.weights.contains(&w) {
            self.weights.push(w);
        }
        Ok(w)
    }

    /// Optional input `i` as a bias: a parameter that quantisation rounds.
    fn bias(&mut self, n: &Node, i: usize) -> std::result::Result<Option<usize>, String> {
        if !matches!(n.inputs.get(i), Some(Some(_))) {
            return Ok(None);
        }
        let b = self.quantised_param(n, i, Role::Bias)?;
        if !self.biases.contains(&b) {
            self.biases.push(b);
        }
        Ok(Some(b))
    }

    /// Input `i` as a weight layer's weight or bias: when a DequantizeLinear made it, a
    /// parameter named after the layer's node (a weight and its bias share the layer name
    /// their grids are recorded under), its grid recorded.
    fn quantised_param(
        &mut self,
        n: &Node,
        i: usize,
        role: Role,
    ) -> std::result::Result<usize, String> {
        let dequantised = match n.inputs.get(i) {
            Some(Some(Value::Known(k))) => self.dequantised.get(k).cloned(),
            _ => None,
        };
        let Some(d) = dequantised else {
            return self.param(n, i);
        };
        let node = match n.proto.name.as_str() {
            "" => n.label.clone(),
            name => name.to_string(),
        };
        let suffix = match role {
            Role::Weight => "weight",
            Role::Bias => "bias",
        };
        let p = self.param_named(n, i, format!("{node}.{suffix}"))?;
        let layer = node;
        if role == Role::Weight {
            if d.qtype != qdq::QType::Int8 {
                return Err(format!(
                    "its weight '{}' is {}; advcomp emulates int8 weights (uint8 for \
                     activations, int32 for biases)",
                    n.name(i),
                    d.qtype.name()
                ));
            }
            self.weight_types.insert(d.qtype);
            self.qdq.weights.insert(layer, d.grid);
        } else {
            self.qdq.biases.insert(layer, d.grid);
        }
        Ok(p)
    }

    /// The affine quantiser a QDQ graph amounts to (`None` for a float graph).
    fn qdq_config(&self) -> Option<Qdq> {
        if self.quantised.is_empty() && self.dequantised.is_empty() {
            return None;
        }
        let activations = self
            .activation_types
            .iter()
            .next()
            .and_then(|t| t.int_type());
        let weights = self.weight_types.iter().next().and_then(|t| t.int_type());
        let per_channel = self.qdq.weights.values().any(|g| g.axis.is_some());
        let config = QuantConfig::Affine(AffineSettings {
            weights,
            activations,
            per_channel,
            calibration: crate::quant::Calibration::File,
            ..AffineSettings::default()
        });
        Some(Qdq {
            config,
            grids: self.qdq.clone(),
        })
    }

    /// Input `i`'s value when it is known at import (`None` when the input is absent); an
    /// error when it is computed from the images.
    pub fn known(
        &self,
        n: &Node,
        i: usize,
        what: &str,
    ) -> std::result::Result<Option<&Host>, String> {
        match n.inputs.get(i).cloned().flatten() {
            None => Ok(None),
            Some(Value::Known(k)) => Ok(Some(&self.known[k])),
            Some(_) => Err(format!(
                "its {what} (input '{}') is computed from the image values; advcomp needs it \
                 at import, from the input's shape and the file's constants",
                n.name(i)
            )),
        }
    }

    pub fn required(&self, n: &Node, i: usize, what: &str) -> std::result::Result<&Host, String> {
        self.known(n, i, what)?
            .ok_or_else(|| format!("no {what} (input {i})"))
    }

    /// `Add(MatMul(x, W), b)` with a bias `b` stored in the file: the bias of the MatMul's
    /// linear layer (quantised with it, as Gemm's and Conv's).
    fn fuse_bias(&mut self, n: &Node) -> std::result::Result<bool, String> {
        for (x, b) in [(0, 1), (1, 0)] {
            let (Some(Some(Value::Image(s))), Some(Some(Value::Known(_)))) =
                (n.inputs.get(x), n.inputs.get(b))
            else {
                continue;
            };
            let s = *s;
            let Some(step) = self.producer[s] else {
                continue;
            };
            let Op::Linear {
                bias: None, weight, ..
            } = self.steps[step].op
            else {
                continue;
            };
            let columns = self.params[weight].shape[1];
            let fits = match self.known(n, b, "bias")? {
                Some(h) => matches!(h.data, Data::Float(_)) && h.shape == [columns],
                None => false,
            };
            if !fits || self.readers.get(n.name(x)) != Some(&1) {
                continue;
            }
            let bias = self.bias(n, b)?;
            if let Op::Linear { bias: slot, .. } = &mut self.steps[step].op {
                *slot = bias;
            }
            if let Some(out) = n.proto.output.first() {
                self.values.insert(out.clone(), Value::Image(s));
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// The legacy exporter's GELU, `Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)`, as one Gelu
    /// step: the same nonlinearity as the default exporter's `Gelu`, quantised where it is.
    fn fuse_gelu(&mut self, n: &Node) -> std::result::Result<bool, String> {
        let half = |v: &Option<Value>| match v {
            Some(Value::Known(k)) => self.known[*k].data == Data::Float(vec![0.5]),
            _ => false,
        };
        let product = match (n.inputs.first(), n.inputs.get(1)) {
            (Some(Some(Value::Image(s))), Some(h)) if half(h) => *s,
            (Some(h), Some(Some(Value::Image(s)))) if half(h) => *s,
            _ => return Ok(false),
        };
        match self.gelu_input(product) {
            Some(x) => {
                let out = n.proto.output.first().cloned().unwrap_or_default();
                let gelu = Op::Unary {
                    kind: Unary::Gelu { tanh: false },
                    x: Operand::Value(x),
                };
                self.push(gelu, &out, n)?;
                if let Some(step) = self.steps.last_mut() {
                    step.kind = "Gelu".into();
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The `x` of `product` = `Mul(x, Add(Erf(Div(x, √2)), 1))`, each link read once.
    fn gelu_input(&self, product: usize) -> Option<usize> {
        let single = |s: usize| self.readers.get(&self.slot_names[s]) == Some(&1);
        let op = |s: usize| self.producer[s].map(|i| &self.steps[i].op);
        let constant =
            |o: &Operand, c: f32| matches!(o, Operand::Const(i) if self.consts[*i].values == [c]);
        let Some(Op::Binary {
            kind: Binary::Mul,
            a: Operand::Value(p),
            b: Operand::Value(q),
        }) = op(product)
        else {
            return None;
        };
        [(*p, *q), (*q, *p)].into_iter().find_map(|(x, sum)| {
            let erf = match op(sum)? {
                Op::Binary {
                    kind: Binary::Add,
                    a: Operand::Value(e),
                    b: one,
                }
                | Op::Binary {
                    kind: Binary::Add,
                    a: one,
                    b: Operand::Value(e),
                } if constant(one, 1.0) => *e,
                _ => return None,
            };
            let Some(Op::Unary {
                kind: Unary::Erf,
                x: Operand::Value(d),
            }) = op(erf)
            else {
                return None;
            };
            let Some(Op::Binary {
                kind: Binary::Div,
                a: Operand::Value(dx),
                b: root,
            }) = op(*d)
            else {
                return None;
            };
            let chain = [product, sum, erf, *d].into_iter().all(single);
            (*dx == x && chain && constant(root, std::f32::consts::SQRT_2)).then_some(x)
        })
    }
}

/// An attribute's two spatial values (height, width), `default` for both when absent.
fn pair(
    values: Option<Vec<i64>>,
    default: usize,
    what: &str,
) -> std::result::Result<[usize; 2], String> {
    match values.as_deref() {
        None => Ok([default; 2]),
        Some([h, w]) => Ok([*h as usize, *w as usize]),
        Some(v) => Err(format!(
            "{what} {v:?}: two values (height, width) are needed; only 2-D windows are supported"
        )),
    }
}

/// ONNX's pads (top, left, bottom, right) as (begin, end) per spatial axis.
fn pads2(values: Option<Vec<i64>>) -> std::result::Result<[(usize, usize); 2], String> {
    match values.as_deref() {
        None => Ok([(0, 0); 2]),
        Some([t, l, b, r]) => Ok([(*t as usize, *b as usize), (*l as usize, *r as usize)]),
        Some(v) => Err(format!(
            "pads {v:?}: four values are needed; only 2-D windows are supported"
        )),
    }
}

fn refuse_auto_pad(n: &Node) -> std::result::Result<(), String> {
    match n.attrs.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" | "VALID" => Ok(()),
        other => Err(format!(
            "auto_pad {other} is not supported; export with explicit pads"
        )),
    }
}

fn conv(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    refuse_auto_pad(n)?;
    let x = b.operand(n, 0)?;
    let weight = b.weight(n, 1)?;
    let bias = b.bias(n, 2)?;
    let w = b.params[weight].shape.clone();
    if w.len() != 4 {
        return Err(format!(
            "the weight has shape {w:?}; only 2-D convolutions (a weight [M, C/group, kH, kW]) \
             are supported"
        ));
    }
    if let Some(k) = n.attrs.ints("kernel_shape") {
        let k: Vec<usize> = k.iter().map(|&v| v as usize).collect();
        shapes::conv_kernel(&k, &w)?;
    }
    one(Op::Conv {
        x,
        weight,
        bias,
        options: ConvOptions {
            stride: pair(n.attrs.ints("strides"), 1, "strides")?,
            padding: pads2(n.attrs.ints("pads"))?,
            dilation: pair(n.attrs.ints("dilations"), 1, "dilations")?,
            groups: n.attrs.int("group", 1) as usize,
        },
    })
}

fn max_pool(_: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    refuse_auto_pad(n)?;
    let a = &n.attrs;
    let kernel = pair(a.ints("kernel_shape"), 0, "kernel_shape")?;
    Ok(Built::Steps(vec![Op::MaxPool {
        x: operand_of(n)?,
        options: MaxPoolOptions {
            kernel_size: kernel,
            stride: pair(a.ints("strides"), 1, "strides")?,
            padding: pads2(a.ints("pads"))?,
            dilation: pair(a.ints("dilations"), 1, "dilations")?,
            ceil_mode: a.int("ceil_mode", 0) == 1,
        },
    }]))
}

fn average_pool(_: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    refuse_auto_pad(n)?;
    let a = &n.attrs;
    let dilations = pair(a.ints("dilations"), 1, "dilations")?;
    if dilations != [1, 1] {
        return Err(format!("dilations {dilations:?} are not supported"));
    }
    one(Op::AvgPool {
        x: operand_of(n)?,
        options: AvgPoolOptions {
            kernel_size: pair(a.ints("kernel_shape"), 0, "kernel_shape")?,
            stride: pair(a.ints("strides"), 1, "strides")?,
            padding: pads2(a.ints("pads"))?,
            count_include_pad: a.int("count_include_pad", 0) == 1,
            ceil_mode: a.int("ceil_mode", 0) == 1,
        },
    })
}

/// The first input of a window op, which runs only on values computed from the images.
fn operand_of(n: &Node) -> std::result::Result<Operand, String> {
    match n.inputs.first().cloned().flatten() {
        Some(Value::Image(s)) => Ok(Operand::Value(s)),
        _ => Err("its input is no value computed from the images".into()),
    }
}

fn global_pool(b: &mut Builder, n: &Node, kind: Reduce) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    if rank < 3 {
        return Err(format!(
            "the input has rank {rank}; [N, C, spatial axes...] is needed"
        ));
    }
    one(Op::Reduce {
        kind,
        x,
        axes: (2..rank).collect(),
        keep: true,
    })
}

fn gemm(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let a = b.operand(n, 0)?;
    let known = |i: usize| matches!(n.inputs.get(i), Some(Some(Value::Known(_))));
    let w = if known(1) {
        Operand::Param(b.weight(n, 1)?)
    } else {
        b.operand(n, 1)?
    };
    let c = if known(2) {
        b.bias(n, 2)?.map(Operand::Param)
    } else {
        b.optional_operand(n, 2)?
    };
    one(Op::Gemm {
        a,
        b: w,
        c,
        alpha: n.attrs.float("alpha", 1.0),
        beta: n.attrs.float("beta", 1.0),
        trans_a: n.attrs.int("transA", 0) != 0,
        trans_b: n.attrs.int("transB", 0) != 0,
    })
}

/// A MatMul with a weight stored in the file is a linear layer (pruned and quantised); one
/// between two computed values (attention's) is a product.
fn matmul(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let weight = match n.inputs.get(1) {
        Some(Some(Value::Known(k))) => {
            let h = &b.known[*k];
            matches!(h.data, Data::Float(_)) && h.shape.len() == 2
        }
        _ => false,
    };
    if weight && matches!(n.inputs.first(), Some(Some(Value::Image(_)))) {
        let x = b.operand(n, 0)?;
        return one(Op::Linear {
            x,
            weight: b.weight(n, 1)?,
            bias: None,
            transposed: false,
        });
    }
    one(Op::MatMul {
        a: b.operand(n, 0)?,
        b: b.operand(n, 1)?,
    })
}

fn binary(b: &mut Builder, n: &Node, kind: Binary) -> std::result::Result<Built, String> {
    one(Op::Binary {
        kind,
        a: b.operand(n, 0)?,
        b: b.operand(n, 1)?,
    })
}

fn variadic(b: &mut Builder, n: &Node, kind: Binary) -> std::result::Result<Built, String> {
    match n.inputs.len() {
        1 => Ok(Built::Same),
        2 => binary(b, n, kind),
        k => Err(format!("{k} inputs; one or two are supported")),
    }
}

fn unary(b: &mut Builder, n: &Node, kind: Unary) -> std::result::Result<Built, String> {
    one(Op::Unary {
        kind,
        x: b.operand(n, 0)?,
    })
}

fn gelu(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let tanh = match n.attrs.string("approximate", "none").as_str() {
        "none" => false,
        "tanh" => true,
        other => return Err(format!("approximate '{other}' is not supported")),
    };
    unary(b, n, Unary::Gelu { tanh })
}

fn cast(_: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    match DataType::from_onnx(n.attrs.int("to", 0))? {
        DataType::Float => Ok(Built::Same),
        _ => Ok(Built::Tainted),
    }
}

/// Clip's bounds: inputs (opset 11 on) or attributes (before), known at import.
fn clip(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let bound = |i: usize, name: &str, default: f32| -> std::result::Result<f32, String> {
        match b.known(n, i, name)? {
            Some(h) => match h.to_floats(name)?.as_slice() {
                [v] => Ok(*v),
                v => Err(format!("{name} holds {} numbers; one is needed", v.len())),
            },
            None => Ok(n.attrs.float(name, default)),
        }
    };
    let min = bound(1, "min", f32::NEG_INFINITY)?;
    let max = bound(2, "max", f32::INFINITY)?;
    unary(b, n, Unary::Clip { min, max })
}

fn batch_norm(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    if n.attrs.int("training_mode", 0) != 0 {
        return Err("training_mode 1 (statistics of the batch) is not supported".into());
    }
    let epsilon = f64::from(n.attrs.float("epsilon", 1e-5));
    let x = b.operand(n, 0)?;
    let scale = Operand::Param(b.param(n, 1)?);
    let shift = Operand::Param(b.param(n, 2)?);
    // Running statistics stay as they are (frozen also when fine-tuning).
    let mean = b.operand(n, 3)?;
    let var = b.operand(n, 4)?;
    // sqrt(var + epsilon) of a negative number is NaN, in every logit after.
    if let Operand::Const(i) = var
        && let Some((channel, v)) = b.consts[i]
            .values
            .iter()
            .enumerate()
            .find(|(_, v)| f64::from(**v) + epsilon <= 0.0)
    {
        return Err(format!(
            "input_var holds {v} at channel {channel}: with epsilon {epsilon} it has no square \
             root (the outputs would be NaN)"
        ));
    }
    one(Op::BatchNorm {
        x,
        scale,
        shift,
        mean,
        var,
        epsilon,
    })
}

fn layer_norm(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let axis = fold::axis(n.attrs.int("axis", -1), rank)?;
    let known = |i: usize| matches!(n.inputs.get(i), Some(Some(Value::Known(_))));
    // Scale and shift are parameters, kept in float as batch norm's.
    let scale = if known(1) {
        Operand::Param(b.param(n, 1)?)
    } else {
        b.operand(n, 1)?
    };
    let bias = match n.inputs.get(2) {
        Some(Some(_)) if known(2) => Some(Operand::Param(b.param(n, 2)?)),
        Some(Some(_)) => Some(b.operand(n, 2)?),
        _ => None,
    };
    one(Op::LayerNorm {
        x,
        scale,
        bias,
        axis,
        epsilon: f64::from(n.attrs.float("epsilon", 1e-5)),
    })
}

/// Softmax / LogSoftmax anywhere; at the graph's output over the classes, removed (attacks
/// need logits), and said.
fn softmax(b: &mut Builder, n: &Node, log: bool) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let default = if b.opset >= 13 { -1 } else { 1 };
    let axis = fold::axis(n.attrs.int("axis", default), rank)?;
    if b.opset < 13 && axis + 1 != rank {
        return Err(format!(
            "axis {axis} of a rank-{rank} input: before opset 13 Softmax flattens the axes \
             from `axis` on; only the last axis is supported"
        ));
    }
    let last = n.proto.output.first() == b.output_name.as_ref();
    if last && rank == 2 && axis == 1 {
        b.stripped = Some(n.label.clone());
        return Ok(Built::Same);
    }
    one(Op::Softmax { x, axis, log })
}

fn reduce(b: &mut Builder, n: &Node, kind: Reduce) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?.unwrap_or_default();
    let axes: Vec<usize> = if axes.is_empty() {
        if n.attrs.int("noop_with_empty_axes", 0) == 1 {
            return Ok(Built::Same);
        }
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| fold::axis(a, rank))
            .collect::<std::result::Result<_, _>>()?
    };
    one(Op::Reduce {
        kind,
        x,
        axes,
        keep: n.attrs.int("keepdims", 1) == 1,
    })
}

fn reshape(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let to = b.required(n, 1, "shape")?.dims("the shape")?;
    let shape = fold::reshaped(&b.shape(x), &to, n.attrs.int("allowzero", 0) == 1)?;
    one(Op::Reshape { x, shape })
}

fn flatten(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let from = b.shape(x);
    let a = fold::axis(n.attrs.int("axis", 1), from.len() + 1)?;
    let rows = fold::product(&from[..a]).ok_or("too many elements")?;
    let columns = fold::product(&from[a..]).ok_or("too many elements")?;
    one(Op::Reshape {
        x,
        shape: vec![rows, columns],
    })
}

fn squeeze(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?;
    let shape = fold::squeezed(&b.shape(x), axes.as_deref())?;
    one(Op::Reshape { x, shape })
}

fn unsqueeze(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?.ok_or("no axes")?;
    let shape = fold::unsqueezed(&b.shape(x), &axes)?;
    one(Op::Reshape { x, shape })
}

fn transpose(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let perm = fold::permutation(&n.attrs, b.shape(x).len())?;
    one(Op::Transpose { x, perm })
}

fn slice(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let hosts: Vec<Option<&Host>> = (0..5)
        .map(|i| {
            if i == 0 {
                Ok(None)
            } else {
                b.known(n, i, "slice bounds")
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let args = fold::slice_args(&n.attrs, &hosts, shape.len())?;
    let mut ranges = Vec::new();
    for i in 0..args.axes.len() {
        let (axis, start, end, step) = (args.axes[i], args.starts[i], args.ends[i], args.steps[i]);
        let len = shape[axis];
        match len.known() {
            Some(len) => {
                let r = fold::slice_range(start, end, step, len as usize)?;
                if r != (0, len, 1) {
                    ranges.push((axis, r.0, r.1, r.2));
                }
            }
            // The whole of an axis that grows with the batch.
            None if start == 0 && step == 1 && end >= i64::from(i32::MAX) => {}
            None => {
                return Err(format!(
                    "it slices axis {axis} of {}, whose length {len} depends on the batch size",
                    shape_text(&shape)
                ));
            }
        }
    }
    one(Op::Slice { x, ranges })
}

fn split(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let axis = fold::axis(n.attrs.int("axis", 0), shape.len())?;
    let len = shape[axis].known().ok_or_else(|| {
        format!(
            "it splits axis {axis} of {}, whose length depends on the batch size",
            shape_text(&shape)
        )
    })? as usize;
    let lengths = fold::split_lengths(&n.attrs, b.known(n, 1, "split")?, len, n.attrs.outputs)?;
    let mut start = 0;
    let ops = lengths
        .into_iter()
        .map(|l| {
            let op = Op::Slice {
                x,
                ranges: vec![(axis, start as i64, (start + l) as i64, 1)],
            };
            start += l;
            op
        })
        .collect();
    Ok(Built::Steps(ops))
}

fn concat(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let inputs = (0..n.inputs.len())
        .map(|i| b.operand(n, i))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rank = b.shape(*inputs.first().ok_or("no inputs")?).len();
    let axis = fold::axis(n.attrs.int("axis", 0), rank)?;
    one(Op::Concat { inputs, axis })
}

fn expand(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.required(n, 1, "shape")?.dims("the shape")?;
    one(Op::Expand { x, shape })
}

fn pad(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let mode = n.attrs.string("mode", "constant");
    if mode != "constant" {
        return Err(format!(
            "mode '{mode}' is not supported; only constant padding is"
        ));
    }
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let pads = match b.known(n, 1, "pads")? {
        Some(h) => h.fixed_ints("pads")?,
        None => n.attrs.ints("pads").ok_or("no pads")?,
    };
    let value = match b.known(n, 2, "constant_value")? {
        Some(h) => *h.to_floats("constant_value")?.first().ok_or("no value")?,
        None => n.attrs.float("value", 0.0),
    };
    let axes: Vec<usize> = match b.known(n, 3, "axes")? {
        Some(h) => h
            .fixed_ints("axes")?
            .iter()
            .map(|&a| fold::axis(a, rank))
            .collect::<std::result::Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!(
            "pads {pads:?}: {} values (begins, then ends) are needed",
            2 * axes.len()
        ));
    }
    if pads.iter().any(|&p| p < 0) {
        return Err(format!(
            "pads {pads:?}: negative pads (cropping) are not supported"
        ));
    }
    let mut pairs = vec![(0, 0); rank];
    for (i, &a) in axes.iter().enumerate() {
        pairs[a] = (pads[i] as usize, pads[i + axes.len()] as usize);
    }
    one(Op::Pad {
        x,
        pads: pairs,
        value,
    })
}

fn gather(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let axis = fold::axis(n.attrs.int("axis", 0), shape.len())?;
    let index = b.required(n, 1, "indices")?;
    let len = shape[axis].known().ok_or_else(|| {
        format!(
            "it gathers along axis {axis} of {}, whose length depends on the batch size",
            shape_text(&shape)
        )
    })?;
    let indices = fold::indices_within(&index.fixed_ints("indices")?, len as usize)?;
    let index_shape = index.shape.clone();
    one(Op::Gather {
        x,
        axis,
        indices,
        shape: index_shape,
    })
}

/// GatherND with constant indices into the leading axes: a Gather along those axes merged.
fn gather_nd(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    if n.attrs.int("batch_dims", 0) != 0 {
        return Err("batch_dims other than 0 is not supported".into());
    }
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let index = b.required(n, 1, "indices")?;
    let k = *index.shape.last().ok_or("indices of rank 0")?;
    if k == 0 || k > shape.len() {
        return Err(format!(
            "indices address {k} axes of an input of rank {}",
            shape.len()
        ));
    }
    let lengths: Vec<usize> = shape[..k]
        .iter()
        .map(|d| d.known().map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!(
                "it gathers along the leading axes of {}, whose lengths depend on the batch size",
                shape_text(&shape)
            )
        })?;
    let strides = fold::strides(&lengths);
    let tuples = index.fixed_ints("indices")?;
    let indices = tuples
        .chunks(k)
        .map(|t| {
            t.iter().enumerate().try_fold(0, |flat, (axis, &i)| {
                Ok::<_, String>(
                    flat + fold::indices_within(&[i], lengths[axis])?[0] * strides[axis],
                )
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let index_shape = index.shape[..index.shape.len() - 1].to_vec();
    let mut merged = vec![Dim::new(lengths.iter().product::<usize>() as i64)];
    merged.extend_from_slice(&shape[k..]);
    let flat = b.intermediate(Op::Reshape { x, shape: merged }, n)?;
    one(Op::Gather {
        x: flat,
        axis: 0,
        indices,
        shape: index_shape,
    })
}

fn where_(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let condition = b.required(n, 0, "condition")?;
    if !matches!(condition.data, Data::Bool(_)) {
        return Err("its condition holds no booleans".into());
    }
    one(Op::Where {
        condition: b.operand(n, 0)?,
        a: b.operand(n, 1)?,
        b: b.operand(n, 2)?,
    })
}

/// Resize, nearest or linear, by constant scales or sizes: per resized axis, the input
/// positions (and weights) each output position reads, computed here as ONNX defines them.
fn resize(b: &mut Builder, n: &Node) -> std::result::Result<Built, String> {
    let a = &n.attrs;
    let mode = a.string("mode", "nearest");
    if mode != "nearest" && mode != "linear" {
        return Err(format!(
            "mode '{mode}' is not supported (nearest and linear are)"
        ));
    }
    if a.int("antialias", 0) != 0 {
        return Err("antialias 1 is not supported".into());
    }
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let rank = shape.len();
    // Opset 10: (X, scales); 11 on: (X, roi, scales, sizes).
    let (scales, sizes) = if b.opset < 11 {
        (b.known(n, 1, "scales")?, None)
    } else {
        (b.known(n, 2, "scales")?, b.known(n, 3, "sizes")?)
    };
    let scales = scales.filter(|h| h.len() > 0);
    let axes: Vec<usize> = match a.ints("axes") {
        Some(v) => v
            .iter()
            .map(|&i| fold::axis(i, rank))
            .collect::<std::result::Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let transform = a.string("coordinate_transformation_mode", "half_pixel");
    let nearest = a.string("nearest_mode", "round_prefer_floor");
    let policy = a.string("keep_aspect_ratio_policy", "stretch");
    let (scales, sizes) = match (scales, sizes) {
        (Some(s), _) => (Some(s.to_floats("scales")?), None),
        (None, Some(s)) if policy == "stretch" => (None, Some(s.dims("sizes")?)),
        (None, Some(_)) => {
            return Err(format!(
                "keep_aspect_ratio_policy '{policy}' is not supported"
            ));
        }
        (None, None) => return Err("neither scales nor sizes".into()),
    };
    let given = scales
        .as_ref()
        .map_or_else(|| sizes.as_ref().map_or(0, Vec::len), Vec::len);
    if given != axes.len() {
        return Err(format!("{given} scales or sizes for {} axes", axes.len()));
    }
    let mut interpolations = Vec::new();
    for (i, &axis) in axes.iter().enumerate() {
        // Axes kept as they are (the batch's, the channels') are no work.
        let same = match (&scales, &sizes) {
            (Some(s), _) => s[i] == 1.0,
            (_, Some(z)) => z[i] == shape[axis],
            _ => unreachable!("one of them is given"),
        };
        if same {
            continue;
        }
        let input = shape[axis]
            .known()
            .ok_or("it resizes an axis whose length depends on the batch size")?
            as usize;
        let (out, scale) = match (&scales, &sizes) {
            (Some(s), _) if s[i] > 0.0 && s[i].is_finite() => {
                ((input as f32 * s[i]).floor() as usize, s[i])
            }
            (Some(s), _) => return Err(format!("scale {} is no positive number", s[i])),
            (_, Some(z)) => match z[i].known() {
                Some(z) if z > 0 && input > 0 => (z as usize, z as f32 / input as f32),
                _ => return Err(format!("size {} is no positive length", z[i])),
            },
            _ => unreachable!("one of them is given"),
        };
        if out == 0 || out > 1 << 24 {
            return Err(format!("axis {axis} resized to {out}"));
        }
        let mut taps = match mode.as_str() {
            "nearest" => vec![(Vec::with_capacity(out), vec![1.0; out])],
            _ => vec![(Vec::with_capacity(out), Vec::with_capacity(out)); 2],
        };
        let last = (input - 1) as f32;
        for o in 0..out {
            let r = o as f32;
            let x = match transform.as_str() {
                "half_pixel" => (r + 0.5) / scale - 0.5,
                "pytorch_half_pixel" if out > 1 => (r + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => 0.0,
                "align_corners" if out == 1 => 0.0,
                "align_corners" => r * last / (out - 1) as f32,
                "asymmetric" => r / scale,
                "half_pixel_symmetric" => {
                    let adjustment = out as f32 / (scale * input as f32);
                    let center = input as f32 / 2.0;
                    center * (1.0 - adjustment) + (r + 0.5) / scale - 0.5
                }
                other => {
                    return Err(format!(
                        "coordinate_transformation_mode '{other}' is not supported"
                    ));
                }
            };
            if mode == "nearest" {
                let i = match nearest.as_str() {
                    "round_prefer_floor" if x.fract() == 0.5 => x.floor(),
                    "round_prefer_ceil" if x.fract() == 0.5 => x.ceil(),
                    "round_prefer_floor" | "round_prefer_ceil" => x.round(),
                    "floor" => x.floor(),
                    "ceil" => x.ceil(),
                    other => return Err(format!("nearest_mode '{other}' is not supported")),
                };
                taps[0].0.push(i.clamp(0.0, last) as usize);
            } else {
                let x = x.clamp(0.0, last);
                let low = x.floor();
                let w = x - low;
                taps[0].0.push(low as usize);
                taps[0].1.push(1.0 - w);
                taps[1].0.push((low as usize + 1).min(input - 1));
                taps[1].1.push(w);
            }
        }
        interpolations.push(Interpolation { axis, taps });
    }
    if interpolations.is_empty() {
        return Ok(Built::Same);
    }
    one(Op::Resize {
        x,
        axes: interpolations,
    })
}
