//! Quantised graphs in ONNX's QDQ format (ONNX Runtime's `quantize_static`, PyTorch and
//! Brevitas exports): `QuantizeLinear` / `DequantizeLinear` nodes, emulated exactly.
//!
//! - `DequantizeLinear` of a tensor the file stores (an int8 weight, an int32 bias, a uint8
//!   constant) is computed at import: (q − z) · s in f32, as ONNX Runtime computes it. The grid
//!   (s, z, the type's code range; per tensor or per axis) is kept with the value: a weight or
//!   bias that reads it is quantised on that grid in the compressed model (which gives back the
//!   same numbers, and keeps them on the grid while fine-tuning).
//! - `QuantizeLinear` of a value computed from the images, read only by `DequantizeLinear`s of
//!   the same scale and zero point, is one fake-quantisation step ([`Quantise`]): the
//!   compressed model applies its grid (round half to even, saturate, zero point); the full
//!   model passes the value through, or applies a ReLU where the zero point is the type's
//!   minimum (ONNX Runtime's quantiser deletes a ReLU before such a QuantizeLinear and lets
//!   saturation do its work).
//! - `QuantizeLinear` of a stored tensor (a float weight behind Q/DQ) is computed at import.
//!
//! What ONNX Runtime runs silently but advcomp refuses, naming the node: a zero, negative or
//! non-finite scale; a zero point outside its type's range (ONNX Runtime wraps it); per-axis
//! scales or zero points whose length is not the axis's; an axis outside the tensor; blocked
//! quantisation; and any type but uint8 and int8 (int32 for biases).

use super::Operand;
use super::build::{Builder, Node, Value};
use super::fold::{Data, Dim, Host};
use super::ops::{Op, Quantise};
use crate::kernels::Grid;
use crate::quant::IntType;

/// The integer types advcomp emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QType {
    Uint8,
    Int8,
    /// Biases only (ONNX Runtime's `bias scale = input scale × weight scale`).
    Int32,
}

impl QType {
    /// The type of ONNX's `TensorProto.DataType` number `t`.
    fn from_onnx(t: i32) -> std::result::Result<QType, String> {
        match t {
            2 => Ok(QType::Uint8),
            3 => Ok(QType::Int8),
            6 => Ok(QType::Int32),
            other => Err(format!(
                "its integer type is {} (ONNX type {other}); advcomp emulates uint8 and int8 \
                 (and int32 biases)",
                onnx_type_name(other)
            )),
        }
    }

    pub fn range(self) -> (i64, i64) {
        match self {
            QType::Uint8 => (0, 255),
            QType::Int8 => (-128, 127),
            QType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QType::Uint8 => "uint8",
            QType::Int8 => "int8",
            QType::Int32 => "int32",
        }
    }

    /// The affine quantiser's type of the same name (int32 has none).
    pub fn int_type(self) -> Option<IntType> {
        match self {
            QType::Uint8 => Some(IntType::Uint8),
            QType::Int8 => Some(IntType::Int8),
            QType::Int32 => None,
        }
    }
}

fn onnx_type_name(t: i32) -> &'static str {
    match t {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        10 => "float16",
        16 => "bfloat16",
        17..=20 => "float8",
        21 => "uint4",
        22 => "int4",
        _ => "unknown",
    }
}

/// A stored tensor dequantised at import: the grid its values lie on, and its type.
#[derive(Clone, Debug)]
pub struct Dequantised {
    pub grid: Grid,
    pub qtype: QType,
}

/// A QuantizeLinear of a computed value: the step that fake-quantises it, and its grid (which
/// the DequantizeLinears reading it must repeat).
#[derive(Clone, Debug)]
pub struct Quantised {
    pub slot: usize,
    pub grid: Grid,
    pub qtype: QType,
    /// Its ONNX type number.
    pub onnx_type: i32,
}

/// A Q or DQ node's scale, zero point and axis, checked against the shape of the tensor it
/// (de)quantises.
fn grid_of(
    b: &Builder,
    n: &Node,
    shape: &[Dim],
    qtype: QType,
) -> std::result::Result<Grid, String> {
    if n.attrs.int("block_size", 0) != 0 {
        return Err("blocked quantisation (block_size) is not supported".into());
    }
    let scale_host = b.required(n, 1, "scale")?;
    let scale = match &scale_host.data {
        Data::Float(v) => v.clone(),
        _ => return Err(format!("scale '{}' holds no floats", n.name(1))),
    };
    if let Some((i, s)) = scale
        .iter()
        .enumerate()
        .find(|(_, s)| !(**s > 0.0 && s.is_finite() && (1.0 / **s).is_finite()))
    {
        return Err(format!(
            "scale '{}' is {s:e} (element {i}): a scale must be a positive number with a \
             finite reciprocal",
            n.name(1)
        ));
    }
    let (qmin, qmax) = qtype.range();
    let zero = match b.known(n, 2, "zero point")? {
        Some(z) => {
            let values = z.fixed_ints(&format!("zero point '{}'", n.name(2)))?;
            if z.shape != scale_host.shape {
                return Err(format!(
                    "zero point '{}' has shape {:?}, its scale {:?}: they must be the same",
                    n.name(2),
                    z.shape,
                    scale_host.shape
                ));
            }
            in_range(&values, qtype, &format!("zero point '{}' is", n.name(2)))?;
            values
        }
        None => vec![0; scale.len()],
    };
    let per_tensor = scale_host.shape.is_empty() || scale_host.shape == [1];
    let axis = match per_tensor {
        true => None,
        false => {
            if scale_host.shape.len() != 1 {
                return Err(format!(
                    "scale '{}' has shape {:?}: one scale, or one per element along the axis",
                    n.name(1),
                    scale_host.shape
                ));
            }
            let rank = shape.len() as i64;
            let axis = n.attrs.int("axis", 1);
            if !(-rank..rank).contains(&axis) {
                return Err(format!(
                    "axis {axis} is outside the input's {rank} axes [{}, {}]",
                    -rank,
                    rank - 1
                ));
            }
            let axis = (if axis < 0 { axis + rank } else { axis }) as usize;
            let length = shape[axis].known();
            if length != Some(scale.len() as i64) {
                return Err(format!(
                    "per-axis scale '{}' has {} elements, but axis {axis} of the input has \
                     length {}",
                    n.name(1),
                    scale.len(),
                    shape[axis]
                ));
            }
            Some(axis)
        }
    };
    Grid::new(axis, scale, zero, qmin, qmax).map_err(|e| e.to_string())
}

/// Refuses a value outside `qtype`'s range: "`what` V (element I), outside T's range".
fn in_range(values: &[i64], qtype: QType, what: &str) -> std::result::Result<(), String> {
    let (qmin, qmax) = qtype.range();
    match values
        .iter()
        .enumerate()
        .find(|(_, v)| !(qmin..=qmax).contains(*v))
    {
        Some((i, v)) => Err(format!(
            "{what} {v} (element {i}), outside {}'s range [{qmin}, {qmax}]",
            qtype.name()
        )),
        None => Ok(()),
    }
}

/// The type of input `i` when the file says it (an initialiser or a Constant).
fn declared_type(b: &Builder, n: &Node, i: usize) -> Option<i32> {
    b.types.get(n.name(i)).copied()
}

/// Converts a QuantizeLinear or DequantizeLinear node.
pub(super) fn node(b: &mut Builder, n: &Node) -> std::result::Result<(), String> {
    let dequantise = n.proto.op_type == "DequantizeLinear";
    let out = n.proto.output.first().ok_or("no output")?.clone();
    let input = n
        .inputs
        .first()
        .cloned()
        .flatten()
        .ok_or("missing input 0")?;
    // The type: the zero point's, else (Q) the output_dtype attribute or uint8, (DQ) the
    // stored input's.
    let onnx_type = match (n.inputs.get(2), dequantise) {
        (Some(Some(_)), _) => declared_type(b, n, 2)
            .ok_or_else(|| format!("the type of zero point '{}' is not known", n.name(2)))?,
        (_, false) => match n.attrs.int("output_dtype", 0) {
            0 => 2,
            t => t as i32,
        },
        (_, true) => match b.quantised.get(n.name(0)) {
            Some(q) => q.onnx_type,
            None => declared_type(b, n, 0)
                .ok_or_else(|| format!("the integer type of input '{}' is not known", n.name(0)))?,
        },
    };
    let qtype = QType::from_onnx(onnx_type)?;
    match (dequantise, input) {
        // A stored tensor dequantised at import.
        (true, Value::Known(k)) => {
            let stored = declared_type(b, n, 0);
            if stored.is_some_and(|t| t != onnx_type) {
                return Err(format!(
                    "input '{}' is {} but its zero point is {}",
                    n.name(0),
                    onnx_type_name(stored.unwrap_or(0)),
                    qtype.name()
                ));
            }
            let host = b.known[k].clone();
            let grid = grid_of(b, n, &super::fold::fixed_shape(&host.shape), qtype)?;
            let codes = host.fixed_ints(&format!("input '{}'", n.name(0)))?;
            in_range(&codes, qtype, &format!("input '{}' holds", n.name(0)))?;
            let values = dequantised_values(&codes, &host.shape, &grid);
            let k = b.bind_known(&out, Host::floats(host.shape.clone(), values));
            b.dequantised.insert(k, Dequantised { grid, qtype });
            Ok(())
        }
        // The DequantizeLinear of a QuantizeLinear: the fake-quantisation step already made.
        (true, Value::Image(_)) => {
            let Some(q) = b.quantised.get(n.name(0)).cloned() else {
                return Err(format!(
                    "input '{}' is a float value computed from the images; DequantizeLinear \
                     reads integers (a QuantizeLinear's output, or a tensor the file stores)",
                    n.name(0)
                ));
            };
            let grid = grid_of(b, n, &b.shapes[q.slot].clone(), qtype)?;
            if grid != q.grid || qtype != q.qtype {
                return Err(format!(
                    "it dequantises '{}' with another scale, zero point or type than the \
                     QuantizeLinear that made it",
                    n.name(0)
                ));
            }
            b.values.insert(out, Value::Image(q.slot));
            Ok(())
        }
        // A stored float tensor quantised at import (a weight behind Q/DQ).
        (false, Value::Known(k)) => {
            let host = b.known[k].clone();
            let grid = grid_of(b, n, &super::fold::fixed_shape(&host.shape), qtype)?;
            let values = host.to_floats(&format!("input '{}'", n.name(0)))?;
            let codes = quantised_codes(&values, &host.shape, &grid);
            b.bind_known(
                &out,
                Host::ints(
                    host.shape.clone(),
                    codes.into_iter().map(Dim::new).collect(),
                ),
            );
            b.types.insert(out, onnx_type);
            Ok(())
        }
        // A computed value: one fake-quantisation step.
        (false, Value::Image(slot)) => {
            if qtype == QType::Int32 {
                return Err("QuantizeLinear to int32 is not valid ONNX".into());
            }
            let grid = grid_of(b, n, &b.shapes[slot].clone(), qtype)?;
            if grid.axis.is_some() {
                return Err(
                    "per-axis quantisation of a value computed from the images is not \
                     supported (activations are quantised per tensor)"
                        .into(),
                );
            }
            let relu = grid.zero[0] == grid.qmin;
            let site = out.clone();
            b.push(
                Op::Quantise(Quantise {
                    x: Operand::Value(slot),
                    site: site.clone(),
                    relu,
                }),
                &out,
                n,
            )?;
            let slot = b.shapes.len() - 1;
            b.qdq.activations.insert(site, grid.clone());
            b.activation_types.insert(qtype);
            b.quantised.insert(
                out,
                Quantised {
                    slot,
                    grid,
                    qtype,
                    onnx_type,
                },
            );
            Ok(())
        }
        (_, Value::Tainted(by)) => Err(format!(
            "input '{}' is computed from the image values by node {by}",
            n.name(0)
        )),
    }
}

/// The channel of each element of a tensor of `shape` under `grid`.
fn channels(shape: &[usize], grid: &Grid) -> impl Fn(usize) -> usize {
    let (inner, count) = match grid.axis {
        Some(a) => (shape[a + 1..].iter().product::<usize>(), shape[a]),
        None => (1, 1),
    };
    move |i| (i / inner.max(1)) % count.max(1)
}

/// (q − z) · s per element, in f32 as ONNX Runtime computes it.
fn dequantised_values(codes: &[i64], shape: &[usize], grid: &Grid) -> Vec<f32> {
    let channel = channels(shape, grid);
    codes
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let c = channel(i);
            (q - grid.zero[c]) as f32 * grid.scale[c]
        })
        .collect()
}

/// saturate(round_half_even(x / s) + z) per element, as ONNX defines QuantizeLinear.
fn quantised_codes(values: &[f32], shape: &[usize], grid: &Grid) -> Vec<i64> {
    let channel = channels(shape, grid);
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = channel(i);
            let code = (x / grid.scale[c]).round_ties_even() as i64 + grid.zero[c];
            code.clamp(grid.qmin, grid.qmax)
        })
        .collect()
}
