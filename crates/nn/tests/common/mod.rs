//! What the PyTorch-reference tests share: reading reference tensors, comparing them.
#![allow(dead_code)]

use safetensors::tensor::{Dtype, SafeTensors};

/// A safetensors file of reference values.
pub struct Reference {
    pub bytes: Vec<u8>,
}

impl Reference {
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference has no {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// Per tensor, max |ours − theirs| ≤ 1e-4 · max |theirs| (and the reference is not all zeros).
pub fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let rel = err / scale.max(1e-12);
    println!("{what:48} max |ref| {scale:.3e}  max |diff| {err:.2e}  rel {rel:.2e}");
    assert!(scale > 0.0, "{what}: reference is all zeros");
    assert!(rel <= 1e-4, "{what}: relative error {rel:.2e} > 1e-4");
}
