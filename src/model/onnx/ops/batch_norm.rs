//! BatchNormalization, inference form: scale and shift are parameters, the running statistics
//! constants.

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub x: Operand,
    pub scale: Operand,
    pub shift: Operand,
    pub mean: Operand,
    pub var: Operand,
    pub epsilon: f64,
}

pub fn convert(b: &mut Builder, n: &Node) -> Result<Built, String> {
    if n.attrs.int("training_mode", 0) != 0 {
        return Err("training_mode 1 (statistics of the batch) is not supported".into());
    }
    let epsilon = f64::from(n.attrs.float("epsilon", 1e-5));
    let x = b.operand(n, 0)?;
    let scale = Operand::Param(b.param(n, 1)?);
    let shift = Operand::Param(b.param(n, 2)?);
    // Running statistics stay as they are (frozen also when fine-tuning).
    let mean = b.operand(n, 3)?;
    let var = b.operand(n, 4)?;
    // sqrt(var + epsilon) of a negative number is NaN, in every logit after.
    if let Operand::Const(i) = var
        && let Some((channel, v)) = b.consts[i]
            .values
            .iter()
            .enumerate()
            .find(|(_, v)| f64::from(**v) + epsilon <= 0.0)
    {
        return Err(format!(
            "input_var holds {v} at channel {channel}: with epsilon {epsilon} it has no square \
             root (the outputs would be NaN)"
        ));
    }
    one(Op::BatchNorm(BatchNorm {
        x,
        scale,
        shift,
        mean,
        var,
        epsilon,
    }))
}

impl StepKind for BatchNorm {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x, self.scale, self.shift, self.mean, self.var]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        let x = shape(self.x);
        let params = [self.scale, self.shift, self.mean, self.var].map(shape);
        if x.len() < 2 {
            return Err(format!(
                "the input has shape {}; [N, C, ...] is needed",
                shape_text(&x)
            ));
        }
        shapes::per_image(&x, &[1], "normalisation")?;
        let channels = x[1].at(1);
        let names = ["scale", "B", "input_mean", "input_var"];
        for (name, shape) in names.iter().zip(&params) {
            if shapes::elements(shape) != Some(channels) {
                return Err(format!(
                    "{name} has shape {}; the input's {channels} channels need [{channels}]",
                    shape_text(shape)
                ));
            }
        }
        shapes::epsilon(self.epsilon)?;
        Ok(x)
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let mut channel = vec![1; x.rank];
        channel[1] = x.dims()[1];
        let per_channel = |v: Value| v.t.reshape(padded(&channel));
        let (scale, shift) = (
            per_channel(env.get(self.scale)),
            per_channel(env.get(self.shift)),
        );
        let (mean, var) = (
            per_channel(env.get(self.mean)),
            per_channel(env.get(self.var)),
        );
        // x · a + b with a and b per channel: two passes over x (and two in the backward
        // pass) where (x - mean) / sd · scale + shift took four.
        let a = (var + self.epsilon as f32).sqrt().recip() * scale;
        let b = shift - mean * a.clone();
        x.map(|t| t * a + b)
    }
}
