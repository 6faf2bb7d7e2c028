//! Attacks: closed forms on a linear softmax model (FGSM, FGM, DeepFool), budgets and the pixel
//! range, IFGM-L2 on a very confident model, seeded PGD, and gradients through an STE
//! quantiser.

mod common;
use common::Scratch;

use advcomp::attack::{self, AttackConfig, AttackKind, Differentiable, GradNorm};
use advcomp::backend;
use advcomp::model::{Classifier, Compression, ModelKind};
use advcomp::quant::FixedPoint;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLASSES: usize = 4;
const SIDE: usize = 4;
const D: usize = SIDE * SIDE;

/// logits = x W + b on flattened 1 x 4 x 4 images.
struct Linear {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Differentiable for Linear {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let n = images.dims()[0];
        images.reshape([n, D]).matmul(self.weight.clone()) + self.bias.clone().unsqueeze()
    }
}

fn host<const D2: usize>(t: Tensor<D2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn linear(device: &Device, scale: f32, seed: u64) -> (Linear, Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..D * CLASSES)
        .map(|_| scale * rng.random_range(-1.0f32..1.0))
        .collect();
    let b: Vec<f32> = (0..CLASSES)
        .map(|_| scale * rng.random_range(-0.1f32..0.1))
        .collect();
    let model = Linear {
        weight: Tensor::from_data(TensorData::new(w.clone(), [D, CLASSES]), device),
        bias: Tensor::from_data(TensorData::new(b.clone(), [CLASSES]), device),
    };
    (model, w, b)
}

/// Images in [0.3, 0.7] (no pixel clipping in one small step) and labels.
fn batch(device: &Device, n: usize, seed: u64) -> (Tensor<4>, Tensor<1, Int>, Vec<f32>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * D).map(|_| rng.random_range(0.3f32..0.7)).collect();
    let y: Vec<i64> = (0..n)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    let images = Tensor::from_data(TensorData::new(x.clone(), [n, 1, SIDE, SIDE]), device);
    let labels = Tensor::from_data(TensorData::new(y.clone(), [n]), device);
    (images, labels, x, y)
}

/// d CE / d x for the linear model, on the host: W (softmax(x W + b) - onehot(y)).
fn input_gradient(model: &Linear, w: &[f32], x: &[f32], y: &[i64]) -> Vec<f32> {
    let n = y.len();
    let device = model.weight.device();
    let images = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [n, 1, SIDE, SIDE]), &device);
    let p = host(softmax(model.logits(images), 1));
    let mut g = vec![0.0f32; n * D];
    for i in 0..n {
        for j in 0..D {
            g[i * D + j] = (0..CLASSES)
                .map(|k| {
                    let target = if k as i64 == y[i] { 1.0 } else { 0.0 };
                    w[j * CLASSES + k] * (p[i * CLASSES + k] - target)
                })
                .sum();
        }
    }
    g
}

#[test]
fn fgsm_and_fgm_steps_equal_their_closed_form_on_a_linear_model() {
    let device = backend::cpu().device;
    let (model, w, _) = linear(&device, 1.0, 1);
    let (images, labels, x, y) = batch(&device, 9, 2);
    let g = input_gradient(&model, &w, &x, &y);

    let config = AttackConfig::new(AttackKind::Fgsm)
        .with("step", 0.05)
        .unwrap();
    let adv = host(
        attack::attack(&model, images.clone(), labels.clone(), &config, 0)
            .unwrap()
            .adversarial,
    );
    for i in 0..x.len() {
        let want = (x[i] + 0.05 * g[i].signum() * (g[i] != 0.0) as i32 as f32).clamp(0.0, 1.0);
        assert!(
            (adv[i] - want).abs() < 1e-6,
            "FGSM element {i}: {} vs {want}",
            adv[i]
        );
    }

    let config = AttackConfig::new(AttackKind::Fgm)
        .with("step", 0.05)
        .unwrap();
    let adv = host(
        attack::attack(&model, images, labels, &config, 0)
            .unwrap()
            .adversarial,
    );
    for (i, grad) in g.chunks(D).enumerate() {
        let norm = grad.iter().map(|v| v * v).sum::<f32>().sqrt();
        for j in 0..D {
            let step = (0.05 * (D as f32).sqrt() * grad[j] / norm).clamp(-0.05, 0.05);
            let want = (x[i * D + j] + step).clamp(0.0, 1.0);
            let got = adv[i * D + j];
            assert!(
                (got - want).abs() < 1e-5,
                "FGM image {i} pixel {j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn deepfool_reaches_the_linear_boundary_in_one_step() {
    let device = backend::cpu().device;
    // Small weights: the step to the boundary stays inside [0, 1], so nothing is clipped.
    let (model, _, _) = linear(&device, 0.05, 3);
    let (images, _, _, _) = batch(&device, 16, 4);
    // Attack the model's own predictions, so every image starts correctly classified.
    let predicted = model.logits(images.clone()).argmax(1).reshape([16]);
    let config = AttackConfig::new(AttackKind::DeepFool)
        .with("overshoot", 0.02)
        .unwrap();
    let out = attack::attack(&model, images.clone(), predicted.clone(), &config, 0).unwrap();
    assert!(
        out.iterations.iter().all(|&k| k == 1),
        "{:?}",
        out.iterations
    );
    let flipped = model
        .logits(out.adversarial.clone())
        .argmax(1)
        .reshape([16]);
    let same = host(flipped.equal(predicted.clone()).int().float());
    assert!(same.iter().all(|&s| s == 0.0), "every label flips");

    // Without the overshoot the point lies on the boundary: the two top logits tie.
    let r = (out.adversarial - images.clone()) / 1.02;
    let logits = host(model.logits(images + r));
    for row in logits.chunks(CLASSES) {
        let mut sorted = row.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert!(sorted[0] - sorted[1] < 2e-3, "not on the boundary: {row:?}");
    }
}

/// With `candidates` = 2 DeepFool looks only at the image's class and the runner-up by clean
/// logit: on a linear model it steps straight to that boundary (closed form), which is not
/// always the nearest one the full attack steps to.
#[test]
fn deepfool_with_candidates_steps_to_the_boundary_of_its_candidates_only() {
    let device = backend::cpu().device;
    // Classes of very different weight norms: the runner-up by logit is often not the nearest
    // boundary.
    let (_, mut w, b) = linear(&device, 0.05, 3);
    for (i, v) in w.iter_mut().enumerate() {
        *v *= [1.0, 4.0, 0.25, 2.0][i % CLASSES];
    }
    let model = Linear {
        weight: Tensor::from_data(TensorData::new(w.clone(), [D, CLASSES]), &device),
        bias: Tensor::from_data(TensorData::new(b.clone(), [CLASSES]), &device),
    };
    let n = 64;
    let (images, _, x, _) = batch(&device, n, 4);
    let predicted = model.logits(images.clone()).argmax(1).reshape([n]);
    let labels: Vec<i64> = predicted
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let run = |candidates: Option<usize>| {
        let mut config = AttackConfig::new(AttackKind::DeepFool)
            .with("overshoot", 0.02)
            .unwrap();
        if let Some(k) = candidates {
            config = config.with("candidates", k).unwrap();
        }
        host(
            attack::attack(&model, images.clone(), predicted.clone(), &config, 0)
                .unwrap()
                .adversarial,
        )
    };
    let (top2, every) = (run(Some(2)), run(None));
    let logit = |i: usize, k: usize| -> f32 {
        (0..D)
            .map(|j| x[i * D + j] * w[j * CLASSES + k])
            .sum::<f32>()
            + b[k]
    };
    let mut elsewhere = 0;
    for i in 0..n {
        let y = labels[i] as usize;
        let runner_up = (0..CLASSES)
            .filter(|&k| k != y)
            .max_by(|&a, &c| logit(i, a).total_cmp(&logit(i, c)))
            .unwrap();
        // r = (|f_k - f_y| + 1e-4) / |w_k - w_y|^2 (w_k - w_y), placed with the overshoot.
        let direction: Vec<f32> = (0..D)
            .map(|j| w[j * CLASSES + runner_up] - w[j * CLASSES + y])
            .collect();
        let squared: f32 = direction.iter().map(|v| v * v).sum();
        let gap = (logit(i, runner_up) - logit(i, y)).abs() + 1e-4;
        for j in 0..D {
            let want = (x[i * D + j] + 1.02 * gap / squared * direction[j]).clamp(0.0, 1.0);
            let got = top2[i * D + j];
            assert!(
                (got - want).abs() < 1e-5,
                "image {i} pixel {j}: {got} vs {want}"
            );
        }
        // The full attack steps to the nearest boundary of all: where that is another class's,
        // the two images differ.
        let distance = |k: usize| {
            let norm: f32 = (0..D)
                .map(|j| (w[j * CLASSES + k] - w[j * CLASSES + y]).powi(2))
                .sum::<f32>()
                .sqrt();
            (logit(i, k) - logit(i, y)).abs() / norm
        };
        let nearest = (0..CLASSES)
            .filter(|&k| k != y)
            .min_by(|&a, &c| distance(a).total_cmp(&distance(c)))
            .unwrap();
        if nearest != runner_up {
            elsewhere += 1;
            let largest = (0..D)
                .map(|j| (top2[i * D + j] - every[i * D + j]).abs())
                .fold(0.0f32, f32::max);
            assert!(
                largest > 1e-6,
                "image {i}: the full attack took the same step"
            );
        }
    }
    assert!(
        elsewhere > 0,
        "every image's nearest boundary was its runner-up's: the test shows nothing"
    );
}

#[test]
fn adversarial_images_stay_in_the_pixel_range_and_their_budget() {
    let device = backend::cpu().device;
    let (model, _, _) = linear(&device, 3.0, 5);
    let (images, labels, x, _) = batch(&device, 8, 6);
    for (kind, limit) in [
        (AttackKind::Fgsm, 0.02),
        (AttackKind::Ifgsm, 0.24),
        (AttackKind::Ifgm, 0.24),
        (AttackKind::Pgd, 0.1),
    ] {
        let config = AttackConfig::new(kind);
        let adv = host(
            attack::attack(&model, images.clone(), labels.clone(), &config, 0)
                .unwrap()
                .adversarial,
        );
        let worst = adv
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= limit + 1e-6, "{kind}: L-inf {worst} > {limit}");
        assert!(worst > 0.0, "{kind} did not move");
        assert!(
            adv.iter().all(|v| (0.0..=1.0).contains(v)),
            "{kind} left [0, 1]"
        );
    }
    let budgeted = AttackConfig::new(AttackKind::Ifgsm)
        .with("budget", 0.05)
        .unwrap();
    let adv = host(
        attack::attack(&model, images, labels, &budgeted, 0)
            .unwrap()
            .adversarial,
    );
    let worst = adv
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 0.05 + 1e-6, "IFGSM with budget 0.05: {worst}");
}

#[test]
fn ifgm_l2_moves_images_of_a_very_confident_model() {
    let device = backend::cpu().device;
    // Large weights: softmax is saturated and the loss gradient tiny (around 1e-20).
    let (model, w, _) = linear(&device, 60.0, 7);
    let (images, _, x, _) = batch(&device, 8, 8);
    let predicted = model.logits(images.clone()).argmax(1).reshape([8]);
    let y: Vec<i64> = predicted
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let g = input_gradient(&model, &w, &x, &y);
    let peak = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        peak < 1e-6,
        "the model is not confident enough: |g| up to {peak}"
    );

    let moved = |norm: GradNorm| {
        let config = AttackConfig::new(AttackKind::Ifgm)
            .with("grad_norm", serde_json::to_value(norm).unwrap())
            .unwrap();
        let adv = host(
            attack::attack(&model, images.clone(), predicted.clone(), &config, 0)
                .unwrap()
                .adversarial,
        );
        adv.iter().zip(&x).map(|(a, b)| (a - b).abs()).sum::<f32>() / adv.len() as f32
    };
    let l2 = moved(GradNorm::L2);
    let literal = moved(GradNorm::None);
    assert!(l2 > 0.01, "IFGM-L2 barely moved: mean |delta| {l2}");
    assert!(
        literal < 1e-6,
        "the literal eps * g should be inert here: {literal}"
    );
}

#[test]
fn pgd_is_reproducible_from_its_seed() {
    let device = backend::cpu().device;
    let (model, _, _) = linear(&device, 3.0, 9);
    let (images, labels, _, _) = batch(&device, 8, 10);
    let run = |seed| {
        // Two steps of 0.02 within a budget of 0.1: the random start still shows (12 steps
        // on a linear model end in the budget's corners whatever the start).
        let config = AttackConfig::new(AttackKind::Pgd)
            .with("seed", seed)
            .and_then(|c| c.with("steps", 2))
            .unwrap();
        host(
            attack::attack(&model, images.clone(), labels.clone(), &config, 0)
                .unwrap()
                .adversarial,
        )
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn attacks_on_a_quantised_model_follow_ste_gradients() {
    let device = backend::cpu().device;
    device.seed(12);
    let network = ModelKind::LeNet5.init(&device);
    let (images, labels) = common::mnist_test_batch(8, &device);
    let quantised = Classifier {
        network,
        compression: Compression::fixed_point(
            Some(FixedPoint::paper(8).unwrap()),
            Some(FixedPoint::paper(8).unwrap()),
        ),
    };
    // A quantiser's forward is a step function: its true derivative is zero almost everywhere,
    // so FGSM with detached or true gradients would not move. Through the STE it does.
    let config = AttackConfig::new(AttackKind::Fgsm);
    let adv = attack::attack(&quantised, images.clone(), labels, &config, 0)
        .unwrap()
        .adversarial;
    let delta = host((adv - images).abs());
    let moved = delta.iter().filter(|d| **d > 0.0).count();
    assert!(
        moved > delta.len() / 2,
        "only {moved} of {} pixels moved",
        delta.len()
    );
}

#[test]
fn attacks_on_a_loaded_checkpoint_are_deterministic() {
    // A checkpoint loads in inference mode: no dropout, even when gradients flow to the
    // images, so the same attack gives the same images (and they are not the clean ones: an
    // attack that changes nothing would be deterministic too).
    let device = backend::cpu().device;
    device.seed(13);
    let path = Scratch::path("attack.safetensors");
    let meta = advcomp::model::CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        ..Default::default()
    };
    advcomp::model::save_checkpoint(&path, &ModelKind::LeNet5.init(&device), &meta).unwrap();
    let ckpt = advcomp::model::load_checkpoint(&path, None, &Default::default(), &device).unwrap();
    let classifier = ckpt.classifier();
    let (images, _) = common::mnist_test_batch(16, &device);
    // The untrained model's own predictions as the labels: every image starts classified
    // correctly, so DeepFool (which leaves a misclassified image alone) has each one to move,
    // whatever the initialisation drew.
    let labels = classifier.logits(images.clone()).argmax(1).reshape([16]);
    for kind in [AttackKind::Ifgm, AttackKind::DeepFool] {
        let setting = match kind {
            AttackKind::DeepFool => "max_iterations",
            _ => "steps",
        };
        let config = AttackConfig::new(kind).with(setting, 3).unwrap();
        let run = || {
            host(
                attack::attack(&classifier, images.clone(), labels.clone(), &config, 0)
                    .unwrap()
                    .adversarial,
            )
        };
        let first = run();
        assert_ne!(
            first,
            host(images.clone()),
            "{kind} left the images as they were"
        );
        assert_eq!(first, run(), "{kind}");
    }
}

fn settings(kind: AttackKind, budget: Option<f32>) -> AttackConfig {
    let config = AttackConfig::new(kind);
    match budget {
        Some(b) => config.with("budget", b).unwrap(),
        None => config,
    }
}

#[test]
fn linf_reach_is_steps_times_step_within_the_budget() {
    use AttackKind::*;
    for (kind, budget, reach) in [
        (Fgsm, None, Some(0.02)),
        (Fgm, None, Some(0.02)),
        (Ifgsm, None, Some(0.24)),
        (Ifgm, None, Some(0.24)),
        (Ifgsm, Some(0.1), Some(0.1)),
        (Ifgm, Some(0.5), Some(0.24)),
        (Pgd, None, Some(0.1)),
        (Diva, None, Some(0.1)),
        (DeepFool, None, None),
    ] {
        match (settings(kind, budget).linf_reach(), reach) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6, "{kind}: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{kind}"),
        }
    }
}

#[test]
fn used_parameters_name_only_what_the_attack_uses_with_floats_as_written() {
    let ifgsm = serde_json::Value::Object(settings(AttackKind::Ifgsm, None).used_parameters());
    assert_eq!(
        ifgsm.to_string(),
        r#"{"attack":"ifgsm","linf_reach":0.24,"step":0.02,"steps":12}"#
    );
    let deepfool = settings(AttackKind::DeepFool, None).used_parameters();
    assert!(!deepfool.contains_key("step") && !deepfool.contains_key("steps"));
    assert_eq!(deepfool["overshoot"].to_string(), "0.02");
    let pgd = settings(AttackKind::Pgd, None).used_parameters();
    assert_eq!(pgd["budget"].to_string(), "0.1");
    assert_eq!(pgd["seed"].to_string(), "1");
    assert!(!pgd.contains_key("grad_norm") && !pgd.contains_key("overshoot"));
    // DeepFool takes no budget: refused rather than ignored.
    assert!(
        AttackConfig::new(AttackKind::DeepFool)
            .with("budget", 0.1)
            .is_err()
    );
}

#[test]
fn a_frozen_classifier_gives_the_same_logits_and_image_gradients_bit_for_bit() {
    // Weights masked and quantised once (`frozen`, what attacks and evaluations run) against
    // compressing them at every forward pass: the same numbers, on a pruned and quantised
    // LeNet5 with the straight-through gradient.
    let device = backend::cpu().device;
    device.seed(21);
    let mut rng = StdRng::seed_from_u64(22);
    let mask: Vec<f32> = (0..800 * 500)
        .map(|_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
        .collect();
    let q = FixedPoint::paper(8).unwrap();
    // A loaded checkpoint runs in inference mode (no dropout), so gradients are repeatable.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/models/lenet5.safetensors");
    let ckpt = advcomp::model::load_checkpoint(&path, None, &Default::default(), &device).unwrap();
    let classifier = Classifier {
        network: ckpt.network,
        compression: Compression {
            masks: [(
                "fc1".to_string(),
                advcomp::model::Mask {
                    values: Tensor::from_data(TensorData::new(mask, [800 * 500]), &device),
                    shape: vec![800, 500],
                },
            )]
            .into(),
            ..Compression::fixed_point(Some(q), Some(q))
        },
    };
    let frozen = classifier.frozen();
    assert!(frozen.compression.masks.is_empty() && frozen.compression.weights_baked);
    let (images, labels) = common::mnist_test_batch(32, &device);
    let logits = |c: &Classifier| host(c.logits(images.clone()).reshape([32 * 10, 1, 1, 1]));
    assert_eq!(logits(&frozen), logits(&classifier));
    let gradient = |c: &Classifier| host(attack::loss_gradient(c, &images, &labels));
    let g = gradient(&classifier);
    assert!(g.iter().any(|&v| v != 0.0), "the gradient must not vanish");
    assert_eq!(gradient(&frozen), g);
}
