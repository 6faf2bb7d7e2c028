//! LayerNormalization: normalised over the axes from `axis` on, then scaled and shifted.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub x: Operand,
    pub scale: Operand,
    pub bias: Option<Operand>,
    pub axis: usize,
    pub epsilon: f64,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let axis = fold::axis(n.attrs.int("axis", -1), rank)?;
    let known = |i: usize| matches!(n.inputs.get(i), Some(Some(build::Value::Known(_))));
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
    one(Op::LayerNorm(LayerNorm {
        x,
        scale,
        bias,
        axis,
        epsilon: f64::from(n.attrs.float("epsilon", 1e-5)),
    }))
}

impl StepKind for LayerNorm {
    fn operands(&self) -> Vec<Operand> {
        [Some(self.x), Some(self.scale), self.bias]
            .into_iter()
            .flatten()
            .collect()
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (x, axis) = (shape(self.x), self.axis);
        let scale = shape(self.scale);
        let bias = self.bias.map(shape);
        let axes: Vec<usize> = (axis..x.len()).collect();
        shapes::per_image(&x, &axes, "normalisation")?;
        for (name, p) in [("Scale", Some(scale.as_slice())), ("B", bias.as_deref())] {
            if let Some(p) = p
                && shapes::broadcast(&[&x[axis..], p]).ok().as_deref() != Some(&x[axis..])
            {
                return Err(format!(
                    "{name} has shape {}; it must broadcast to the normalised axes {}",
                    shape_text(p),
                    shape_text(&x[axis..])
                ));
            }
        }
        shapes::epsilon(self.epsilon)?;
        Ok(x)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let dims = x.dims();
        let rows: usize = dims[..self.axis].iter().product();
        let columns: usize = dims[self.axis..].iter().product();
        let m: Tensor<2> = x.t.reshape([rows, columns]);
        let centred = m.clone() - m.mean_dim(1);
        let var = centred.clone().powi_scalar(2).mean_dim(1);
        let normed = centred / (var + self.epsilon as f32).sqrt();
        let mut t = Value::of_shape(normed.reshape(padded(&[rows * columns])), &dims).t;
        t = t * env.get(self.scale).t;
        if let Some(b) = self.bias {
            t = t + env.get(b).t;
        }
        Value {
            t,
            rank: dims.len(),
        }
    }
}
