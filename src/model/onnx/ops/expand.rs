//! Expand: broadcast to a shape resolved at import.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Expand {
    pub x: Operand,
    pub shape: Vec<Dim>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.required(n, 1, "shape")?.dims("the shape")?;
    one(Op::Expand(Expand { x, shape }))
}

impl StepKind for Expand {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        fold::expanded(&shape(self.x), &self.shape)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let target: Vec<usize> = self.shape.iter().map(|d| d.at(env.batch)).collect();
        let rank = x.rank.max(target.len());
        let out = broadcast_dims(&x.t.dims(), &padded(&target));
        Value {
            t: x.t.expand(out),
            rank,
        }
    }
}
