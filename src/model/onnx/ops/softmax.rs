//! Softmax / LogSoftmax over one axis.

use burn::tensor::activation::{log_softmax, softmax};

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Softmax {
    pub x: Operand,
    pub axis: usize,
    pub log: bool,
}

/// Softmax / LogSoftmax anywhere; at the graph's output over the classes, removed (attacks
/// need logits), and said.
pub fn convert(b: &mut Builder, n: &Node, log: bool) -> Result<Built, String> {
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
    one(Op::Softmax(Softmax { x, axis, log }))
}

impl StepKind for Softmax {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn is_activation(&self) -> bool {
        !self.log
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        shapes::per_image(&x, &[self.axis], "softmax")?;
        Ok(x)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let a = x.axis(self.axis);
        x.map(|t| {
            if self.log {
                log_softmax(t, a)
            } else {
                softmax(t, a)
            }
        })
    }
}
