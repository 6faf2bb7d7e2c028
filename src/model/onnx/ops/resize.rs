//! Resize, nearest or linear, by constant scales or sizes.

use super::prelude::*;

/// One input axis of a Resize: each output position along `axis` is the weighted sum of the
/// input at the taps' indices (one tap for nearest, two for linear).
#[derive(Clone, Debug)]
pub struct Interpolation {
    pub axis: usize,
    pub taps: Vec<(Vec<usize>, Vec<f32>)>,
}

#[derive(Clone, Debug)]
pub struct Resize {
    pub x: Operand,
    pub axes: Vec<Interpolation>,
}

/// Resize, nearest or linear, by constant scales or sizes: per resized axis, the input
/// positions (and weights) each output position reads, computed here as ONNX defines them.
pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let a = &n.attrs;
    let mode = a.string("mode", "nearest");
    if mode != "nearest" && mode != "linear" {
        return Err(format!(
            "mode '{mode}' is not supported (nearest and linear are)"
        ));
    }
    if a.int("antialias", 0) != 0 {
        return Err("antialias 1 is not supported".into());
    }
    let x = b.operand(n, 0)?;
    let shape = b.shape(x);
    let rank = shape.len();
    // Opset 10: (X, scales); 11 on: (X, roi, scales, sizes).
    let (scales, sizes) = if b.opset < 11 {
        (b.known(n, 1, "scales")?, None)
    } else {
        (b.known(n, 2, "scales")?, b.known(n, 3, "sizes")?)
    };
    let scales = scales.filter(|h| h.len() > 0);
    let axes: Vec<usize> = match a.ints("axes") {
        Some(v) => v
            .iter()
            .map(|&i| fold::axis(i, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let transform = a.string("coordinate_transformation_mode", "half_pixel");
    let nearest = a.string("nearest_mode", "round_prefer_floor");
    let policy = a.string("keep_aspect_ratio_policy", "stretch");
    let (scales, sizes) = match (scales, sizes) {
        (Some(s), _) => (Some(s.to_floats("scales")?), None),
        (None, Some(s)) if policy == "stretch" => (None, Some(s.dims("sizes")?)),
        (None, Some(_)) => {
            return Err(format!(
                "keep_aspect_ratio_policy '{policy}' is not supported"
            ));
        }
        (None, None) => return Err("neither scales nor sizes".into()),
    };
    let given = scales
        .as_ref()
        .map_or_else(|| sizes.as_ref().map_or(0, Vec::len), Vec::len);
    if given != axes.len() {
        return Err(format!("{given} scales or sizes for {} axes", axes.len()));
    }
    let mut interpolations = Vec::new();
    for (i, &axis) in axes.iter().enumerate() {
        // Axes kept as they are (the batch's, the channels') are no work.
        let same = match (&scales, &sizes) {
            (Some(s), _) => s[i] == 1.0,
            (_, Some(z)) => z[i] == shape[axis],
            _ => unreachable!("one of them is given"),
        };
        if same {
            continue;
        }
        let input = shape[axis]
            .known()
            .ok_or("it resizes an axis whose length depends on the batch size")?
            as usize;
        let (out, scale) = match (&scales, &sizes) {
            (Some(s), _) if s[i] > 0.0 && s[i].is_finite() => {
                ((input as f32 * s[i]).floor() as usize, s[i])
            }
            (Some(s), _) => return Err(format!("scale {} is no positive number", s[i])),
            (_, Some(z)) => match z[i].known() {
                Some(z) if z > 0 && input > 0 => (z as usize, z as f32 / input as f32),
                _ => return Err(format!("size {} is no positive length", z[i])),
            },
            _ => unreachable!("one of them is given"),
        };
        if out == 0 || out > 1 << 24 {
            return Err(format!("axis {axis} resized to {out}"));
        }
        let mut taps = match mode.as_str() {
            "nearest" => vec![(Vec::with_capacity(out), vec![1.0; out])],
            _ => vec![(Vec::with_capacity(out), Vec::with_capacity(out)); 2],
        };
        let last = (input - 1) as f32;
        for o in 0..out {
            let r = o as f32;
            let x = match transform.as_str() {
                "half_pixel" => (r + 0.5) / scale - 0.5,
                "pytorch_half_pixel" if out > 1 => (r + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => 0.0,
                "align_corners" if out == 1 => 0.0,
                "align_corners" => r * last / (out - 1) as f32,
                "asymmetric" => r / scale,
                "half_pixel_symmetric" => {
                    let adjustment = out as f32 / (scale * input as f32);
                    let center = input as f32 / 2.0;
                    center * (1.0 - adjustment) + (r + 0.5) / scale - 0.5
                }
                other => {
                    return Err(format!(
                        "coordinate_transformation_mode '{other}' is not supported"
                    ));
                }
            };
            if mode == "nearest" {
                let i = match nearest.as_str() {
                    "round_prefer_floor" if x.fract() == 0.5 => x.floor(),
                    "round_prefer_ceil" if x.fract() == 0.5 => x.ceil(),
                    "round_prefer_floor" | "round_prefer_ceil" => x.round(),
                    "floor" => x.floor(),
                    "ceil" => x.ceil(),
                    other => return Err(format!("nearest_mode '{other}' is not supported")),
                };
                taps[0].0.push(i.clamp(0.0, last) as usize);
            } else {
                let x = x.clamp(0.0, last);
                let low = x.floor();
                let w = x - low;
                taps[0].0.push(low as usize);
                taps[0].1.push(1.0 - w);
                taps[1].0.push((low as usize + 1).min(input - 1));
                taps[1].1.push(w);
            }
        }
        interpolations.push(Interpolation { axis, taps });
    }
    if interpolations.is_empty() {
        return Ok(Built::Same);
    }
    one(Op::Resize(Resize {
        x,
        axes: interpolations,
    }))
}

impl StepKind for Resize {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let mut out = shape(self.x);
        for a in &self.axes {
            shapes::per_image(&out, &[a.axis], "resize")?;
            out[a.axis] = Dim::new(a.taps[0].0.len() as i64);
        }
        Ok(out)
    }

    fn run(&self, env: &Env) -> Value {
        let mut x = env.get(self.x);
        for interpolation in &self.axes {
            let a = x.axis(interpolation.axis);
            let mut sum: Option<Tensor<MAX_RANK>> = None;
            for (indices, weights) in &interpolation.taps {
                let n = indices.len();
                let index = Tensor::<1, Int>::from_data(
                    TensorData::new(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n]),
                    env.device,
                );
                let mut along = [1; MAX_RANK];
                along[a] = n;
                let w: Tensor<1> =
                    Tensor::from_data(TensorData::new(weights.clone(), [n]), env.device);
                let term = x.t.clone().select(a, index) * w.reshape(along);
                sum = Some(match sum {
                    Some(s) => s + term,
                    None => term,
                });
            }
            x = Value {
                t: sum.expect("one tap at least"),
                rank: x.rank,
            };
        }
        x
    }
}
