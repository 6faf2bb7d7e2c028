use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::export::{int, ints};
use super::{BuiltIn, Compression, LayerInfo, OnnxWriter};
use crate::data::DatasetKind;

/// (input channels, output channels, stride, padded) of conv0..conv7.
const CONVS: [(usize, usize, usize, bool); 8] = [
    (3, 64, 1, false),
    (64, 64, 1, true),
    (64, 128, 2, true),
    (128, 128, 1, true),
    (128, 128, 1, true),
    (128, 192, 2, true),
    (192, 192, 1, true),
    (192, 192, 1, true),
];

/// Mayo's CifarNet: eight 3x3 convs without bias, each followed by batch norm (eps 1e-3) and
/// ReLU, dropout 0.5 after conv3 and conv6, 8x8 average pool, then a 1x1 conv 192->10 with bias.
///
/// "Same" convs use a padding of 1 on every side, as PyTorch's `padding=1` does, so PyTorch
/// users get identical outputs; TensorFlow's SAME pads a stride-2 conv on 30x30 input
/// asymmetrically (0 before, 1 after), which only shifts where the kernel starts.
#[derive(Module, Debug)]
pub struct CifarNet {
    pub conv0: Conv2d,
    pub bn0: BatchNorm,
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Conv2d,
    pub bn3: BatchNorm,
    pub conv4: Conv2d,
    pub bn4: BatchNorm,
    pub conv5: Conv2d,
    pub bn5: BatchNorm,
    pub conv6: Conv2d,
    pub bn6: BatchNorm,
    pub conv7: Conv2d,
    pub bn7: BatchNorm,
    pub logits: Conv2d,
    pool: AvgPool2d,
    dropout: Dropout,
}

fn conv(index: usize, device: &Device) -> Conv2d {
    let (cin, cout, stride, padded) = CONVS[index];
    let padding = if padded {
        PaddingConfig2d::Explicit(1, 1, 1, 1)
    } else {
        PaddingConfig2d::Valid
    };
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(padding)
        .with_bias(false)
        .init(device)
}

fn bn(index: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(CONVS[index].1)
        .with_epsilon(1e-3)
        .init(device)
}

impl BuiltIn for CifarNet {
    const NAME: &'static str = "cifarnet";
    const INPUT_SHAPE: [usize; 3] = [3, 32, 32];
    const CLASSES: usize = 10;
    const DATASET: DatasetKind = DatasetKind::Cifar10;
    const SIGNATURE: &'static str = "conv7.weight";

    fn new(device: &Device) -> Self {
        Self {
            conv0: conv(0, device),
            bn0: bn(0, device),
            conv1: conv(1, device),
            bn1: bn(1, device),
            conv2: conv(2, device),
            bn2: bn(2, device),
            conv3: conv(3, device),
            bn3: bn(3, device),
            conv4: conv(4, device),
            bn4: bn(4, device),
            conv5: conv(5, device),
            bn5: bn(5, device),
            conv6: conv(6, device),
            bn6: bn(6, device),
            conv7: conv(7, device),
            bn7: bn(7, device),
            logits: Conv2dConfig::new([192, 10], [1, 1]).init(device),
            pool: AvgPool2dConfig::new([8, 8]).init(),
            dropout: DropoutConfig::new(super::DROPOUT).init(),
        }
    }

    /// Logits for images in [0, 1]; the model standardises each image itself:
    /// (x - mean) / max(std, 1/sqrt(N)), N = pixels per image (TensorFlow's
    /// `per_image_standardization`).
    fn forward(&self, images: Tensor<4>, compression: &Compression) -> Tensor<2> {
        let [n, c, h, w] = images.dims();
        let flat = images.reshape([n, c * h * w]);
        let mean = flat.clone().mean_dim(1);
        let centred = flat - mean;
        let std = centred.clone().square().mean_dim(1).sqrt();
        let floor = 1.0 / ((c * h * w) as f64).sqrt();
        let x = (centred / std.clamp_min(floor)).reshape([n, c, h, w]);

        let block = |name: &str, conv: &Conv2d, bn: &BatchNorm, x| {
            let x = compression.conv2d(name, conv, x);
            compression.activation(name, relu(bn.forward(x)))
        };
        let x = block("conv0", &self.conv0, &self.bn0, x);
        let x = block("conv1", &self.conv1, &self.bn1, x);
        let x = block("conv2", &self.conv2, &self.bn2, x);
        let x = block("conv3", &self.conv3, &self.bn3, x);
        let x = self.dropout.forward(x);
        let x = block("conv4", &self.conv4, &self.bn4, x);
        let x = block("conv5", &self.conv5, &self.bn5, x);
        let x = block("conv6", &self.conv6, &self.bn6, x);
        let x = self.dropout.forward(x);
        let x = block("conv7", &self.conv7, &self.bn7, x);
        let x = compression.conv2d("logits", &self.logits, self.pool.forward(x));
        let x = compression.activation("logits", x);
        x.reshape([n, Self::CLASSES])
    }

    fn set_dropout(&mut self, prob: f64) {
        self.dropout.prob = prob;
    }

    fn to_onnx(w: &mut OnnxWriter) -> String {
        // Per-image standardisation: (x - mean) / max(std, 1/sqrt(N)).
        let all = || ints("axes", &[1, 2, 3]);
        let [c, h, wd] = Self::INPUT_SHAPE;
        let mean = w.node("ReduceMean", &[OnnxWriter::INPUT], vec![all()]);
        let centred = w.node("Sub", &[OnnxWriter::INPUT, &mean], vec![]);
        let square = w.node("Mul", &[&centred, &centred], vec![]);
        let var = w.node("ReduceMean", &[&square], vec![all()]);
        let std = w.node("Sqrt", &[&var], vec![]);
        let floor = w.scalar(1.0 / ((c * h * wd) as f32).sqrt());
        let std = w.node("Max", &[&std, &floor], vec![]);
        let mut x = w.node("Div", &[&centred, &std], vec![]);
        for (i, &(_, _, stride, padded)) in CONVS.iter().enumerate() {
            let weight = w.param(&format!("conv{i}.weight"));
            let pad = i64::from(padded);
            x = w.node(
                "Conv",
                &[&x, &weight],
                vec![
                    ints("kernel_shape", &[3, 3]),
                    ints("strides", &[stride as i64; 2]),
                    ints("pads", &[pad; 4]),
                ],
            );
            let bn: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .map(|p| w.param(&format!("bn{i}.{p}")))
                .collect();
            let mut attrs = vec![];
            let mut epsilon = onnx_ir::AttributeProto::new();
            epsilon.name = "epsilon".into();
            epsilon.type_ = onnx_ir::AttributeType::FLOAT.into();
            epsilon.f = 1e-3;
            attrs.push(epsilon);
            x = w.node(
                "BatchNormalization",
                &[&x, &bn[0], &bn[1], &bn[2], &bn[3]],
                attrs,
            );
            x = w.node("Relu", &[&x], vec![]);
        }
        let x = w.node("AveragePool", &[&x], vec![ints("kernel_shape", &[8, 8])]);
        let (weight, bias) = (w.param("logits.weight"), w.param("logits.bias"));
        let x = w.node(
            "Conv",
            &[&x, &weight, &bias],
            vec![ints("kernel_shape", &[1, 1])],
        );
        w.node("Flatten", &[&x], vec![int("axis", 1)])
    }

    fn layers() -> Vec<LayerInfo> {
        let mut size = 32;
        let mut rows = Vec::new();
        for (i, &(cin, cout, stride, padded)) in CONVS.iter().enumerate() {
            size = if padded {
                (size + 2 - 3) / stride + 1
            } else {
                (size - 3) / stride + 1
            };
            let kind = format!(
                "conv 3x3 {cin}->{cout}{}{} + BN + ReLU",
                if stride > 1 { " /2" } else { "" },
                if padded { "" } else { " valid" }
            );
            // Conv weights, then BN weight and bias (running statistics are not parameters).
            rows.push(LayerInfo::new(
                &format!("conv{i}"),
                &kind,
                [cout, size, size],
                cin * cout * 9 + 2 * cout,
            ));
            if i == 3 || i == 6 {
                rows.push(LayerInfo::new(
                    &format!("dropout{}", i / 3 - 1),
                    &format!("dropout {}", super::DROPOUT),
                    [cout, size, size],
                    0,
                ));
            }
        }
        rows.push(LayerInfo::new("pool", "avgpool 8x8", [192, 1, 1], 0));
        rows.push(LayerInfo::new(
            "logits",
            "conv 1x1 192->10 + bias",
            [10, 1, 1],
            192 * 10 + 10,
        ));
        rows
    }
}
