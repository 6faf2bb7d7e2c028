//! Gather with constant indices (of shape `shape`) along one axis; GatherND as a Gather along
//! its leading axes merged.

use super::Reshape;
use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Gather {
    pub x: Operand,
    pub axis: usize,
    pub indices: Vec<usize>,
    pub shape: Vec<usize>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let axis = fold::axis(n.attrs.int("axis", 0), shape.len())?;
    let index = b.required(n, 1, "indices")?;
    let len = shape[axis].known().ok_or_else(|| {
        format!(
            "it gathers along axis {axis} of {}, whose length depends on the batch size",
            shape_text(&shape)
        )
    })?;
    let indices = fold::indices_within(&index.fixed_ints("indices")?, len as usize)?;
    let index_shape = index.shape.clone();
    one(Op::Gather(Gather {
        x,
        axis,
        indices,
        shape: index_shape,
    }))
}

/// GatherND with constant indices into the leading axes: a Gather along those axes merged.
pub fn gather_nd(b: &mut Builder, n: &Node) -> Result<Built, String> {
    if n.attrs.int("batch_dims", 0) != 0 {
        return Err("batch_dims other than 0 is not supported".into());
    }
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let index = b.required(n, 1, "indices")?;
    let k = *index.shape.last().ok_or("indices of rank 0")?;
    if k == 0 || k > shape.len() {
        return Err(format!(
            "indices address {k} axes of an input of rank {}",
            shape.len()
        ));
    }
    let lengths: Vec<usize> = shape[..k]
        .iter()
        .map(|d| d.known().map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!(
                "it gathers along the leading axes of {}, whose lengths depend on the batch size",
                shape_text(&shape)
            )
        })?;
    let strides = fold::strides(&lengths);
    let tuples = index.fixed_ints("indices")?;
    let indices = tuples
        .chunks(k)
        .map(|t| {
            t.iter().enumerate().try_fold(0, |flat, (axis, &i)| {
                Ok::<_, String>(
                    flat + fold::indices_within(&[i], lengths[axis])?[0] * strides[axis],
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let index_shape = index.shape[..index.shape.len() - 1].to_vec();
    let mut merged = vec![Dim::new(lengths.iter().product::<usize>() as i64)];
    merged.extend_from_slice(&shape[k..]);
    let flat = b.intermediate(Op::Reshape(Reshape { x, shape: merged }), n)?;
    one(Op::Gather(Gather {
        x: flat,
        axis: 0,
        indices,
        shape: index_shape,
    }))
}

impl StepKind for Gather {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let (x, axis) = (shape(self.x), self.axis);
        shapes::per_image(&x, &[axis], "gather")?;
        let len = x[axis].at(1);
        if let Some(i) = self.indices.iter().find(|&&i| i >= len) {
            return Err(format!("index {i} is outside axis {axis} of length {len}"));
        }
        let mut out = x[..axis].to_vec();
        out.extend(fold::fixed_shape(&self.shape));
        out.extend_from_slice(&x[axis + 1..]);
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let mut dims = x.dims();
        let index: Vec<i64> = self.indices.iter().map(|&i| i as i64).collect();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(index, [self.indices.len()]),
            env.device,
        );
        let t = x.t.clone().select(x.axis(self.axis), index);
        dims.splice(self.axis..=self.axis, self.shape.iter().copied());
        Value::of_shape(t, &dims)
    }
}
