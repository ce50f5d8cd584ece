#![allow(dead_code)]
//! Helpers shared by the reference-value tests: reading fixture arrays and comparing floats.

use serde_json::Value;

pub fn vec1(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn vec2(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(vec1).collect()
}

pub fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
        "{what}: {a} vs reference {b}"
    );
}
