//! What the import knows before any image is seen: lengths that may grow with the batch size
//! ([`Dim`]), and tensors known at import ([`Host`]: initialisers, constants, and every value
//! computed only from them and from shapes), with the ops that compute such values at import
//! ([`FOLDED`]). A graph that reads its own shape (`Shape` → `Gather` → `Concat` → `Reshape`)
//! is folded here once, from the input's fixed C, H, W and a batch size N left free, so the
//! steps that run per batch have constant shapes.

use std::cmp::Ordering;
use std::fmt;

use super::proto::{Attrs, DataType};

/// A length or an integer known at import up to the batch size N: `per_image`·N + `fixed`
/// (a value reshaped to [17·N, 64] has a 17N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    per_image: i64,
    fixed: i64,
}

impl Dim {
    /// N, the batch size.
    pub const BATCH: Dim = Dim {
        per_image: 1,
        fixed: 0,
    };

    /// The number `k`, whatever the batch size.
    pub const fn new(k: i64) -> Dim {
        Dim {
            per_image: 0,
            fixed: k,
        }
    }

    /// The number, when it does not depend on the batch size.
    pub fn known(self) -> Option<i64> {
        (self.per_image == 0).then_some(self.fixed)
    }

    /// The number at batch size `n` (lengths are never negative for n >= 1).
    pub fn at(self, n: usize) -> usize {
        let v = self
            .per_image
            .saturating_mul(n as i64)
            .saturating_add(self.fixed);
        v.max(0) as usize
    }

    pub fn add(self, o: Dim) -> Option<Dim> {
        Some(Dim {
            per_image: self.per_image.checked_add(o.per_image)?,
            fixed: self.fixed.checked_add(o.fixed)?,
        })
    }

    pub fn sub(self, o: Dim) -> Option<Dim> {
        Some(Dim {
            per_image: self.per_image.checked_sub(o.per_image)?,
            fixed: self.fixed.checked_sub(o.fixed)?,
        })
    }

    /// The product; `None` when both depend on N (N² is no length of a classifier) or it
    /// overflows.
    pub fn mul(self, o: Dim) -> Option<Dim> {
        let (k, d) = match (self.known(), o.known()) {
            (Some(k), _) => (k, o),
            (_, Some(k)) => (k, self),
            _ => return None,
        };
        Some(Dim {
            per_image: d.per_image.checked_mul(k)?,
            fixed: d.fixed.checked_mul(k)?,
        })
    }

    /// The quotient, truncated toward zero as ONNX's integer Div; `None` unless it is the same
    /// expression for every N (both parts divisible, or a multiple of the other).
    pub fn div(self, o: Dim) -> Option<Dim> {
        match o.known() {
            Some(0) => None,
            Some(k) if self.per_image == 0 => Some(Dim::new(self.fixed.checked_div(k)?)),
            Some(k) if self.per_image % k == 0 && self.fixed % k == 0 => Some(Dim {
                per_image: self.per_image / k,
                fixed: self.fixed / k,
            }),
            Some(_) => None,
            // (a·N + b) / (c·N + d) with a = q·c and b = q·d.
            None => {
                let q = self.per_image.checked_div(o.per_image)?;
                (self.per_image == q.checked_mul(o.per_image)?
                    && self.fixed == q.checked_mul(o.fixed)?)
                .then_some(Dim::new(q))
            }
        }
    }

    /// How `self` compares with `o`, when it is the same for every batch size N >= 1.
    pub fn compare(self, o: Dim) -> Option<Ordering> {
        let d = self.sub(o)?;
        let at_one = d.per_image.checked_add(d.fixed)?;
        match d.per_image.cmp(&0) {
            Ordering::Equal => Some(d.fixed.cmp(&0)),
            // Grows with N from its value at N = 1.
            Ordering::Greater => (at_one > 0).then_some(Ordering::Greater),
            Ordering::Less => (at_one < 0).then_some(Ordering::Less),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.per_image, self.fixed) {
            (0, k) => write!(f, "{k}"),
            (p, k) => {
                match p {
                    1 => write!(f, "N")?,
                    -1 => write!(f, "-N")?,
                    p => write!(f, "{p}N")?,
                }
                match k.cmp(&0) {
                    Ordering::Greater => write!(f, "+{k}"),
                    Ordering::Less => write!(f, "{k}"),
                    Ordering::Equal => Ok(()),
                }
            }
        }
    }
}

/// A shape as the messages write it: `[N, 17, 64]`.
pub fn shape_text(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// `shape` as lengths (the batch axis at N).
pub fn fixed_shape(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::new(d as i64)).collect()
}

/// A tensor's elements: floats (every ONNX float type, held as f32), integers (every integer
/// type; they may depend on the batch size) or booleans.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Float(Vec<f32>),
    Int(Vec<Dim>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Data::Float(_) => "floats",
            Data::Int(_) => "integers",
            Data::Bool(_) => "booleans",
        }
    }

    /// The elements at `indices`, in order.
    fn pick(&self, indices: &[usize]) -> Data {
        match self {
            Data::Float(v) => Data::Float(indices.iter().map(|&i| v[i]).collect()),
            Data::Int(v) => Data::Int(indices.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(indices.iter().map(|&i| v[i]).collect()),
        }
    }

    /// `parts` one after the other (all of one kind).
    fn chain(parts: &[&Data]) -> Result<Data, String> {
        let mut out = match parts.first() {
            Some(first) => (*first).clone(),
            None => return Err("no inputs".into()),
        };
        for part in &parts[1..] {
            match (&mut out, part) {
                (Data::Float(a), Data::Float(b)) => a.extend_from_slice(b),
                (Data::Int(a), Data::Int(b)) => a.extend_from_slice(b),
                (Data::Bool(a), Data::Bool(b)) => a.extend_from_slice(b),
                (a, b) => return Err(format!("inputs of {} and {}", a.kind(), b.kind())),
            }
        }
        Ok(out)
    }
}

/// A tensor known at import: its shape and its elements, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Host {
    pub fn floats(shape: Vec<usize>, values: Vec<f32>) -> Host {
        Host {
            shape,
            data: Data::Float(values),
        }
    }

    pub fn ints(shape: Vec<usize>, values: Vec<Dim>) -> Host {
        Host {
            shape,
            data: Data::Int(values),
        }
    }

    /// A 1-D tensor of integers.
    pub fn vector(values: Vec<Dim>) -> Host {
        Host::ints(vec![values.len()], values)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The integers, each as a number; an error naming `what` when they are not integers or
    /// one depends on the batch size.
    pub fn fixed_ints(&self, what: &str) -> Result<Vec<i64>, String> {
        match &self.data {
            Data::Int(v) => v
                .iter()
                .map(|d| {
                    d.known().ok_or_else(|| {
                        format!(
                            "{what} {} depends on the batch size; a number is needed here",
                            shape_text(v)
                        )
                    })
                })
                .collect(),
            other => Err(format!(
                "{what} holds {}; integers are needed",
                other.kind()
            )),
        }
    }

    /// The integers, which may depend on the batch size.
    pub fn dims(&self, what: &str) -> Result<Vec<Dim>, String> {
        match &self.data {
            Data::Int(v) => Ok(v.clone()),
            other => Err(format!(
                "{what} holds {}; integers are needed",
                other.kind()
            )),
        }
    }

    /// The one number `self` holds (a scalar or a 1-element tensor).
    pub fn scalar_int(&self, what: &str) -> Result<i64, String> {
        match self.fixed_ints(what)?.as_slice() {
            [v] => Ok(*v),
            v => Err(format!("{what} holds {} numbers; one is needed", v.len())),
        }
    }

    /// The elements as floats (integers when they do not depend on the batch size).
    pub fn to_floats(&self, what: &str) -> Result<Vec<f32>, String> {
        Ok(match &self.data {
            Data::Float(v) => v.clone(),
            Data::Int(_) => self
                .fixed_ints(what)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            Data::Bool(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
        })
    }

    fn with(&self, shape: Vec<usize>, indices: &[usize]) -> Host {
        Host {
            shape,
            data: self.data.pick(indices),
        }
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn count(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_FOLDED)
        .ok_or_else(|| {
            format!("a value of shape {shape:?} computed at import: more than {MAX_FOLDED} numbers")
        })
}

/// The most numbers one value computed at import may hold (shape arithmetic and masks are
/// small; this bounds what a hostile file can make the import allocate).
const MAX_FOLDED: usize = 1 << 26;

/// An axis attribute or input (negative counts from the end) as an index into `rank` axes.
pub fn axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r.max(1) {
        return Err(format!(
            "axis {axis} is outside the {rank} axes of its input"
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// NumPy broadcasting of `shapes` (concrete lengths).
fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            match (*o, d) {
                (a, b) if a == b => {}
                (1, b) => *o = b,
                (_, 1) => {}
                _ => {
                    return Err(format!(
                        "shapes {} do not broadcast (NumPy rules)",
                        shapes
                            .iter()
                            .map(|s| format!("{s:?}"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// For each element of a tensor of shape `out`, the index of the element of `shape` it
/// reads when `shape` is broadcast to `out`.
fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let offset = out.len() - shape.len();
    let (in_strides, out_strides) = (strides(shape), strides(out));
    (0..n)
        .map(|flat| {
            let mut index = 0;
            for (axis, &len) in shape.iter().enumerate() {
                let coordinate = (flat / out_strides[offset + axis]) % out[offset + axis];
                if len != 1 {
                    index += coordinate * in_strides[axis];
                }
            }
            index
        })
        .collect()
}

/// A fold: an op evaluated at import on inputs all known (`None` where an optional input is
/// absent). `Ok(None)`: the op cannot be evaluated here (its result's shape depends on the
/// batch size); it is run per batch instead.
pub type Fold = fn(&Attrs, &[Option<&Host>], i64) -> Result<Option<Vec<Host>>, String>;

/// The ops evaluated at import when all their inputs are known (ONNX op type, fold): shape
/// arithmetic, masks, constants. `Shape` and `Size` are folded from any value's shape (the
/// import knows every value's shape), so they are not here.
pub const FOLDED: &[(&str, Fold)] = &[
    ("Abs", |a, i, _| unary(a, i, Unary::Abs)),
    ("Add", |_, i, _| binary(i, Arith::Add)),
    ("And", |_, i, _| logic(i, |a, b| a && b)),
    ("Cast", cast),
    ("Ceil", |a, i, _| unary(a, i, Unary::Ceil)),
    ("Concat", concat),
    ("ConstantOfShape", constant_of_shape),
    ("Div", |_, i, _| binary(i, Arith::Div)),
    ("Equal", |_, i, _| compare(i, |o| o == Ordering::Equal)),
    ("Exp", |a, i, _| unary(a, i, Unary::Exp)),
    ("Expand", expand),
    ("Flatten", flatten),
    ("Floor", |a, i, _| unary(a, i, Unary::Floor)),
    ("Gather", gather),
    ("Greater", |_, i, _| compare(i, |o| o == Ordering::Greater)),
    ("GreaterOrEqual", |_, i, _| {
        compare(i, |o| o != Ordering::Less)
    }),
    ("Identity", |_, i, _| Ok(Some(vec![input(i, 0)?.clone()]))),
    ("Less", |_, i, _| compare(i, |o| o == Ordering::Less)),
    ("LessOrEqual", |_, i, _| {
        compare(i, |o| o != Ordering::Greater)
    }),
    ("Log", |a, i, _| unary(a, i, Unary::Log)),
    ("Max", |_, i, _| variadic(i, Arith::Max)),
    ("Min", |_, i, _| variadic(i, Arith::Min)),
    ("Mod", |a, i, _| {
        binary(
            i,
            if a.int("fmod", 0) == 1 {
                Arith::Fmod
            } else {
                Arith::Mod
            },
        )
    }),
    ("Mul", |_, i, _| binary(i, Arith::Mul)),
    ("Neg", |a, i, _| unary(a, i, Unary::Neg)),
    ("Not", |a, i, _| unary(a, i, Unary::Not)),
    ("Or", |_, i, _| logic(i, |a, b| a || b)),
    ("Pow", |_, i, _| binary(i, Arith::Pow)),
    ("Range", range),
    ("Reciprocal", |a, i, _| unary(a, i, Unary::Reciprocal)),
    ("Reshape", reshape),
    ("ScatterND", scatter_nd),
    ("Slice", slice),
    ("Split", split),
    ("Sqrt", |a, i, _| unary(a, i, Unary::Sqrt)),
    ("Squeeze", squeeze),
    ("Sub", |_, i, _| binary(i, Arith::Sub)),
    ("Transpose", transpose),
    ("Unsqueeze", unsqueeze),
    ("Where", where_),
    ("Xor", |_, i, _| logic(i, |a, b| a != b)),
];

fn input<'a>(inputs: &[Option<&'a Host>], i: usize) -> Result<&'a Host, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("missing input {i}"))
}

fn one(h: Host) -> Result<Option<Vec<Host>>, String> {
    Ok(Some(vec![h]))
}

#[derive(Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Fmod,
    Pow,
    Min,
    Max,
}

fn arith_f32(op: Arith, a: f32, b: f32) -> f32 {
    match op {
        Arith::Add => a + b,
        Arith::Sub => a - b,
        Arith::Mul => a * b,
        Arith::Div => a / b,
        Arith::Fmod => a % b,
        Arith::Mod => {
            let r = a % b;
            if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }
        }
        Arith::Pow => a.powf(b),
        Arith::Min => a.min(b),
        Arith::Max => a.max(b),
    }
}

fn arith_dim(op: Arith, a: Dim, b: Dim) -> Option<Dim> {
    let known = |f: fn(i64, i64) -> Option<i64>| Some(Dim::new(f(a.known()?, b.known()?)?));
    match op {
        Arith::Add => a.add(b),
        Arith::Sub => a.sub(b),
        Arith::Mul => a.mul(b),
        Arith::Div => a.div(b),
        // a multiple of N modulo a divisor of its factor is 0 for every N.
        Arith::Mod | Arith::Fmod
            if a.fixed == 0 && b.known().is_some_and(|k| k != 0 && a.per_image % k == 0) =>
        {
            Some(Dim::new(0))
        }
        Arith::Mod => known(|x, y| {
            let r = x.checked_rem(y)?;
            Some(if r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            })
        }),
        Arith::Fmod => known(|x, y| x.checked_rem(y)),
        Arith::Pow => known(|x, y| x.checked_pow(u32::try_from(y).ok()?)),
        Arith::Min | Arith::Max => match a.compare(b)? {
            Ordering::Less if matches!(op, Arith::Min) => Some(a),
            Ordering::Greater if matches!(op, Arith::Max) => Some(a),
            _ => Some(b),
        },
    }
}

/// `a` op `b` with broadcasting, element by element: each pair's inputs and result.
fn zip<T: Clone, U: Clone, R>(
    a: (&[usize], &[T]),
    b: (&[usize], &[U]),
    f: impl Fn(T, U) -> Result<R, String>,
) -> Result<(Vec<usize>, Vec<R>), String> {
    let out = broadcast_shape(&[a.0, b.0])?;
    count(&out)?;
    let (ia, ib) = (broadcast_indices(a.0, &out), broadcast_indices(b.0, &out));
    let values = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| f(a.1[i].clone(), b.1[j].clone()))
        .collect::<Result<_, _>>()?;
    Ok((out, values))
}

fn binary(inputs: &[Option<&Host>], op: Arith) -> Result<Option<Vec<Host>>, String> {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let (sa, sb) = (a.shape.as_slice(), b.shape.as_slice());
    match (&a.data, &b.data) {
        (Data::Float(x), Data::Float(y)) => {
            let (shape, v) = zip((sa, x), (sb, y), |p, q| Ok(arith_f32(op, p, q)))?;
            one(Host::floats(shape, v))
        }
        (Data::Int(x), Data::Int(y)) => {
            let (shape, v) = zip((sa, x), (sb, y), |p, q| {
                arith_dim(op, p, q).ok_or_else(|| {
                    format!(
                        "{p} and {q}: the result is no whole number, or not one expression of \
                         the batch size N for every N"
                    )
                })
            })?;
            one(Host::ints(shape, v))
        }
        (x, y) => Err(format!("inputs of {} and {}", x.kind(), y.kind())),
    }
}

fn variadic(inputs: &[Option<&Host>], op: Arith) -> Result<Option<Vec<Host>>, String> {
    let mut acc = input(inputs, 0)?.clone();
    for i in 1..inputs.len() {
        let next = binary(&[Some(&acc), Some(input(inputs, i)?)], op)?;
        acc = next.and_then(|v| v.into_iter().next()).ok_or("no result")?;
    }
    one(acc)
}

fn compare(
    inputs: &[Option<&Host>],
    holds: fn(Ordering) -> bool,
) -> Result<Option<Vec<Host>>, String> {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let (sa, sb) = (a.shape.as_slice(), b.shape.as_slice());
    let (shape, v) = match (&a.data, &b.data) {
        (Data::Float(x), Data::Float(y)) => zip((sa, x), (sb, y), |p: f32, q: f32| {
            Ok(p.partial_cmp(&q).is_some_and(holds))
        })?,
        (Data::Int(x), Data::Int(y)) => zip((sa, x), (sb, y), |p: Dim, q: Dim| {
            p.compare(q)
                .map(holds)
                .ok_or_else(|| format!("{p} against {q}: the answer depends on the batch size N"))
        })?,
        (Data::Bool(x), Data::Bool(y)) => {
            zip((sa, x), (sb, y), |p: bool, q: bool| Ok(holds(p.cmp(&q))))?
        }
        (x, y) => return Err(format!("inputs of {} and {}", x.kind(), y.kind())),
    };
    one(Host {
        shape,
        data: Data::Bool(v),
    })
}

fn logic(inputs: &[Option<&Host>], f: fn(bool, bool) -> bool) -> Result<Option<Vec<Host>>, String> {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    match (&a.data, &b.data) {
        (Data::Bool(x), Data::Bool(y)) => {
            let (shape, v) = zip((&a.shape, x), (&b.shape, y), |p, q| Ok(f(p, q)))?;
            one(Host {
                shape,
                data: Data::Bool(v),
            })
        }
        (x, y) => Err(format!(
            "inputs of {} and {}; booleans are needed",
            x.kind(),
            y.kind()
        )),
    }
}

#[derive(Clone, Copy)]
enum Unary {
    Abs,
    Ceil,
    Exp,
    Floor,
    Log,
    Neg,
    Not,
    Reciprocal,
    Sqrt,
}

fn unary(_: &Attrs, inputs: &[Option<&Host>], op: Unary) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let data = match (&x.data, op) {
        (Data::Bool(v), Unary::Not) => Data::Bool(v.iter().map(|b| !b).collect()),
        (Data::Float(v), op) if !matches!(op, Unary::Not) => Data::Float(
            v.iter()
                .map(|&a| match op {
                    Unary::Abs => a.abs(),
                    Unary::Ceil => a.ceil(),
                    Unary::Exp => a.exp(),
                    Unary::Floor => a.floor(),
                    Unary::Log => a.ln(),
                    Unary::Neg => -a,
                    Unary::Reciprocal => 1.0 / a,
                    Unary::Sqrt => a.sqrt(),
                    Unary::Not => unreachable!(),
                })
                .collect(),
        ),
        (Data::Int(v), Unary::Neg) => Data::Int(
            v.iter()
                .map(|d| Dim::new(0).sub(*d).ok_or("too large"))
                .collect::<Result<_, _>>()?,
        ),
        (Data::Int(v), Unary::Abs | Unary::Ceil | Unary::Floor) => Data::Int(
            v.iter()
                .map(|&d| match op {
                    Unary::Abs => match d.compare(Dim::new(0)) {
                        Some(Ordering::Less) => Dim::new(0).sub(d).ok_or("too large".to_string()),
                        Some(_) => Ok(d),
                        None => Err(format!("|{d}| depends on the batch size N")),
                    },
                    _ => Ok(d),
                })
                .collect::<Result<_, _>>()?,
        ),
        (data, _) => return Err(format!("this op does not take {}", data.kind())),
    };
    one(Host {
        shape: x.shape.clone(),
        data,
    })
}

fn cast(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let to = DataType::from_onnx(attrs.int("to", 0))?;
    let data = match (to, &x.data) {
        (DataType::Float, _) => Data::Float(x.to_floats("the input")?),
        (DataType::Int, Data::Float(v)) => Data::Int(
            v.iter()
                .map(|&f| {
                    if f.is_finite() {
                        Ok(Dim::new(f.trunc() as i64))
                    } else {
                        Err(format!("{f} is no integer"))
                    }
                })
                .collect::<Result<_, String>>()?,
        ),
        (DataType::Int, Data::Int(v)) => Data::Int(v.clone()),
        (DataType::Int, Data::Bool(v)) => {
            Data::Int(v.iter().map(|&b| Dim::new(i64::from(b))).collect())
        }
        (DataType::Bool, Data::Float(v)) => Data::Bool(v.iter().map(|&f| f != 0.0).collect()),
        (DataType::Bool, Data::Int(v)) => Data::Bool(
            v.iter()
                .map(|d| {
                    d.compare(Dim::new(0))
                        .map(|o| o != Ordering::Equal)
                        .ok_or_else(|| format!("whether {d} is 0 depends on the batch size N"))
                })
                .collect::<Result<_, _>>()?,
        ),
        (DataType::Bool, Data::Bool(v)) => Data::Bool(v.clone()),
    };
    one(Host {
        shape: x.shape.clone(),
        data,
    })
}

fn where_(_: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let (c, a, b) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    let Data::Bool(cond) = &c.data else {
        return Err(format!("its condition holds {}", c.data.kind()));
    };
    let out = broadcast_shape(&[&c.shape, &a.shape, &b.shape])?;
    count(&out)?;
    let (ic, ia, ib) = (
        broadcast_indices(&c.shape, &out),
        broadcast_indices(&a.shape, &out),
        broadcast_indices(&b.shape, &out),
    );
    // The elements of a and b one after the other, then which to take.
    let both = Data::chain(&[&a.data, &b.data])?;
    let picks: Vec<usize> = (0..ic.len())
        .map(|k| if cond[ic[k]] { ia[k] } else { a.len() + ib[k] })
        .collect();
    one(Host {
        shape: out,
        data: both.pick(&picks),
    })
}

/// ONNX Reshape's target for input `from`: 0 copies the input's length (unless `allow_zero`),
/// one -1 takes what is left. On [`Dim`]s, so the batch size may stay free.
pub fn reshaped(from: &[Dim], to: &[Dim], allow_zero: bool) -> Result<Vec<Dim>, String> {
    let text = shape_text(to);
    let minus_one = Dim::new(-1);
    if to.iter().filter(|&&d| d == minus_one).count() > 1 {
        return Err(format!("shape {text}: at most one -1"));
    }
    let total = product(from).ok_or("too many elements")?;
    let mut dims = Vec::with_capacity(to.len());
    for (i, &d) in to.iter().enumerate() {
        dims.push(match d.known() {
            Some(0) if !allow_zero => *from
                .get(i)
                .ok_or_else(|| format!("shape {text}: 0 at axis {i}, past the input's rank"))?,
            Some(-1) => Dim::new(1),
            _ if d.compare(Dim::new(0)) != Some(Ordering::Less) && d.known() != Some(-1) => d,
            _ => {
                return Err(format!(
                    "shape {text}: lengths are >= 0, 0 (the input's) or one -1 (the rest)"
                ));
            }
        });
    }
    let known = product(&dims).ok_or("too many elements")?;
    if let Some(i) = to.iter().position(|&d| d == minus_one) {
        dims[i] = total
            .div(known)
            .filter(|q| q.mul(known) == Some(total))
            .ok_or_else(|| {
                format!(
                    "shape {text} cannot hold the input's {total} elements (shape {})",
                    shape_text(from)
                )
            })?;
    } else if known != total {
        return Err(format!(
            "shape {text} holds {known} elements, the input {} has {total}{}",
            shape_text(from),
            if known.known().is_some() != total.known().is_some() {
                ": the graph was exported for one batch size; export it with a dynamic batch \
                 axis"
            } else {
                ""
            }
        ));
    }
    Ok(dims)
}

/// The product of `dims`, when it is one expression of N (no N²) and does not overflow.
pub fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter().try_fold(Dim::new(1), |p, &d| p.mul(d))
}

/// Concrete lengths from `dims` (none may depend on the batch size here).
fn concrete(dims: &[Dim], what: &str) -> Result<Vec<usize>, String> {
    dims.iter()
        .map(|d| {
            d.known()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| format!("{what} {}", shape_text(dims)))
        })
        .collect()
}

fn reshape(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let (x, to) = (input(inputs, 0)?, input(inputs, 1)?);
    let dims = reshaped(
        &fixed_shape(&x.shape),
        &to.dims("the shape")?,
        attrs.int("allowzero", 0) == 1,
    )?;
    let shape = concrete(&dims, "the shape")?;
    one(Host {
        shape,
        data: x.data.clone(),
    })
}

fn flatten(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let a = axis(attrs.int("axis", 1), x.shape.len() + 1)?;
    let rows = x.shape[..a].iter().product();
    let columns = x.shape[a..].iter().product();
    one(Host {
        shape: vec![rows, columns],
        data: x.data.clone(),
    })
}

/// The axes of an op that takes them as an input (opset 13+) or an attribute (before).
pub fn axes_of(attrs: &Attrs, input: Option<&Host>) -> Result<Option<Vec<i64>>, String> {
    match input {
        Some(h) => Ok(Some(h.fixed_ints("axes")?)),
        None => Ok(attrs.ints("axes")),
    }
}

/// ONNX Squeeze's output shape: `axes` removed (each of length 1), or every length-1 axis.
pub fn squeezed(shape: &[Dim], axes: Option<&[i64]>) -> Result<Vec<Dim>, String> {
    let one = Dim::new(1);
    let remove: Vec<usize> = match axes {
        Some(axes) => {
            let mut v = axes
                .iter()
                .map(|&a| axis(a, shape.len()))
                .collect::<Result<Vec<_>, _>>()?;
            v.sort_unstable();
            v.dedup();
            if let Some(&a) = v.iter().find(|&&a| shape[a] != one) {
                return Err(format!(
                    "axis {a} has length {}; only axes of length 1 can be removed",
                    shape[a]
                ));
            }
            v
        }
        None => (0..shape.len()).filter(|&a| shape[a] == one).collect(),
    };
    Ok(shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !remove.contains(i))
        .map(|(_, d)| *d)
        .collect())
}

/// ONNX Unsqueeze's output shape: a length-1 axis at each of `axes` (of the output).
pub fn unsqueezed(shape: &[Dim], axes: &[i64]) -> Result<Vec<Dim>, String> {
    let rank = shape.len() + axes.len();
    let mut at = axes
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    at.sort_unstable();
    if at.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} name an axis twice"));
    }
    let mut rest = shape.iter();
    Ok((0..rank)
        .map(|i| {
            if at.contains(&i) {
                Dim::new(1)
            } else {
                *rest.next().expect("rank counted")
            }
        })
        .collect())
}

fn squeeze(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let axes = axes_of(attrs, inputs.get(1).copied().flatten())?;
    let dims = squeezed(&fixed_shape(&x.shape), axes.as_deref())?;
    one(Host {
        shape: concrete(&dims, "the shape")?,
        data: x.data.clone(),
    })
}

fn unsqueeze(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let axes = axes_of(attrs, inputs.get(1).copied().flatten())?.ok_or("no axes")?;
    let dims = unsqueezed(&fixed_shape(&x.shape), &axes)?;
    one(Host {
        shape: concrete(&dims, "the shape")?,
        data: x.data.clone(),
    })
}

/// The permutation of a Transpose on `rank` axes (default: reversed).
pub fn permutation(attrs: &Attrs, rank: usize) -> Result<Vec<usize>, String> {
    let perm: Vec<usize> = match attrs.ints("perm") {
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).map_err(|_| format!("perm {p:?}: negative axis")))
            .collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(format!(
            "perm {perm:?} is no permutation of the input's {rank} axes"
        ));
    }
    Ok(perm)
}

fn transpose(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let perm = permutation(attrs, x.shape.len())?;
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let (from, to) = (strides(&x.shape), strides(&shape));
    let indices: Vec<usize> = (0..x.len())
        .map(|flat| {
            perm.iter()
                .enumerate()
                .map(|(i, &p)| (flat / to[i]) % shape[i] * from[p])
                .sum()
        })
        .collect();
    one(x.with(shape, &indices))
}

fn concat(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let parts: Vec<&Host> = (0..inputs.len())
        .map(|i| input(inputs, i))
        .collect::<Result<_, _>>()?;
    let first = parts.first().ok_or("no inputs")?;
    let a = axis(attrs.int("axis", 0), first.shape.len())?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for p in &parts {
        let same = p.shape.len() == first.shape.len()
            && (0..shape.len()).all(|i| i == a || p.shape[i] == first.shape[i]);
        if !same {
            return Err(format!(
                "inputs of shapes {:?} and {:?} differ outside axis {a}",
                first.shape, p.shape
            ));
        }
        shape[a] += p.shape[a];
    }
    let all = Data::chain(&parts.iter().map(|p| &p.data).collect::<Vec<_>>())?;
    // Element (outer, j, inner) of the output comes from the part that holds j.
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    let mut indices = Vec::with_capacity(count(&shape)?);
    for o in 0..outer {
        let mut base = 0;
        for p in &parts {
            let chunk = p.shape[a] * inner;
            indices.extend(base + o * chunk..base + (o + 1) * chunk);
            base += p.len();
        }
    }
    one(Host {
        shape,
        data: all.pick(&indices),
    })
}

/// Where a Slice along one axis of length `len` starts, ends and steps, as ONNX clamps them.
pub fn slice_range(start: i64, end: i64, step: i64, len: usize) -> Result<(i64, i64, i64), String> {
    if step == 0 {
        return Err("a step of 0".into());
    }
    let n = len as i64;
    let clamp = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v.saturating_add(n) } else { v };
        v.clamp(lo, hi)
    };
    Ok(if step > 0 {
        (clamp(start, 0, n), clamp(end, 0, n), step)
    } else {
        (clamp(start, -1, n - 1), clamp(end, -1, n - 1), step)
    })
}

/// How many elements a clamped slice range takes.
pub fn slice_len((start, end, step): (i64, i64, i64)) -> usize {
    let span = if step > 0 { end - start } else { start - end };
    if span <= 0 {
        0
    } else {
        ((span + step.abs() - 1) / step.abs()) as usize
    }
}

/// A Slice's starts, ends, axes and steps (inputs from opset 10, attributes before).
pub struct SliceArgs {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    pub axes: Vec<usize>,
    pub steps: Vec<i64>,
}

pub fn slice_args(
    attrs: &Attrs,
    inputs: &[Option<&Host>],
    rank: usize,
) -> Result<SliceArgs, String> {
    let from = |i: usize, name: &str| -> Result<Option<Vec<i64>>, String> {
        match inputs.get(i).copied().flatten() {
            Some(h) => Ok(Some(h.fixed_ints(name)?)),
            None => Ok(attrs.ints(name)),
        }
    };
    let starts = from(1, "starts")?.ok_or("no starts")?;
    let ends = from(2, "ends")?.ok_or("no ends")?;
    let axes = match from(3, "axes")? {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = from(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(format!(
            "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
        ));
    }
    let mut seen = axes.clone();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} name an axis twice"));
    }
    Ok(SliceArgs {
        starts,
        ends,
        axes,
        steps,
    })
}

fn slice(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let args = slice_args(attrs, inputs, x.shape.len())?;
    let mut ranges: Vec<(i64, i64, i64)> = x.shape.iter().map(|&d| (0, d as i64, 1)).collect();
    for i in 0..args.axes.len() {
        let a = args.axes[i];
        ranges[a] = slice_range(args.starts[i], args.ends[i], args.steps[i], x.shape[a])?;
    }
    let shape: Vec<usize> = ranges.iter().map(|&r| slice_len(r)).collect();
    let (from, to) = (strides(&x.shape), strides(&shape));
    let indices: Vec<usize> = (0..count(&shape)?)
        .map(|flat| {
            ranges
                .iter()
                .enumerate()
                .map(|(i, &(start, _, step))| {
                    let k = ((flat / to[i]) % shape[i]) as i64;
                    (start + k * step) as usize * from[i]
                })
                .sum()
        })
        .collect();
    one(x.with(shape, &indices))
}

/// A Split's part lengths along an axis of length `len`: the `split` input (opset 13+) or
/// attribute, else `num_outputs` (opset 18+) or the node's output count parts, as equal as
/// ONNX makes them (the last smaller).
pub fn split_lengths(
    attrs: &Attrs,
    split: Option<&Host>,
    len: usize,
    outputs: usize,
) -> Result<Vec<usize>, String> {
    let lengths: Vec<usize> = match split.map(|h| h.fixed_ints("split")).transpose()? {
        Some(v) => v.into_iter().map(|d| d.max(0) as usize).collect(),
        None => match attrs.ints("split") {
            Some(v) => v.into_iter().map(|d| d.max(0) as usize).collect(),
            None => {
                let parts = attrs.int("num_outputs", outputs as i64).max(1) as usize;
                let each = len.div_ceil(parts);
                (0..parts)
                    .map(|i| each.min(len.saturating_sub(i * each)))
                    .collect()
            }
        },
    };
    if lengths.iter().sum::<usize>() != len || lengths.len() != outputs {
        return Err(format!(
            "parts {lengths:?} do not split an axis of length {len} into its {outputs} outputs"
        ));
    }
    Ok(lengths)
}

fn split(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let x = input(inputs, 0)?;
    let a = axis(attrs.int("axis", 0), x.shape.len())?;
    let outputs = attrs.outputs;
    let lengths = split_lengths(attrs, inputs.get(1).copied().flatten(), x.shape[a], outputs)?;
    let mut start = 0i64;
    let mut parts = Vec::new();
    for len in lengths {
        let end = start + len as i64;
        let part = slice(
            &Attrs::default(),
            &[
                Some(x),
                Some(&Host::vector(vec![Dim::new(start)])),
                Some(&Host::vector(vec![Dim::new(end)])),
                Some(&Host::vector(vec![Dim::new(a as i64)])),
            ],
            0,
        )?;
        parts.extend(part.into_iter().flatten());
        start = end;
    }
    Ok(Some(parts))
}

fn gather(attrs: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let (x, idx) = (input(inputs, 0)?, input(inputs, 1)?);
    let a = axis(attrs.int("axis", 0), x.shape.len())?;
    let picks = indices_within(&idx.fixed_ints("indices")?, x.shape[a])?;
    let mut shape = x.shape[..a].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&x.shape[a + 1..]);
    let inner: usize = x.shape[a + 1..].iter().product();
    let outer: usize = x.shape[..a].iter().product();
    let mut indices = Vec::with_capacity(count(&shape)?);
    for o in 0..outer {
        for &p in &picks {
            let base = (o * x.shape[a] + p) * inner;
            indices.extend(base..base + inner);
        }
    }
    one(x.with(shape, &indices))
}

/// Indices into an axis of length `len` (negative counts from the end), each checked.
pub fn indices_within(indices: &[i64], len: usize) -> Result<Vec<usize>, String> {
    indices
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < len)
                .ok_or_else(|| format!("index {i} is outside an axis of length {len}"))
        })
        .collect()
}

/// ONNX Expand's output shape: `shape` and the target broadcast both ways.
pub fn expanded(shape: &[Dim], target: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = shape.len().max(target.len());
    let pad = |s: &[Dim]| {
        let mut v = vec![Dim::new(1); rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a, b) = (pad(shape), pad(target));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (x, y) if x == Dim::new(1) => Ok(y),
            (x, y) if y == Dim::new(1) => Ok(x),
            _ => Err(format!(
                "shape {} cannot be expanded to {}",
                shape_text(shape),
                shape_text(target)
            )),
        })
        .collect()
}

fn expand(_: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let (x, to) = (input(inputs, 0)?, input(inputs, 1)?);
    let dims = expanded(&fixed_shape(&x.shape), &to.dims("the shape")?)?;
    // A shape that grows with the batch is made per batch.
    let Ok(shape) = concrete(&dims, "") else {
        return Ok(None);
    };
    count(&shape)?;
    one(x.with(shape.clone(), &broadcast_indices(&x.shape, &shape)))
}

fn constant_of_shape(
    attrs: &Attrs,
    inputs: &[Option<&Host>],
    _: i64,
) -> Result<Option<Vec<Host>>, String> {
    let dims = input(inputs, 0)?.dims("the shape")?;
    let shape = concrete(
        &dims,
        "the shape depends on the batch size or is negative; advcomp makes no such tensor:",
    )?;
    let n = count(&shape)?;
    let value = match attrs.tensor("value") {
        Some(t) => t?,
        None => Host::floats(vec![1], vec![0.0]),
    };
    if value.len() != 1 {
        return Err(format!(
            "value holds {} numbers; one is needed",
            value.len()
        ));
    }
    one(value.with(shape, &vec![0; n]))
}

fn range(_: &Attrs, inputs: &[Option<&Host>], _: i64) -> Result<Option<Vec<Host>>, String> {
    let (start, limit, delta) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    match (&start.data, &limit.data, &delta.data) {
        (Data::Float(s), Data::Float(l), Data::Float(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            let n = ((l - s) / d).ceil();
            if !(n.is_finite() && d != 0.0) {
                return Err(format!("start {s}, limit {l}, delta {d}: no range"));
            }
            let n = (n.max(0.0) as usize).min(MAX_FOLDED + 1);
            count(&[n])?;
            one(Host::floats(
                vec![n],
                (0..n).map(|i| s + i as f32 * d).collect(),
            ))
        }
        _ => {
            let (s, l, d) = (
                start.scalar_int("start")?,
                limit.scalar_int("limit")?,
                delta.scalar_int("delta")?,
            );
            if d == 0 {
                return Err("delta 0".into());
            }
            let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
            count(&[n])?;
            one(Host::vector(
                (0..n as i64).map(|i| Dim::new(s + i * d)).collect(),
            ))
        }
    }
}

fn scatter_nd(
    attrs: &Attrs,
    inputs: &[Option<&Host>],
    _: i64,
) -> Result<Option<Vec<Host>>, String> {
    let (x, idx, updates) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    if attrs.string("reduction", "none") != "none" {
        return Err("reduction other than none is not supported".into());
    }
    let k = *idx.shape.last().ok_or("indices of rank 0")?;
    if k > x.shape.len() {
        return Err(format!(
            "indices address {k} axes of an input of rank {}",
            x.shape.len()
        ));
    }
    let tuples = idx.fixed_ints("indices")?;
    let stride = strides(&x.shape);
    let inner: usize = x.shape[k..].iter().product();
    // The output is the input's elements, then the updates': each position reads one.
    let mut picks: Vec<usize> = (0..x.len()).collect();
    for (t, tuple) in tuples.chunks(k.max(1)).enumerate() {
        let mut base = 0;
        for (axis, &i) in tuple.iter().enumerate().take(k) {
            base += indices_within(&[i], x.shape[axis])?[0] * stride[axis];
        }
        for j in 0..inner {
            picks[base + j] = x.len() + t * inner + j;
        }
    }
    if updates.len() != tuples.len() / k.max(1) * inner {
        return Err(format!(
            "updates of shape {:?} do not fit indices of shape {:?}",
            updates.shape, idx.shape
        ));
    }
    let all = Data::chain(&[&x.data, &updates.data])?;
    one(Host {
        shape: x.shape.clone(),
        data: all.pick(&picks),
    })
}
