use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::export::{int, ints};
use super::layers::max_pool;
use super::{BuiltIn, Compression, LayerInfo, OnnxWriter};
use crate::data::DatasetKind;

/// LeNet5 as in Mayo (431,080 parameters): conv 5x5 1->20 + ReLU, maxpool 2/2, conv 5x5 20->50
/// + ReLU, maxpool 2/2, flatten 800 (C,H,W order), dropout 0.5, fc 800->500 + ReLU, fc 500->10.
#[derive(Module, Debug)]
pub struct LeNet5 {
    pub conv0: Conv2d,
    pub conv1: Conv2d,
    pub fc1: Linear,
    pub logits: Linear,
    pool: MaxPool2d,
    dropout: Dropout,
}

impl BuiltIn for LeNet5 {
    const NAME: &'static str = "lenet5";
    const INPUT_SHAPE: [usize; 3] = [1, 28, 28];
    const CLASSES: usize = 10;
    const DATASET: DatasetKind = DatasetKind::Mnist;
    const SIGNATURE: &'static str = "fc1.weight";

    fn new(device: &Device) -> Self {
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        Self {
            conv0: Conv2dConfig::new([1, 20], [5, 5]).init(device),
            conv1: Conv2dConfig::new([20, 50], [5, 5]).init(device),
            fc1: LinearConfig::new(800, 500).init(device),
            logits: LinearConfig::new(500, 10).init(device),
            pool,
            dropout: DropoutConfig::new(super::DROPOUT).init(),
        }
    }

    /// Logits for images in [0, 1]; the model maps them to [-1, 1] itself (x -> 2x - 1).
    /// Every conv / linear layer and every layer output goes through the compression.
    fn forward(&self, images: Tensor<4>, c: &Compression) -> Tensor<2> {
        let x = images * 2.0 - 1.0;
        let x = c.activation("conv0", relu(c.conv2d("conv0", &self.conv0, x)));
        let x = max_pool(&self.pool, x);
        let x = c.activation("conv1", relu(c.conv2d("conv1", &self.conv1, x)));
        let x = max_pool(&self.pool, x);
        let [n, ch, h, w] = x.dims();
        let x = self.dropout.forward(x.reshape([n, ch * h * w]));
        let x = c.activation("fc1", relu(c.linear("fc1", &self.fc1, x)));
        c.activation("logits", c.linear("logits", &self.logits, x))
    }

    fn set_dropout(&mut self, prob: f64) {
        self.dropout.prob = prob;
    }

    fn to_onnx(w: &mut OnnxWriter) -> String {
        let (two, one) = (w.scalar(2.0), w.scalar(1.0));
        let x = w.node("Mul", &[OnnxWriter::INPUT, &two], vec![]);
        let x = w.node("Sub", &[&x, &one], vec![]);
        let conv = |w: &mut OnnxWriter, x: &str, layer: &str| {
            let (weight, bias) = (
                w.param(&format!("{layer}.weight")),
                w.param(&format!("{layer}.bias")),
            );
            let y = w.node(
                "Conv",
                &[x, &weight, &bias],
                vec![ints("kernel_shape", &[5, 5])],
            );
            let y = w.node("Relu", &[&y], vec![]);
            w.node(
                "MaxPool",
                &[&y],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            )
        };
        let gemm = |w: &mut OnnxWriter, x: &str, layer: &str| {
            let (weight, bias) = (
                w.param(&format!("{layer}.weight")),
                w.param(&format!("{layer}.bias")),
            );
            w.node("Gemm", &[x, &weight, &bias], vec![int("transB", 1)])
        };
        let x = conv(w, &x, "conv0");
        let x = conv(w, &x, "conv1");
        let x = w.node("Flatten", &[&x], vec![int("axis", 1)]);
        let x = gemm(w, &x, "fc1");
        let x = w.node("Relu", &[&x], vec![]);
        gemm(w, &x, "logits")
    }

    fn layers() -> Vec<LayerInfo> {
        vec![
            LayerInfo::new(
                "conv0",
                "conv 5x5 1->20 valid + ReLU",
                [20, 24, 24],
                20 * 25 + 20,
            ),
            LayerInfo::new("pool0", "maxpool 2x2 /2", [20, 12, 12], 0),
            LayerInfo::new(
                "conv1",
                "conv 5x5 20->50 valid + ReLU",
                [50, 8, 8],
                50 * 20 * 25 + 50,
            ),
            LayerInfo::new("pool1", "maxpool 2x2 /2", [50, 4, 4], 0),
            LayerInfo::new(
                "flatten",
                &format!("flatten (C,H,W), dropout {}", super::DROPOUT),
                [800, 1, 1],
                0,
            ),
            LayerInfo::new(
                "fc1",
                "linear 800->500 + ReLU",
                [500, 1, 1],
                800 * 500 + 500,
            ),
            LayerInfo::new("logits", "linear 500->10", [10, 1, 1], 500 * 10 + 10),
        ]
    }
}
