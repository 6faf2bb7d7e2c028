//! Small ONNX models written from Rust, field by field (the protobuf wire format is a few
//! lines): the hostile graphs the import must refuse, made by the tests themselves.
//!
//! Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
//! TensorProto, ValueInfoProto, TypeProto, TensorShapeProto).

/// A protobuf message under construction.
#[derive(Clone, Default)]
pub struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, ((field as u64) << 3) | wire as u64);
    }
    pub fn int(mut self, field: u32, value: i64) -> Self {
        self.key(field, 0);
        varint(&mut self.0, value as u64);
        self
    }
    pub fn float(mut self, field: u32, value: f32) -> Self {
        self.key(field, 5);
        self.0.extend(value.to_le_bytes());
        self
    }
    pub fn bytes(mut self, field: u32, value: &[u8]) -> Self {
        self.key(field, 2);
        varint(&mut self.0, value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }
    pub fn text(self, field: u32, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }
    pub fn message(self, field: u32, value: &Message) -> Self {
        self.bytes(field, &value.0)
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An attribute of a node.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// A node: op type, name, inputs, outputs, attributes.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: &[(&str, Attr)],
) -> Message {
    let mut m = Message::default();
    for i in inputs {
        m = m.text(1, i);
    }
    for o in outputs {
        m = m.text(2, o);
    }
    m = m.text(3, name).text(4, op);
    for (key, value) in attrs {
        let mut a = Message::default().text(1, key);
        a = match value {
            Attr::Float(f) => a.float(2, *f).int(20, 1),
            Attr::Int(i) => a.int(3, *i).int(20, 2),
            Attr::Ints(v) => {
                for i in v {
                    a = a.int(8, *i);
                }
                a.int(20, 7)
            }
        };
        m = m.message(5, &a);
    }
    m
}

/// A float initialiser `name` of `shape`, every value `value`.
pub fn tensor(name: &str, shape: &[i64], value: f32) -> Message {
    let n: i64 = shape.iter().product();
    let raw: Vec<u8> = (0..n).flat_map(|_| value.to_le_bytes()).collect();
    tensor_of(name, shape, &raw)
}

/// A float initialiser with the given raw little-endian bytes.
pub fn tensor_of(name: &str, shape: &[i64], raw: &[u8]) -> Message {
    let mut t = Message::default();
    for d in shape {
        t = t.int(1, *d);
    }
    t.int(2, 1).text(8, name).bytes(9, raw)
}

/// A float initialiser `name` of `shape` whose values are `length` bytes at `offset` of the
/// external data file `location` (relative to the model's folder, as ONNX says).
pub fn external_tensor(
    name: &str,
    shape: &[i64],
    location: &str,
    offset: u64,
    length: u64,
) -> Message {
    let entry = |key: &str, value: &str| Message::default().text(1, key).text(2, value);
    let mut t = Message::default();
    for d in shape {
        t = t.int(1, *d);
    }
    // TensorProto: external_data = 13, data_location = 14 (EXTERNAL = 1).
    t.int(2, 1)
        .text(8, name)
        .message(13, &entry("location", location))
        .message(13, &entry("offset", &offset.to_string()))
        .message(13, &entry("length", &length.to_string()))
        .int(14, 1)
}

/// A float tensor value `name` with `shape` (`None`: a named dynamic dim, the batch).
pub fn value(name: &str, shape: &[Option<i64>]) -> Message {
    let mut dims = Message::default();
    for d in shape {
        let dim = match d {
            Some(v) => Message::default().int(1, *v),
            None => Message::default().text(2, "N"),
        };
        dims = dims.message(1, &dim);
    }
    let tensor_type = Message::default().int(1, 1).message(2, &dims);
    let type_proto = Message::default().message(1, &tensor_type);
    Message::default().text(1, name).message(2, &type_proto)
}

/// A whole model file (IR version 8, opset 17) of `nodes` and `initialisers` from `inputs` to
/// `outputs`.
pub fn model(
    nodes: &[Message],
    initialisers: &[Message],
    inputs: &[Message],
    outputs: &[Message],
) -> Vec<u8> {
    let mut graph = Message::default();
    for n in nodes {
        graph = graph.message(1, n);
    }
    graph = graph.text(2, "test");
    for t in initialisers {
        graph = graph.message(5, t);
    }
    for i in inputs {
        graph = graph.message(11, i);
    }
    for o in outputs {
        graph = graph.message(12, o);
    }
    let opset = Message::default().text(1, "").int(2, 17);
    Message::default()
        .int(1, 8)
        .text(2, "advcomp-tests")
        .message(7, &graph)
        .message(8, &opset)
        .into_bytes()
}

/// Images [N, channels, height, width] into `body` (nodes from "images" to "features",
/// [N, features]), then a Gemm to 10 logits: a classifier around the nodes under test.
pub fn classifier(
    channels: i64,
    height: i64,
    width: i64,
    body: &[Message],
    initialisers: &[Message],
    features: i64,
) -> Vec<u8> {
    let mut nodes = body.to_vec();
    nodes.push(node(
        "Gemm",
        "fc",
        &["features", "fc.weight", "fc.bias"],
        &["logits"],
        &[("transB", Attr::Int(1))],
    ));
    let mut inits = initialisers.to_vec();
    inits.push(tensor("fc.weight", &[10, features], 0.01));
    inits.push(tensor("fc.bias", &[10], 0.0));
    model(
        &nodes,
        &inits,
        &[value(
            "images",
            &[None, Some(channels), Some(height), Some(width)],
        )],
        &[value("logits", &[None, Some(10)])],
    )
}
