//! Where: `a` where the constant condition (1 or 0) holds, else `b`.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Where {
    pub condition: Operand,
    pub a: Operand,
    pub b: Operand,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let condition = b.required(n, 0, "condition")?;
    if !matches!(condition.data, fold::Data::Bool(_)) {
        return Err("its condition holds no booleans".into());
    }
    one(Op::Where(Where {
        condition: b.operand(n, 0)?,
        a: b.operand(n, 1)?,
        b: b.operand(n, 2)?,
    }))
}

impl StepKind for Where {
    fn operands(&self) -> Vec<Operand> {
        vec![self.condition, self.a, self.b]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        shapes::broadcast(&[&shape(self.condition), &shape(self.a), &shape(self.b)])
    }

    fn run(&self, env: &Env) -> Value {
        let (c, a, b) = (env.get(self.condition), env.get(self.a), env.get(self.b));
        let rank = c.rank.max(a.rank).max(b.rank);
        let shape = broadcast_dims(&broadcast_dims(&c.t.dims(), &a.t.dims()), &b.t.dims());
        let mask = c.t.expand(shape).greater_elem(0.5);
        Value {
            t: b.t.expand(shape).mask_where(mask, a.t.expand(shape)),
            rank,
        }
    }
}
