//! Padded token batches and their packed (ragged) form.

use crate::{Error, Result};

/// A padded batch of `batch_size` rows × `seq_len` positions: input tokens, target
/// tokens, and each row's true length. Positions at or past a row's length are padding:
/// their values are ignored and their outputs are zero.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub(crate) inputs: Vec<u32>,
    pub(crate) targets: Vec<u32>,
    pub(crate) lengths: Vec<usize>,
    pub(crate) seq_len: usize,
}

impl TokenBatch {
    /// `inputs` and `targets` are `(batch, seq_len)` row-major; `lengths[b] ≤ seq_len`.
    pub fn new(
        inputs: Vec<u32>,
        targets: Vec<u32>,
        lengths: Vec<usize>,
        seq_len: usize,
    ) -> Result<Self> {
        let b = lengths.len();
        if b == 0 {
            return Err(Error::invalid("batch", "has no rows"));
        }
        for (name, v) in [("inputs", &inputs), ("targets", &targets)] {
            if v.len() != b * seq_len {
                return Err(Error::invalid(
                    "batch",
                    format!(
                        "{name} has {} tokens, expected batch × seq_len = {b} × {seq_len} = {}",
                        v.len(),
                        b * seq_len
                    ),
                ));
            }
        }
        if let Some((i, &l)) = lengths
            .iter()
            .enumerate()
            .find(|(_, &l)| l > seq_len || l == 0)
        {
            return Err(Error::invalid(
                "batch",
                format!("row {i} has length {l}, expected 1..={seq_len} (seq_len)"),
            ));
        }
        Ok(Self {
            inputs,
            targets,
            lengths,
            seq_len,
        })
    }

    /// Next-token prediction over whole sequences: row b has inputs `seq[..n-1]` and targets
    /// `seq[1..]`. Every sequence needs at least two tokens.
    pub fn from_sequences<S: AsRef<[u32]>>(seqs: &[S]) -> Result<Self> {
        if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.as_ref().len() < 2) {
            return Err(Error::invalid(
                "batch",
                format!(
                    "sequence {i} has {} tokens; next-token prediction needs at least 2",
                    s.as_ref().len()
                ),
            ));
        }
        let seq_len = seqs.iter().map(|s| s.as_ref().len() - 1).max().unwrap_or(0);
        let mut inputs = vec![0; seqs.len() * seq_len];
        let mut targets = vec![0; seqs.len() * seq_len];
        let mut lengths = Vec::with_capacity(seqs.len());
        for (b, s) in seqs.iter().enumerate() {
            let s = s.as_ref();
            let n = s.len() - 1;
            inputs[b * seq_len..b * seq_len + n].copy_from_slice(&s[..n]);
            targets[b * seq_len..b * seq_len + n].copy_from_slice(&s[1..]);
            lengths.push(n);
        }
        Self::new(inputs, targets, lengths, seq_len)
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }
    /// Number of real (non-padding) positions.
    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
    pub fn inputs(&self) -> &[u32] {
        &self.inputs
    }
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }
}
