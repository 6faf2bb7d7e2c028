//! A user's own images — an ImageFolder directory of PNGs or a safetensors file — read as the
//! images they were written from, used by every command like a built-in dataset, and refused
//! with a clear error naming the file when they cannot be used.

mod common;
use common::{Scratch, advcomp, assert_refused};

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use advcomp::data::{self, DatasetKind, Images, Pixels, Split};
use safetensors::{Dtype, tensor::TensorView};

fn temp_dir(name: &str) -> Scratch {
    Scratch::folder(&format!("own-{name}"))
}

/// `advcomp ARGS --backend cpu`.
fn on_cpu(args: &[&str]) -> Output {
    advcomp(&[args, &["--backend", "cpu"]].concat())
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const LENET5: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/models/lenet5.safetensors"
);

fn mnist(split: Split, n: usize) -> Images {
    let mut images = data::load(DatasetKind::Mnist, split, None).unwrap();
    images.truncate(n);
    images
}

fn bytes(images: &Images) -> &[u8] {
    match &images.pixels {
        Pixels::Bytes(p) => p,
        Pixels::Floats(_) => panic!("MNIST is bytes"),
    }
}

/// `images` as DIR/<label>/<index>.png.
fn write_image_folder(images: &Images, dir: &Path) {
    for (i, &label) in images.labels.iter().enumerate() {
        let class = dir.join(label.to_string());
        std::fs::create_dir_all(&class).unwrap();
        let pixels = bytes(images)[i * 784..(i + 1) * 784].to_vec();
        image::GrayImage::from_raw(28, 28, pixels)
            .unwrap()
            .save(class.join(format!("{i:05}.png")))
            .unwrap();
    }
}

fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn u8_images(images: &Images) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    let shape = vec![images.len(), 1, 28, 28];
    ("images", Dtype::U8, shape, bytes(images).to_vec())
}

fn f32_images(images: &Images) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    let floats = images.pixels.floats(0..images.pixels.len());
    let shape = vec![images.len(), 1, 28, 28];
    (
        "images",
        Dtype::F32,
        shape,
        bytemuck::cast_slice(&floats).to_vec(),
    )
}

fn i64_labels(labels: &[u8]) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    let values: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    (
        "labels",
        Dtype::I64,
        vec![labels.len()],
        bytemuck::cast_slice(&values).to_vec(),
    )
}

fn i32_labels(labels: &[u8]) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
    let values: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    (
        "labels",
        Dtype::I32,
        vec![labels.len()],
        bytemuck::cast_slice(&values).to_vec(),
    )
}

#[test]
fn an_image_folder_reads_as_the_images_it_was_written_from() {
    // The first 100 MNIST test images hold every digit (the first 8 is image 61).
    let original = mnist(Split::Test, 100);
    let dir = temp_dir("folder");
    write_image_folder(&original, &dir);
    std::fs::write(dir.join("3").join("notes.txt"), "not an image").unwrap();
    let (read, classes) = data::read_image_folder(&dir).unwrap();
    assert_eq!(classes, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
    assert_eq!(read.shape(), [1, 28, 28]);
    // Files are visited class by class, each class in file-name order.
    let mut order: Vec<usize> = (0..original.len()).collect();
    order.sort_by_key(|&i| (original.labels[i], i));
    assert_eq!(read.len(), original.len());
    for (k, &i) in order.iter().enumerate() {
        assert_eq!(read.labels[k], original.labels[i]);
        assert_eq!(
            &bytes(&read)[k * 784..(k + 1) * 784],
            &bytes(&original)[i * 784..(i + 1) * 784],
            "image {k} of the folder"
        );
    }
    // One colour image turns the folder into RGB: grey images replicated in every channel.
    let mut rgb = image::RgbImage::new(28, 28);
    rgb.put_pixel(3, 4, image::Rgb([200, 10, 30]));
    rgb.save(dir.join("9").join("99999.png")).unwrap();
    let (read, _) = data::read_image_folder(&dir).unwrap();
    assert_eq!(read.shape(), [3, 28, 28]);
    let first = &bytes(&read)[..3 * 784];
    assert_eq!(first[..784], first[784..2 * 784]);
    let last = &bytes(&read)[(read.len() - 1) * 3 * 784..];
    let at = 4 * 28 + 3;
    assert_eq!(
        [last[at], last[784 + at], last[2 * 784 + at]],
        [200, 10, 30]
    );
}

#[test]
fn eval_on_own_files_equals_eval_on_the_same_images_of_the_dataset() {
    let original = mnist(Split::Test, 100);
    let dir = temp_dir("eval");
    let folder = dir.join("folder");
    write_image_folder(&original, &folder);
    let (u8_file, f32_file) = (dir.join("u8.safetensors"), dir.join("f32.safetensors"));
    write_safetensors(
        &u8_file,
        &[u8_images(&original), i64_labels(&original.labels)],
    );
    write_safetensors(
        &f32_file,
        &[f32_images(&original), i32_labels(&original.labels)],
    );
    let accuracy = |extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", LENET5, "--json"];
        args.extend(extra);
        json(&on_cpu(&args))["accuracy"].as_f64().unwrap()
    };
    let reference = accuracy(&["--limit", "100"]);
    assert!(reference > 0.9, "LeNet5 on MNIST: {reference}");
    for file in [&folder, &u8_file, &f32_file] {
        let ours = accuracy(&["--test-data", file.to_str().unwrap()]);
        assert_eq!(ours, reference, "{}", file.display());
    }
}

#[test]
fn models_train_and_fine_tune_on_own_data_and_imported_models_fine_tune() {
    let dir = temp_dir("train");
    let train_file = dir.join("train.safetensors");
    let train = mnist(Split::Train, 2000);
    write_safetensors(&train_file, &[u8_images(&train), i64_labels(&train.labels)]);
    let folder = dir.join("test");
    write_image_folder(&mnist(Split::Test, 200), &folder);
    let out = dir.join("own.safetensors");
    let trained = json(&on_cpu(&[
        "train",
        "--model",
        "lenet5",
        "--data",
        train_file.to_str().unwrap(),
        "--test-data",
        folder.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let accuracy = trained["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "3 epochs on 2,000 images: {accuracy}");
    // The checkpoint remembers it was made on own data: evaluating it needs the files again.
    for again in [
        on_cpu(&["eval", "--checkpoint", out.to_str().unwrap()]),
        on_cpu(&["attack", "--source", out.to_str().unwrap(), "--limit", "10"]),
    ] {
        assert_refused(&again, "without its own test data", &["--test-data"]);
    }
    let evaluated = json(&on_cpu(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--test-data",
        folder.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(evaluated["accuracy"].as_f64().unwrap(), accuracy);

    // An imported model is fine-tuned from its own weights.
    let onnx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/models/mlp-mnist.onnx"
    );
    let tuned = dir.join("mlp-tuned.safetensors");
    let trained = json(&on_cpu(&[
        "train",
        "--model",
        onnx,
        "--dataset",
        "mnist",
        "--train-limit",
        "2000",
        "--epochs",
        "1",
        "--lr",
        "1e-4",
        "--limit",
        "1000",
        "--out",
        tuned.to_str().unwrap(),
        "--json",
    ]));
    let accuracy = trained["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "fine-tuned MLP: {accuracy}");
    let info = json(&on_cpu(&[
        "info",
        "--checkpoint",
        tuned.to_str().unwrap(),
        "--json",
    ]));
    let meta = &info["checkpoint"];
    assert!(
        meta["model"].as_str().unwrap().ends_with("mlp-mnist.onnx"),
        "{meta}"
    );
    assert_eq!(meta["model_sha256"].as_str().unwrap().len(), 64);
    let evaluated = json(&on_cpu(&[
        "eval",
        "--checkpoint",
        tuned.to_str().unwrap(),
        "--limit",
        "1000",
        "--json",
    ]));
    assert_eq!(evaluated["accuracy"].as_f64().unwrap(), accuracy);
    // Fine-tuning moved the imported weights: the tuned model's logits are not the file's.
    let device = advcomp::backend::cpu().device;
    let map = advcomp::model::KeyMap::default();
    let original = advcomp::model::load(Path::new(onnx), None, &map, &device).unwrap();
    let tuned = advcomp::model::load(&tuned, None, &map, &device).unwrap();
    let (x, _) = mnist(Split::Test, 64).batch(&(0..64).collect::<Vec<_>>(), &device);
    let moved: f32 = (original.network.forward(x.clone()) - tuned.network.forward(x))
        .abs()
        .max()
        .into_scalar();
    assert!(moved > 1e-3, "largest logit change {moved}");
}

/// Runs `args` on the cpu, expects a refusal whose text holds every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    assert_refused(&on_cpu(args), &format!("{args:?}"), needles);
}

#[test]
fn own_data_that_cannot_be_used_is_refused_by_name() {
    let dir = temp_dir("bad");
    let images = mnist(Split::Test, 20);
    let eval = |data: &Path, needles: &[&str]| {
        refused(
            &[
                "eval",
                "--checkpoint",
                LENET5,
                "--test-data",
                data.to_str().unwrap(),
            ],
            needles,
        )
    };

    let undecodable = dir.join("undecodable");
    write_image_folder(&images, &undecodable);
    std::fs::write(
        undecodable.join("3").join("broken.png"),
        b"\x89PNG not really",
    )
    .unwrap();
    eval(&undecodable, &["broken.png", "cannot decode"]);

    let empty_class = dir.join("empty-class");
    write_image_folder(&images, &empty_class);
    std::fs::create_dir_all(empty_class.join("8")).unwrap();
    eval(&empty_class, &["8", "no PNG or JPEG"]);

    let no_classes = dir.join("no-classes");
    std::fs::create_dir_all(&no_classes).unwrap();
    eval(&no_classes, &["no-classes", "no class folders"]);

    let mut labels = images.labels.clone();
    labels[7] = 12;
    let out_of_range = dir.join("label12.safetensors");
    write_safetensors(&out_of_range, &[u8_images(&images), i64_labels(&labels)]);
    eval(
        &out_of_range,
        &["label12.safetensors", "label 12", "10 classes"],
    );

    let negative = dir.join("negative.safetensors");
    let values: Vec<i64> = (0..20).map(|i| if i == 3 { -1 } else { 0 }).collect();
    let negative_labels = (
        "labels",
        Dtype::I64,
        vec![20],
        bytemuck::cast_slice(&values).to_vec(),
    );
    write_safetensors(&negative, &[u8_images(&images), negative_labels]);
    eval(&negative, &["negative.safetensors", "label -1 at index 3"]);

    let no_labels = dir.join("no-labels.safetensors");
    write_safetensors(&no_labels, &[u8_images(&images)]);
    eval(&no_labels, &["no-labels.safetensors", "no tensor 'labels'"]);

    let colour = dir.join("colour.safetensors");
    let rgb = (
        "images",
        Dtype::U8,
        vec![20, 3, 28, 28],
        vec![0u8; 20 * 3 * 784],
    );
    write_safetensors(&colour, &[rgb, i64_labels(&images.labels)]);
    eval(
        &colour,
        &["colour.safetensors", "[1, 28, 28]", "[3, 28, 28]"],
    );

    let normalised = dir.join("normalised.safetensors");
    let floats: Vec<f32> = vec![-0.42; 20 * 784];
    let normalised_images = (
        "images",
        Dtype::F32,
        vec![20, 1, 28, 28],
        bytemuck::cast_slice(&floats).to_vec(),
    );
    write_safetensors(
        &normalised,
        &[normalised_images, i64_labels(&images.labels)],
    );
    eval(&normalised, &["normalised.safetensors", "outside [0, 1]"]);

    eval(&dir.join("missing"), &["missing", "not found"]);

    // An output never overwrites the user's data.
    let data = dir.join("data.safetensors");
    write_safetensors(&data, &[u8_images(&images), i64_labels(&images.labels)]);
    let before = std::fs::read(&data).unwrap();
    let data = data.to_str().unwrap();
    refused(
        &[
            "attack",
            "--source",
            LENET5,
            "--test-data",
            data,
            "--save-adv",
            data,
        ],
        &["--save-adv", "is also an input"],
    );
    assert_eq!(std::fs::read(data).unwrap(), before);

    // Own files and a named dataset are one or the other.
    let folder = dir.join("good");
    write_image_folder(&mnist(Split::Test, 100), &folder);
    refused(
        &[
            "eval",
            "--checkpoint",
            LENET5,
            "--dataset",
            "mnist",
            "--test-data",
            folder.to_str().unwrap(),
        ],
        &["--dataset", "--test-data", "cannot be used with"],
    );

    // Training and test folders with different classes would shift the labels: refused, and
    // nothing is written.
    let out = dir.join("never.safetensors");
    refused(
        &[
            "train",
            "--data",
            folder.to_str().unwrap(),
            "--test-data",
            empty_class.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["empty-class", "no PNG or JPEG"],
    );
    let missing_8 = dir.join("missing-8");
    write_image_folder(&images, &missing_8);
    refused(
        &[
            "train",
            "--data",
            folder.to_str().unwrap(),
            "--test-data",
            missing_8.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["missing-8", "class folders must be the same"],
    );
    assert!(!out.exists());
}
