//! Datasets (MNIST, Fashion-MNIST, CIFAR-10, or a user's own ImageFolder / safetensors files)
//! and batching to NCHW f32 tensors in [0, 1].

mod cifar;
mod idx;
mod own;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

pub use cifar::read_cifar_batches;
pub use idx::{Idx, parse_idx, read_idx_file};
pub use own::{MAX_CLASSES, class_names, read_image_folder, read_own, read_safetensors};

use crate::{Error, Result};

/// The datasets advcomp reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// MNIST digits; embedded in the binary, so it needs no files.
    Mnist,
    /// Fashion-MNIST; by default from Debian's `dataset-fashion-mnist` package.
    FashionMnist,
    /// CIFAR-10, binary version, from a directory the user gives.
    Cifar10,
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 3] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// Where the dataset is read from when no `--data-dir` is given (`None`: embedded, or
    /// nowhere by default).
    pub fn default_dir(self) -> Option<&'static Path> {
        match self {
            DatasetKind::Mnist | DatasetKind::Cifar10 => None,
            DatasetKind::FashionMnist => Some(Path::new("/usr/share/datasets/fashion-mnist")),
        }
    }

    /// Image shape (channels, height, width).
    pub fn image_shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => [1, 28, 28],
            DatasetKind::Cifar10 => [3, 32, 32],
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

serde_as_text!(DatasetKind);

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown dataset '{s}' (expected one of: mnist, fashion-mnist, cifar10)"
                ))
            })
    }
}

/// The images a command reads, as its user named them; what is not named comes from the
/// checkpoint or the model ([`crate::model::Network::dataset`] resolves it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataChoice {
    /// A dataset advcomp knows.
    pub dataset: Option<DatasetKind>,
    /// Where that dataset's files are, instead of their default place.
    pub dir: Option<PathBuf>,
    /// The user's own training images: an ImageFolder directory or a safetensors file.
    pub train: Option<PathBuf>,
    /// The user's own test images, likewise.
    pub test: Option<PathBuf>,
}

impl DataChoice {
    /// A dataset advcomp knows, from `dir` or its default place.
    pub fn known(kind: DatasetKind, dir: Option<PathBuf>) -> Self {
        Self {
            dataset: Some(kind),
            dir,
            ..Self::default()
        }
    }

    /// Whether the user named files of their own.
    pub fn is_own(&self) -> bool {
        self.train.is_some() || self.test.is_some()
    }
}

/// The images one model reads: a dataset advcomp knows, or the user's own files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dataset {
    Known {
        kind: DatasetKind,
        dir: Option<PathBuf>,
    },
    Own {
        train: Option<PathBuf>,
        test: Option<PathBuf>,
    },
}

impl Dataset {
    /// Loads one split. A split of the user's own data that was not given is refused, naming
    /// the option that gives it.
    pub fn load(&self, split: Split) -> Result<Images> {
        match self {
            Dataset::Known { kind, dir } => load(*kind, split, dir.as_deref()),
            Dataset::Own { train, test } => {
                let (path, field, what) = match split {
                    Split::Train => (train, "data", "training"),
                    Split::Test => (test, "test_data", "test"),
                };
                let path = path.as_deref().ok_or_else(|| {
                    Error::invalid(
                        field,
                        format!(
                            "not given, and this needs the {what} images of your own data: an \
                             ImageFolder directory or a safetensors file"
                        ),
                    )
                })?;
                if let (Some(train), Some(test)) = (train, test)
                    && train.is_dir()
                    && test.is_dir()
                {
                    // Class indices come from sorted folder names: a class missing from one
                    // side would silently shift every label after it.
                    let (train_classes, test_classes) = (class_names(train)?, class_names(test)?);
                    if train_classes != test_classes {
                        return Err(Error::data(
                            test,
                            format!(
                                "has class folders [{}] but {} has [{}]: the class folders must be the same",
                                test_classes.join(", "),
                                train.display(),
                                train_classes.join(", ")
                            ),
                        ));
                    }
                }
                read_own(path)
            }
        }
    }

    /// The dataset advcomp knows, `None` for the user's own files.
    pub fn kind(&self) -> Option<DatasetKind> {
        match self {
            Dataset::Known { kind, .. } => Some(*kind),
            Dataset::Own { .. } => None,
        }
    }

    /// What training configs and checkpoints record of it.
    pub fn record(&self) -> DatasetRecord {
        match self {
            Dataset::Known { kind, .. } => DatasetRecord::Known(*kind),
            Dataset::Own { .. } => DatasetRecord::Own(format!(
                "train {}, test {}",
                self.describe(Split::Train),
                self.describe(Split::Test)
            )),
        }
    }

    /// Where `split` is read from, for messages.
    pub fn describe(&self, split: Split) -> String {
        match (self, split) {
            (Dataset::Known { kind, .. }, _) => kind.name().into(),
            (Dataset::Own { train: Some(p), .. }, Split::Train)
            | (Dataset::Own { test: Some(p), .. }, Split::Test) => p.display().to_string(),
            (Dataset::Own { .. }, _) => "(not given)".into(),
        }
    }
}

/// How a checkpoint's metadata begins the name of a user's own data (`own data: train X,
/// test Y`).
pub const OWN_DATA: &str = "own data: ";

/// The data a model was made on, as training configs and checkpoints record it: a dataset
/// advcomp knows (`mnist`), or the user's own files in words (`own data: train X, test Y`;
/// the words are kept, not parsed: they only say which files to give again). Written as that
/// text, which is part of the training config's JSON and so of every cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetRecord {
    Known(DatasetKind),
    /// What follows [`OWN_DATA`].
    Own(String),
}

impl DatasetRecord {
    /// The dataset advcomp knows, `None` for the user's own files.
    pub fn kind(&self) -> Option<DatasetKind> {
        match self {
            DatasetRecord::Known(kind) => Some(*kind),
            DatasetRecord::Own(_) => None,
        }
    }
}

impl From<DatasetKind> for DatasetRecord {
    fn from(kind: DatasetKind) -> Self {
        DatasetRecord::Known(kind)
    }
}

impl fmt::Display for DatasetRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetRecord::Known(kind) => write!(f, "{kind}"),
            DatasetRecord::Own(words) => write!(f, "{OWN_DATA}{words}"),
        }
    }
}

impl FromStr for DatasetRecord {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix(OWN_DATA) {
            Some(words) => Ok(DatasetRecord::Own(words.into())),
            None => s.parse().map(DatasetRecord::Known).map_err(|_| {
                Error::usage(format!(
                    "unknown dataset '{s}' (advcomp records mnist, fashion-mnist, cifar10, or \
                     '{OWN_DATA}...' for your own files)"
                ))
            }),
        }
    }
}

serde_as_text!(DatasetRecord);

impl fmt::Display for Dataset {
    /// `mnist`, or `own data: train X, test Y` (its [`DatasetRecord`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.record(), f)
    }
}

/// Pixels of NCHW images: bytes (0..=255), or floats in [0, 1] (a safetensors file's f32
/// images, kept as they are).
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::Bytes(p) => p.len(),
            Pixels::Floats(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixel values in `range` as floats in [0, 1].
    pub fn floats(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        match self {
            Pixels::Bytes(p) => p[range].iter().map(|&v| v as f32 / 255.0).collect(),
            Pixels::Floats(p) => p[range].to_vec(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Pixels::Bytes(p) => p.truncate(len),
            Pixels::Floats(p) => p.truncate(len),
        }
    }
}

/// A set of labelled images: pixels NCHW, and one label (a class index) per image.
#[derive(Clone)]
pub struct Images {
    pub pixels: Pixels,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Images {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image shape (channels, height, width).
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// A hash of the pixels, labels and shape (stable across processes and machines).
    pub fn fingerprint(&self) -> String {
        let shape: Vec<u8> = self.shape().iter().flat_map(|d| d.to_le_bytes()).collect();
        let pixels: &[u8] = match &self.pixels {
            Pixels::Bytes(p) => p,
            Pixels::Floats(p) => bytemuck::cast_slice(p),
        };
        crate::stable_hash([&shape[..], pixels, &self.labels[..]])
    }

    /// The number of classes the labels need (the largest label + 1).
    pub fn classes_needed(&self) -> usize {
        self.labels.iter().max().map_or(0, |&l| l as usize + 1)
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Keeps the first `n` images (all when `n` is larger).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.image_len());
    }

    /// The images at `indices` as an NCHW f32 tensor in [0, 1] and their labels, on `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let len = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * len);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend(self.pixels.floats(i * len..(i + 1) * len));
            labels.push(self.labels[i] as i64);
        }
        let shape = [indices.len(), self.channels, self.height, self.width];
        let images = Tensor::from_data(TensorData::new(pixels, shape), device);
        let labels = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
        (images, labels)
    }
}

/// The order in which epoch `epoch` visits `n` images: a shuffle fixed by `seed` and `epoch`.
pub fn shuffled_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

/// The embedded MNIST files (gzipped IDX), vendored in `assets/mnist/`.
const MNIST_EMBEDDED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../assets/mnist/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../assets/mnist/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../assets/mnist/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../assets/mnist/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// Loads a dataset split. `data_dir` overrides the dataset's default location; MNIST without
/// one is the embedded copy.
pub fn load(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<Images> {
    match kind {
        DatasetKind::Cifar10 => {
            let dir = data_dir.ok_or_else(|| {
                Error::usage(
                    "CIFAR-10 is not embedded: pass --data-dir DIR with data_batch_1.bin ... \
                     data_batch_5.bin and test_batch.bin (the binary version)",
                )
            })?;
            let files: Vec<PathBuf> = match split {
                Split::Train => (1..=5)
                    .map(|i| dir.join(format!("data_batch_{i}.bin")))
                    .collect(),
                Split::Test => vec![dir.join("test_batch.bin")],
            };
            read_cifar_batches(&files)
        }
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let prefix = match split {
                Split::Train => "train",
                Split::Test => "t10k",
            };
            let (images, labels) = match data_dir.or(kind.default_dir()) {
                Some(dir) => {
                    let images = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"));
                    let labels = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"));
                    (
                        (read_idx_file(&images)?, images),
                        (read_idx_file(&labels)?, labels),
                    )
                }
                None => {
                    let embedded = |name: String| {
                        let (_, bytes) = MNIST_EMBEDDED
                            .iter()
                            .find(|(n, _)| *n == name)
                            .expect("embedded file");
                        let path = PathBuf::from(format!("<embedded>/assets/mnist/{name}"));
                        parse_idx(&path, bytes).map(|idx| (idx, path))
                    };
                    (
                        embedded(format!("{prefix}-images-idx3-ubyte.gz"))?,
                        embedded(format!("{prefix}-labels-idx1-ubyte.gz"))?,
                    )
                }
            };
            let [_, height, width] = kind.image_shape();
            images_from_idx(images, labels, [height, width])
        }
    }
}

/// The error for a data file that cannot be read: missing, or the I/O error.
fn cannot_read(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::data(path, "file not found"),
        _ => Error::data(path, format!("cannot read: {e}")),
    }
}

/// A data file's bytes, read as [`crate::files::read_input`] reads inputs (regular files only,
/// at most [`crate::limits::MAX_DATA_BYTES`], bounded by memory).
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_input(path, crate::limits::MAX_DATA_BYTES as u64, 2, Error::data)
}

/// `dir/name.gz` if it exists, else `dir/name` (raw IDX).
fn find_idx(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() { gz } else { dir.join(name) }
}

/// Pairs an IDX image file with its label file, checking that they fit together.
/// `size` is the expected [rows, columns] of an image.
pub fn images_from_idx(
    (images, images_path): (Idx, PathBuf),
    (labels, labels_path): (Idx, PathBuf),
    size: [usize; 2],
) -> Result<Images> {
    if images.dims.len() != 3 || images.dims[1..] != size {
        return Err(Error::data(
            &images_path,
            format!(
                "wrong dimensions {:?}: expected [count, {}, {}]",
                images.dims, size[0], size[1]
            ),
        ));
    }
    if images.dims[0] == 0 {
        return Err(Error::data(&images_path, "holds no images (count 0)"));
    }
    if labels.dims.len() != 1 {
        return Err(Error::data(
            &labels_path,
            format!("wrong dimensions {:?}: expected [count]", labels.dims),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(Error::data(
            &labels_path,
            format!(
                "count mismatch: {} labels for {} images in {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        ));
    }
    if let Some((i, &label)) = labels.data.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(Error::data(
            &labels_path,
            format!("label {label} at index {i} (labels must be 0..=9)"),
        ));
    }
    Ok(Images {
        pixels: Pixels::Bytes(images.data),
        labels: labels.data,
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
    })
}
