//! MatMul: NumPy's matmul of two computed values (attention's products), batched. A MatMul by a
//! weight stored in the file becomes a [`Linear`] layer instead.

use super::Linear;
use super::prelude::*;
use crate::kernels::matmul;

#[derive(Clone, Debug)]
pub struct MatMul {
    pub a: Operand,
    pub b: Operand,
}

/// A MatMul with a weight stored in the file is a linear layer (pruned and quantised); one
/// between two computed values (attention's) is a product.
pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let weight = match n.inputs.get(1) {
        Some(Some(build::Value::Known(k))) => {
            let h = &b.known[*k];
            matches!(h.data, fold::Data::Float(_)) && h.shape.len() == 2
        }
        _ => false,
    };
    if weight && matches!(n.inputs.first(), Some(Some(build::Value::Image(_)))) {
        let x = b.operand(n, 0)?;
        return one(Op::Linear(Linear {
            x,
            weight: b.weight(n, 1)?,
            bias: None,
            transposed: false,
        }));
    }
    one(Op::MatMul(MatMul {
        a: b.operand(n, 0)?,
        b: b.operand(n, 1)?,
    }))
}

impl StepKind for MatMul {
    fn operands(&self) -> Vec<Operand> {
        vec![self.a, self.b]
    }

    /// NumPy's matmul: rank-1 operands promoted (and their axis removed after), batch axes
    /// broadcast.
    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (a, b) = (shape(self.a), shape(self.b));
        if a.is_empty() || b.is_empty() {
            return Err("a scalar operand; MatMul takes vectors or more".into());
        }
        let one = Dim::new(1);
        let pa: Vec<Dim> = if a.len() == 1 {
            vec![one, a[0]]
        } else {
            a.to_vec()
        };
        let pb: Vec<Dim> = if b.len() == 1 {
            vec![b[0], one]
        } else {
            b.to_vec()
        };
        let (m, k) = (pa[pa.len() - 2], pa[pa.len() - 1]);
        let (l, n) = (pb[pb.len() - 2], pb[pb.len() - 1]);
        shapes::inner(&pa, &pb, k, l)?;
        let mut out = shapes::broadcast(&[&pa[..pa.len() - 2], &pb[..pb.len() - 2]])?;
        if a.len() > 1 {
            out.push(m);
        }
        if b.len() > 1 {
            out.push(n);
        }
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        batched_matmul(env.get(self.a), env.get(self.b))
    }
}

/// NumPy's matmul of two values: batch axes broadcast, rank-1 operands promoted.
fn batched_matmul(a: Value, b: Value) -> Value {
    let (mut da, mut db) = (a.dims(), b.dims());
    let (a_vector, b_vector) = (da.len() == 1, db.len() == 1);
    if a_vector {
        da.insert(0, 1);
    }
    if b_vector {
        db.push(1);
    }
    let (m, k, n) = (da[da.len() - 2], da[da.len() - 1], db[db.len() - 1]);
    let (ba, bb) = (&da[..da.len() - 2], &db[..db.len() - 2]);
    let rank = ba.len().max(bb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ba, bb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = ba.iter().zip(&bb).map(|(x, y)| *x.max(y)).collect();
    let count: usize = batch.iter().product();
    let mut out = batch.clone();
    let product: Tensor<3> = if bb.iter().all(|&d| d == 1) {
        // One right-hand matrix for every batch: one GEMM over all rows.
        let rows: usize = ba.iter().product::<usize>() * m;
        let a2: Tensor<2> = a.t.reshape([rows, k]);
        let b2: Tensor<2> = b.t.reshape([k, n]);
        let y = matmul(a2, b2);
        let y: Tensor<3> = y.reshape([rows / m, m, n]);
        if rows / m == count {
            y
        } else {
            y.expand([count, m, n])
        }
    } else {
        let full = |t: Tensor<MAX_RANK>, s: &[usize], r: usize, c: usize| -> Tensor<3> {
            let mut shape = s.to_vec();
            shape.extend([r, c]);
            let t = t.reshape(padded(&shape));
            let mut target = batch.clone();
            target.extend([r, c]);
            t.expand(padded(&target)).reshape([count, r, c])
        };
        full(a.t, &ba, m, k).matmul(full(b.t, &bb, k, n))
    };
    if !a_vector {
        out.push(m);
    }
    if !b_vector {
        out.push(n);
    }
    Value::of_shape(product.reshape(padded(&[count * m * n])), &out)
}
