//! Reductions over axes (ReduceMean / ReduceSum / ReduceMax, the global pools).

use super::prelude::*;

#[derive(Clone, Copy, Debug)]
pub enum ReduceKind {
    Mean,
    Sum,
    Max,
}

#[derive(Clone, Debug)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub x: Operand,
    pub axes: Vec<usize>,
    pub keep: bool,
}

pub fn convert(b: &mut Builder, n: &Node, kind: ReduceKind) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let axes = fold::axes_of(&n.attrs, b.known(n, 1, "axes")?)?.unwrap_or_default();
    let axes: Vec<usize> = if axes.is_empty() {
        if n.attrs.int("noop_with_empty_axes", 0) == 1 {
            return Ok(Built::Same);
        }
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| fold::axis(a, rank))
            .collect::<Result<_, _>>()?
    };
    one(Op::Reduce(Reduce {
        kind,
        x,
        axes,
        keep: n.attrs.int("keepdims", 1) == 1,
    }))
}

/// GlobalAveragePool / GlobalMaxPool: a reduction over the spatial axes, kept.
pub fn global_pool(b: &mut Builder, n: &Node, kind: ReduceKind) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    if rank < 3 {
        return Err(format!(
            "the input has rank {rank}; [N, C, spatial axes...] is needed"
        ));
    }
    one(Op::Reduce(Reduce {
        kind,
        x,
        axes: (2..rank).collect(),
        keep: true,
    }))
}

/// `dims` without the reduced `axes` (1 in their place when they are kept).
fn reduced<T: Copy>(dims: &[T], axes: &[usize], keep: bool, one: T) -> Vec<T> {
    dims.iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d),
            (true, true) => Some(one),
            (true, false) => None,
        })
        .collect()
}

impl StepKind for Reduce {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        shapes::per_image(&x, &self.axes, "reduction")?;
        Ok(reduced(&x, &self.axes, self.keep, Dim::new(1)))
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let dims = x.dims();
        let mut t = x.t.clone();
        for &a in &self.axes {
            let a = x.axis(a);
            t = match self.kind {
                ReduceKind::Mean => t.mean_dim(a),
                ReduceKind::Sum => t.sum_dim(a),
                ReduceKind::Max => t.max_dim(a),
            };
        }
        Value::of_shape(t, &reduced(&dims, &self.axes, self.keep, 1))
    }
}
