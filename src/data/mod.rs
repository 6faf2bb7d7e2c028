//! Datasets (MNIST, Fashion-MNIST, CIFAR-10) and batching to NCHW f32 tensors in [0, 1].

mod cifar;
mod idx;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

pub use cifar::read_cifar_batches;
pub use idx::{Idx, parse_idx, read_idx_file};

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

/// A set of labelled images: pixels as bytes, NCHW, and one label (0..=9) per image.
#[derive(Clone)]
pub struct Images {
    pub pixels: Vec<u8>,
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
            pixels.extend(
                self.pixels[i * len..(i + 1) * len]
                    .iter()
                    .map(|&p| p as f32 / 255.0),
            );
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
        pixels: images.data,
        labels: labels.data,
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
    })
}
