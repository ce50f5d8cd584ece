//! Reading GGUF files (llama.cpp's model format, versions 2 and 3) and dequantizing their
//! tensors to f32.
//!
//! A GGUF file is a header (magic `GGUF`, version, tensor and key counts), typed metadata
//! (`general.architecture`, `llama.block_count`, `tokenizer.ggml.tokens`, …), tensor
//! descriptions (name, dimensions innermost first, ggml type, offset) and, aligned to
//! `general.alignment` (32 by default), the tensor data. Every length and offset is checked
//! against the file before it is used, so a truncated or corrupt file is an error naming what
//! is wrong, never a panic or a huge allocation.
//!
//! Dequantization covers the block formats small models ship in: F32, F16, BF16, Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K and Q6_K. The block layouts are ggml's
//! (`ggml-quants.c`); `tests/reference/make_gguf_reference.py` checks them against the
//! `gguf` Python package's dequantizers.
//!
//! Why not a crate: `gguf-rs-lib` reads GGUF but does not dequantize; `ggml-quants` leaves
//! the K-quant dequantizers unimplemented (`todo!()`); candle-core's `quantized` module is
//! sound but brings candle's whole tensor library for the ~300 lines needed here.

use crate::{Error, Result};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader knows the size of; `dequantize` supports those listed
/// in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost first, as ggml stores them: a PyTorch `(out, in)` weight is `[in, out]`.
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn num_values(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape PyTorch gives the tensor: dimensions outermost first.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    fn num_bytes(&self) -> u64 {
        let (per_block, bytes) = self.kind.block();
        self.num_values() / per_block as u64 * bytes as u64
    }
}

/// A GGUF file read into memory.
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A cursor over the file's bytes whose reads fail, naming what they were reading, past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::checkpoint(
            self.path,
            format!(
                "not a valid GGUF file: {what} at byte {} (the file has {} bytes; is it truncated?)",
                self.pos,
                self.bytes.len()
            ),
        )
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| self.err(&format!("{what} runs past the end")))?;
        let s = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        let mut n = |k: u64| -> Result<&'a [u8]> { self.take(k, what) };
        Ok(match ty {
            0 => Value::U8(n(1)?[0]),
            1 => Value::I8(n(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(n(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(n(2)?.try_into().unwrap())),
            4 => Value::U32(u32::from_le_bytes(n(4)?.try_into().unwrap())),
            5 => Value::I32(i32::from_le_bytes(n(4)?.try_into().unwrap())),
            6 => Value::F32(f32::from_le_bytes(n(4)?.try_into().unwrap())),
            7 => match n(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(&format!("{what}: boolean byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 if depth == 0 => {
                let inner = self.u32(what)?;
                let len = self.u64(what)?;
                // Every element takes at least one byte: a length beyond the file is corrupt.
                if len > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.err(&format!("{what}: array of {len} elements")));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(n(8)?.try_into().unwrap())),
            11 => Value::I64(i64::from_le_bytes(n(8)?.try_into().unwrap())),
            12 => Value::F64(f64::from_le_bytes(n(8)?.try_into().unwrap())),
            other => return Err(self.err(&format!("{what}: unknown value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads and checks the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| autodidact_core::Error::io("reading", path, e))?;
        Self::parse(bytes, path)
    }

    /// Parses a GGUF file held in `bytes`; `path` names it in errors.
    pub fn parse(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "the magic number")? != MAGIC {
            return Err(Error::checkpoint(
                path,
                "not a GGUF file: it does not start with \"GGUF\"",
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::FormatVersion {
                path: path.into(),
                found: version.to_string(),
                supported: 3,
                hint:
                    "GGUF versions 2 and 3 are read; re-convert the model with a recent llama.cpp",
            });
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("the type of {key}"))?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}"))?;
            let n_dims = c.u32(&format!("the dimension count of {name}"))?;
            if !(1..=4).contains(&n_dims) {
                return Err(c.err(&format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&format!("the dimensions of {name}"))?);
            }
            let ty = c.u32(&format!("the type of {name}"))?;
            let kind = GgmlType::from_id(ty).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("tensor `{name}` has ggml type {ty}, which this reader does not know"),
                )
            })?;
            let offset = c.u64(&format!("the offset of {name}"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| c.err(&format!("general.alignment {v:?} is not a power of two")))?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            let (per_block, _) = t.kind.block();
            let n = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|n| n.is_multiple_of(per_block as u64))
                .ok_or_else(|| {
                    Error::checkpoint(
                        path,
                        format!(
                            "tensor `{}` has dimensions {:?}, not a whole number of {:?} blocks of {per_block}",
                            t.name, t.dims, t.kind
                        ),
                    )
                })?;
            // Checked: the dimensions come from the file, and a product near 2^64 must be
            // refused here rather than wrap into a small size.
            let size = (n / per_block as u64).checked_mul(t.kind.block().1 as u64);
            let end = data_start
                .checked_add(t.offset)
                .zip(size)
                .and_then(|(s, size)| s.checked_add(size));
            if end.is_none_or(|e| e > bytes.len() as u64) {
                let size = size.map_or("more than 2^64".into(), |s| s.to_string());
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{}`'s data (offset {}, {size} bytes) runs past the end of the file ({} bytes); is it truncated?",
                        t.name,
                        t.offset,
                        bytes.len()
                    ),
                ));
            }
        }
        Ok(Self {
            path: path.into(),
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            bytes,
        })
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of tensor `t`.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes[start..start + t.num_bytes() as usize]
    }

    /// Tensor `t`'s values as f32, in ggml order (innermost dimension fastest, which is
    /// PyTorch's row-major order of [`TensorInfo::torch_shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; t.num_values() as usize];
        dequantize(t.kind, self.data(t), &mut out)
            .map_err(|e| Error::checkpoint(&self.path, format!("tensor `{}`: {e}", t.name)))?;
        Ok(out)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data`, blocks of type `kind`, into `out` (whose length gives the value count).
pub fn dequantize(kind: GgmlType, data: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let (per_block, bytes) = kind.block();
    if !out.len().is_multiple_of(per_block) || data.len() != out.len() / per_block * bytes {
        return Err(format!(
            "{} bytes of {kind:?} do not hold {} values",
            data.len(),
            out.len()
        ));
    }
    let blocks = data
        .chunks_exact(bytes)
        .zip(out.chunks_exact_mut(per_block));
    match kind {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes(b.try_into().unwrap())),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                *y = d * (q as i8) as f32;
            }
        }),
        GgmlType::Q4_0 | GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            // Q4_0: d, 16 bytes of nibbles, values (q − 8)·d; Q4_1: d, m, nibbles, q·d + m.
            let d = f16_at(b, 0);
            // (Q4_0 adds no m at all, as ggml: adding 0.0 would turn its −0.0s into +0.0s.)
            let (center, m, qs) = if kind == GgmlType::Q4_1 {
                (0, Some(f16_at(b, 2)), &b[4..20])
            } else {
                (8, None, &b[2..18])
            };
            let value = |q: u8| with_min((q as i32 - center) as f32 * d, m);
            for (j, &q) in qs.iter().enumerate() {
                y[j] = value(q & 0x0F);
                y[j + 16] = value(q >> 4);
            }
        }),
        GgmlType::Q5_0 | GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            // Nibbles plus a fifth bit from the 32-bit `qh`; Q5_0 centers at 16, Q5_1 adds m.
            let d = f16_at(b, 0);
            let (center, m, rest) = if kind == GgmlType::Q5_1 {
                (0, Some(f16_at(b, 2)), &b[4..])
            } else {
                (16, None, &b[2..])
            };
            let value = |q: u32| with_min((q as i32 - center) as f32 * d, m);
            let qh = u32::from_le_bytes(rest[..4].try_into().unwrap());
            for (j, &q) in rest[4..20].iter().enumerate() {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = value((q as u32 & 0x0F) | h0);
                y[j + 16] = value((q as u32 >> 4) | h1);
            }
        }),
        GgmlType::Q4K | GgmlType::Q5K => blocks.for_each(|(b, y)| {
            // d, dmin, 12 bytes of packed 6-bit (scale, min) pairs for 8 sub-blocks of 32,
            // [Q5_K: 32 bytes of fifth bits,] 128 bytes of nibbles.
            let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
            let (qh, qs) = if kind == GgmlType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for chunk in 0..4 {
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for half in 0..2 {
                    let (sc, mn) = k_scale_min(2 * chunk + half, scales);
                    let (scale, min) = (d * sc as f32, dmin * mn as f32);
                    let shift = 4 * half;
                    let bit = 1u8 << (2 * chunk + half);
                    let out = &mut y[chunk * 64 + half * 32..chunk * 64 + half * 32 + 32];
                    for l in 0..32 {
                        let mut v = (q[l] >> shift) & 0x0F;
                        if let Some(qh) = qh {
                            if qh[l] & bit != 0 {
                                v += 16;
                            }
                        }
                        out[l] = scale * v as f32 - min;
                    }
                }
            }
        }),
        GgmlType::Q6K => blocks.for_each(|(b, y)| {
            // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed 8-bit scales, d.
            let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208));
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
                let y = &mut y[n * 128..n * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
        other => return Err(format!("dequantizing {other:?} is not implemented (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")),
    }
    Ok(())
}

/// `x + m` for the block types with a minimum (Q4_1, Q5_1), `x` unchanged for the others.
#[inline(always)]
fn with_min(x: f32, m: Option<f32>) -> f32 {
    match m {
        Some(m) => x + m,
        None => x,
    }
}

/// Scale and min of sub-block `j` from the 12 packed bytes of a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4`).
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
