//! Pad, constant mode: (before, after) per axis.

use burn::tensor::ops::PadMode;

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Pad {
    pub x: Operand,
    pub pads: Vec<(usize, usize)>,
    pub value: f32,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    let mode = n.attrs.string("mode", "constant");
    if mode != "constant" {
        return Err(format!(
            "mode '{mode}' is not supported; only constant padding is"
        ));
    }
    let x = b.operand(n, 0)?;
    let rank = b.shape(x).len();
    let pads = match b.known(n, 1, "pads")? {
        Some(h) => h.fixed_ints("pads")?,
        None => n.attrs.ints("pads").ok_or("no pads")?,
    };
    let value = match b.known(n, 2, "constant_value")? {
        Some(h) => *h.to_floats("constant_value")?.first().ok_or("no value")?,
        None => n.attrs.float("value", 0.0),
    };
    let axes: Vec<usize> = match b.known(n, 3, "axes")? {
        Some(h) => h
            .fixed_ints("axes")?
            .iter()
            .map(|&a| fold::axis(a, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!(
            "pads {pads:?}: {} values (begins, then ends) are needed",
            2 * axes.len()
        ));
    }
    if pads.iter().any(|&p| p < 0) {
        return Err(format!(
            "pads {pads:?}: negative pads (cropping) are not supported"
        ));
    }
    let mut pairs = vec![(0, 0); rank];
    for (i, &a) in axes.iter().enumerate() {
        pairs[a] = (pads[i] as usize, pads[i + axes.len()] as usize);
    }
    one(Op::Pad(Pad {
        x,
        pads: pairs,
        value,
    }))
}

impl StepKind for Pad {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        shapes::pads_in_range(&self.pads)?;
        x.iter()
            .zip(&self.pads)
            .enumerate()
            .map(|(a, (&d, &(b, e)))| {
                if b + e == 0 {
                    return Ok(d);
                }
                shapes::per_image(&x, &[a], "padding")?;
                Ok(Dim::new((d.at(1) + b + e) as i64))
            })
            .collect()
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let mut all = [(0, 0); MAX_RANK];
        all[MAX_RANK - self.pads.len()..].copy_from_slice(&self.pads);
        x.map(|t| t.pad(all, PadMode::Constant(self.value)))
    }
}
