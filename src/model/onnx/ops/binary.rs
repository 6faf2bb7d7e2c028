//! Elementwise functions of two inputs, with NumPy broadcasting.

use super::prelude::*;

#[derive(Clone, Copy, Debug)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Min,
    Max,
}

impl std::fmt::Display for BinaryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Clone, Debug)]
pub struct Binary {
    pub kind: BinaryKind,
    pub a: Operand,
    pub b: Operand,
}

pub fn convert(b: &mut Builder, n: &Node, kind: BinaryKind) -> Result<Built, String> {
    one(Op::Binary(Binary {
        kind,
        a: b.operand(n, 0)?,
        b: b.operand(n, 1)?,
    }))
}

/// Min / Max of one input (itself) or two.
pub fn variadic(b: &mut Builder, n: &Node, kind: BinaryKind) -> Result<Built, String> {
    match n.inputs.len() {
        1 => Ok(Built::Same),
        2 => convert(b, n, kind),
        k => Err(format!("{k} inputs; one or two are supported")),
    }
}

impl StepKind for Binary {
    fn operands(&self) -> Vec<Operand> {
        vec![self.a, self.b]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        shapes::broadcast(&[&shape(self.a), &shape(self.b)])
            .map_err(|why| format!("{:?}: {why}", self.kind))
    }

    fn run(&self, env: &Env) -> Value {
        let (a, b) = (env.get(self.a), env.get(self.b));
        let rank = a.rank.max(b.rank);
        let t = match self.kind {
            BinaryKind::Add => a.t + b.t,
            BinaryKind::Sub => a.t - b.t,
            BinaryKind::Mul => a.t * b.t,
            BinaryKind::Div => a.t / b.t,
            BinaryKind::Pow => {
                let shape = broadcast_dims(&a.t.dims(), &b.t.dims());
                a.t.expand(shape).powf(b.t.expand(shape))
            }
            BinaryKind::Min | BinaryKind::Max => {
                let shape = broadcast_dims(&a.t.dims(), &b.t.dims());
                let (a, b) = (a.t.expand(shape), b.t.expand(shape));
                match self.kind {
                    BinaryKind::Min => a.min_pair(b),
                    _ => a.max_pair(b),
                }
            }
        };
        Value { t, rank }
    }
}
