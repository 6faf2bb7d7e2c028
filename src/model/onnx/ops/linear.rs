//! A linear layer: x · Wᵀ + b on the last axis, its weight (and bias) stored in the file. Made
//! by [`super::matmul`] from a MatMul by a stored weight (its bias from the Add after it,
//! fused at import).

use super::prelude::*;
use crate::kernels::matmul;

/// W in ONNX's [out, in] layout (`transposed`, Gemm's) or [in, out] (MatMul's).
#[derive(Clone, Debug)]
pub struct Linear {
    pub x: Operand,
    pub weight: usize,
    pub bias: Option<usize>,
    pub transposed: bool,
}

impl StepKind for Linear {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        let w = shapes::fixed(&shape(Operand::Param(self.weight)));
        shapes::rank("the weight", &w, 2)?;
        let [k, n] = if self.transposed {
            [w[1], w[0]]
        } else {
            [w[0], w[1]]
        };
        let last = *x
            .last()
            .ok_or("the input is a scalar; a vector or more is needed")?;
        shapes::inner(&x, &fold::fixed_shape(&[k, n]), last, Dim::new(k as i64))?;
        if let Some(b) = self.bias.map(|b| shapes::fixed(&shape(Operand::Param(b))))
            && b.iter().product::<usize>() != n
        {
            return Err(format!("the bias has shape {b:?}; [{n}] is needed"));
        }
        let mut out = x.to_vec();
        *out.last_mut().expect("rank >= 1") = Dim::new(n as i64);
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.input(self.weight, env.get(self.x));
        let shape = env.shape(self.weight);
        let w2: Tensor<2> = env.weight(self.weight).reshape([shape[0], shape[1]]);
        let w2 = if self.transposed { w2.transpose() } else { w2 };
        let mut dims = x.dims();
        let mut y = matmul(x.as_rank::<2>(), w2);
        if let Some(b) = self.bias {
            y = y + env.weight(b).unsqueeze::<2>();
        }
        let [rows, columns] = y.dims();
        let last = dims.len() - 1;
        dims[last] = columns;
        Value::of_shape(y.reshape(padded(&[rows * columns])), &dims)
    }
}
