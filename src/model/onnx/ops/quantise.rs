//! A QDQ graph's QuantizeLinear → DequantizeLinear of a computed value (made by
//! [`super::super::qdq`]): fake quantisation on the grid of activation site `site` where the
//! compression has it (the compressed model), else the value itself, or its ReLU where the
//! zero point is the type's minimum (the full model: ONNX Runtime's quantiser lets such a
//! QuantizeLinear do a deleted ReLU's work).

use burn::tensor::activation::relu;

use super::prelude::*;

#[derive(Clone, Debug)]
pub struct Quantise {
    pub x: Operand,
    pub site: String,
    pub relu: bool,
}

impl StepKind for Quantise {
    fn operands(&self) -> Vec<Operand> {
        vec![self.x]
    }

    fn output_shape(&self, shape: Shape) -> Result<Vec<Dim>, String> {
        Ok(shape(self.x))
    }

    fn run(&self, env: &Env) -> Value {
        let x = env.get(self.x);
        let site = &self.site;
        let quantised = env
            .compression
            .quant
            .as_ref()
            .is_some_and(|q| q.activation_grid(site, false).is_some());
        match (quantised, self.relu) {
            (true, _) => x.map(|t| env.compression.activation(site, t)),
            (false, true) => x.map(relu),
            (false, false) => x,
        }
    }
}
