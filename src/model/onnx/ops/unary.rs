//! Elementwise functions of one input.

use burn::tensor::activation::{leaky_relu, relu, sigmoid, tanh};

use super::prelude::*;

#[derive(Clone, Copy, Debug)]
pub enum UnaryKind {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    Clip {
        min: f32,
        max: f32,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// GELU, exact (erf) or its tanh approximation.
    Gelu {
        tanh: bool,
    },
    Elu(f32),
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Softplus,
    Erf,
    Exp,
    Log,
    Sqrt,
    Neg,
    Abs,
    Reciprocal,
}

#[derive(Clone, Debug)]
pub struct Unary {
    pub kind: UnaryKind,
    pub x: Operand,
}

pub fn convert(b: &mut Builder, n: &Node, kind: UnaryKind) -> Result<Built, String> {
    one(Op::Unary(Unary {
        kind,
        x: b.operand(n, 0)?,
    }))
}

pub fn gelu(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let tanh = match n.attrs.string("approximate", "none").as_str() {
        "none" => false,
        "tanh" => true,
        other => return Err(format!("approximate '{other}' is not supported")),
    };
    convert(b, n, UnaryKind::Gelu { tanh })
}

/// Clip's bounds: inputs (opset 11 on) or attributes (before), known at import.
pub fn clip(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let bound = |i: usize, name: &str, default: f32| -> Result<f32, String> {
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
    convert(b, n, UnaryKind::Clip { min, max })
}

impl StepKind for Unary {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn is_activation(&self) -> bool {
        !matches!(
            self.kind,
            UnaryKind::Erf
                | UnaryKind::Exp
                | UnaryKind::Log
                | UnaryKind::Sqrt
                | UnaryKind::Neg
                | UnaryKind::Abs
                | UnaryKind::Reciprocal
        )
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        match self.kind {
            UnaryKind::Clip { min, max } if min.is_nan() || max.is_nan() => {
                Err(format!("bounds min {min}, max {max}: NaN is no bound"))
            }
            _ => Ok(shape(self.x)),
        }
    }

    fn run(&self, env: &Env) -> Value {
        env.get(self.x).map(|t| unary(self.kind, t))
    }
}

fn unary(kind: UnaryKind, t: Tensor<MAX_RANK>) -> Tensor<MAX_RANK> {
    match kind {
        UnaryKind::Relu => relu(t),
        UnaryKind::LeakyRelu(alpha) => leaky_relu(t, f64::from(alpha)),
        UnaryKind::Sigmoid => sigmoid(t),
        UnaryKind::Tanh => tanh(t),
        UnaryKind::Clip { min, max } => t.clamp(min, max),
        UnaryKind::HardSigmoid { alpha, beta } => (t * alpha + beta).clamp(0.0, 1.0),
        UnaryKind::HardSwish => t.clone() * (t / 6.0 + 0.5).clamp(0.0, 1.0),
        UnaryKind::Gelu { tanh: false } => {
            t.clone() * ((t / std::f32::consts::SQRT_2).erf() + 1.0) * 0.5
        }
        UnaryKind::Gelu { tanh: true } => {
            let inner = (t.clone() + t.clone().powi_scalar(3) * 0.044_715)
                * (2.0 / std::f32::consts::PI).sqrt();
            t * (inner.tanh() + 1.0) * 0.5
        }
        UnaryKind::Elu(alpha) => {
            let negative = (t.clone().exp() - 1.0) * alpha;
            let mask = t.clone().lower_equal_elem(0.0);
            t.mask_where(mask, negative)
        }
        UnaryKind::Selu { alpha, gamma } => {
            let negative = (t.clone().exp() - 1.0) * alpha;
            let mask = t.clone().lower_equal_elem(0.0);
            t.mask_where(mask, negative) * gamma
        }
        // log(1 + e^x), stable for large |x|.
        UnaryKind::Softplus => relu(t.clone()) + (t.abs().neg().exp() + 1.0).log(),
        UnaryKind::Erf => t.erf(),
        UnaryKind::Exp => t.exp(),
        UnaryKind::Log => t.log(),
        UnaryKind::Sqrt => t.sqrt(),
        UnaryKind::Neg => t.neg(),
        UnaryKind::Abs => t.abs(),
        UnaryKind::Reciprocal => t.recip(),
    }
}
