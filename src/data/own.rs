//! A user's own images: a directory in torchvision's ImageFolder layout (one sub-folder per
//! class, PNG or JPEG files), or a safetensors file with `images` and `labels`.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat};
use safetensors::{Dtype, SafeTensors};

use super::{Images, Pixels};
use crate::{Error, Result};

/// The most classes a label byte can name.
pub const MAX_CLASSES: usize = 256;

/// Reads an ImageFolder directory or a safetensors file, by what `path` is.
pub fn read_own(path: &Path) -> Result<Images> {
    let meta = std::fs::metadata(path).map_err(super::cannot_read(path))?;
    if meta.is_dir() {
        read_image_folder(path).map(|(images, _)| images)
    } else {
        read_safetensors(path)
    }
}

/// The class names of an ImageFolder directory: its sub-folders, sorted (torchvision's order).
pub fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in read_dir(dir)? {
        if entry.is_dir() {
            let name = entry.file_name().expect("a directory entry has a name");
            // Class names are printed and recorded; a name that is not text cannot be.
            let name = name.to_str().ok_or_else(|| {
                Error::data(
                    &entry,
                    "class folder name is not valid UTF-8 (rename the folder)",
                )
            })?;
            classes.push(name.to_string());
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(Error::data(
            dir,
            "has no class folders (ImageFolder layout: DIR/<class>/<image>.png)",
        ));
    }
    if classes.len() > MAX_CLASSES {
        return Err(Error::data(
            dir,
            format!(
                "has {} class folders; advcomp supports at most {MAX_CLASSES}",
                classes.len()
            ),
        ));
    }
    Ok(classes)
}

/// Reads every PNG/JPEG under each class folder (recursively, in sorted order; other files
/// are skipped, as torchvision does). Grey images give one channel; if any image has colour,
/// all are read as RGB (alpha dropped), as torchvision's loader does.
///
/// Every image's header is read first: sizes that differ, and a folder whose images together
/// would not fit ([`crate::limits::MAX_DATA_BYTES`], or twice over the memory this process can
/// get) are refused before anything is decoded; then each image is decoded and converted in
/// turn, so no more than one decoded image is held beside the result.
pub fn read_image_folder(dir: &Path) -> Result<(Images, Vec<String>)> {
    let classes = class_names(dir)?;
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let folder = dir.join(class);
        let found = image_files(&folder)?;
        if found.is_empty() {
            return Err(Error::data(
                &folder,
                "class folder holds no PNG or JPEG images",
            ));
        }
        files.extend(found.into_iter().map(|file| (file, label as u8)));
    }
    if files.len() > crate::limits::MAX_IMAGES {
        return Err(Error::data(
            dir,
            format!(
                "holds {} images; advcomp reads at most {}",
                files.len(),
                crate::limits::MAX_IMAGES
            ),
        ));
    }
    let headers = files
        .iter()
        .map(|(file, _)| header(file))
        .collect::<Result<Vec<_>>>()?;
    let (first, &(width, height, _)) = (&files[0].0, &headers[0]);
    for ((file, _), &(w, h, _)) in files.iter().zip(&headers) {
        if (w, h) != (width, height) {
            return Err(Error::data(
                file,
                format!(
                    "is {w}x{h} pixels but {} is {width}x{height} (images are not resized)",
                    first.display()
                ),
            ));
        }
    }
    let colour = headers.iter().any(|(_, _, colour)| *colour);
    let channels = if colour { 3 } else { 1 };
    let (width, height) = (width as usize, height as usize);
    let total = [files.len(), channels, height, width]
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    if total > crate::limits::MAX_DATA_BYTES as u64 {
        return Err(Error::data(
            dir,
            format!(
                "holds {} images of {channels}x{height}x{width} pixels, {total} bytes decoded: \
                 more than the {} advcomp reads",
                files.len(),
                crate::files::bytes_text(crate::limits::MAX_DATA_BYTES as u64)
            ),
        ));
    }
    crate::files::check_memory(total.saturating_mul(2)).map_err(|available| {
        Error::data(
            dir,
            format!(
                "holds {} images of {channels}x{height}x{width} pixels, {total} bytes decoded: \
                 twice that is more memory than the {} this process can still get",
                files.len(),
                crate::files::bytes_text(available)
            ),
        )
    })?;
    let mut pixels = Vec::new();
    pixels
        .try_reserve_exact(total as usize)
        .map_err(|_| Error::data(dir, format!("cannot hold its {total} decoded bytes")))?;
    for (file, _) in &files {
        let image = decode(file)?;
        if colour {
            // Interleaved RGB to planar CHW.
            let rgb = image.to_rgb8();
            for c in 0..3 {
                pixels.extend(rgb.pixels().map(|p| p.0[c]));
            }
        } else {
            pixels.extend_from_slice(image.to_luma8().as_raw());
        }
    }
    let images = Images {
        pixels: Pixels::Bytes(pixels),
        labels: files.iter().map(|(_, label)| *label).collect(),
        channels,
        height,
        width,
    };
    Ok((images, classes))
}

/// An image file opened for decoding (a regular file only), with its format from its name.
fn open_image(file: &Path) -> Result<(BufReader<std::fs::File>, ImageFormat)> {
    let (handle, _) = crate::files::open_input(file, Error::data)?;
    let format = ImageFormat::from_path(file)
        .map_err(|e| Error::data(file, format!("cannot tell the image format: {e}")))?;
    Ok((BufReader::new(handle), format))
}

/// An image's width, height and whether it has colour, from its header alone.
fn header(file: &Path) -> Result<(u32, u32, bool)> {
    let (reader, format) = open_image(file)?;
    let bad = |e: image::ImageError| Error::data(file, format!("cannot decode the image: {e}"));
    let (dimensions, colour) = match format {
        ImageFormat::Png => {
            let decoder = PngDecoder::new(reader).map_err(bad)?;
            (decoder.dimensions(), decoder.color_type())
        }
        _ => {
            let decoder = JpegDecoder::new(reader).map_err(bad)?;
            (decoder.dimensions(), decoder.color_type())
        }
    };
    Ok((dimensions.0, dimensions.1, colour.has_color()))
}

/// An image decoded (within the image crate's default limits on one image's memory).
fn decode(file: &Path) -> Result<DynamicImage> {
    let (reader, format) = open_image(file)?;
    image::io::Reader::with_format(reader, format)
        .decode()
        .map_err(|e| Error::data(file, format!("cannot decode the image: {e}")))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::data(dir, format!("cannot read the directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::data(dir, format!("cannot read the directory: {e}")))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

/// The PNG and JPEG files under `folder`, recursively, sorted. Symlinked directories are not
/// followed (a link back up the tree would never end).
fn image_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in read_dir(folder)? {
        let is_real_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_real_dir {
            files.extend(image_files(&path)?);
        } else if path.extension().is_some_and(|e| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|known| e.eq_ignore_ascii_case(known))
        }) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Reads `images` (u8, or f32 in [0, 1]; [N, C, H, W]) and `labels` (any integer type, [N]).
pub fn read_safetensors(path: &Path) -> Result<Images> {
    let bytes = super::read_bounded(path)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, format!("not a safetensors file: {e}")))?;
    let tensor = |name: &str| {
        file.tensor(name).map_err(|_| {
            let names: BTreeMap<_, _> = file.tensors().into_iter().collect();
            Error::data(
                path,
                format!(
                    "has no tensor '{name}' (it holds: {}); expected 'images' [N, C, H, W] and 'labels' [N]",
                    names.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (images, labels) = (tensor("images")?, tensor("labels")?);
    let &[n, channels, height, width] = images.shape() else {
        return Err(Error::data(
            path,
            format!(
                "'images' has shape {:?}; expected [N, C, H, W]",
                images.shape()
            ),
        ));
    };
    if n == 0 || channels * height * width == 0 {
        return Err(Error::data(
            path,
            format!("'images' has shape {:?}: no pixels", images.shape()),
        ));
    }
    if labels.shape() != [n] {
        return Err(Error::data(
            path,
            format!(
                "'labels' has shape {:?}; expected [{n}] (one per image)",
                labels.shape()
            ),
        ));
    }
    let pixels = match images.dtype() {
        Dtype::U8 => Pixels::Bytes(images.data().to_vec()),
        Dtype::F32 => {
            let values: Vec<f32> = images
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(Error::data(
                    path,
                    format!(
                        "'images' value {} at flat index {i} is outside [0, 1] (f32 images are pixels in [0, 1], not normalised)",
                        values[i]
                    ),
                ));
            }
            Pixels::Floats(values)
        }
        other => {
            return Err(Error::data(
                path,
                format!("'images' has dtype {other:?}; expected U8 or F32"),
            ));
        }
    };
    let labels = integer_labels(path, labels.dtype(), labels.data())?;
    Ok(Images {
        pixels,
        labels,
        channels,
        height,
        width,
    })
}

/// Labels of any integer dtype as bytes, refusing negative ones and ones past [`MAX_CLASSES`].
fn integer_labels(path: &Path, dtype: Dtype, data: &[u8]) -> Result<Vec<u8>> {
    let values: Vec<i128> = match dtype {
        Dtype::U8 => data.iter().map(|&b| b as i128).collect(),
        Dtype::I8 => data.iter().map(|&b| b as i8 as i128).collect(),
        Dtype::U16 => words(data, |b| u16::from_le_bytes(b) as i128),
        Dtype::I16 => words(data, |b| i16::from_le_bytes(b) as i128),
        Dtype::U32 => words(data, |b| u32::from_le_bytes(b) as i128),
        Dtype::I32 => words(data, |b| i32::from_le_bytes(b) as i128),
        Dtype::U64 => words(data, |b| u64::from_le_bytes(b) as i128),
        Dtype::I64 => words(data, |b| i64::from_le_bytes(b) as i128),
        other => {
            return Err(Error::data(
                path,
                format!("'labels' has dtype {other:?}; expected an integer type"),
            ));
        }
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u8::try_from(v).map_err(|_| {
                Error::data(
                    path,
                    format!("label {v} at index {i} is out of range (labels are 0..{MAX_CLASSES})"),
                )
            })
        })
        .collect()
}

fn words<const N: usize>(data: &[u8], read: impl Fn([u8; N]) -> i128) -> Vec<i128> {
    data.chunks_exact(N)
        .map(|b| read(b.try_into().expect("chunks of N bytes")))
        .collect()
}
