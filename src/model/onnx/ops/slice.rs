//! Slice and Split: (axis, start, end, step) per sliced axis, clamped at import.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Slice {
    pub x: Operand,
    pub ranges: Vec<(usize, i64, i64, i64)>,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let hosts: Vec<Option<&fold::Host>> = (0..5)
        .map(|i| {
            if i == 0 {
                Ok(None)
            } else {
                b.known(n, i, "slice bounds")
            }
        })
        .collect::<Result<_, _>>()?;
    let args = fold::slice_args(&n.attrs, &hosts, shape.len())?;
    let mut ranges = Vec::new();
    for i in 0..args.axes.len() {
        let (axis, start, end, step) = (args.axes[i], args.starts[i], args.ends[i], args.steps[i]);
        let len = shape[axis];
        match len.known() {
            Some(len) => {
                let r = fold::slice_range(start, end, step, len as usize)?;
                if r != (0, len, 1) {
                    ranges.push((axis, r.0, r.1, r.2));
                }
            }
            // The whole of an axis that grows with the batch.
            None if start == 0 && step == 1 && end >= i64::from(i32::MAX) => {}
            None => {
                return Err(format!(
                    "it slices axis {axis} of {}, whose length {len} depends on the batch size",
                    shape_text(&shape)
                ));
            }
        }
    }
    one(Op::Slice(Slice { x, ranges }))
}

/// Split: one slice of the axis per output.
pub fn split(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let axis = fold::axis(n.attrs.int("axis", 0), shape.len())?;
    let len = shape[axis].known().ok_or_else(|| {
        format!(
            "it splits axis {axis} of {}, whose length depends on the batch size",
            shape_text(&shape)
        )
    })? as usize;
    let lengths = fold::split_lengths(&n.attrs, b.known(n, 1, "split")?, len, n.attrs.outputs)?;
    let mut start = 0;
    let ops = lengths
        .into_iter()
        .map(|l| {
            let op = Op::Slice(Slice {
                x,
                ranges: vec![(axis, start as i64, (start + l) as i64, 1)],
            });
            start += l;
            op
        })
        .collect();
    Ok(Built::Steps(ops))
}

impl StepKind for Slice {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        let mut out = x.to_vec();
        for &(axis, start, end, step) in &self.ranges {
            shapes::per_image(&x, &[axis], "slice")?;
            out[axis] = Dim::new(fold::slice_len((start, end, step)) as i64);
        }
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let mut slices: Vec<burn::tensor::Slice> =
            x.t.dims()
                .iter()
                .map(|&d| burn::tensor::Slice::new(0, Some(d as isize), 1))
                .collect();
        for &(axis, start, end, step) in &self.ranges {
            slices[x.axis(axis)] = if step > 0 {
                burn::tensor::Slice::new(start as isize, Some(end as isize), step as isize)
            } else {
                // ONNX's start..end backwards, as burn's slice of end+1..start+1 taken from
                // its end.
                burn::tensor::Slice::new(
                    (end + 1) as isize,
                    Some((start + 1) as isize),
                    step as isize,
                )
            };
        }
        let rank = x.rank;
        Value {
            t: x.t.slice(slices.as_slice()),
            rank,
        }
    }
}
