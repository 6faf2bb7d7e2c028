//! Reshape, Flatten, Squeeze, Unsqueeze: the output's lengths, resolved at import.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Reshape {
    pub x: Operand,
    pub shape: Vec<Dim>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let to = b.required(n, 1, "shape")?.dims("the shape")?;
    let shape = fold::reshaped(&b.shape(x), &to, n.attrs.int("allowzero", 0) == 1)?;
    one(Op::Reshape(Reshape { x, shape }))
}

pub fn flatten(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let from = b.shape(x);
    let a = fold::axis(n.attrs.int("axis", 1), from.len() + 1)?;
    let rows = fold::product(&from[..a]).ok_or("too many elements")?;
    let columns = fold::product(&from[a..]).ok_or("too many elements")?;
    one(Op::Reshape(Reshape {
        x,
        shape: vec![rows, columns],
    }))
}

pub fn squeeze(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?;
    let shape = fold::squeezed(&b.shape(x), axes.as_deref())?;
    one(Op::Reshape(Reshape { x, shape }))
}

pub fn unsqueeze(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?.ok_or("no axes")?;
    let shape = fold::unsqueezed(&b.shape(x), &axes)?;
    one(Op::Reshape(Reshape { x, shape }))
}

impl StepKind for Reshape {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        fold::reshaped(&shape(self.x), &self.shape, true)
    }

    fn run(&self, env: &Env) -> Value {
        let dims: Vec<usize> = self.shape.iter().map(|d| d.at(env.batch)).collect();
        Value::of_shape(env.get(self.x).t, &dims)
    }
}
