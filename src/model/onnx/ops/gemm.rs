//! Gemm: alpha · op(A) · op(B) + beta · C, B a weight stored in the file or a computed value.

use super::prelude::*;
use crate::kernels::matmul;

#[derive(Clone, Debug)]
pub struct Gemm {
    pub a: Operand,
    pub b: Operand,
    pub c: Option<Operand>,
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let a = b.operand(n, 0)?;
    let known = |i: usize| matches!(n.inputs.get(i), Some(Some(build::Value::Known(_))));
    let w = if known(1) {
        Operand::Param(b.weight(n, 1)?)
    } else {
        b.operand(n, 1)?
    };
    let c = if known(2) {
        b.bias(n, 2)?.map(Operand::Param)
    } else {
        b.optional_operand(n, 2)?
    };
    one(Op::Gemm(Gemm {
        a,
        b: w,
        c,
        alpha: n.attrs.float("alpha", 1.0),
        beta: n.attrs.float("beta", 1.0),
        trans_a: n.attrs.int("transA", 0) != 0,
        trans_b: n.attrs.int("transB", 0) != 0,
    }))
}

/// A value read as a matrix: [rows, columns], or [columns] as one row.
fn matrix(what: &str, shape: &[Dim]) -> Result<[Dim; 2], String> {
    match *shape {
        [rows, columns] => Ok([rows, columns]),
        [columns] => Ok([Dim::new(1), columns]),
        _ => Err(format!(
            "{what} has shape {}; a matrix (rank 1 or 2) is needed here",
            shape_text(shape)
        )),
    }
}

impl StepKind for Gemm {
    fn operands(&self) -> Vec<Operand> {
        [Some(self.a), Some(self.b), self.c]
            .into_iter()
            .flatten()
            .collect()
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (a, b) = (shape(self.a), shape(self.b));
        let flip = |m: [Dim; 2], t: bool| if t { [m[1], m[0]] } else { m };
        let (ma, mb) = (
            flip(matrix("input A", &a)?, self.trans_a),
            flip(matrix("input B", &b)?, self.trans_b),
        );
        shapes::inner(&ma, &mb, ma[1], mb[0])?;
        let out = vec![ma[0], mb[1]];
        if let Some(c) = self.c.map(shape) {
            let [rows, columns] = matrix("input C", &c)?;
            let fits = |d: Dim, n: Dim| d == n || d == Dim::new(1);
            if !(fits(rows, out[0]) && fits(columns, out[1])) {
                return Err(format!(
                    "input C {} does not broadcast to the product's {}",
                    shape_text(&c),
                    shape_text(&out)
                ));
            }
        }
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let a = match self.b {
            Operand::Param(w) => env.input(w, env.get(self.a)),
            _ => env.get(self.a),
        };
        let a = a.as_rank::<2>();
        let b = match self.b {
            Operand::Param(w) => {
                let shape = env.shape(w);
                env.weight(w).reshape([shape[0], shape[1]])
            }
            other => env.get(other).as_rank::<2>(),
        };
        let a = if self.trans_a { a.transpose() } else { a };
        let b = if self.trans_b { b.transpose() } else { b };
        let mut y = matmul(a, b);
        if self.alpha != 1.0 {
            y = y * self.alpha;
        }
        if let Some(c) = self.c {
            let c = match c {
                Operand::Param(i) => {
                    let t = env.weight(i);
                    let shape = env.shape(i);
                    Value::of_shape(t.reshape(padded(&[shape.iter().product()])), shape)
                }
                other => env.get(other),
            };
            let c: Tensor<2> = c.t.squeeze_dims(&[0, 1, 2, 3]);
            y = y + c * self.beta;
        }
        Value::new(y)
    }
}
