//! Data: the vendored MNIST, the IDX and CIFAR-10 readers, and every bad-input case through the
//! real command line (clear error naming the file, exit code 2).

mod common;
use common::{Scratch, advcomp, assert_refused};

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use advcomp::data::{self, DatasetKind, Pixels, Split};
use sha2::{Digest, Sha256};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/mnist");

fn temp_dir(name: &str) -> Scratch {
    Scratch::folder(&format!("test-{name}"))
}

#[test]
fn vendored_mnist_matches_published_sha256_of_uncompressed_files() {
    let sums = std::fs::read_to_string(Path::new(ASSETS).join("SHA256SUMS.uncompressed")).unwrap();
    let mut checked = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (expected, name) = line.split_once("  ").expect("sha256sum format");
        let gz = std::fs::read(Path::new(ASSETS).join(format!("{name}.gz"))).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let actual: String = Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, expected, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn embedded_mnist_loads_without_any_files() {
    let train = data::load(DatasetKind::Mnist, Split::Train, None).unwrap();
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((test.channels, test.height, test.width), (1, 28, 28));
    assert_eq!(test.pixels.len(), 10_000 * 784);
    // The first test digit of MNIST is a 7, the first training digit a 5.
    assert_eq!((test.labels[0], train.labels[0]), (7, 5));
    let mut histogram = [0usize; 10];
    test.labels.iter().for_each(|&l| histogram[l as usize] += 1);
    assert_eq!(histogram.iter().sum::<usize>(), 10_000);
    assert!(
        histogram.iter().all(|&c| (800..1200).contains(&c)),
        "{histogram:?}"
    );
}

#[test]
fn batches_are_nchw_in_unit_range_and_shuffles_follow_the_seed() {
    let test = data::load(DatasetKind::Mnist, Split::Test, None).unwrap();
    let device = advcomp::backend::cpu().device;
    let (images, labels) = test.batch(&[0, 1, 2], &device);
    assert_eq!(images.dims(), [3, 1, 28, 28]);
    let values = images.into_data().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(values[..784].iter().copied().fold(0.0f32, f32::max), 1.0);
    assert_eq!(
        labels
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        vec![7, 2, 1]
    );

    let a = data::shuffled_order(1000, 7, 0);
    assert_eq!(a, data::shuffled_order(1000, 7, 0));
    assert_ne!(a, data::shuffled_order(1000, 7, 1));
    assert_ne!(a, data::shuffled_order(1000, 8, 0));
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
}

/// Writes an IDX file of unsigned bytes, gzipped or raw.
fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter()
        .for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
    bytes.extend_from_slice(data);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        bytes = enc.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn raw_and_gzipped_idx_read_alike_from_a_data_dir() {
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
    for gzip in [false, true] {
        let dir = temp_dir(&format!("idx-{gzip}"));
        let ext = if gzip { ".gz" } else { "" };
        write_idx(
            &dir.join(format!("t10k-images-idx3-ubyte{ext}")),
            &[3, 28, 28],
            &pixels,
            gzip,
        );
        write_idx(
            &dir.join(format!("t10k-labels-idx1-ubyte{ext}")),
            &[3],
            &[4, 0, 9],
            gzip,
        );
        let set = data::load(DatasetKind::FashionMnist, Split::Test, Some(&dir)).unwrap();
        assert_eq!(set.labels, vec![4, 0, 9]);
        assert_eq!(set.pixels, Pixels::Bytes(pixels.clone()));
    }
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u32 * 7 + seed as u32) as u8));
    r
}

#[test]
fn cifar10_binary_batches_are_read_in_record_order() {
    let dir = temp_dir("cifar");
    for i in 1..=5u8 {
        let bytes = [cifar_record(i, i), cifar_record(9, i + 10)].concat();
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(3, 99)).unwrap();
    let train = data::load(DatasetKind::Cifar10, Split::Train, Some(&dir)).unwrap();
    assert_eq!(train.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    assert_eq!(
        train.pixels.floats(3072..2 * 3072),
        Pixels::Bytes(cifar_record(9, 11)[1..].to_vec()).floats(0..3072)
    );
    let test = data::load(DatasetKind::Cifar10, Split::Test, Some(&dir)).unwrap();
    assert_eq!(test.labels, vec![3]);
    // R plane first: pixel (c=1, y=0, x=0) is byte 1024 of the record's image.
    let (images, _) = test.batch(&[0], &advcomp::backend::cpu().device);
    let v = images.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(v[1024], cifar_record(3, 99)[1 + 1024] as f32 / 255.0);
}

/// Runs `advcomp train` on a data dir (which it must not write to) and gives its output.
fn train_on(dataset: &str, dir: &Path) -> Output {
    let never = dir.join("never-written.safetensors");
    let out = advcomp(&[
        "train",
        "--model",
        "lenet5",
        "--backend",
        "cpu",
        "--epochs",
        "1",
        "--dataset",
        dataset,
        "--data-dir",
        dir.to_str().unwrap(),
        "--out",
        never.to_str().unwrap(),
    ]);
    assert!(!never.exists());
    out
}

/// A valid MNIST-format train/test pair in `dir`, then `spoil` breaks one file.
fn bad_mnist_case(name: &str, spoil: impl FnOnce(&Path)) -> Output {
    let dir = temp_dir(name);
    for prefix in ["train", "t10k"] {
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[2, 28, 28],
            &[0; 2 * 784],
            false,
        );
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &[2],
            &[1, 2],
            false,
        );
    }
    spoil(&dir);
    train_on("mnist", &dir)
}

#[test]
fn wrong_magic_is_refused() {
    let case = bad_mnist_case("magic", |d| {
        std::fs::write(d.join("train-images-idx3-ubyte"), b"\x89PNG\r\n\x1a\n....").unwrap()
    });
    assert_refused(
        &case,
        "train-images-idx3-ubyte",
        &["train-images-idx3-ubyte", "wrong magic number"],
    );
}

#[test]
fn wrong_dimensions_are_refused() {
    let case = bad_mnist_case("dims", |d| {
        write_idx(
            &d.join("train-images-idx3-ubyte"),
            &[2, 784],
            &[0; 2 * 784],
            false,
        )
    });
    assert_refused(
        &case,
        "train-images-idx3-ubyte",
        &["train-images-idx3-ubyte", "wrong dimensions"],
    );
    let case = bad_mnist_case("dims-size", |d| {
        write_idx(
            &d.join("train-images-idx3-ubyte"),
            &[2, 32, 32],
            &[0; 2 * 1024],
            false,
        )
    });
    assert_refused(
        &case,
        "train-images-idx3-ubyte",
        &["train-images-idx3-ubyte", "wrong dimensions"],
    );
}

#[test]
fn truncated_files_are_refused() {
    let case = bad_mnist_case("trunc", |d| {
        let path = d.join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    });
    assert_refused(
        &case,
        "train-images-idx3-ubyte",
        &["train-images-idx3-ubyte", "truncated"],
    );
    let case = bad_mnist_case("trunc-gz", |d| {
        let path = d.join("train-labels-idx1-ubyte");
        let raw = std::fs::read(&path).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        let gz = enc.finish().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
    });
    assert_refused(
        &case,
        "train-labels-idx1-ubyte.gz",
        &["train-labels-idx1-ubyte.gz", "truncated"],
    );
}

#[test]
fn image_label_count_mismatch_is_refused() {
    let case = bad_mnist_case("count", |d| {
        write_idx(&d.join("train-labels-idx1-ubyte"), &[3], &[1, 2, 3], false)
    });
    assert_refused(
        &case,
        "train-labels-idx1-ubyte",
        &["train-labels-idx1-ubyte", "count mismatch"],
    );
}

#[test]
fn labels_above_nine_are_refused() {
    let case = bad_mnist_case("label", |d| {
        write_idx(&d.join("t10k-labels-idx1-ubyte"), &[2], &[1, 10], false)
    });
    assert_refused(
        &case,
        "t10k-labels-idx1-ubyte",
        &["t10k-labels-idx1-ubyte", "label 10"],
    );
}

#[test]
fn missing_files_are_refused() {
    let case = bad_mnist_case("missing", |d| {
        std::fs::remove_file(d.join("t10k-images-idx3-ubyte")).unwrap()
    });
    assert_refused(
        &case,
        "t10k-images-idx3-ubyte",
        &["t10k-images-idx3-ubyte", "file not found"],
    );
}

#[test]
fn truncated_cifar_and_bad_cifar_labels_are_refused() {
    let dir = temp_dir("cifar-bad");
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), cifar_record(1, 0)).unwrap();
    }
    std::fs::write(dir.join("data_batch_3.bin"), &cifar_record(1, 0)[..3000]).unwrap();
    let err = data::load(DatasetKind::Cifar10, Split::Train, Some(&dir))
        .err()
        .unwrap();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("truncated"),
        "{msg}"
    );

    std::fs::write(dir.join("data_batch_3.bin"), cifar_record(12, 0)).unwrap();
    let msg = data::load(DatasetKind::Cifar10, Split::Train, Some(&dir))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("label 12"),
        "{msg}"
    );
}
