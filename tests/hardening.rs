//! Hostile but fair input, through the real binary: malformed checkpoints, adversarial sets,
//! configs and data files end with `error: ...` naming the file or field and exit code 2,
//! with nothing written; outputs never overwrite inputs; files are byte-reproducible; killed
//! runs leave no temporaries behind; SIGINT / SIGTERM stop cleanly.

mod common;
use common::{Scratch, advcomp_in, assert_refused, command};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use advcomp::backend;
use advcomp::data::DatasetKind;
use advcomp::model::{self, CheckpointMeta, Compression, ModelKind};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

/// A fresh, empty folder for one test.
fn folder(name: &str) -> Scratch {
    Scratch::folder(&format!("hard-{name}"))
}

/// `advcomp ARGS` run in the temp folder (where a relative output path would land).
fn advcomp(args: &[&str]) -> Output {
    advcomp_in(&std::env::temp_dir(), args)
}

/// Runs `args` on the cpu backend and asserts success.
fn succeed(args: &[&str]) {
    let mut args = args.to_vec();
    args.extend(["--backend", "cpu"]);
    let out = advcomp(&args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        model: Some(ModelKind::LeNet5.into()),
        dataset: Some(DatasetKind::Mnist.into()),
        seed: 1,
        accuracy: None,
        compression: None,
        tool_version: advcomp::VERSION.into(),
        config_hash: "test".into(),
        model_sha256: None,
    }
}

/// An untrained LeNet5 checkpoint (its accuracy does not matter here).
fn lenet5(path: &Path, seed: u64) -> PathBuf {
    let device = backend::cpu().device;
    device.seed(seed);
    let network = ModelKind::LeNet5.init(&device);
    model::save_compressed(path, &network, &Compression::default(), &meta()).unwrap();
    path.to_path_buf()
}

/// A safetensors file written as-is (the library refuses to write most of what these tests
/// need).
fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: &[(&str, &str)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// A copy of the checkpoint at `from` with its metadata's `compression` replaced.
fn with_compression(from: &Path, to: &Path, compression: &serde_json::Value) {
    let bytes = std::fs::read(from).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    let text = compression.to_string();
    write_raw(
        to,
        &tensors,
        &[
            ("model", "lenet5"),
            ("dataset", "mnist"),
            ("compression", &text),
        ],
    );
}

#[test]
fn compression_records_that_cannot_be_are_refused_by_every_command() {
    let dir = folder("record");
    let base = lenet5(&dir.join("base.safetensors"), 1);
    let good = json!({
        "pruner": "none", "target_density": null, "density": {}, "overall_density": 1.0,
        "weights": {"bits": 8, "int_bits": 2}, "activations": {"bits": 8, "int_bits": 2},
        "grad": "ste", "finetune_epochs": 0
    });
    let with = |key: &str, value: serde_json::Value| {
        let mut record = good.clone();
        record[key] = value;
        record
    };
    let cases = [
        (
            with("weights", json!({"bits": 4, "int_bits": 9})),
            "int bits 9",
        ),
        (with("weights", json!({"bits": 0, "int_bits": 1})), "bits 0"),
        (
            with("activations", json!({"bits": 200, "int_bits": 2})),
            "bits 200",
        ),
        (with("pruner", json!("snip")), "unknown pruner 'snip'"),
        (
            with("pruner", json!("dns"))
                .as_object()
                .cloned()
                .map(|mut r| {
                    r.insert("target_density".into(), json!(-0.5));
                    serde_json::Value::Object(r)
                })
                .unwrap(),
            "target_density -0.5",
        ),
        (
            with("pruner", json!("dns"))
                .as_object()
                .cloned()
                .map(|mut r| {
                    r.insert("density".into(), json!({"conv9": 0.5}));
                    serde_json::Value::Object(r)
                })
                .unwrap(),
            "layer 'conv9'",
        ),
    ];
    // The good record loads, so each refusal is the field's doing.
    let fine = dir.join("fine.safetensors");
    with_compression(&base, &fine, &good);
    succeed(&["info", "--checkpoint", s(&fine)]);
    for (i, (record, expected)) in cases.iter().enumerate() {
        let ckpt = dir.join(format!("bad{i}.safetensors"));
        with_compression(&base, &ckpt, record);
        let c = s(&ckpt);
        for args in [
            &["eval", "--checkpoint", c, "--limit", "8"][..],
            &["info", "--checkpoint", c],
            &["stats", "--checkpoint", c],
            &["attack", "--source", c, "--limit", "4"],
        ] {
            let mut args = args.to_vec();
            args.extend(["--backend", "cpu"]);
            let out = advcomp(&args);
            assert_refused(
                &out,
                &format!("{args:?}"),
                &[c, "compression metadata", expected],
            );
        }
    }
}

/// A valid set of `n` images for the first `n` MNIST test images, then spoiled by `spoil`.
fn set_file(
    path: &Path,
    n: usize,
    spoil: impl FnOnce(&mut Vec<f32>, &mut Vec<usize>, &mut Vec<i64>, &mut Vec<i64>),
) {
    let test = advcomp::data::load(DatasetKind::Mnist, advcomp::data::Split::Test, None).unwrap();
    let mut pixels: Vec<f32> = test.pixels.floats(0..n * 784);
    let mut shape = vec![n, 1, 28, 28];
    let mut labels: Vec<i64> = test.labels[..n].iter().map(|&l| l as i64).collect();
    let mut iterations = vec![1i64; n];
    spoil(&mut pixels, &mut shape, &mut labels, &mut iterations);
    let count = shape[0];
    write_raw(
        path,
        &[
            (
                "adversarial",
                Dtype::F32,
                shape,
                bytemuck::cast_slice(&pixels).to_vec(),
            ),
            (
                "labels",
                Dtype::I64,
                vec![labels.len()],
                bytemuck::cast_slice(&labels).to_vec(),
            ),
            (
                "iterations",
                Dtype::I64,
                vec![iterations.len()],
                bytemuck::cast_slice(&iterations).to_vec(),
            ),
        ],
        &[("description", &format!("{count} images"))],
    );
}

#[test]
fn adversarial_sets_that_do_not_fit_the_run_are_refused() {
    let dir = folder("sets");
    let a = lenet5(&dir.join("a.safetensors"), 1);
    let b = lenet5(&dir.join("b.safetensors"), 2);
    let cache = dir.join("cache");
    let matrix = dir.join("m.csv");
    let models = format!("{},{}", s(&a), s(&b));
    let args = [
        "transfer",
        "--models",
        &models,
        "--attack",
        "fgsm",
        "--limit",
        "8",
        "--cache",
        s(&cache),
        "--out",
        s(&matrix),
        "--backend",
        "cpu",
    ];
    let first = advcomp(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("a-fgsm-")
        })
        .expect("a's cached set");
    // The unspoiled set is reused as it is.
    set_file(&cached, 8, |_, _, _, _| {});
    let again = advcomp(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    type Spoil = Box<dyn FnOnce(&mut Vec<f32>, &mut Vec<usize>, &mut Vec<i64>, &mut Vec<i64>)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (
            Box::new(|p, s, _, _| {
                *s = vec![8, 3, 32, 32];
                p.resize(8 * 3 * 32 * 32, 0.5);
            }),
            "images of shape [3, 32, 32], but the dataset's are [1, 28, 28]",
        ),
        (
            Box::new(|_, _, _, it| it[3] = -1),
            "image 3 took -1 iterations",
        ),
        (
            Box::new(|_, _, _, it| it[0] = 1 << 62),
            "took 4611686018427387904 iterations",
        ),
        (
            Box::new(|p, s, l, it| {
                *s = vec![0, 1, 28, 28];
                p.clear();
                l.clear();
                it.clear();
            }),
            "holds 0 images, this run attacks 8",
        ),
        (
            Box::new(|p, s, l, it| {
                *s = vec![4, 1, 28, 28];
                p.truncate(4 * 784);
                l.truncate(4);
                it.truncate(4);
            }),
            "holds 4 images, this run attacks 8",
        ),
        (Box::new(|_, _, l, _| l[5] = 42), "label 42 of image 5"),
        (Box::new(|p, _, _, _| p[100] = f32::NAN), "pixel 100 is NaN"),
    ];
    for (i, (spoil, expected)) in cases.into_iter().enumerate() {
        set_file(&cached, 8, spoil);
        let out = advcomp(&args);
        assert_refused(&out, &format!("case {i}"), &[s(&cached), expected]);
    }
}

/// Runs `advcomp sweep --config` on `text` and returns the output folder it was given.
fn sweep_with(dir: &Path, name: &str, text: &str) -> (Output, PathBuf) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let out = dir.join(format!("{name}-out"));
    let output = advcomp(&[
        "sweep",
        "--backend",
        "cpu",
        "--config",
        s(&config),
        "--out",
        s(&out),
    ]);
    (output, out)
}

#[test]
fn sweep_configs_with_impossible_counts_are_refused_before_anything_is_written() {
    let dir = folder("config");
    let huge = "9223372036854775807";
    let cases = [
        (
            format!("seeds = {huge}\n"),
            "seeds: must be between 1 and 1000",
        ),
        (
            format!("[attack]\nsteps = {huge}\n"),
            "attack.steps: must be between 1 and 100000",
        ),
        (
            format!("[baseline]\ntrain_limit = {huge}\n"),
            "baseline.train_limit",
        ),
        (
            format!("[baseline]\nepochs = {huge}\n"),
            "baseline.epochs: must be between 1 and 10000",
        ),
        (format!("[figure3]\nsteps = [1, {huge}]\n"), "figure3.steps"),
        (
            "[attack]\ndeepfool_candidates = 1\n".into(),
            "attack.deepfool_candidates",
        ),
        (
            "[attack]\ndeepfool_candidates = 11\n".into(),
            "attack.deepfool_candidates: 11",
        ),
        (
            "[attack]\neps = -0.1\n".into(),
            "attack.eps: must be a positive number",
        ),
        (
            "[attack]\nbatch_size = 1000000000000\n".into(),
            "attack.batch_size",
        ),
        ("[figure3]\neps = [0.0]\n".into(), "figure3.eps"),
        (
            "[grid]\nbits = [8]\npruner = \"snip\"\n".into(),
            "grid.pruner",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let (output, out) = sweep_with(&dir, &format!("c{i}"), text);
        assert_refused(&output, text, &[expected]);
        assert!(
            !stderr(&output).contains("--"),
            "names the field, not a flag: {}",
            stderr(&output)
        );
        assert!(!out.exists(), "{text}: nothing written");
    }
    // An unreadable config is a config file, not a data file.
    let missing = dir.join("missing.toml");
    let out = advcomp(&["sweep", "--config", s(&missing), "--out", s(&dir.join("o"))]);
    assert_refused(&out, "missing config", &["config file", s(&missing)]);
}

/// An IDX header for unsigned bytes with dimensions `dims`.
fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes
}

#[test]
fn idx_files_with_impossible_headers_are_refused() {
    let dir = folder("idx");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let images = data.join("t10k-images-idx3-ubyte");
    let labels = data.join("t10k-labels-idx1-ubyte");
    let eval = |limit: &str| {
        advcomp(&[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--data-dir",
            s(&data),
            "--dataset",
            "mnist",
            "--limit",
            limit,
            "--backend",
            "cpu",
        ])
    };
    // 0xFFFFFFFF^3 overflows any size computation.
    let mut bytes = idx_header(&[u32::MAX, u32::MAX, u32::MAX]);
    bytes.extend([0u8; 16]);
    std::fs::write(&images, &bytes).unwrap();
    assert_refused(&eval("64"), "huge dims", &[s(&images), "claim more than"]);
    // No images at all: said as such, not blamed on --limit.
    std::fs::write(&images, idx_header(&[0, 28, 28])).unwrap();
    std::fs::write(&labels, idx_header(&[0])).unwrap();
    let out = eval("64");
    assert_refused(&out, "empty", &[s(&images), "holds no images"]);
    assert!(!stderr(&out).contains("--limit"), "{}", stderr(&out));
}

#[test]
// The child is reaped by libc::wait4 (for its peak memory), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn a_gzip_bomb_is_refused_without_inflating_it() {
    let dir = folder("bomb");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join("t10k-images-idx3-ubyte.gz");
    // The header says 10 images; the stream goes on for 512 MiB of zeros (about 0.5 MB).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&idx_header(&[10, 28, 28])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    std::fs::write(&path, &bomb).unwrap();
    let mut child = command()
        .args([
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--data-dir",
            s(&data),
            "--dataset",
            "mnist",
            "--backend",
            "cpu",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    // wait4 reports this child's own peak memory.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert_eq!(libc::WEXITSTATUS(status), 2, "{err}");
    assert!(
        err.contains("trailing data") && err.contains(s(&path)),
        "{err}"
    );
    let peak_mib = usage.ru_maxrss / 1024; // kilobytes on Linux
    assert!(
        peak_mib < 256,
        "peak memory {peak_mib} MiB while refusing a 512 MiB bomb"
    );
}

#[test]
fn absurd_sizes_and_counts_on_the_command_line_are_refused() {
    let dir = folder("cli");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let c = s(&ckpt);
    let prof = dir.join("profile-out");
    let p = s(&prof);
    let trained = dir.join("t.safetensors");
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &[
                "profile",
                "--batch-sizes",
                "1000000000000",
                "--baseline",
                c,
                "--out",
                p,
            ],
            &["--batch-sizes", "between 1 and 65536"],
        ),
        (
            &["profile", "--repeats", "0", "--out", p],
            &["--repeats", "between 1"],
        ),
        (
            &["profile", "--kernels", "--elements", "0", "--out", p],
            &["--elements", "between 1"],
        ),
        (
            &["eval", "--checkpoint", c, "--batch-size", "0"],
            &["--batch-size", "between 1"],
        ),
        (
            &[
                "attack",
                "--source",
                c,
                "--attack",
                "deepfool",
                "--max-iterations",
                "0",
            ],
            &["--max-iterations: must be between 1"],
        ),
        (
            &["attack", "--source", c, "--steps", "100000000"],
            &["--steps: must be between 1"],
        ),
        (
            &[
                "train",
                "--epochs",
                "9223372036854775807",
                "--out",
                s(&trained),
            ],
            &["--epochs: must be between 1 and 10000"],
        ),
    ];
    for (args, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu"]);
        let out = advcomp(&args);
        assert_refused(&out, &format!("{args:?}"), expected);
    }
    assert!(!trained.exists());
}

#[test]
fn an_output_is_never_one_of_the_inputs() {
    let dir = folder("in-out");
    let base = lenet5(&dir.join("b.safetensors"), 1);
    let other = lenet5(&dir.join("o.safetensors"), 2);
    std::os::unix::fs::symlink(&base, dir.join("link.safetensors")).unwrap();
    let original = std::fs::read(&base).unwrap();
    let compress = |out: &str| {
        advcomp_in(
            &dir,
            &[
                "compress",
                "--checkpoint",
                "b.safetensors",
                "--bits",
                "8",
                "--finetune-epochs",
                "0",
                "--limit",
                "16",
                "--out",
                out,
                "--backend",
                "cpu",
            ],
        )
    };
    for out in [
        "b.safetensors",
        "./b.safetensors",
        s(&base),
        "link.safetensors",
    ] {
        assert_refused(&compress(out), out, &["--out", "is also an input"]);
    }
    let o = s(&other);
    let b = s(&base);
    let models = format!("{b},{o}");
    for args in [
        &["attack", "--source", b, "--limit", "4", "--save-adv", b][..],
        &[
            "attack",
            "--source",
            o,
            "--eval",
            b,
            "--limit",
            "4",
            "--save-adv",
            "./b.safetensors",
        ],
        &["transfer", "--models", &models, "--limit", "4", "--out", o],
        &["stats", "--checkpoint", b, "--out", b],
    ] {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu"]);
        assert_refused(
            &advcomp_in(&dir, &args),
            &format!("{args:?}"),
            &["is also an input"],
        );
    }
    assert_eq!(
        std::fs::read(&base).unwrap(),
        original,
        "the input is untouched"
    );
}

#[test]
fn outputs_that_cannot_be_written_are_refused_before_the_work() {
    let dir = folder("unwritable");
    let base = lenet5(&dir.join("b.safetensors"), 1);
    let b = s(&base);
    let a_dir = dir.join("a-directory");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    // /proc refuses new files even to root, so this is unwritable on every Linux.
    let unwritable = "/proc/advcomp-cannot-write.safetensors";
    let compress = |out: &str| {
        let start = Instant::now();
        let result = advcomp(&[
            "compress",
            "--checkpoint",
            b,
            "--prune",
            "dns",
            "--density",
            "0.5",
            "--out",
            out,
            "--backend",
            "cpu",
        ]);
        (result, start.elapsed())
    };
    for (out, expected) in [
        (s(&a_dir), "is a directory"),
        (unwritable, "cannot write in /proc"),
    ] {
        let (result, took) = compress(out);
        assert_refused(&result, out, &["--out", expected]);
        // Three epochs of fine-tuning take minutes: refused before any of it.
        assert!(
            took < Duration::from_secs(20),
            "{out}: refused only after {took:?}"
        );
    }
    let sweep = advcomp(&["sweep", "--backend", "cpu", "--out", s(&a_file)]);
    assert_refused(
        &sweep,
        "sweep into a file",
        &["--out", "is a file, not a directory"],
    );
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "x");
}

#[test]
fn diverging_training_and_non_finite_weights_are_refused() {
    let dir = folder("nan");
    let out = dir.join("diverged.safetensors");
    let train = advcomp(&[
        "train",
        "--lr",
        "1e30",
        "--epochs",
        "1",
        "--train-limit",
        "512",
        "--limit",
        "100",
        "--out",
        s(&out),
        "--backend",
        "cpu",
    ]);
    assert_refused(&train, "lr 1e30", &["training diverged", "epoch 1, step"]);
    assert!(!out.exists(), "a diverged run writes nothing");

    let base = lenet5(&dir.join("b.safetensors"), 1);
    let bytes = std::fs::read(&base).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let mut data = v.data().to_vec();
            if name == "conv0.weight" {
                data[4 * 7..4 * 8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            (name, v.dtype(), v.shape().to_vec(), data)
        })
        .collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    let nan = dir.join("nan.safetensors");
    write_raw(&nan, &tensors, &[("model", "lenet5"), ("dataset", "mnist")]);
    for args in [
        &["eval", "--checkpoint", s(&nan)][..],
        &[
            "compress",
            "--checkpoint",
            s(&nan),
            "--prune",
            "dns",
            "--density",
            "0.5",
            "--out",
            s(&dir.join("c.safetensors")),
        ],
    ] {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu"]);
        assert_refused(
            &advcomp(&args),
            &format!("{args:?}"),
            &[s(&nan), "tensor 'conv0.weight' holds NaN at index 7"],
        );
    }
    assert!(!dir.join("c.safetensors").exists());
}

#[test]
fn same_inputs_give_byte_identical_files_and_pgd_does_not_depend_on_the_batch() {
    let dir = folder("bytes");
    // Runs `args` with `flag` naming the output file `name`, and returns its bytes.
    let written = |args: &[&str], flag: &str, name: &str| {
        let out = dir.join(name);
        let mut args = args.to_vec();
        args.extend([flag, s(&out)]);
        succeed(&args);
        std::fs::read(out).unwrap()
    };
    let train = [
        "train",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--limit",
        "50",
    ];
    let first = written(&train, "--out", "t1.safetensors");
    assert!(
        first == written(&train, "--out", "t2.safetensors"),
        "two trainings, same bytes"
    );
    let base = dir.join("t1.safetensors");
    let compress = [
        "compress",
        "--checkpoint",
        s(&base),
        "--prune",
        "magnitude",
        "--density",
        "0.5",
        "--bits",
        "8",
        "--finetune-epochs",
        "0",
        "--limit",
        "50",
    ];
    let first = written(&compress, "--out", "c1.safetensors");
    assert!(
        first == written(&compress, "--out", "c2.safetensors"),
        "two compressions, same bytes"
    );
    let pgd = |batch| {
        [
            "attack",
            "--source",
            s(&base),
            "--attack",
            "pgd",
            "--steps",
            "2",
            "--limit",
            "32",
            "--batch-size",
            batch,
        ]
    };
    let whole = written(&pgd("32"), "--save-adv", "pgd-32.safetensors");
    assert!(
        whole == written(&pgd("8"), "--save-adv", "pgd-8.safetensors"),
        "PGD at batch 8 and 32: same images"
    );
    assert!(
        whole == written(&pgd("32"), "--save-adv", "pgd-32b.safetensors"),
        "two PGD runs, same bytes"
    );
}

#[test]
fn temporaries_of_killed_runs_are_removed_by_the_next_run() {
    let dir = folder("stale");
    let base = lenet5(&dir.join("b.safetensors"), 1);
    // Process 999999999 cannot exist (above any pid_max).
    let stale = [
        dir.join(".c.safetensors.tmp-999999999.safetensors"),
        dir.join(".adv.safetensors.tmp-999999999"),
    ];
    let unrelated = dir.join(".other.safetensors.tmp-999999999");
    for path in stale.iter().chain([&unrelated]) {
        std::fs::write(path, "half-written").unwrap();
    }
    succeed(&[
        "compress",
        "--checkpoint",
        s(&base),
        "--bits",
        "8",
        "--finetune-epochs",
        "0",
        "--limit",
        "16",
        "--out",
        s(&dir.join("c.safetensors")),
    ]);
    succeed(&[
        "attack",
        "--source",
        s(&base),
        "--attack",
        "fgsm",
        "--limit",
        "4",
        "--save-adv",
        s(&dir.join("adv.safetensors")),
    ]);
    for path in &stale {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(
        unrelated.exists(),
        "another output's temporary is not ours to remove"
    );
}

/// Starts `args`, waits until its stderr has printed `ready`, sends `signal`, and returns the
/// exit code and all of stderr.
fn interrupt(args: &[&str], ready: &str, signal: &str) -> (Option<i32>, String) {
    let mut child = command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = std::io::Read::read(&mut pipe, &mut byte) {
            text.push(byte[0]);
            let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while !seen.contains(ready) && Instant::now() < deadline {
        if let Ok(text) = rx.recv_timeout(Duration::from_millis(100)) {
            seen = text;
        }
    }
    assert!(seen.contains(ready), "never saw '{ready}': {seen}");
    std::thread::sleep(Duration::from_millis(300));
    let kill = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut all = seen;
    while let Ok(text) = rx.recv_timeout(Duration::from_millis(500)) {
        all = text;
    }
    (status.code(), all)
}

#[test]
fn sigint_and_sigterm_stop_cleanly_with_a_message() {
    let dir = folder("signals");
    let out = dir.join("t.safetensors");
    let (code, err) = interrupt(
        &[
            "train",
            "--epochs",
            "50",
            "--out",
            s(&out),
            "--backend",
            "cpu",
        ],
        "training lenet5",
        "-TERM",
    );
    assert_eq!(code, Some(143), "{err}");
    assert!(
        err.contains("interrupted by SIGTERM") && err.contains("no output was written"),
        "{err}"
    );
    assert!(!out.exists());

    let sweep_out = dir.join("sweep");
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-sweep.toml");
    let (code, err) = interrupt(
        &[
            "sweep",
            "--config",
            tiny,
            "--backend",
            "cpu",
            "--out",
            s(&sweep_out),
        ],
        "training the baseline",
        "-INT",
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("interrupted by SIGINT") && err.contains("rerun the same command to resume"),
        "{err}"
    );
    let mut left = Vec::new();
    for sub in ["", "models", "sets", "cells", "figures"] {
        for entry in std::fs::read_dir(sweep_out.join(sub)).unwrap().flatten() {
            if entry.file_name().to_string_lossy().contains(".tmp-") {
                left.push(entry.path());
            }
        }
    }
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

// Hardening, second pass: inputs that would abort, hang or give numbers that mean nothing.
// Each runs under an address-space limit (`ulimit -v 8000000`) and a time limit.

use common::onnx::{self as proto, Attr};
use common::{advcomp_limited, assert_error};

/// Writes `bytes` as `name` in `dir` and returns its path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `info --model FILE` under the limits.
fn info(model: &Path) -> common::Limited {
    advcomp_limited(&["info", "--model", s(model), "--backend", "cpu"], &[])
}

#[test]
fn onnx_shapes_beyond_memory_are_refused_before_the_dry_run_allocates_them() {
    let dir = folder("onnx-alloc");
    // Images of any size -> global average pool -> [N, 1] features: valid for every input
    // shape, so only the sizes are wrong.
    let pooled = |input: &str| {
        vec![
            proto::node("GlobalAveragePool", "gap", &[input], &["g"], &[]),
            proto::node("Flatten", "flat", &["g"], &["features"], &[]),
        ]
    };
    let conv = |pads: i64| {
        let mut nodes = vec![proto::node(
            "Conv",
            "conv",
            &["images", "conv.weight"],
            &["c"],
            &[("pads", Attr::Ints(vec![pads; 4]))],
        )];
        nodes.extend(pooled("c"));
        nodes
    };
    let w = proto::tensor("conv.weight", &[1, 1, 3, 3], 0.1);
    let cases = [
        (
            "dim-2e31.onnx",
            proto::classifier(1, 1 << 31, 1, &pooled("images"), &[], 1),
            "input 'images' has shape [N, 1, 2147483648, 1]: for one image the graph's values \
             would hold more than 268435456 numbers (1 GiB)",
        ),
        (
            "elements-2e40.onnx",
            proto::classifier(1, 1 << 20, 1 << 20, &pooled("images"), &[], 1),
            "input 'images' has shape [N, 1, 1048576, 1048576]",
        ),
        (
            "pads-2e40.onnx",
            proto::classifier(1, 28, 28, &conv(1 << 40), std::slice::from_ref(&w), 1),
            "node 'conv' (Conv): pads [(1099511627776, 1099511627776), (1099511627776, \
             1099511627776)]: each must be between 0 and 2147483647",
        ),
        (
            "pads-2e20.onnx",
            proto::classifier(1, 28, 28, &conv(1 << 20), std::slice::from_ref(&w), 1),
            "node 'conv' (Conv): its output has shape [N, 1, 2097178, 2097178]: for one image",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = file(&dir, name, &bytes);
        let run = info(&path);
        assert_error(&run.output, &format!("model {}: ", s(&path)), &[expected]);
        assert!(
            run.peak_kib < 512 << 10,
            "{name}: peak memory {} MiB while refusing it",
            run.peak_kib >> 10
        );
    }
}

#[test]
fn onnx_graphs_onnx_runtime_refuses_are_refused_at_import_naming_the_node() {
    let dir = folder("onnx-invalid");
    let conv = |weight: &[i64], attrs: Vec<(&str, Attr)>| {
        (
            vec![
                proto::node("Conv", "conv", &["images", "conv.weight"], &["c"], &attrs),
                proto::node("GlobalAveragePool", "gap", &["c"], &["g"], &[]),
                proto::node("Flatten", "flat", &["g"], &["features"], &[]),
            ],
            vec![proto::tensor("conv.weight", weight, 0.1)],
            weight[0],
        )
    };
    let pool = |attrs: Vec<(&str, Attr)>| {
        (
            vec![
                proto::node("MaxPool", "pool", &["images"], &["p"], &attrs),
                proto::node("GlobalAveragePool", "gap", &["p"], &["g"], &[]),
                proto::node("Flatten", "flat", &["g"], &["features"], &[]),
            ],
            vec![],
            1,
        )
    };
    let k = |v: i64| Attr::Ints(vec![v, v]);
    // (file, channels, graph, what the error says)
    let cases = [
        (
            "in-channels.onnx",
            1,
            conv(&[4, 3, 3, 3], vec![]),
            "node 'conv' (Conv): the weight [4, 3, 3, 3] takes 3 input channels (x group 1), \
             the input has 1",
        ),
        (
            "group.onnx",
            3,
            conv(&[4, 1, 3, 3], vec![("group", Attr::Int(2))]),
            "node 'conv' (Conv): group 2 does not divide the input's 3 channels",
        ),
        (
            "dilation-0.onnx",
            1,
            conv(&[4, 1, 3, 3], vec![("dilations", k(0))]),
            "node 'conv' (Conv): dilations [0, 0]: each must be a positive number",
        ),
        (
            "kernel-shape.onnx",
            1,
            conv(&[4, 1, 3, 3], vec![("kernel_shape", k(5))]),
            "node 'conv' (Conv): kernel_shape [5, 5] does not match the weight's [3, 3]",
        ),
        (
            "pool-larger-than-input.onnx",
            1,
            pool(vec![("kernel_shape", k(30))]),
            "node 'pool' (MaxPool): a window of [30, 30] (dilations [1, 1]) is larger than the \
             input [28, 28] padded by [(0, 0), (0, 0)]: the output would be empty",
        ),
        (
            "pool-pads.onnx",
            1,
            pool(vec![
                ("kernel_shape", k(2)),
                ("pads", Attr::Ints(vec![2; 4])),
            ]),
            "node 'pool' (MaxPool): pads [(2, 2), (2, 2)] must be smaller than the kernel [2, 2]",
        ),
        (
            "duplicate-names.onnx",
            1,
            (
                vec![
                    proto::node("Relu", "relu1", &["images"], &["r"], &[]),
                    proto::node("Relu", "relu2", &["images"], &["r"], &[]),
                    proto::node("GlobalAveragePool", "gap", &["r"], &["g"], &[]),
                    proto::node("Flatten", "flat", &["g"], &["features"], &[]),
                ],
                vec![],
                1,
            ),
            "value 'r' is defined twice (again by node 'relu2')",
        ),
    ];
    // The same graph with nothing wrong imports: each refusal is its defect's doing.
    let (nodes, inits, features) = conv(&[4, 1, 3, 3], vec![("kernel_shape", k(3))]);
    let fine = file(
        &dir,
        "fine.onnx",
        &proto::classifier(1, 28, 28, &nodes, &inits, features),
    );
    let run = info(&fine);
    assert!(run.output.status.success(), "{}", stderr(&run.output));
    for (name, channels, (nodes, inits, features), expected) in cases {
        let bytes = proto::classifier(channels, 28, 28, &nodes, &inits, features);
        let path = file(&dir, name, &bytes);
        let run = info(&path);
        assert_error(&run.output, &format!("model {}: ", s(&path)), &[expected]);
        // The data commands import the same way.
        let eval = advcomp_limited(
            &[
                "eval",
                "--model",
                s(&path),
                "--dataset",
                "mnist",
                "--limit",
                "8",
                "--backend",
                "cpu",
            ],
            &[],
        );
        assert_error(&eval.output, &format!("model {}: ", s(&path)), &[expected]);
        assert!(eval.output.stdout.is_empty(), "{name}: no accuracy printed");
    }
}

/// A copy of the checkpoint `from` at `to` with metadata `meta` and each tensor's bytes as
/// `change(name, bytes)` makes them.
fn rewrite(from: &Path, to: &Path, meta: &[(&str, &str)], change: impl Fn(&str, &[u8]) -> Vec<u8>) {
    let bytes = std::fs::read(from).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = change(&n, v.data());
            (n, v.dtype(), v.shape().to_vec(), data)
        })
        .collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_raw(to, &tensors, meta);
}

/// Flatten -> Gemm (weights all `w`, [10, 784]) after `first` (nodes from "images" to "x").
fn mnist_gemm(first: &[proto::Message], w: f32) -> Vec<u8> {
    let mut nodes = first.to_vec();
    nodes.push(proto::node("Flatten", "flat", &["x"], &["features"], &[]));
    nodes.push(proto::node(
        "Gemm",
        "fc",
        &["features", "fc.weight"],
        &["logits"],
        &[("transB", Attr::Int(1))],
    ));
    proto::model(
        &nodes,
        &[proto::tensor("fc.weight", &[10, 784], w)],
        &[proto::value("images", &[None, Some(1), Some(28), Some(28)])],
        &[proto::value("logits", &[None, Some(10)])],
    )
}

#[test]
fn nan_or_infinite_logits_are_an_error_naming_the_model_never_a_number() {
    let dir = folder("non-finite");
    // Finite weights whose products overflow: +inf logits for any image not all black.
    let inf = file(
        &dir,
        "inf.onnx",
        &mnist_gemm(
            &[proto::node("Identity", "id", &["images"], &["x"], &[])],
            3e38,
        ),
    );
    // 0/0 at every black pixel: NaN logits (the zero image the import runs is no help).
    let nan = file(
        &dir,
        "nan.onnx",
        &mnist_gemm(
            &[proto::node(
                "Div",
                "div",
                &["images", "images"],
                &["x"],
                &[],
            )],
            0.01,
        ),
    );
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/models/lenet5.onnx");
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--dataset", "mnist", "--backend", "cpu"]);
        advcomp_limited(&args, &[]).output
    };
    let (i, n) = (s(&inf), s(&nan));
    let matrix = dir.join("m.csv");
    let m = s(&matrix);
    let infinite = "its logits hold inf for image 0 (class 0)";
    let (inf_first, nan_second) = (format!("{i},{good}"), format!("{good},{n}"));
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["eval", "--model", i, "--limit", "16"], i, infinite),
        (
            vec!["eval", "--model", n, "--limit", "16"],
            n,
            "its logits hold NaN for image 0 (class 0)",
        ),
        (
            vec!["attack", "--source", i, "--attack", "fgsm", "--limit", "8"],
            i,
            "its logits held NaN or infinite numbers while images 0..8 were attacked",
        ),
        (
            vec![
                "attack", "--source", good, "--eval", n, "--attack", "ifgsm", "--steps", "2",
                "--limit", "8",
            ],
            n,
            "its logits hold NaN for image 0",
        ),
        (
            vec![
                "transfer", "--models", &inf_first, "--attack", "fgsm", "--limit", "8", "--out", m,
            ],
            i,
            "its logits held NaN or infinite numbers while images 0..8 were attacked",
        ),
        (
            vec![
                "transfer",
                "--models",
                &nan_second,
                "--attack",
                "fgsm",
                "--limit",
                "8",
                "--out",
                m,
            ],
            n,
            "its logits hold NaN for image 0",
        ),
    ];
    for (args, model, expected) in &cases {
        let out = run(args);
        assert_error(&out, &format!("model {model}: "), &[expected]);
        assert!(out.stdout.is_empty(), "{args:?}: nothing reported");
    }
    assert!(!matrix.exists(), "no matrix written");
    // The sweep evaluates the model it compresses: refused before any cell exists.
    let config = file(&dir, "tiny.toml", TINY_ONNX_SWEEP.as_bytes());
    let out_dir = dir.join("sweep");
    let out = advcomp_limited(
        &[
            "sweep",
            "--config",
            s(&config),
            "--model",
            i,
            "--dataset",
            "mnist",
            "--out",
            s(&out_dir),
            "--backend",
            "cpu",
        ],
        &[],
    )
    .output;
    assert_error(&out, &format!("model {i}: "), &[infinite]);
    assert!(!out_dir.join("cells.csv").exists());
    // A checkpoint whose weights are finite but whose logits overflow names the checkpoint.
    let big = dir.join("big.safetensors");
    let base = lenet5(&dir.join("b.safetensors"), 1);
    rewrite(
        &base,
        &big,
        &[("model", "lenet5"), ("dataset", "mnist")],
        |name, data| match name {
            "logits.weight" => data.chunks(4).flat_map(|_| 3e38f32.to_le_bytes()).collect(),
            _ => data.to_vec(),
        },
    );
    let out = run(&["eval", "--checkpoint", s(&big), "--limit", "16"]);
    assert_error(&out, &format!("model {}: ", s(&big)), &["its logits hold"]);
    // A batch norm with a negative variance is NaN for every image: refused at import.
    let bn = file(
        &dir,
        "bn.onnx",
        &proto::classifier(
            1,
            28,
            28,
            &[
                proto::node(
                    "BatchNormalization",
                    "bn",
                    &["images", "s", "b", "mean", "var"],
                    &["y"],
                    &[],
                ),
                proto::node("GlobalAveragePool", "gap", &["y"], &["g"], &[]),
                proto::node("Flatten", "flat", &["g"], &["features"], &[]),
            ],
            &[
                proto::tensor("s", &[1], 1.0),
                proto::tensor("b", &[1], 0.0),
                proto::tensor("mean", &[1], 0.0),
                proto::tensor("var", &[1], -1.0),
            ],
            1,
        ),
    );
    assert_error(
        &info(&bn).output,
        &format!("model {}: ", s(&bn)),
        &["node 'bn' (BatchNormalization): input_var holds -1 at channel 0"],
    );
}

/// A sweep small enough to start in seconds on an imported model.
const TINY_ONNX_SWEEP: &str = "seeds = 1\nevaluation_images = 16\n\
[finetune]\nepochs = 1\ntrain_limit = 64\n\
[grid]\ndensities = [0.5]\nbits = []\n\
[attack]\nnames = [\"fgsm\"]\nimages = 8\n\
[figure3]\nattacks = []\n";

/// Makes a FIFO (named pipe) at `path`: opening it for reading blocks until a writer comes.
fn fifo(path: &Path) -> PathBuf {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
    path.to_path_buf()
}

/// A 28x28 grey PNG at `path`.
fn png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(28, 28, image::Luma([128]))
        .save(path)
        .unwrap();
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_by_name_without_blocking() {
    let dir = folder("not-regular");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let c = s(&ckpt);
    let model = fifo(&dir.join("fifo.onnx"));
    let data = fifo(&dir.join("fifo.safetensors"));
    let config = fifo(&dir.join("fifo.toml"));
    let images = dir.join("images");
    png(&images.join("0/a.png"));
    png(&images.join("1/a.png"));
    let image = fifo(&images.join("1/b.png"));
    // A checkpoint of an imported model names its ONNX file in its metadata.
    let names_fifo = dir.join("names-fifo.safetensors");
    write_raw(
        &names_fifo,
        &[("fc.weight", Dtype::F32, vec![1], vec![0; 4])],
        &[("model", s(&model)), ("dataset", "mnist")],
    );
    let out = dir.join("o");
    let folder_onnx = dir.join("folder.onnx");
    std::fs::create_dir(&folder_onnx).unwrap();
    let fifo_kind = "is a FIFO (named pipe), not a regular file";
    let device = "is a character device, not a regular file";
    let cases: [(&[&str], String, &str); 8] = [
        (
            &["info", "--model", s(&model)],
            format!("model {}: ", s(&model)),
            fifo_kind,
        ),
        (
            &["eval", "--checkpoint", c, "--test-data", s(&data)],
            format!("data file {}: ", s(&data)),
            fifo_kind,
        ),
        (
            &["eval", "--checkpoint", c, "--test-data", s(&images)],
            format!("data file {}: ", s(&image)),
            fifo_kind,
        ),
        (
            &["sweep", "--config", s(&config), "--out", s(&out)],
            format!("config file {}: ", s(&config)),
            fifo_kind,
        ),
        (
            &["eval", "--checkpoint", s(&names_fifo)],
            format!("model {}: ", s(&model)),
            fifo_kind,
        ),
        (
            &["eval", "--checkpoint", c, "--test-data", "/dev/zero"],
            "data file /dev/zero: ".into(),
            device,
        ),
        (
            &["eval", "--checkpoint", "/dev/zero"],
            "checkpoint /dev/zero: ".into(),
            device,
        ),
        (
            &["info", "--model", s(&folder_onnx)],
            format!("model {}: ", s(&folder_onnx)),
            "is a directory, not a regular file",
        ),
    ];
    for (args, start, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu"]);
        let run = advcomp_limited(&args, &[]);
        assert_error(&run.output, &start, &[expected]);
    }
    assert!(!out.exists());
}

#[test]
fn files_too_large_to_read_are_refused_before_a_byte_is_read() {
    let dir = folder("too-large");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    // Sparse files: gigabytes on paper, nothing on disk.
    let sparse = |name: &str, size: u64| {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        path
    };
    // Past the ONNX format's own 2 GiB: refused by its size alone.
    let onnx = sparse("huge.onnx", 3 << 30);
    let run = info(&onnx);
    assert_error(
        &run.output,
        &format!("model {}: ", s(&onnx)),
        &["is 3221225472 bytes, more than the 2 GiB advcomp reads as this kind of file"],
    );
    assert!(run.peak_kib < 256 << 10, "peak {} MiB", run.peak_kib >> 10);
    // Within the data files' 16 GiB, but twice over more than the address space allows.
    let data = sparse("huge.safetensors", 6 << 30);
    let run = advcomp_limited(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--test-data",
            s(&data),
            "--backend",
            "cpu",
        ],
        &[],
    );
    assert_error(
        &run.output,
        &format!("data file {}: ", s(&data)),
        &[
            "is 6442450944 bytes; reading it needs about 12 GiB, more than the",
            "this process can still get",
        ],
    );
    assert!(run.peak_kib < 256 << 10, "peak {} MiB", run.peak_kib >> 10);
}

#[test]
fn an_image_folder_too_large_for_memory_is_refused_before_decoding() {
    let dir = folder("big-folder");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    // 30 grey images of 16384 x 16384 pixels (268 MB each decoded, under the image crate's
    // 512 MB limit on one image; a few hundred kB each as PNG): 8 GB together.
    let side = 16384;
    let first = dir.join("data/0/000.png");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&first).unwrap());
        let encoder = image::codecs::png::PngEncoder::new_with_quality(
            file,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::NoFilter,
        );
        image::ImageEncoder::write_image(
            encoder,
            &vec![0u8; side * side],
            side as u32,
            side as u32,
            image::ColorType::L8,
        )
        .unwrap();
    }
    for i in 1..30 {
        let class = i % 2;
        let to = dir.join(format!("data/{class}/{i:03}.png"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(&first, &to).unwrap();
    }
    let folder = dir.join("data");
    let run = advcomp_limited(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--test-data",
            s(&folder),
            "--backend",
            "cpu",
        ],
        &[],
    );
    assert_error(
        &run.output,
        &format!("data file {}: ", s(&folder)),
        &[
            "holds 30 images of 1x16384x16384 pixels, 8053063680 bytes decoded: twice that is \
             more memory than the",
        ],
    );
    assert!(run.peak_kib < 512 << 10, "peak {} MiB", run.peak_kib >> 10);
}

#[test]
fn an_output_that_exists_and_is_not_a_regular_file_is_refused() {
    let dir = folder("device-out");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let c = s(&ckpt);
    // A link to a character device: the final rename would put a file in place of the link
    // (and, writing to /dev/null itself as root, in place of the device).
    let null = dir.join("null.csv");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let pipe = fifo(&dir.join("pipe.safetensors"));
    // (Never /dev/null itself: were the fix to regress, running as root would replace it.)
    let cases: [(&[&str], &Path, &str, &str); 2] = [
        (
            &["stats", "--checkpoint", c, "--out", s(&null)],
            &null,
            "--out",
            "is a character device, not a regular file",
        ),
        (
            &[
                "attack",
                "--source",
                c,
                "--attack",
                "fgsm",
                "--limit",
                "4",
                "--save-adv",
                s(&pipe),
            ],
            &pipe,
            "--save-adv",
            "is a FIFO (named pipe), not a regular file",
        ),
    ];
    for (args, out, flag, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["--backend", "cpu"]);
        let run = advcomp_limited(&args, &[]);
        assert_error(&run.output, &format!("{flag} {}: ", s(out)), &[expected]);
    }
    assert!(
        std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    use std::os::unix::fs::FileTypeExt as _;
    assert!(std::fs::metadata(&pipe).unwrap().file_type().is_fifo());
}

#[test]
fn slurm_values_outside_sbatch_grammar_are_refused_naming_the_flag() {
    let dir = folder("slurm-values");
    let out = dir.join("sweep");
    let sweep = |extra: &[&str]| {
        let mut args = vec![
            "sweep",
            "--out",
            s(&out),
            "--slurm",
            "--dry-run",
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        // No sbatch can run.
        advcomp_limited(&args, &[("PATH", "/nonexistent")]).output
    };
    // A newline in a value ends the error's first line; the rest of the message follows.
    let cases: [(&[&str], &str, &str); 7] = [
        (
            &["--partition", "gpu\necho pwned"],
            "invalid value 'gpu",
            "gpu",
        ),
        (
            &["--partition", "gpu --mem=999T"],
            "invalid value 'gpu --mem=999T' for '--partition <PARTITION>': ",
            "is not a Slurm partition name",
        ),
        (
            &["--time", "1:00:00 --mem=999T"],
            "invalid value '1:00:00 --mem=999T' for '--time <TIME>': ",
            "is not a Slurm time limit",
        ),
        (
            &["--time", "1:00:00:00"],
            "invalid value '1:00:00:00' for '--time <TIME>': ",
            "is not a Slurm time limit",
        ),
        (
            &["--max-parallel", "0"],
            "invalid value '0' for '--max-parallel <MAX_PARALLEL>': ",
            "is not a positive whole number",
        ),
        (
            &["--gpus-per-task=-1"],
            "invalid value '-1' for '--gpus-per-task <GPUS_PER_TASK>': ",
            "is not a positive whole number",
        ),
        (
            &["--cpus-per-task", "0"],
            "invalid value '0' for '--cpus-per-task <CPUS_PER_TASK>': ",
            "is not a positive whole number",
        ),
    ];
    for (extra, start, expected) in cases {
        let run = sweep(extra);
        assert_error(&run, start, &[expected]);
        let err = stderr(&run);
        assert!(
            extra[0] != "--partition" || err.contains("is not a Slurm partition name"),
            "{err}"
        );
        assert!(!out.exists(), "{extra:?}: nothing written");
    }
    // Every form of sbatch's grammar goes through, as given.
    for time in ["90", "90:30", "1:30:00", "2-12", "2-12:30", "2-12:30:15"] {
        let run = sweep(&[
            "--time",
            time,
            "--partition",
            "gpu,debug.q",
            "--max-parallel",
            "3",
        ]);
        assert!(run.status.success(), "--time {time}: {}", stderr(&run));
        let script = std::fs::read_to_string(out.join("slurm/report.sbatch")).unwrap();
        assert!(
            script.contains(&format!("#SBATCH --time={time}\n")),
            "{script}"
        );
        assert!(
            script.contains("#SBATCH --partition=gpu,debug.q\n"),
            "{script}"
        );
    }
}

#[test]
fn a_huge_rayon_num_threads_is_lowered_and_said() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = 4 * cores;
    let run = advcomp_limited(
        &["info", "--backend", "cpu"],
        &[("RAYON_NUM_THREADS", "100000000")],
    );
    let err = stderr(&run.output);
    assert!(run.output.status.success(), "{err}");
    assert!(
        err.starts_with(&format!(
            "note: RAYON_NUM_THREADS=100000000 is more than 4 threads per core; the CPU backend \
             uses {most}\n"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("backend: cpu on Flex, {most} threads")),
        "{err}"
    );
    // Within the bound it is taken as it is, without a word.
    let run = advcomp_limited(&["info", "--backend", "cpu"], &[("RAYON_NUM_THREADS", "3")]);
    let err = stderr(&run.output);
    assert!(run.output.status.success(), "{err}");
    assert!(!err.contains("note:"), "{err}");
    assert!(err.contains("backend: cpu on Flex, 3 threads"), "{err}");
}

#[test]
fn a_class_folder_name_that_is_not_utf8_is_refused_as_such() {
    let dir = folder("not-utf8");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    // Said as such, not as "No such file or directory" of a lossily converted name.
    use std::os::unix::ffi::OsStrExt;
    let images = dir.join("images");
    png(&images.join("a/x.png"));
    let odd = images.join(std::ffi::OsStr::from_bytes(b"b\xff"));
    png(&odd.join("x.png"));
    let run = advcomp_limited(
        &[
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--test-data",
            s(&images),
            "--backend",
            "cpu",
        ],
        &[],
    );
    assert_error(
        &run.output,
        &format!("data file {}: ", odd.display()),
        &["class folder name is not valid UTF-8"],
    );
}

#[test]
fn an_output_name_ending_in_a_slash_is_refused_before_the_work() {
    let dir = folder("slash");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    // `Path` drops the '/', the final rename would not: refused at once, not after minutes of
    // fine-tuning.
    let slash = format!("{}/", s(&dir.join("c.safetensors")));
    let start = Instant::now();
    let run = advcomp_limited(
        &[
            "compress",
            "--checkpoint",
            s(&ckpt),
            "--prune",
            "dns",
            "--density",
            "0.5",
            "--out",
            &slash,
            "--backend",
            "cpu",
        ],
        &[],
    );
    assert_error(
        &run.output,
        &format!("--out {slash}: "),
        &["ends with '/'; give a file name"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "refused after {:?}",
        start.elapsed()
    );
}

#[test]
fn a_refused_command_leaves_no_output_folders_behind() {
    let dir = folder("no-folders");
    let images = dir.join("images");
    png(&images.join("a/x.png"));
    png(&images.join("b/x.png"));
    // Refused after its output was checked (the test images are missing).
    let deep = dir.join("new/deeper/t.safetensors");
    let run = advcomp_limited(
        &[
            "train",
            "--data",
            s(&images),
            "--test-data",
            s(&dir.join("missing")),
            "--out",
            s(&deep),
            "--backend",
            "cpu",
        ],
        &[],
    );
    assert_error(
        &run.output,
        &format!("data file {}: ", s(&dir.join("missing"))),
        &["file not found"],
    );
    assert!(
        !dir.join("new").exists(),
        "left {}",
        dir.join("new").display()
    );
}

#[test]
fn a_checkpoint_naming_an_unknown_dataset_is_refused_naming_the_checkpoint() {
    let dir = folder("unknown-dataset");
    let ckpt = lenet5(&dir.join("m.safetensors"), 1);
    let unknown = dir.join("unknown.safetensors");
    rewrite(
        &ckpt,
        &unknown,
        &[("model", "lenet5"), ("dataset", "imagenet")],
        |_, data| data.to_vec(),
    );
    let run = advcomp_limited(
        &["eval", "--checkpoint", s(&unknown), "--backend", "cpu"],
        &[],
    );
    assert_error(
        &run.output,
        &format!("checkpoint {}: ", s(&unknown)),
        &["metadata names unknown dataset 'imagenet'"],
    );
}
