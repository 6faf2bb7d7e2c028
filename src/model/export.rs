//! A model as an ONNX file that ONNX Runtime runs: its float graph (the imported file's own,
//! or the one a built-in model writes with [`OnnxWriter`]), its weights as the compressed
//! layers use them, and, where the compression quantises, QuantizeLinear / DequantizeLinear
//! (QDQ) nodes on the grids advcomp computes with:
//!
//! - a quantised weight or bias becomes an integer initialiser (its codes) and a
//!   DequantizeLinear with its scale and zero point (per channel along the output axis, or
//!   per tensor): int8 when the codes fit, else int16 (opset 21), else int32;
//! - a quantised activation becomes QuantizeLinear then DequantizeLinear on the tensor (uint8
//!   or int8 when its codes are that type's, uint16 / int16 likewise at opset 21); codes
//!   narrower than the type (int4 and uint4 activations, Q(W, P) with W < 8 or 8 < W < 16)
//!   add a Clip to the grid's range after the DequantizeLinear, which saturates exactly as
//!   the narrow type would; wider than 16 bits (Q(W, P) with W > 16), where ONNX has no
//!   QuantizeLinear type, the same arithmetic in float: Mul by 1/s, Round (half to even),
//!   Clip, Mul by s.
//!
//! Where the activations are quantised follows the quantiser's sites: the output of every
//! nonlinearity (Relu, LeakyRelu, Sigmoid, Tanh, Clip, as `Op::is_activation`) and the logits
//! for Q(W, P); the input of every Conv / Gemm / MatMul weight layer and the logits for affine
//! quantisation, where ONNX Runtime fuses the QDQ groups into integer kernels.

use std::collections::BTreeMap;
use std::path::Path;

use onnx_ir::{
    AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};

use super::{Compression, Network, Quantisation, bake, checkpoint, weight_layers};
use crate::quant::{Grid, Sites};
use crate::{Error, Result};

/// ONNX's TensorProto.DataType values used here.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
}

/// The nonlinearities whose outputs Q(W, P) quantises (the import's `Op::is_activation`).
const NONLINEARITIES: [&str; 5] = ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip"];

/// An integer type that holds codes [lo, hi]: (type, its smallest and largest value, whether
/// it needs opset 21).
fn storage(lo: i64, hi: i64, signed_only: bool) -> Option<(i32, i64, i64, bool)> {
    let types = [
        (dtype::UINT8, 0, 255, false),
        (dtype::INT8, -128, 127, false),
        (dtype::UINT16, 0, 65_535, true),
        (dtype::INT16, -32_768, 32_767, true),
        (dtype::INT32, i32::MIN as i64, i32::MAX as i64, false),
    ];
    types
        .into_iter()
        .filter(|(t, ..)| !signed_only || [dtype::INT8, dtype::INT16, dtype::INT32].contains(t))
        .find(|&(_, min, max, _)| min <= lo && hi <= max)
}

/// Little-endian bytes of `codes` as ONNX type `t`.
fn code_bytes(codes: &[i64], t: i32) -> Vec<u8> {
    codes
        .iter()
        .flat_map(|&c| match t {
            dtype::UINT8 | dtype::INT8 => vec![c as u8],
            dtype::UINT16 | dtype::INT16 => (c as u16).to_le_bytes().to_vec(),
            _ => (c as i32).to_le_bytes().to_vec(),
        })
        .collect()
}

fn tensor(name: &str, dims: &[usize], t: i32, raw: Vec<u8>) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name.into();
    tensor.dims = dims.iter().map(|&d| d as i64).collect();
    tensor.data_type = t;
    tensor.raw_data = raw.into();
    tensor
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, dtype::FLOAT, raw)
}

/// An integer attribute.
pub fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

/// An attribute of integers.
pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// A float tensor value [N, dims...] with a dynamic batch axis.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let tensor_type = v.type_.mut_or_insert_default().mut_tensor_type();
    tensor_type.elem_type = dtype::FLOAT;
    let shape = tensor_type.shape.mut_or_insert_default();
    shape.dim.push(Default::default());
    shape.dim[0].set_dim_param("N".into());
    for &d in dims {
        shape.dim.push(Default::default());
        shape
            .dim
            .last_mut()
            .expect("pushed")
            .set_dim_value(d as i64);
    }
    v
}

/// A built-in model's graph under construction: its nodes, and its parameters (PyTorch names
/// and layouts) as initialisers when a node names them.
pub struct OnnxWriter {
    graph: GraphProto,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    count: usize,
}

impl OnnxWriter {
    /// The graph's input: images [N, C, H, W] in [0, 1].
    pub const INPUT: &'static str = "images";

    /// The parameter `name` (`conv0.weight`) as an initialiser; its name.
    pub fn param(&mut self, name: &str) -> String {
        if !self.graph.initializer.iter().any(|t| t.name == name) {
            let (shape, values) = self
                .tensors
                .get(name)
                .unwrap_or_else(|| panic!("the model has no tensor {name}"));
            let t = float_tensor(name, shape, values);
            self.graph.initializer.push(t);
        }
        name.into()
    }

    /// A float constant of shape [] (broadcast against anything).
    pub fn scalar(&mut self, value: f32) -> String {
        self.count += 1;
        let name = format!("constant_{}", self.count);
        self.graph
            .initializer
            .push(float_tensor(&name, &[], &[value]));
        name
    }

    /// A node of `op` on `inputs`; its output's name. Nonlinearities are named by the layer
    /// whose output they are (the site advcomp quantises).
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let name = format!("{}_{}", op.to_ascii_lowercase(), self.count);
        self.graph.node.push(node(op, &name, inputs, &name, attrs));
        name
    }
}

/// A weight layer as the file names it: its weight and bias initialisers and the axis of its
/// output channels in the file's layout.
struct FileLayer {
    name: String,
    weight: String,
    bias: Option<String>,
    out_axis: usize,
}

/// The float model: the file's graph with the compressed weights, and its layers.
fn float_model(network: &Network) -> Result<(ModelProto, Vec<FileLayer>)> {
    let tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = checkpoint::export_tensors(network)
        .into_iter()
        .map(|t| (t.name, (t.shape, t.values)))
        .collect();
    match network {
        Network::Onnx(m) if m.graph.qdq.is_some() => Err(Error::model(
            &m.graph.file,
            "is a quantised (QDQ) ONNX file already: ONNX Runtime runs it as it is (advcomp \
             exports the models it compresses)",
        )),
        Network::Onnx(m) => {
            let path = &m.graph.file;
            let bytes = crate::files::read_input(
                path,
                crate::limits::MAX_MODEL_BYTES as u64,
                4,
                Error::model,
            )?;
            if crate::files::sha256_hex(&bytes) != m.graph.sha256 {
                return Err(Error::model(
                    path,
                    "has changed since the model was read from it (its SHA-256 differs)",
                ));
            }
            let mut model = ModelProto::parse_from_bytes(&bytes)
                .map_err(|e| Error::model(path, format!("not a readable ONNX model: {e}")))?;
            let graph = model.graph.mut_or_insert_default();
            for t in graph.initializer.iter_mut() {
                if let Some((shape, values)) = tensors.get(&t.name) {
                    *t = float_tensor(&t.name, shape, values);
                }
            }
            if m.graph.stripped.is_some() {
                strip_final_node(graph);
            }
            let layers = m
                .graph
                .weights
                .iter()
                .map(|&i| {
                    let layer = m.graph.layer(i);
                    let bias = m
                        .graph
                        .biases
                        .iter()
                        .find(|&&b| m.graph.layer(b) == layer)
                        .map(|&b| m.graph.params[b].0.clone());
                    FileLayer {
                        weight: m.graph.params[i].0.clone(),
                        bias,
                        out_axis: m.graph.out_axis(i),
                        name: layer,
                    }
                })
                .collect();
            Ok((model, layers))
        }
        builtin => {
            let mut writer = OnnxWriter {
                graph: GraphProto::new(),
                tensors,
                count: 0,
            };
            let logits = builtin.to_onnx(&mut writer)?;
            let mut graph = writer.graph;
            // The last node writes the logits under their own name.
            let last = graph
                .node
                .iter_mut()
                .rev()
                .find(|n| n.output == [logits.clone()]);
            last.expect("the logits' node").output = vec!["logits".into()];
            graph.name = network.model_ref().to_string();
            graph.input = vec![value_info(OnnxWriter::INPUT, &network.input_shape())];
            graph.output = vec![value_info("logits", &[network.classes()])];
            let mut model = ModelProto::new();
            model.ir_version = 7;
            model.opset_import.push(Default::default());
            model.opset_import[0].version = 13;
            model.graph = Some(graph).into();
            // PyTorch's layouts: every weight's output channels first.
            let layers = weight_layers(network)
                .into_iter()
                .map(|l| FileLayer {
                    weight: format!("{}.weight", l.name),
                    bias: Some(format!("{}.bias", l.name))
                        .filter(|b| model.graph.initializer.iter().any(|t| t.name == *b)),
                    out_axis: 0,
                    name: l.name,
                })
                .collect();
            Ok((model, layers))
        }
    }
}

/// Removes the node that writes the graph's output (a final Softmax the import removed), so
/// the graph returns its input: the logits.
fn strip_final_node(graph: &mut GraphProto) {
    let Some(output) = graph.output.first().map(|o| o.name.clone()) else {
        return;
    };
    if let Some(i) = graph.node.iter().position(|n| n.output.contains(&output)) {
        let removed = graph.node.remove(i);
        if let Some(input) = removed.input.first() {
            graph.output[0].name = input.clone();
        }
    }
}

/// The QDQ rewrite of one graph.
struct Rewrite<'a> {
    graph: &'a mut GraphProto,
    /// Whether a type of opset 21 (int16, uint16) was used.
    opset21: bool,
}

impl Rewrite<'_> {
    /// `name`'s float initialiser replaced by its codes on `grid` and a DequantizeLinear that
    /// writes `name` (the consumers are unchanged).
    fn dequantised(&mut self, name: &str, grid: &Grid) -> Result<()> {
        let i = self
            .graph
            .initializer
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::usage(format!("export: no initialiser {name}")))?;
        let t = self.graph.initializer.remove(i);
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let values: Vec<f32> = t
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let (channels, inner) = match grid.axis {
            None => (1, values.len()),
            Some(a) => (dims[a], dims[a + 1..].iter().product()),
        };
        let mut codes = Vec::with_capacity(values.len());
        for (k, &v) in values.iter().enumerate() {
            let c = (k / inner.max(1)) % channels;
            let code = grid.code(v, c);
            // The compressed weights lie on their grid: the codes give them back exactly.
            if ((code - grid.zero[c]) as f32 * grid.scale[c]).to_bits() != v.to_bits()
                && !(v == 0.0 && code == grid.zero[c])
            {
                return Err(Error::usage(format!(
                    "export: {name}[{k}] = {v} is not on its grid"
                )));
            }
            codes.push(code);
        }
        let (lo, hi) = (grid.qmin, grid.qmax);
        let (t_code, .., opset21) = storage(lo, hi, true).expect("grids fit int32");
        self.opset21 |= opset21;
        let quantised = format!("{name}_quantized");
        self.graph.initializer.push(tensor(
            &quantised,
            &dims,
            t_code,
            code_bytes(&codes, t_code),
        ));
        let (scale, zero) = self.scale_and_zero(name, grid, t_code);
        let attrs = grid
            .axis
            .map(|a| int("axis", a as i64))
            .into_iter()
            .collect();
        let dq = node(
            "DequantizeLinear",
            &format!("{name}_DequantizeLinear"),
            &[&quantised, &scale, &zero],
            name,
            attrs,
        );
        self.graph.node.insert(0, dq);
        Ok(())
    }

    /// Initialisers of `grid`'s scales and zero points (of type `t`), named after `base`.
    fn scale_and_zero(&mut self, base: &str, grid: &Grid, t: i32) -> (String, String) {
        let dims: Vec<usize> = match grid.axis {
            Some(_) => vec![grid.channels()],
            None => vec![],
        };
        let (scale, zero) = (format!("{base}_scale"), format!("{base}_zero_point"));
        self.graph
            .initializer
            .push(float_tensor(&scale, &dims, &grid.scale));
        self.graph
            .initializer
            .push(tensor(&zero, &dims, t, code_bytes(&grid.zero, t)));
        (scale, zero)
    }

    /// Nodes computing q(`x`) on the per-tensor `grid` into `out`, inserted before node
    /// `at` (so they run before their consumer).
    fn quantised(&mut self, x: &str, out: &str, grid: &Grid, at: usize) {
        let [c] = grid.table()[..] else {
            unreachable!("activations are quantised per tensor")
        };
        let mut nodes = Vec::new();
        let clip = |rewrite: &mut Self, from: &str, nodes: &mut Vec<NodeProto>| {
            let (lo, hi) = (format!("{out}_min"), format!("{out}_max"));
            rewrite
                .graph
                .initializer
                .push(float_tensor(&lo, &[], &[c.lo * c.scale]));
            rewrite
                .graph
                .initializer
                .push(float_tensor(&hi, &[], &[c.hi * c.scale]));
            nodes.push(node(
                "Clip",
                &format!("{out}_Clip"),
                &[from, &lo, &hi],
                out,
                vec![],
            ));
        };
        match storage(grid.qmin, grid.qmax, false).filter(|(t, ..)| *t != dtype::INT32) {
            Some((t, min, max, opset21)) => {
                self.opset21 |= opset21;
                let (scale, zero) = self.scale_and_zero(out, grid, t);
                let (q, dq) = (format!("{out}_quantized"), format!("{out}_dequantized"));
                let narrow = (min, max) != (grid.qmin, grid.qmax);
                let dq_out = if narrow { dq.as_str() } else { out };
                nodes.push(node(
                    "QuantizeLinear",
                    &format!("{out}_QuantizeLinear"),
                    &[x, &scale, &zero],
                    &q,
                    vec![],
                ));
                nodes.push(node(
                    "DequantizeLinear",
                    &format!("{out}_DequantizeLinear"),
                    &[&q, &scale, &zero],
                    dq_out,
                    vec![],
                ));
                if narrow {
                    clip(self, &dq, &mut nodes);
                }
            }
            None => {
                // No ONNX type this wide: the same arithmetic in float.
                let (inv, scale) = (format!("{out}_inv_scale"), format!("{out}_scale"));
                self.graph
                    .initializer
                    .push(float_tensor(&inv, &[], &[c.inv_scale]));
                self.graph
                    .initializer
                    .push(float_tensor(&scale, &[], &[c.scale]));
                let (m, r, k) = (
                    format!("{out}_scaled"),
                    format!("{out}_rounded"),
                    format!("{out}_codes"),
                );
                nodes.push(node("Mul", &format!("{out}_Mul"), &[x, &inv], &m, vec![]));
                nodes.push(node("Round", &format!("{out}_Round"), &[&m], &r, vec![]));
                let (lo, hi) = (format!("{out}_code_min"), format!("{out}_code_max"));
                self.graph.initializer.push(float_tensor(&lo, &[], &[c.lo]));
                self.graph.initializer.push(float_tensor(&hi, &[], &[c.hi]));
                nodes.push(node(
                    "Clip",
                    &format!("{out}_Clip"),
                    &[&r, &lo, &hi],
                    &k,
                    vec![],
                ));
                nodes.push(node(
                    "Mul",
                    &format!("{out}_Dequantize"),
                    &[&k, &scale],
                    out,
                    vec![],
                ));
            }
        }
        for (k, n) in nodes.into_iter().enumerate() {
            self.graph.node.insert(at + k, n);
        }
    }

    /// Quantises the tensor `name` that node `producer` writes: the producer writes
    /// `<name>_float` and the QDQ nodes write `name`, so every consumer reads q(`name`).
    fn quantise_output(&mut self, producer: usize, name: &str, grid: &Grid) {
        let float = format!("{name}_float");
        for o in self.graph.node[producer].output.iter_mut() {
            if o == name {
                *o = float.clone();
            }
        }
        self.quantised(&float, name, grid, producer + 1);
    }

    /// Quantises input `slot` of node `consumer` alone: q(x) on that edge.
    fn quantise_input(&mut self, consumer: usize, slot: usize, site: &str, grid: &Grid) {
        let x = self.graph.node[consumer].input[slot].clone();
        let out = format!("{}_input_q", site.replace([':', '/', '.'], "_"));
        self.graph.node[consumer].input[slot] = out.clone();
        self.quantised(&x, &out, grid, consumer);
    }
}

/// The grid `grid` (whose axis is the model's layout) with its axis in the file's layout.
fn in_file_layout(grid: Grid, out_axis: usize) -> Grid {
    Grid {
        axis: grid.axis.map(|_| out_axis),
        ..grid
    }
}

/// The QDQ nodes of `quant` into `model`'s graph.
fn add_qdq(model: &mut ModelProto, layers: &[FileLayer], quant: &Quantisation) -> Result<()> {
    let graph = model.graph.mut_or_insert_default();
    let mut rewrite = Rewrite {
        graph,
        opset21: false,
    };
    for layer in layers {
        if let Some(grid) = quant.weight_grid(&layer.name) {
            rewrite.dequantised(&layer.weight, &in_file_layout(grid, layer.out_axis))?;
        }
        if let (Some(bias), Some(grid)) = (&layer.bias, quant.bias_grid(&layer.name)) {
            rewrite.dequantised(bias, &grid)?;
        }
    }
    let data_dependent = quant.config.kind().data_dependent();
    match quant.config.sites() {
        Sites::Inputs => {
            for layer in layers {
                let Some(grid) = quant.activation_grid(&layer.name, true) else {
                    continue;
                };
                let g = &mut *rewrite.graph;
                let consumer = g
                    .node
                    .iter()
                    .position(|n| n.input.iter().skip(1).any(|i| *i == layer.weight))
                    .ok_or_else(|| {
                        Error::usage(format!("export: no node reads {}", layer.weight))
                    })?;
                rewrite.quantise_input(consumer, 0, &crate::quant::input_site(&layer.name), &grid);
            }
        }
        Sites::Outputs => {
            let grid = match (data_dependent, quant.config.uniform_activation_grid()) {
                (false, grid) => grid,
                (true, _) => {
                    return Err(Error::usage(
                        "export: per-site grids at layer outputs cannot be placed in the file",
                    ));
                }
            };
            if let Some(grid) = grid {
                let mut i = 0;
                while i < rewrite.graph.node.len() {
                    let n = &rewrite.graph.node[i];
                    if NONLINEARITIES.contains(&n.op_type.as_str()) {
                        let out = n.output[0].clone();
                        let before = rewrite.graph.node.len();
                        rewrite.quantise_output(i, &out, &grid);
                        i += rewrite.graph.node.len() - before;
                    }
                    i += 1;
                }
            }
        }
    }
    if let Some(grid) = quant.activation_grid("logits", false) {
        let output = rewrite.graph.output[0].name.clone();
        let producer = rewrite
            .graph
            .node
            .iter()
            .position(|n| n.output.contains(&output))
            .ok_or_else(|| Error::usage("export: nothing writes the graph's output"))?;
        rewrite.quantise_output(producer, &output, &grid);
    }
    let opset21 = rewrite.opset21;
    for op in model
        .opset_import
        .iter_mut()
        .filter(|o| o.domain.is_empty())
    {
        op.version = op.version.max(if opset21 { 21 } else { 13 });
    }
    model.ir_version = model.ir_version.max(if opset21 { 10 } else { 7 });
    Ok(())
}

/// `network` compressed as `compression` says, as the bytes of an ONNX file ONNX Runtime runs
/// (QDQ where it quantises; a plain float graph when it does not).
pub fn export(network: &Network, compression: &Compression) -> Result<Vec<u8>> {
    let baked = bake(network.clone(), compression);
    let (mut model, layers) = float_model(&baked)?;
    if let Some(quant) = &compression.quant {
        add_qdq(&mut model, &layers, quant)?;
    }
    model.producer_name = "advcomp".into();
    model.producer_version = crate::VERSION.into();
    model.doc_string = match &compression.quant {
        Some(q) => format!("{}: {}", network.model_ref(), q.config.describe()),
        None => format!("{}", network.model_ref()),
    };
    model
        .write_to_bytes()
        .map_err(|e| Error::usage(format!("export: {e}")))
}

/// Writes `network` as [`export`] makes it to `path` (atomically).
pub fn export_file(network: &Network, compression: &Compression, path: &Path) -> Result<()> {
    let bytes = export(network, compression)?;
    crate::write_atomically(path, &bytes)
}
