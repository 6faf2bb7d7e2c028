//! Concat along one axis.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Concat {
    pub inputs: Vec<Operand>,
    pub axis: usize,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let inputs = (0..n.inputs.len())
        .map(|i| b.operand(n, i))
        .collect::<Result<Vec<_>, _>>()?;
    let rank = b.shape(*inputs.first().ok_or("no inputs")?).len();
    let axis = fold::axis(n.attrs.int("axis", 0), rank)?;
    one(Op::Concat(Concat { inputs, axis }))
}

impl StepKind for Concat {
    fn operands(&self) -> Vec<Operand> {
        self.inputs.clone()
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let inputs: Vec<Vec<Dim>> = self.inputs.iter().map(|i| shape(*i)).collect();
        let axis = self.axis;
        let first = inputs.first().ok_or("no inputs")?;
        if axis >= first.len() {
            return Err(format!(
                "axis {axis} is past the inputs' rank {}",
                first.len()
            ));
        }
        let mut out = first.clone();
        for other in &inputs[1..] {
            let same = other.len() == first.len()
                && (0..first.len()).all(|i| i == axis || other[i] == first[i]);
            if !same {
                return Err(format!(
                    "inputs of shapes {} and {} differ outside axis {axis}",
                    shape_text(first),
                    shape_text(other)
                ));
            }
            out[axis] = out[axis].add(other[axis]).ok_or("too many elements")?;
        }
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let parts: Vec<Value> = self.inputs.iter().map(|o| env.get(*o)).collect();
        let rank = parts[0].rank;
        let a = parts[0].axis(self.axis);
        Value {
            t: Tensor::cat(parts.into_iter().map(|v| v.t).collect(), a),
            rank,
        }
    }
}
