//! Training learns, and the same seed gives the same model. One test function, so nothing else
//! in this process draws from the (global) random generator while it runs.

use advcomp::data::{self, DatasetKind, Split};
use advcomp::model::ModelKind;
use advcomp::train::{self, TrainConfig};

#[test]
fn short_training_learns_and_is_reproducible_from_its_seed() {
    let device = advcomp::backend::cpu().device;
    let train_set = data::load(DatasetKind::Mnist, Split::Train, None).unwrap();
    let mut test_set = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    test_set.truncate(1000);
    let config = TrainConfig {
        epochs: 1,
        train_limit: Some(2560),
        seed: 4,
        ..TrainConfig::new(ModelKind::LeNet5, DatasetKind::Mnist)
    };
    let run = || {
        let (network, reports) = train::train(
            ModelKind::LeNet5,
            &config,
            &device,
            &train_set,
            &test_set,
            |_| {},
        )
        .unwrap();
        let (images, _) = test_set.batch(&[0, 1, 2, 3], &device);
        let logits = network
            .forward(images)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        (reports[0].test_accuracy, logits)
    };
    let (accuracy, logits) = run();
    // 20 Adam steps take LeNet5 from chance (10%) to well above it.
    assert!(accuracy >= 0.6, "accuracy after 20 steps: {accuracy}");
    let (accuracy_again, logits_again) = run();
    assert_eq!(accuracy, accuracy_again);
    assert_eq!(
        logits, logits_again,
        "same seed, same data order, same weights"
    );

    let other = TrainConfig {
        seed: 5,
        ..config.clone()
    };
    assert_ne!(config.hash(), other.hash());
    let bad = TrainConfig {
        learning_rate: -1.0,
        ..config.clone()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("learning_rate: must be a positive number")
    );
}
