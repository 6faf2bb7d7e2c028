//! Checkpoints: one `.safetensors` file per model with PyTorch names and layouts
//! (`conv0.weight` [out, in, kh, kw], `fc1.weight` [out, in], `bn0.running_mean`, ...), so a
//! PyTorch user can `load_state_dict` ours and we can load theirs. Metadata (model, dataset,
//! seed, accuracy, compression, tool version, config hash) lives in the header.
//!
//! A compressed model also stores each pruned layer's mask as `<layer>.weight_mask` (the name
//! torch.nn.utils.prune uses) and its quantiser formats in the `compression` metadata; its
//! weights are stored already masked and quantised, so a PyTorch user who loads them (with
//! `strict=False`, for the extra mask tensors) gets the compressed model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::{Compression, CompressionRecord, Mask, ModelKind, ModelRef, Network, weight_layers};
use crate::data::{DatasetKind, DatasetRecord};
use crate::{Error, Result};

/// What a checkpoint says about itself, stored as `__metadata__` in the safetensors header.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// The model (`None`: none recorded; stored as its name or ONNX path, or `""`). A loaded
    /// checkpoint's is the model it was read as.
    #[serde(with = "stored_text")]
    pub model: Option<ModelRef>,
    /// The data it was made on (`None`: none recorded; stored as its text, or `""`).
    #[serde(with = "stored_text")]
    pub dataset: Option<DatasetRecord>,
    pub seed: u64,
    /// Clean test accuracy in [0, 1] when it was written.
    pub accuracy: Option<f64>,
    /// The compression record (`None` for a baseline), stored as its JSON (`"none"` for a
    /// baseline); a record that does not parse is refused when the file is read.
    #[serde(with = "stored_record")]
    pub compression: Option<CompressionRecord>,
    pub tool_version: String,
    /// Hash of the config that made the model.
    pub config_hash: String,
    /// For an imported model: the SHA-256 of its ONNX file (`model` names the file), so a
    /// checkpoint is never loaded onto another graph.
    pub model_sha256: Option<String>,
}

impl CheckpointMeta {
    fn to_header(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        map.insert("model".into(), stored_text::text(self.model.as_ref()));
        map.insert("dataset".into(), stored_text::text(self.dataset.as_ref()));
        map.insert("seed".into(), self.seed.to_string());
        if let Some(acc) = self.accuracy {
            map.insert("accuracy".into(), format!("{acc}"));
        }
        map.insert(
            "compression".into(),
            stored_record::text(self.compression.as_ref()),
        );
        map.insert("tool_version".into(), self.tool_version.clone());
        map.insert("config_hash".into(), self.config_hash.clone());
        if let Some(sha) = &self.model_sha256 {
            map.insert("model_sha256".into(), sha.clone());
        }
        map
    }

    /// The metadata of the checkpoint at `path` (named in the refusal of a dataset or a
    /// compression record that does not parse).
    fn from_header(header: &HashMap<String, String>, path: &Path) -> Result<Self> {
        let get = |k: &str| header.get(k).cloned().unwrap_or_default();
        let dataset = stored_text::parse(&get("dataset")).map_err(|_: Error| {
            Error::checkpoint(
                path,
                format!(
                    "metadata names unknown dataset '{}' (advcomp records mnist, \
                     fashion-mnist, cifar10, or '{}...' for your own files)",
                    get("dataset"),
                    crate::data::OWN_DATA
                ),
            )
        })?;
        let compression = stored_record::parse(header.get("compression").map_or("", |s| s))
            .map_err(|e| {
                Error::checkpoint(path, format!("compression metadata is not valid: {e}"))
            })?;
        Ok(Self {
            // Read by `load_checkpoint`, which knows whether the caller names the model.
            model: None,
            dataset,
            seed: header.get("seed").and_then(|s| s.parse().ok()).unwrap_or(0),
            accuracy: header.get("accuracy").and_then(|s| s.parse().ok()),
            compression,
            tool_version: get("tool_version"),
            config_hash: get("config_hash"),
            model_sha256: header.get("model_sha256").cloned(),
        })
    }
}

/// A value the metadata may lack (the model: its name or ONNX path; the dataset) as it stores
/// it: its text, or `""` for none.
mod stored_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn text<T: Display>(value: Option<&T>) -> String {
        value.map_or(String::new(), ToString::to_string)
    }

    pub fn parse<T: FromStr>(text: &str) -> Result<Option<T>, T::Err> {
        match text {
            "" => Ok(None),
            text => text.parse().map(Some),
        }
    }

    pub fn serialize<S: Serializer, T: Display>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        text(value.as_ref()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A compression record as the metadata stores it: its JSON, or `"none"` for a baseline.
mod stored_record {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::CompressionRecord;

    pub fn text(record: Option<&CompressionRecord>) -> String {
        match record {
            None => "none".into(),
            Some(r) => serde_json::to_string(r).expect("a record serialises"),
        }
    }

    /// `"none"` (or nothing) for a baseline, else a record's JSON.
    pub fn parse(text: &str) -> serde_json::Result<Option<CompressionRecord>> {
        match text {
            "" | "none" => Ok(None),
            json => serde_json::from_str(json).map(Some),
        }
    }

    pub fn serialize<S: Serializer>(
        record: &Option<CompressionRecord>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        text(record.as_ref()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<CompressionRecord>, D::Error> {
        parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A tensor as a checkpoint stores it: PyTorch name, PyTorch shape, values row-major.
pub(crate) struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// burn's parameter path -> PyTorch's name. Batch norm's `gamma`/`beta` are PyTorch's
/// `weight`/`bias`; everything else is named alike because the model fields are.
fn torch_name(path: &[String]) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let Some(last) = parts.last_mut() {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

/// burn stores a linear layer's weight as [in, out]; PyTorch as [out, in]. Rank-2 parameters
/// are exactly the linear weights, so they are transposed on the way in and out.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

struct Exporter {
    path: Vec<String>,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Exporter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let mut shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>();
        let mut values = data.as_slice::<f32>().expect("f32 data").to_vec();
        if D == 2 {
            values = transpose(&values, shape[0], shape[1]);
            shape.reverse();
        }
        self.out.push(NamedTensor {
            name: torch_name(&self.path),
            shape,
            values,
        });
    }
}

/// Every tensor of the network under its PyTorch name and layout.
pub(crate) fn export_tensors(network: &Network) -> Vec<NamedTensor> {
    let mut exporter = Exporter {
        path: Vec::new(),
        out: Vec::new(),
    };
    if let Err(imported) = network.visit_builtin(&mut exporter) {
        return imported.export();
    }
    exporter.out
}

struct Importer<'a> {
    path: Vec<String>,
    tensors: &'a BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    used: Vec<String>,
    problems: Vec<String>,
}

impl ModuleMapper for Importer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = torch_name(&self.path);
        let model_shape = param.val().dims();
        let mut torch_shape = model_shape.to_vec();
        if D == 2 {
            torch_shape.reverse();
        }
        let Some((shape, values)) = self.tensors.get(&name) else {
            self.problems
                .push(format!("missing tensor '{name}' (shape {torch_shape:?})"));
            return param;
        };
        self.used.push(name.clone());
        if *shape != torch_shape {
            self.problems.push(format!(
                "tensor '{name}' has shape {shape:?}, the model needs {torch_shape:?}"
            ));
            return param;
        }
        let values = if D == 2 {
            transpose(values, shape[0], shape[1])
        } else {
            values.clone()
        };
        param.map(|old| {
            let device = old.device();
            Tensor::from_data(TensorData::new(values, model_shape), &device)
        })
    }
}

/// A network with its compression (none for a baseline) and the metadata it was saved with.
pub struct Checkpoint {
    pub network: Network,
    pub compression: Compression,
    pub meta: CheckpointMeta,
}

impl Checkpoint {
    /// The network and its compression, ready to run.
    pub fn classifier(&self) -> super::Classifier {
        super::Classifier {
            network: self.network.clone(),
            compression: self.compression.clone(),
        }
    }

    /// The compression record of the metadata (`None` for a baseline).
    pub fn record(&self) -> Option<CompressionRecord> {
        self.meta.compression.clone()
    }
}

/// Renames tensors of a user's file: `old=new` pairs, as given with `--map`.
#[derive(Clone, Debug, Default)]
pub struct KeyMap(pub Vec<(String, String)>);

impl std::str::FromStr for KeyMap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
                    Ok((old.trim().to_string(), new.trim().to_string()))
                }
                _ => Err(Error::usage(format!(
                    "--map: '{pair}' is not of the form old=new (e.g. --map features.0.weight=conv0.weight)"
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(KeyMap)
    }
}

/// Writes `network` and `meta` to `path` atomically.
pub fn save_checkpoint(path: &Path, network: &Network, meta: &CheckpointMeta) -> Result<()> {
    save_compressed(path, network, &Compression::default(), meta)
}

/// Writes `network`, the masks of `compression` and `meta` to `path` atomically. The caller
/// bakes the network first (`model::bake`) so the stored weights are the compressed ones.
pub fn save_compressed(
    path: &Path,
    network: &Network,
    compression: &Compression,
    meta: &CheckpointMeta,
) -> Result<()> {
    let mut tensors = export_tensors(network);
    for (layer, mask) in &compression.masks {
        let mut shape = mask.shape.clone();
        let mut values = mask
            .values
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| Error::checkpoint(path, format!("mask of {layer}: {e:?}")))?;
        if shape.len() == 2 {
            values = transpose(&values, shape[0], shape[1]);
            shape.reverse();
        }
        tensors.push(NamedTensor {
            name: format!("{layer}{MASK_SUFFIX}"),
            shape,
            values,
        });
    }
    if let Some(problem) = tensors.iter().find_map(non_finite) {
        return Err(Error::checkpoint(
            path,
            format!("not written: {problem} (did training diverge?)"),
        ));
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|t| (t.name, bytemuck::cast_slice(&t.values).to_vec(), t.shape))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), data)
                .map_err(|e| Error::checkpoint(path, format!("tensor '{name}': {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let serialized = crate::files::safetensors_bytes(views, meta.to_header())
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    crate::write_atomically(path, &serialized)
}

/// "tensor 'name' holds NaN at index i" for a tensor with a value that is not finite.
fn non_finite(tensor: &NamedTensor) -> Option<String> {
    let (i, v) = tensor
        .values
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())?;
    Some(format!("tensor '{}' holds {v} at index {i}", tensor.name))
}

/// The suffix of a pruning mask's tensor name.
const MASK_SUFFIX: &str = ".weight_mask";

/// The masks in `tensors` (removed from it) as burn-layout masks of `network`'s weight layers.
fn take_masks(
    tensors: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    network: &Network,
    device: &Device,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Mask> {
    let layers = weight_layers(network);
    let names: Vec<String> = tensors
        .keys()
        .filter(|k| k.ends_with(MASK_SUFFIX))
        .cloned()
        .collect();
    let mut masks = BTreeMap::new();
    for name in names {
        let (torch_shape, values) = tensors.remove(&name).expect("listed");
        let layer_name = name.trim_end_matches(MASK_SUFFIX);
        let Some(layer) = layers.iter().find(|l| l.name == layer_name) else {
            problems.push(format!("mask '{name}' names no prunable layer"));
            continue;
        };
        let mut expected = layer.shape.clone();
        if expected.len() == 2 {
            expected.reverse();
        }
        if torch_shape != expected {
            problems.push(format!(
                "mask '{name}' has shape {torch_shape:?}, the weight has {expected:?}"
            ));
            continue;
        }
        if let Some(bad) = values.iter().find(|v| **v != 0.0 && **v != 1.0) {
            problems.push(format!(
                "mask '{name}' holds {bad}; masks hold only 0 and 1"
            ));
            continue;
        }
        let values = if expected.len() == 2 {
            transpose(&values, expected[0], expected[1])
        } else {
            values
        };
        let n = values.len();
        let mask = Mask {
            values: Tensor::from_data(TensorData::new(values, [n]), device),
            shape: layer.shape.clone(),
        };
        masks.insert(layer_name.to_string(), mask);
    }
    masks
}

/// Reads a checkpoint onto `device`. The model comes from `model`, else the file's metadata,
/// else the tensor names; `map` renames the file's tensors first. Missing tensors, wrong shapes,
/// unknown tensors and non-float dtypes are refused with the tensor's name.
pub fn load_checkpoint(
    path: &Path,
    model: Option<ModelRef>,
    map: &KeyMap,
    device: &Device,
) -> Result<Checkpoint> {
    // The bytes, the tensors as numbers, and on the device.
    let bytes = crate::files::read_input(
        path,
        crate::limits::MAX_DATA_BYTES as u64,
        3,
        Error::checkpoint,
    )?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let recorded_model = header
        .metadata()
        .as_ref()
        .and_then(|h| h.get("model"))
        .filter(|m| !m.is_empty())
        .cloned();
    let meta = header
        .metadata()
        .as_ref()
        .map(|h| CheckpointMeta::from_header(h, path))
        .transpose()?
        .unwrap_or_default();

    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
            Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(view.data())
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; only F32 and F64 are read"),
                ));
            }
        };
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::checkpoint(
                path,
                format!("tensor '{name}' holds {v} at index {i}: weights must be finite numbers"),
            ));
        }
        let renamed = map
            .0
            .iter()
            .find(|(old, _)| *old == name)
            .map(|(_, new)| new.clone())
            .unwrap_or(name);
        tensors.insert(renamed, (view.shape().to_vec(), values));
    }
    for (old, _) in &map.0 {
        if !file.names().iter().any(|n| *n == old) {
            return Err(Error::checkpoint(
                path,
                format!("--map names tensor '{old}', which the file does not have"),
            ));
        }
    }

    // A checkpoint without metadata (e.g. a PyTorch state_dict) is told by its tensor names.
    let recognised = ModelKind::ALL
        .iter()
        .copied()
        .find(|k| tensors.contains_key(k.signature()));
    let model_ref = match model {
        Some(model) => model,
        None if let Some(recorded) = &recorded_model => recorded.parse().map_err(|_| {
            Error::checkpoint(path, format!("metadata names unknown model '{recorded}'"))
        })?,
        None if recognised.is_some() => ModelRef::BuiltIn(recognised.expect("checked")),
        None => {
            return Err(Error::checkpoint(
                path,
                "cannot tell the model: no metadata and no known tensor names (pass --model, and --map to rename tensors)",
            ));
        }
    };
    let template = model_ref.load(device)?;
    if let (Network::Onnx(m), Some(sha)) = (&template, &meta.model_sha256)
        && *sha != m.graph.sha256
    {
        return Err(Error::checkpoint(
            path,
            format!(
                "was made from another graph than {} (SHA-256 {sha}, the file's is {})",
                m.graph.file.display(),
                m.graph.sha256
            ),
        ));
    }
    let kind = model_ref.clone();

    let record = meta.compression.clone();
    if let Some(record) = &record {
        record
            .validate(&template)
            .map_err(|e| Error::checkpoint(path, format!("compression metadata: {e}")))?;
    }
    let mut mask_problems = Vec::new();
    let masks = take_masks(&mut tensors, &template, device, &mut mask_problems);

    let mut importer = Importer {
        path: Vec::new(),
        tensors: &tensors,
        used: Vec::new(),
        problems: Vec::new(),
    };
    let network = template
        .map_builtin(&mut importer)
        .unwrap_or_else(|imported| {
            Network::Onnx(imported.with_tensors(
                &tensors,
                &mut importer.used,
                &mut importer.problems,
            ))
        });
    // Inference mode (dropout off, batch norm on its running statistics), also when gradients
    // flow to the inputs (attacks); `.train()` turns training back on for fine-tuning.
    let network = network.valid();
    // PyTorch's BatchNorm keeps a step counter that inference never uses.
    let unknown: Vec<&String> = tensors
        .keys()
        .filter(|k| !importer.used.contains(k) && !k.ends_with("num_batches_tracked"))
        .collect();
    if !unknown.is_empty() {
        importer.problems.push(format!(
            "tensors {unknown:?} are not part of {kind} (rename them with --map old=new)"
        ));
    }
    importer.problems.extend(mask_problems);
    if !importer.problems.is_empty() {
        return Err(Error::checkpoint(
            path,
            format!(
                "does not fit model {kind}: {}",
                importer.problems.join("; ")
            ),
        ));
    }
    let meta = CheckpointMeta {
        model: Some(kind.clone()),
        ..meta
    };
    let record = record.unwrap_or_default();
    let compression = Compression {
        masks,
        quant: record.quantiser.map(|config| super::Quantisation {
            config,
            grids: record.grids,
        }),
        grad: record.grad,
        ..Compression::default()
    };
    Ok(Checkpoint {
        network,
        compression,
        meta,
    })
}

/// Reads a model file: an ONNX file (imported with its own weights: uncompressed, or a QDQ
/// graph as the file quantises it) or a checkpoint (see [`load_checkpoint`]).
pub fn load(
    path: &Path,
    model: Option<ModelRef>,
    map: &KeyMap,
    device: &Device,
) -> Result<Checkpoint> {
    if ModelRef::names_onnx(path) {
        let network = ModelRef::Onnx(path.to_path_buf()).load(device)?;
        let quant = match &network {
            Network::Onnx(m) => m.graph.qdq.as_ref().map(|q| super::Quantisation {
                config: q.config.clone(),
                grids: q.grids.clone(),
            }),
            _ => None,
        };
        let compression = Compression {
            quant,
            ..Compression::default()
        };
        let meta = CheckpointMeta {
            model: Some(network.model_ref()),
            compression: compression
                .quant
                .as_ref()
                .map(|_| compression.record(&network, None, 0)),
            model_sha256: network.model_sha256(),
            ..CheckpointMeta::default()
        };
        return Ok(Checkpoint {
            network,
            compression,
            meta,
        });
    }
    load_checkpoint(path, model, map, device)
}

/// The dataset a checkpoint was trained on, if its metadata names a known one.
pub fn checkpoint_dataset(meta: &CheckpointMeta) -> Option<DatasetKind> {
    meta.dataset.as_ref().and_then(DatasetRecord::kind)
}
