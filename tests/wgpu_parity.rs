//! The wgpu backend (a real GPU, or Mesa's lavapipe in CI) computes what the CPU backend does:
//! a LeNet5 forward and backward pass, logits and gradients within 1e-4.
//!
//! Skips only when no Vulkan/Metal/DX12 adapter exists and `ADVCOMP_REQUIRE_GPU` is unset;
//! CI sets it, so there a missing adapter fails the test.

mod common;
use common::Scratch;

use advcomp::backend;
use advcomp::data::{self, DatasetKind, Split};
use advcomp::model::{self, CheckpointMeta, KeyMap, ModelKind, Network};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;

struct Pass {
    logits: Vec<f32>,
    input_grad: Vec<f32>,
    conv0_grad: Vec<f32>,
    fc1_grad: Vec<f32>,
}

fn forward_backward(checkpoint: &std::path::Path, device: &Device) -> Pass {
    let device = device.clone().autodiff();
    let loaded = model::load_checkpoint(checkpoint, None, &KeyMap::default(), &device).unwrap();
    // Checkpoints load in inference mode; back to autodiff (train), then dropout off (freeze)
    // with weight gradients on: the pass is deterministic on every backend.
    let network = loaded
        .network
        .to_device(&device)
        .train()
        .freeze()
        .set_require_grad(true);
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    let (images, labels) = test.batch(&(0..16).collect::<Vec<_>>(), &device);
    let images = images.require_grad();
    let logits = network.forward(images.clone());
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), labels);
    let grads = loss.backward();
    let Network::LeNet5(lenet) = &network else {
        unreachable!()
    };
    let values = |t: Option<Tensor<4>>| {
        t.expect("gradient")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    Pass {
        logits: logits.into_data().try_to_vec::<f32>().unwrap(),
        input_grad: values(images.grad(&grads)),
        conv0_grad: values(lenet.conv0.weight.grad(&grads)),
        fc1_grad: lenet
            .fc1
            .weight
            .grad(&grads)
            .expect("gradient")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    }
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: max |wgpu - cpu| = {worst}");
    assert!(a.iter().any(|v| *v != 0.0), "{what} is all zeros");
}

#[test]
fn lenet5_forward_and_backward_on_wgpu_equal_the_cpu_backend() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let cpu = backend::cpu();
    cpu.device.seed(21);
    let path = Scratch::path("parity.safetensors");
    let meta = CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        ..Default::default()
    };
    model::save_checkpoint(&path, &ModelKind::LeNet5.init(&cpu.device), &meta).unwrap();

    let reference = forward_backward(&path, &cpu.device);
    let on_gpu = forward_backward(&path, &gpu.device);
    assert_close("logits", &on_gpu.logits, &reference.logits);
    assert_close("input gradient", &on_gpu.input_grad, &reference.input_grad);
    assert_close(
        "conv0.weight gradient",
        &on_gpu.conv0_grad,
        &reference.conv0_grad,
    );
    assert_close("fc1.weight gradient", &on_gpu.fc1_grad, &reference.fc1_grad);
}
