//! Where the sequences of a packed batch start and end: what the block-diagonal
//! attention (`transformer`) and flash attention's varlen kernel (`varlen`) read.

use tch::Tensor;

/// Sequence boundaries of a packed batch.
pub struct Segments {
    /// Per row, `(start, len)` of each sequence; together they cover the whole row
    /// (trailing padding is a segment of its own).
    pub rows: Vec<Vec<(i64, i64)>>,
    /// Cumulative sequence lengths over the flattened `[batch * t]` tokens (int32 on
    /// the batch's device), as flash attention's varlen kernel takes them.
    pub cu_seqlens: Tensor,
    /// Longest sequence.
    pub max_len: i64,
}

impl Segments {
    /// Segments from per-row lengths (each row's lengths sum to `width`).
    pub fn new(rows: Vec<Vec<i64>>, width: i64, device: tch::Device) -> Self {
        let mut cu: Vec<i32> = vec![0];
        let mut max_len = 0;
        let rows: Vec<Vec<(i64, i64)>> = rows
            .into_iter()
            .map(|lens| {
                debug_assert_eq!(lens.iter().sum::<i64>(), width);
                let mut start = 0;
                lens.into_iter()
                    .filter(|&l| l > 0)
                    .map(|l| {
                        let seg = (start, l);
                        start += l;
                        max_len = max_len.max(l);
                        cu.push(cu.last().copied().unwrap_or(0) + l as i32);
                        seg
                    })
                    .collect()
            })
            .collect();
        Self {
            rows,
            cu_seqlens: Tensor::from_slice(&cu).to_device(device),
            max_len,
        }
    }
}
