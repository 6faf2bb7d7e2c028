//! Transpose: the axes permuted.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Transpose {
    pub x: Operand,
    pub perm: Vec<usize>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let perm = fold::permutation(&n.attrs, b.shape(x).len())?;
    one(Op::Transpose(Transpose { x, perm }))
}

impl StepKind for Transpose {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (x, perm) = (shape(self.x), &self.perm);
        if perm.len() != x.len() {
            return Err(format!("perm {perm:?} for an input of rank {}", x.len()));
        }
        Ok(perm.iter().map(|&p| x[p]).collect())
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let offset = MAX_RANK - x.rank;
        let mut axes: [usize; MAX_RANK] = std::array::from_fn(|i| i);
        for (i, &p) in self.perm.iter().enumerate() {
            axes[offset + i] = offset + p;
        }
        x.map(|t| t.permute(axes))
    }
}
