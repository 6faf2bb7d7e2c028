//! The step kinds: what one step of an imported graph computes. Each kind is one file in this
//! folder — its payload (a struct), the conversion of the ONNX ops that make it, its output
//! shape, its workspace, its forward pass, its operands and whether it is an activation —
//! implementing [`StepKind`], and one entry of the list at the end of this file, which
//! declares its module, makes it a variant of [`Op`] (`Op::Conv(Conv)`), dispatches to it and
//! names the ONNX ops it runs (the [`OPS`] table). An ONNX op that becomes steps of kinds that
//! exist already is one line of that list.

use super::build::{Builder, Built, Node};
use super::fold::Dim;
use super::proto::DataType;
use super::run::{Env, Value};
use super::{Operand, shapes};

use binary::BinaryKind;
use reduce::ReduceKind;
use unary::UnaryKind;

/// What each kind file needs from the rest of the import.
mod prelude {
    pub(super) use super::super::build::{self, Builder, Built, Node, one};
    pub(super) use super::super::fold::{self, Dim, shape_text};
    pub(super) use super::super::run::{Env, Value, broadcast_dims, padded};
    pub(super) use super::super::shapes::MAX_RANK;
    pub(super) use super::super::{Operand, shapes};
    pub(super) use super::{Op, Shape, StepKind};
    pub(super) use burn::prelude::*;
}

/// The shape of what an operand names, as the import knows it.
pub(super) type Shape<'a> = &'a dyn Fn(Operand) -> Vec<Dim>;

/// A step kind: one file in this folder implementing this, and one entry of the list below.
pub(super) trait StepKind {
    /// The operands the step reads.
    fn operands(&self) -> Vec<Operand>;

    /// Whether the step is a nonlinearity: its output is a layer output, quantised when
    /// activations are (the rule that makes an imported LeNet5 quantise where the built-in
    /// one does).
    fn is_activation(&self) -> bool {
        false
    }

    /// The output's shape, given the shape of each operand; `Err` says what does not fit
    /// (ONNX's checker and shape inference; [`shapes`] has what kinds share).
    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String>;

    /// Elements the step needs beside its inputs and output while it runs on one image.
    fn workspace(&self, _shape: Shape, _out: &[Dim]) -> usize {
        0
    }

    /// The step's output, its operands read from `env`.
    fn run(&self, env: &Env) -> Value;
}

/// How a node's inputs resolve into ops, per batch.
pub(super) type Convert = fn(&mut Builder, &Node) -> Result<Built, String>;

/// The step kinds, each `module::Kind { "OnnxOp" => conversion, ... }`, then `;` and the ONNX
/// ops that make no step: generates [`Op`], its dispatch and the [`OPS`] table.
macro_rules! step_kinds {
    (
        $($module:ident :: $kind:ident { $($op:literal => $convert:expr,)* })*;
        { $($same:literal => $same_convert:expr,)* }
    ) => {
        $(pub(super) mod $module;)*
        $(pub(super) use $module::$kind;)*

        /// One step's computation: its kind, with what the kind holds.
        #[derive(Clone, Debug)]
        pub(super) enum Op {
            $($kind($kind),)*
        }

        impl Op {
            /// The operands the op reads.
            pub(super) fn operands(&self) -> Vec<Operand> {
                match self {
                    $(Op::$kind(s) => s.operands(),)*
                }
            }

            /// Whether the op is a nonlinearity (its output quantised when activations are).
            pub(super) fn is_activation(&self) -> bool {
                match self {
                    $(Op::$kind(s) => s.is_activation(),)*
                }
            }

            /// The output's shape, given the shape of each operand; `Err` says what does not
            /// fit.
            pub(super) fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
                let out = match self {
                    $(Op::$kind(s) => s.output_shape(shape),)*
                }?;
                shapes::within_rank(out)
            }

            /// Elements the op needs beside its inputs and output while it runs on one image.
            pub(super) fn workspace(&self, shape: Shape, out: &[Dim]) -> usize {
                match self {
                    $(Op::$kind(s) => s.workspace(shape, out),)*
                }
            }

            /// The op's output, its operands read from `env`.
            pub(super) fn run(&self, env: &Env) -> Value {
                match self {
                    $(Op::$kind(s) => s.run(env),)*
                }
            }
        }

        /// The ops advcomp runs per batch, each with its conversion: the one list of them (the
        /// README's and docs/design.md's are checked against it by a test).
        pub(super) const OPS: &[(&str, Convert)] = &[
            $($(($op, $convert),)*)*
            $(($same, $same_convert),)*
        ];
    };
}

step_kinds! {
    conv::Conv { "Conv" => conv::convert, }
    linear::Linear {}
    gemm::Gemm { "Gemm" => gemm::convert, }
    matmul::MatMul { "MatMul" => matmul::convert, }
    binary::Binary {
        "Add" => |b, n| binary::convert(b, n, BinaryKind::Add),
        "Div" => |b, n| binary::convert(b, n, BinaryKind::Div),
        "Max" => |b, n| binary::variadic(b, n, BinaryKind::Max),
        "Min" => |b, n| binary::variadic(b, n, BinaryKind::Min),
        "Mul" => |b, n| binary::convert(b, n, BinaryKind::Mul),
        "Pow" => |b, n| binary::convert(b, n, BinaryKind::Pow),
        "Sub" => |b, n| binary::convert(b, n, BinaryKind::Sub),
    }
    unary::Unary {
        "Abs" => |b, n| unary::convert(b, n, UnaryKind::Abs),
        "Clip" => unary::clip,
        "Elu" => |b, n| unary::convert(b, n, UnaryKind::Elu(n.attrs.float("alpha", 1.0))),
        "Erf" => |b, n| unary::convert(b, n, UnaryKind::Erf),
        "Exp" => |b, n| unary::convert(b, n, UnaryKind::Exp),
        "Gelu" => unary::gelu,
        "HardSigmoid" => |b, n| {
            let (alpha, beta) = (n.attrs.float("alpha", 0.2), n.attrs.float("beta", 0.5));
            unary::convert(b, n, UnaryKind::HardSigmoid { alpha, beta })
        },
        "HardSwish" => |b, n| unary::convert(b, n, UnaryKind::HardSwish),
        "LeakyRelu" => |b, n| {
            unary::convert(b, n, UnaryKind::LeakyRelu(n.attrs.float("alpha", 0.01)))
        },
        "Log" => |b, n| unary::convert(b, n, UnaryKind::Log),
        "Neg" => |b, n| unary::convert(b, n, UnaryKind::Neg),
        "Reciprocal" => |b, n| unary::convert(b, n, UnaryKind::Reciprocal),
        "Relu" => |b, n| unary::convert(b, n, UnaryKind::Relu),
        "Selu" => |b, n| {
            let alpha = n.attrs.float("alpha", 1.673_263_2);
            let gamma = n.attrs.float("gamma", 1.050_701);
            unary::convert(b, n, UnaryKind::Selu { alpha, gamma })
        },
        "Sigmoid" => |b, n| unary::convert(b, n, UnaryKind::Sigmoid),
        "Softplus" => |b, n| unary::convert(b, n, UnaryKind::Softplus),
        "Sqrt" => |b, n| unary::convert(b, n, UnaryKind::Sqrt),
        "Tanh" => |b, n| unary::convert(b, n, UnaryKind::Tanh),
    }
    pool::Pool {
        "AveragePool" => pool::average_pool,
        "MaxPool" => pool::max_pool,
    }
    batch_norm::BatchNorm { "BatchNormalization" => batch_norm::convert, }
    layer_norm::LayerNorm { "LayerNormalization" => layer_norm::convert, }
    softmax::Softmax {
        "LogSoftmax" => |b, n| softmax::convert(b, n, true),
        "Softmax" => |b, n| softmax::convert(b, n, false),
    }
    reduce::Reduce {
        "GlobalAveragePool" => |b, n| reduce::global_pool(b, n, ReduceKind::Mean),
        "GlobalMaxPool" => |b, n| reduce::global_pool(b, n, ReduceKind::Max),
        "ReduceMax" => |b, n| reduce::convert(b, n, ReduceKind::Max),
        "ReduceMean" => |b, n| reduce::convert(b, n, ReduceKind::Mean),
        "ReduceSum" => |b, n| reduce::convert(b, n, ReduceKind::Sum),
    }
    reshape::Reshape {
        "Flatten" => reshape::flatten,
        "Reshape" => reshape::convert,
        "Squeeze" => reshape::squeeze,
        "Unsqueeze" => reshape::unsqueeze,
    }
    transpose::Transpose { "Transpose" => transpose::convert, }
    slice::Slice {
        "Slice" => slice::convert,
        "Split" => slice::split,
    }
    concat::Concat { "Concat" => concat::convert, }
    expand::Expand { "Expand" => expand::convert, }
    pad::Pad { "Pad" => pad::convert, }
    gather::Gather {
        "Gather" => gather::convert,
        "GatherND" => gather::gather_nd,
    }
    where_::Where { "Where" => where_::convert, }
    resize::Resize { "Resize" => resize::convert, }
    quantise::Quantise {};
    // The ops that make no step: their output is their input (or integers, for a Cast).
    {
        "Cast" => cast,
        "Dropout" => |_, _| Ok(Built::Same),
        "Identity" => |_, _| Ok(Built::Same),
    }
}

/// A Cast to float is its input; to anything else, integers or booleans.
fn cast(_: &mut Builder, n: &Node) -> Result<Built, String> {
    match DataType::from_onnx(n.attrs.int("to", 0))? {
        DataType::Float => Ok(Built::Same),
        _ => Ok(Built::Tainted),
    }
}
