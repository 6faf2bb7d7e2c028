//! The differential attack (DIVA): on a toy pair whose disagreement region is known it lands
//! there (where plain IFGSM on the compressed model runs straight through it); the compressed
//! model's term reaches the images through its STE quantisers; on a pair of identical models
//! nothing is evasive, through the command line as a user runs it.

mod common;
use common::{D, SIDE, Threshold, advcomp, assert_refused, predicted};

use advcomp::attack::{self, AttackConfig, AttackKind};
use advcomp::backend;
use advcomp::model::{Classifier, Compression, ModelKind};
use advcomp::quant::FixedPoint;
use burn::prelude::*;

fn host<const K: usize>(t: Tensor<K>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn diva_lands_in_the_region_where_the_pair_disagrees() {
    let device = backend::cpu().device;
    // F (full) says class 1 above a mean of 0.5, C (compressed) above 0.45: between the two
    // C is wrong and F right on class-0 images. Images of class 0 with means 0.36 .. 0.42 start
    // right on both.
    let full = Threshold { threshold: 0.5 };
    let compressed = Threshold { threshold: 0.45 };
    let n = 4;
    let pixels: Vec<f32> = (0..n)
        .flat_map(|i| std::iter::repeat_n(0.36 + 0.02 * i as f32, D))
        .collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 1, SIDE, SIDE]), &device);
    let labels = Tensor::<1, Int>::zeros([n], &device);
    assert_eq!(predicted(&compressed, images.clone()), vec![0; n]);
    assert_eq!(predicted(&full, images.clone()), vec![0; n]);

    let config = AttackConfig::new(AttackKind::Diva);
    let out = attack::attack_pair(
        &compressed,
        &full,
        images.clone(),
        labels.clone(),
        &config,
        0,
    )
    .unwrap();
    assert_eq!(
        predicted(&compressed, out.adversarial.clone()),
        vec![1; n],
        "C fooled"
    );
    assert_eq!(
        predicted(&full, out.adversarial.clone()),
        vec![0; n],
        "F right"
    );
    // It stopped there: each image moved by whole 0.02 steps, at most until the region.
    for (i, &k) in out.iterations.iter().enumerate() {
        assert!((1..=5).contains(&k), "image {i} took {k} steps");
    }
    let delta = host((out.adversarial.clone() - images.clone()).abs().max());
    assert!(delta[0] <= 0.1 + 1e-6, "within the budget: {delta:?}");

    // IFGSM on C alone, with the same step and steps, runs through the region: F is fooled too.
    let ifgsm = attack::attack(
        &compressed,
        images,
        labels,
        &AttackConfig::new(AttackKind::Ifgsm),
        0,
    )
    .unwrap();
    assert_eq!(
        predicted(&full, ifgsm.adversarial),
        vec![1; n],
        "not evasive"
    );
}

#[test]
fn the_compressed_models_term_reaches_the_images_through_its_ste_quantisers() {
    let device = backend::cpu().device;
    device.seed(7);
    let network = ModelKind::LeNet5.init(&device);
    let (images, labels) = common::mnist_test_batch(8, &device);
    let full = Classifier {
        network: network.clone(),
        compression: Compression::default(),
    };
    let format = Some(FixedPoint::paper(4).unwrap());
    let quantised = Classifier {
        network,
        compression: Compression::fixed_point(format, format),
    };
    // weight 0: F's term alone; weight 1 adds C's. Their difference is C's gradient, which is
    // zero almost everywhere through a true step function and non-zero through the STE.
    let (with_c, _, _) = attack::differential_gradient(&quantised, &full, &images, &labels, 1.0);
    let (without, _, _) = attack::differential_gradient(&quantised, &full, &images, &labels, 0.0);
    let difference = host((with_c - without).abs());
    assert!(difference.iter().all(|v| v.is_finite()));
    let moved = difference.iter().filter(|v| **v > 0.0).count();
    assert!(
        moved > difference.len() / 2,
        "C's gradient reached only {moved} of {} pixels",
        difference.len()
    );
}

#[test]
fn on_identical_models_nothing_is_evasive_and_diva_needs_a_reference() {
    let lenet5 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/models/lenet5.safetensors"
    );
    for attack in ["diva", "pgd"] {
        let out = advcomp(&[
            "attack",
            "--attack",
            attack,
            "--source",
            lenet5,
            "--reference",
            lenet5,
            "--limit",
            "64",
            "--backend",
            "cpu",
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{attack}: {stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = &json["differential"];
        assert_eq!(d["images"], 64, "{json}");
        assert!(d["both_correct"].as_u64().unwrap() > 50, "{json}");
        assert_eq!(d["evasive_success_rate"], 0.0, "{attack}: {json}");
        // The same model twice: its success rate is the same on both sides.
        assert_eq!(
            d["success_rate_compressed"], d["success_rate_reference"],
            "{json}"
        );
    }
    let out = advcomp(&[
        "attack",
        "--attack",
        "diva",
        "--source",
        lenet5,
        "--limit",
        "8",
        "--backend",
        "cpu",
    ]);
    assert_refused(&out, "diva without a reference", &["needs --reference"]);
    let out = advcomp(&[
        "attack",
        "--attack",
        "diva",
        "--source",
        lenet5,
        "--reference",
        lenet5,
        "--diva-weight=-1",
        "--limit",
        "8",
        "--backend",
        "cpu",
    ]);
    assert_refused(&out, "a bad DIVA weight", &["--diva-weight"]);
}
