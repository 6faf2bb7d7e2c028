//! Reading an ONNX file: the protobuf model (onnx-ir's generated bindings), its weights, inline
//! or in external data files beside it as ONNX specifies (`location` relative to the model's
//! folder, `offset`, `length`), the SHA-256 that covers both, and node attributes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use onnx_ir::{AttributeProto, GraphProto, Message, ModelProto, TensorProto};

use super::fold::{Data, Dim, Host};
use crate::{Error, Result};

/// An ONNX file read: its graph (initialisers moved out, decoded), the version of the default
/// operator set, and the SHA-256 of the file followed by its external data files.
pub(super) struct ModelFile {
    pub graph: GraphProto,
    pub opset: i64,
    pub sha256: String,
    /// The initialisers, by name, in file order.
    pub initialisers: Vec<(String, Host)>,
    /// Their ONNX element types, by name.
    pub types: HashMap<String, i32>,
}

/// ONNX's `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Reads and parses `path`, with the external data files it names.
pub(super) fn read(path: &Path) -> Result<ModelFile> {
    // The file, the parsed message's copy of it, the weights as numbers and as tensors: about
    // four times its size at the peak.
    let bytes =
        crate::files::read_input(path, crate::limits::MAX_MODEL_BYTES as u64, 4, Error::model)?;
    let refuse = |why: String| Error::model(path, why);
    let mut model = ModelProto::parse_from_bytes(&bytes)
        .map_err(|e| refuse(format!("not a readable ONNX model: {e}")))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    let mut graph = model
        .graph
        .take()
        .ok_or_else(|| refuse("not a readable ONNX model: it holds no graph".into()))?;
    let opset = opset.ok_or_else(|| {
        refuse("the model imports no version of ONNX's default operator set".into())
    })?;
    defined_once(&graph).map_err(refuse)?;
    let mut digest = {
        use sha2::Digest;
        let mut d = sha2::Sha256::new();
        d.update(&bytes);
        d
    };
    drop(bytes);
    let folder = path.parent().unwrap_or(Path::new("."));
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    // Each external data file once, in the order the initialisers first name them.
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut initialisers = Vec::with_capacity(graph.initializer.len());
    let mut types = HashMap::new();
    for t in std::mem::take(&mut graph.initializer) {
        types.insert(t.name.clone(), t.data_type);
        let host = if t.data_location.value() == EXTERNAL {
            let place = Place::of(&t)
                .map_err(|why| refuse(format!("initialiser '{}': external data {why}", t.name)))?;
            if !files.contains_key(&place.location) {
                let file = data_file(path, folder, &t.name, &place.location)?;
                use sha2::Digest;
                digest.update(&file);
                files.insert(place.location.clone(), file);
            }
            let file = &files[&place.location];
            let raw = place.bytes(file, &t).map_err(|why| {
                refuse(format!(
                    "initialiser '{}': its data in '{}' {why}",
                    t.name, place.location
                ))
            })?;
            decode(&t, Some(raw))
        } else {
            decode(&t, None)
        }
        .map_err(|why| {
            // The node that reads it, when one does (a QDQ node of an unsupported type).
            let reader = graph
                .node
                .iter()
                .find(|n| n.input.contains(&t.name))
                .map(|n| format!(" (read by node '{}' ({}))", n.name, n.op_type))
                .unwrap_or_default();
            refuse(format!("initialiser '{}'{reader}: {why}", t.name))
        })?;
        initialisers.push((t.name.clone(), host));
    }
    let sha256 = {
        use sha2::Digest;
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    Ok(ModelFile {
        graph,
        opset,
        sha256,
        initialisers,
        types,
    })
}

/// Where an external tensor's bytes are: a file beside the model, an offset and a length.
struct Place {
    location: String,
    offset: u64,
    length: Option<u64>,
}

impl Place {
    fn of(t: &TensorProto) -> std::result::Result<Place, String> {
        let mut place = Place {
            location: String::new(),
            offset: 0,
            length: None,
        };
        for entry in &t.external_data {
            let number = || {
                entry
                    .value
                    .parse::<u64>()
                    .map_err(|_| format!("{} '{}' is no byte count", entry.key, entry.value))
            };
            match entry.key.as_str() {
                "location" => place.location = entry.value.clone(),
                "offset" => place.offset = number()?,
                "length" => place.length = Some(number()?),
                _ => {}
            }
        }
        if place.location.is_empty() {
            return Err("names no location".into());
        }
        Ok(place)
    }

    /// The tensor's bytes within `file`.
    fn bytes<'a>(&self, file: &'a [u8], t: &TensorProto) -> std::result::Result<&'a [u8], String> {
        let needed = element_bytes(t.data_type)?
            .checked_mul(elements(&t.dims)? as u64)
            .ok_or("too large")?;
        let length = self.length.unwrap_or(needed);
        if length != needed {
            return Err(format!(
                "is {length} bytes long; its shape {:?} needs {needed}",
                t.dims
            ));
        }
        let end = self.offset.checked_add(length).ok_or("too large")?;
        if end > file.len() as u64 {
            return Err(format!(
                "(bytes {}..{end}) lie past the end of the file, which holds {} bytes",
                self.offset,
                file.len()
            ));
        }
        Ok(&file[self.offset as usize..end as usize])
    }
}

/// Reads the external data file `location` of the model `model` (in `folder`) for the
/// initialiser `tensor`: only a file inside the model's folder (no absolute path, no `..`, no
/// link that leads out).
fn data_file(model: &Path, folder: &Path, tensor: &str, location: &str) -> Result<Vec<u8>> {
    let refuse = |why: String| {
        Error::model(
            model,
            format!("initialiser '{tensor}': external data file '{location}' {why}"),
        )
    };
    let relative = Path::new(location);
    let leaves = relative.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    });
    if leaves || location.contains('\0') {
        return Err(refuse(
            "is outside the model's folder; ONNX external data lies in the model's folder or \
             below it"
                .into(),
        ));
    }
    let file: PathBuf = folder.join(relative);
    if let (Ok(inside), Ok(real)) = (folder.canonicalize(), file.canonicalize())
        && !real.starts_with(&inside)
    {
        return Err(refuse(format!(
            "leads outside the model's folder (to {}); ONNX external data lies in the model's \
             folder or below it",
            real.display()
        )));
    }
    // The bytes and the numbers decoded from them.
    crate::files::read_input(&file, crate::limits::MAX_DATA_BYTES as u64, 2, |p, why| {
        Error::model(
            model,
            format!(
                "initialiser '{tensor}': external data file {}: {why}",
                p.display()
            ),
        )
    })
}

/// Elements of a tensor of `dims`, each >= 0.
fn elements(dims: &[i64]) -> std::result::Result<usize, String> {
    dims.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| format!("shape {dims:?}: a negative length"))?;
        n.checked_mul(d)
            .ok_or_else(|| format!("shape {dims:?}: too many elements"))
    })
}

/// The types of values advcomp computes with: floats (every ONNX float type, as f32),
/// integers (every integer type) and booleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Float,
    Int,
    Bool,
}

impl DataType {
    /// The kind of ONNX's `TensorProto.DataType` number `t`.
    pub fn from_onnx(t: i64) -> std::result::Result<DataType, String> {
        match t {
            1 | 10 | 11 | 16 => Ok(DataType::Float),
            2..=7 | 12 | 13 => Ok(DataType::Int),
            9 => Ok(DataType::Bool),
            other => Err(format!(
                "element type {other} ({}) is not supported",
                type_name(other)
            )),
        }
    }
}

fn type_name(t: i64) -> &'static str {
    match t {
        8 => "string",
        14 | 15 => "complex",
        17..=20 => "float8",
        21 | 22 => "4-bit integer",
        _ => "unknown",
    }
}

/// Bytes of one element of ONNX type `t` as stored raw (the types [`decode`] reads).
fn element_bytes(t: i32) -> std::result::Result<u64, String> {
    Ok(match t {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 => 8,
        other => {
            return Err(format!(
                "element type {other} ({}) is not supported",
                type_name(other.into())
            ));
        }
    })
}

/// A tensor's values: from `raw` (external data) or the message itself (raw_data or the typed
/// fields).
pub fn decode(t: &TensorProto, raw: Option<&[u8]>) -> std::result::Result<Host, String> {
    if t.data_location.value() == EXTERNAL && raw.is_none() {
        return Err("external data is read only for initialisers".into());
    }
    let n = elements(&t.dims)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let size = element_bytes(t.data_type)? as usize;
    let raw: &[u8] = raw.unwrap_or(&t.raw_data);
    let typed = match t.data_type {
        1 => t.float_data.len(),
        11 => t.double_data.len(),
        7 => t.int64_data.len(),
        12 | 13 => t.uint64_data.len(),
        _ => t.int32_data.len(),
    };
    let found = if raw.is_empty() {
        typed
    } else {
        raw.len() / size
    };
    if found != n || (!raw.is_empty() && !raw.len().is_multiple_of(size)) {
        return Err(format!(
            "holds {} values; its shape {:?} needs {n}",
            found, t.dims
        ));
    }
    let le = |i: usize| &raw[i * size..(i + 1) * size];
    let int = |f: &dyn Fn(usize) -> i64| Data::Int((0..n).map(|i| Dim::new(f(i))).collect());
    let data = match (t.data_type, raw.is_empty()) {
        (1, false) => Data::Float(
            (0..n)
                .map(|i| f32::from_le_bytes(le(i).try_into().expect("4 bytes")))
                .collect(),
        ),
        (1, true) => Data::Float(t.float_data.clone()),
        (11, false) => Data::Float(
            (0..n)
                .map(|i| f64::from_le_bytes(le(i).try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        (11, true) => Data::Float(t.double_data.iter().map(|&v| v as f32).collect()),
        (10 | 16, _) => {
            let bits = |i: usize| -> u16 {
                if raw.is_empty() {
                    t.int32_data[i] as u16
                } else {
                    u16::from_le_bytes(le(i).try_into().expect("2 bytes"))
                }
            };
            Data::Float(
                (0..n)
                    .map(|i| {
                        if t.data_type == 16 {
                            f32::from_bits(u32::from(bits(i)) << 16)
                        } else {
                            half_to_f32(bits(i))
                        }
                    })
                    .collect(),
            )
        }
        (7, false) => int(&|i| i64::from_le_bytes(le(i).try_into().expect("8 bytes"))),
        (7, true) => int(&|i| t.int64_data[i]),
        (12, false) => int(&|i| i64::from(u32::from_le_bytes(le(i).try_into().expect("4")))),
        (13, false) => int(&|i| u64::from_le_bytes(le(i).try_into().expect("8")) as i64),
        (12 | 13, true) => int(&|i| t.uint64_data[i] as i64),
        (6, false) => int(&|i| i64::from(i32::from_le_bytes(le(i).try_into().expect("4")))),
        (2, false) => int(&|i| i64::from(raw[i])),
        (3, false) => int(&|i| i64::from(raw[i] as i8)),
        (4, false) => int(&|i| i64::from(u16::from_le_bytes(le(i).try_into().expect("2")))),
        (5, false) => int(&|i| i64::from(i16::from_le_bytes(le(i).try_into().expect("2")))),
        (2..=6, true) => int(&|i| i64::from(t.int32_data[i])),
        (9, false) => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        (9, true) => Data::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
        (other, _) => {
            return Err(format!(
                "element type {other} ({}) is not supported",
                type_name(other.into())
            ));
        }
    };
    Ok(Host { shape, data })
}

/// IEEE half precision to f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | ((m << shift) & 0x3ff) << 13
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Refuses a graph that defines a value twice, as ONNX's checker does ("Graph must be in
/// single static assignment (SSA) form"): a second node writing a value, or a node writing a
/// graph input or an initialiser. (An initialiser may also be listed as a graph input, as
/// files of IR version 3 do.)
fn defined_once(graph: &GraphProto) -> std::result::Result<(), String> {
    let inputs: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let mut defined = std::collections::HashSet::new();
    for input in &inputs {
        if !defined.insert(*input) {
            return Err(format!("graph input '{input}' is listed twice"));
        }
    }
    for t in &graph.initializer {
        if !inputs.contains(&t.name.as_str()) && !defined.insert(t.name.as_str()) {
            return Err(format!("initialiser '{}' is defined twice", t.name));
        }
    }
    for node in &graph.node {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(output.as_str()) {
                return Err(format!(
                    "value '{output}' is defined twice (again by node '{}'): an ONNX graph \
                     assigns each value once",
                    node.name
                ));
            }
        }
    }
    Ok(())
}

/// A node's attributes, with ONNX's defaults where one is absent, and its output count.
#[derive(Clone, Copy, Default)]
pub struct Attrs<'a> {
    list: &'a [AttributeProto],
    pub outputs: usize,
}

impl<'a> Attrs<'a> {
    pub fn new(list: &'a [AttributeProto], outputs: usize) -> Self {
        Attrs { list, outputs }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name == name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    /// A tensor attribute (Constant's `value`, ConstantOfShape's), decoded.
    pub fn tensor(&self, name: &str) -> Option<std::result::Result<Host, String>> {
        self.get(name)
            .and_then(|a| a.t.as_ref())
            .map(|t| decode(t, None))
    }

    /// The ONNX element type of a tensor attribute.
    pub fn tensor_type(&self, name: &str) -> Option<i32> {
        self.get(name)
            .and_then(|a| a.t.as_ref())
            .map(|t| t.data_type)
    }

    /// Constant's value, from whichever attribute holds it.
    pub fn constant(&self) -> std::result::Result<Host, String> {
        if let Some(t) = self.tensor("value") {
            return t;
        }
        if let Some(a) = self.get("value_float") {
            return Ok(Host::floats(vec![], vec![a.f]));
        }
        if let Some(a) = self.get("value_floats") {
            return Ok(Host::floats(vec![a.floats.len()], a.floats.clone()));
        }
        if let Some(a) = self.get("value_int") {
            return Ok(Host::ints(vec![], vec![Dim::new(a.i)]));
        }
        if let Some(a) = self.get("value_ints") {
            return Ok(Host::vector(a.ints.iter().map(|&i| Dim::new(i)).collect()));
        }
        Err("no value advcomp reads (value, value_float(s), value_int(s))".into())
    }
}
