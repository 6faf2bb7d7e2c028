//! From the file's graph to [`Step`]s: each node's inputs resolved to earlier values,
//! parameters or constants, its attributes checked (ONNX's defaults where absent, opsets 11
//! on: attributes that became inputs read from either); what follows only from shapes and
//! constants computed at import ([`fold`]); what cannot run refused by name.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use onnx_ir::NodeProto;

use super::fold::{self, Data, Dim, FOLDED, Host, shape_text};
use super::ops::binary::{Binary, BinaryKind};
use super::ops::unary::{Unary, UnaryKind};
use super::ops::{Linear, OPS, Op};
use super::proto::{Attrs, DataType, ModelFile};
use super::{Initialiser, Operand, Qdq, Step, qdq, shapes};
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
pub(super) enum Built {
    /// Steps, one per output of the node.
    Steps(Vec<Op>),
    /// Its output is its first input (Identity, Dropout, a Cast to float, a final Softmax).
    Same,
    /// Integers or booleans computed from the images: an error where they are used.
    Tainted,
}

pub(super) fn one(op: Op) -> std::result::Result<Built, String> {
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
    pub opset: i64,
    /// Every value defined so far, by name.
    pub values: HashMap<String, Value>,
    pub known: Vec<Host>,
    /// How many node inputs (and graph outputs) read each value: fusions need one reader.
    readers: HashMap<String, usize>,
    pub output_name: Option<String>,
    /// Per slot: shape, the name of the value, the step that computes it.
    pub shapes: Vec<Vec<Dim>>,
    slot_names: Vec<String>,
    producer: Vec<Option<usize>>,
    /// Elements of every value so far (and the largest workspace) for one image: what the
    /// dry run holds at once.
    elements: usize,
    pub params: Vec<Initialiser>,
    param_names: HashMap<String, usize>,
    pub consts: Vec<Initialiser>,
    /// Known values already made constants: known index -> constant index.
    const_of: HashMap<usize, usize>,
    weights: Vec<usize>,
    biases: Vec<usize>,
    steps: Vec<Step>,
    pub stripped: Option<String>,
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
        let shape = op.output_shape(&shape_of)?;
        let workspace = op.workspace(&shape_of, &shape);
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
    pub fn intermediate(&mut self, op: Op, n: &Node) -> std::result::Result<Operand, String> {
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
    pub fn shape(&self, operand: Operand) -> Vec<Dim> {
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
    pub fn operand(&mut self, n: &Node, i: usize) -> std::result::Result<Operand, String> {
        match n.inputs.get(i).cloned().flatten() {
            Some(Value::Image(s)) => Ok(Operand::Value(s)),
            Some(Value::Known(k)) => self.constant(k, n.name(i)).map(Operand::Const),
            _ => Err(format!("missing input {i}")),
        }
    }

    pub fn optional_operand(
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
    pub fn param(&mut self, n: &Node, i: usize) -> std::result::Result<usize, String> {
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
    pub fn weight(&mut self, n: &Node, i: usize) -> std::result::Result<usize, String> {
        let w = self.quantised_param(n, i, Role::Weight)?;
        if !self.weights.contains(&w) {
            self.weights.push(w);
        }
        Ok(w)
    }

    /// Optional input `i` as a bias: a parameter that quantisation rounds.
    pub fn bias(&mut self, n: &Node, i: usize) -> std::result::Result<Option<usize>, String> {
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
            let Op::Linear(Linear {
                bias: None, weight, ..
            }) = self.steps[step].op
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
            if let Op::Linear(Linear { bias: slot, .. }) = &mut self.steps[step].op {
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
                let gelu = Op::Unary(Unary {
                    kind: UnaryKind::Gelu { tanh: false },
                    x: Operand::Value(x),
                });
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
        let Some(Op::Binary(Binary {
            kind: BinaryKind::Mul,
            a: Operand::Value(p),
            b: Operand::Value(q),
        })) = op(product)
        else {
            return None;
        };
        [(*p, *q), (*q, *p)].into_iter().find_map(|(x, sum)| {
            let erf = match op(sum)? {
                Op::Binary(Binary {
                    kind: BinaryKind::Add,
                    a: Operand::Value(e),
                    b: one,
                })
                | Op::Binary(Binary {
                    kind: BinaryKind::Add,
                    a: one,
                    b: Operand::Value(e),
                }) if constant(one, 1.0) => *e,
                _ => return None,
            };
            let Some(Op::Unary(Unary {
                kind: UnaryKind::Erf,
                x: Operand::Value(d),
            })) = op(erf)
            else {
                return None;
            };
            let Some(Op::Binary(Binary {
                kind: BinaryKind::Div,
                a: Operand::Value(dx),
                b: root,
            })) = op(*d)
            else {
                return None;
            };
            let chain = [product, sum, erf, *d].into_iter().all(single);
            (*dx == x && chain && constant(root, std::f32::consts::SQRT_2)).then_some(x)
        })
    }
}

/// An attribute's two spatial values (height, width), `default` for both when absent.
pub(super) fn pair(
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
pub(super) fn pads2(values: Option<Vec<i64>>) -> std::result::Result<[(usize, usize); 2], String> {
    match values.as_deref() {
        None => Ok([(0, 0); 2]),
        Some([t, l, b, r]) => Ok([(*t as usize, *b as usize), (*l as usize, *r as usize)]),
        Some(v) => Err(format!(
            "pads {v:?}: four values are needed; only 2-D windows are supported"
        )),
    }
}

pub(super) fn refuse_auto_pad(n: &Node) -> std::result::Result<(), String> {
    match n.attrs.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" | "VALID" => Ok(()),
        other => Err(format!(
            "auto_pad {other} is not supported; export with explicit pads"
        )),
    }
}

/// The first input of a window op, which runs only on values computed from the images.
pub(super) fn operand_of(n: &Node) -> std::result::Result<Operand, String> {
    match n.inputs.first().cloned().flatten() {
        Some(Value::Image(s)) => Ok(Operand::Value(s)),
        _ => Err("its input is no value computed from the images".into()),
    }
}
