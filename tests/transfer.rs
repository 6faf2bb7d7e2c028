//! Transfer: adversarial sets keep float precision through a save/load round trip, cell metrics
//! agree with a direct computation, and `advcomp attack` / `advcomp transfer` run end to end and
//! refuse bad options.

mod common;
use common::{Scratch, advcomp, assert_refused};

use advcomp::attack::{AttackConfig, AttackKind};
use advcomp::backend;
use advcomp::data::{self, DatasetKind, Split};
use advcomp::model::{self, CheckpointMeta, Classifier, Compression, KeyMap, ModelKind};
use advcomp::quant::FixedPoint;
use advcomp::transfer;

fn temp(name: &str) -> Scratch {
    Scratch::path(&format!("transfer-{name}"))
}

fn checkpoint(name: &str, seed: u64, compression: &Compression) -> Scratch {
    let device = backend::cpu().device;
    device.seed(seed);
    let path = temp(name);
    let meta = CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        dataset: Some(DatasetKind::Mnist.into()),
        ..Default::default()
    };
    let network = model::bake(ModelKind::LeNet5.init(&device), compression);
    model::save_compressed(&path, &network, compression, &meta).unwrap();
    path
}

fn classifier(path: &std::path::Path) -> Classifier {
    model::load_checkpoint(path, None, &KeyMap::default(), &backend::cpu().device)
        .unwrap()
        .classifier()
}

#[test]
fn sets_round_trip_in_float_and_metrics_match_a_direct_count() {
    let device = backend::cpu().device;
    let source = classifier(&checkpoint("src.safetensors", 1, &Compression::default()));
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    // A step below 1/255: an 8-bit image could not hold it.
    let config = AttackConfig::new(AttackKind::Ifgsm)
        .with("step", 0.001)
        .and_then(|c| c.with("steps", 2))
        .unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let set = transfer::craft(
        &source,
        &test,
        40,
        16,
        &config,
        None,
        &device,
        "test".into(),
        &bar,
    )
    .unwrap();
    assert_eq!(set.len(), 40);
    let path = temp("set.safetensors");
    transfer::save(&path, &set).unwrap();
    let back = transfer::load(&path, &test, 40).unwrap();
    assert_eq!(back.images, set.images);
    assert_eq!(back.labels, set.labels);
    assert_eq!(back.shape, [40, 1, 28, 28]);

    let cell = transfer::evaluate(&source, &back, &test, 16, &device).unwrap();
    let (clean, _) = test.batch(&(0..40).collect::<Vec<_>>(), &device);
    let clean: Vec<f32> = clean
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let deltas: Vec<f32> = set
        .images
        .iter()
        .zip(&clean)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let mean = deltas.iter().map(|d| *d as f64).sum::<f64>() / deltas.len() as f64;
    assert!((cell.mean_abs_delta - mean).abs() < 1e-9);
    assert!(
        cell.linf <= 0.002 + 1e-6 && cell.linf > 0.0,
        "L-inf {}",
        cell.linf
    );
    let changed = deltas.iter().filter(|d| **d > 0.0).count() as f64 / 40.0;
    assert_eq!(cell.l0, changed);
    assert_eq!(cell.mean_iterations, 2.0);
    assert!(cell.adversarial_accuracy <= cell.clean_accuracy + 1e-9);
    let [lo, hi] = cell.mean_abs_delta_ci;
    assert!(lo <= cell.mean_abs_delta && cell.mean_abs_delta <= hi && lo < hi);
    let [lo, hi] = cell.adversarial_accuracy_ci;
    assert!(lo <= cell.adversarial_accuracy && cell.adversarial_accuracy <= hi);
}

#[test]
fn bootstrap_intervals_cover_the_mean_with_the_binomial_width() {
    assert_eq!(transfer::bootstrap_interval(&[1.0; 50]), [1.0, 1.0]);
    // 400 coin flips at p = 0.5: the standard error is 0.025, so the 95% interval is about
    // 0.45..0.55.
    let flips: Vec<f64> = (0..400).map(|i| (i % 2) as f64).collect();
    let [lo, hi] = transfer::bootstrap_interval(&flips);
    assert!(
        (0.43..0.47).contains(&lo) && (0.53..0.57).contains(&hi),
        "{lo}..{hi}"
    );
    assert_eq!(transfer::bootstrap_interval(&flips), [lo, hi], "fixed seed");
}

#[test]
fn attack_and_transfer_commands_run_and_refuse_bad_options() {
    let full = checkpoint("full.safetensors", 2, &Compression::default());
    let quantised = checkpoint(
        "q8.safetensors",
        2,
        &Compression::fixed_point(
            Some(FixedPoint::paper(8).unwrap()),
            Some(FixedPoint::paper(8).unwrap()),
        ),
    );
    let (full, quantised) = (full.to_str().unwrap(), quantised.to_str().unwrap());
    let both = format!("{full},{quantised}");
    let out = advcomp(&[
        "attack",
        "--source",
        quantised,
        "--attack",
        "fgsm",
        "--eval",
        &both,
        "--limit",
        "24",
        "--batch-size",
        "8",
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["images"], 24);
    assert_eq!(json["cells"].as_array().unwrap().len(), 2);
    assert!(json["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(
        json["adapter"].as_str().map(|a| a.starts_with("Flex")),
        Some(true)
    );

    let matrix = temp("matrix.csv");
    let out = advcomp(&[
        "transfer",
        "--models",
        &both,
        "--attack",
        "fgsm",
        "--limit",
        "16",
        "--backend",
        "cpu",
        "--out",
        matrix.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&matrix).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    // On the terminal: the attack's settings, then the matrix as a matrix (a row per source,
    // the diagonal in brackets, the targets' clean accuracy under it).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fgsm: step 0.02, L-inf reach 0.02"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("source \\ target"), "{stdout}");
    for (i, row) in rows[1..].iter().enumerate() {
        let printed: Vec<&str> = lines[1 + i].split_whitespace().collect();
        assert_eq!(printed.len(), 3, "{stdout}");
        let diagonal: f64 = row[1 + i].parse().unwrap();
        assert_eq!(
            printed[1 + i],
            format!("[{:.1}]", 100.0 * diagonal),
            "{stdout}"
        );
    }
    assert!(lines[3].starts_with("clean "), "{stdout}");
    assert!(rows.iter().all(|r| r.len() == 3), "{csv}");
    for row in &rows[1..] {
        for cell in &row[1..] {
            let accuracy: f64 = cell.parse().unwrap();
            assert!((0.0..=1.0).contains(&accuracy));
        }
    }

    // With a cache the second run reuses both sets and gives the same matrix.
    let cache = temp("cache");
    let cached = temp("matrix-cached.csv");
    let run = || {
        advcomp(&[
            "transfer",
            "--models",
            &both,
            "--attack",
            "fgsm",
            "--limit",
            "16",
            "--backend",
            "cpu",
            "--out",
            cached.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ])
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first_matrix = std::fs::read_to_string(&cached).unwrap();
    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.matches("reusing").count(), 2, "{stderr}");
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), first_matrix);
    assert_eq!(first_matrix, csv, "the cached run computes the same matrix");

    let never = temp("never.csv");
    let cases: [(&[&str], &str); 4] = [
        (
            &["attack", "--source", full, "--attack", "cw"],
            "unknown attack 'cw'",
        ),
        (
            &["attack", "--source", full, "--eps", "0"],
            // --eps is --step's alias; errors name the flag by its name.
            "--step: must be a positive number (got 0)",
        ),
        (
            &["attack", "--source", full, "--attack", "pgd", "--budget=-1"],
            "--budget: must be a positive number (got -1)",
        ),
        (
            &[
                "transfer",
                "--models",
                full,
                "--out",
                never.to_str().unwrap(),
            ],
            "at least two checkpoints",
        ),
    ];
    for (args, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu", "--limit", "4"]);
        assert_refused(&advcomp(&args), &format!("{args:?}"), &[expected]);
    }
    assert!(!never.exists());
}
