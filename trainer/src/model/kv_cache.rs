//! Keys and values of past tokens, kept outside the model and passed to
//! [`Transformer::forward_cached`](super::Transformer::forward_cached) as explicit
//! state (candle keeps its cache inside each attention block, which fits one sequence
//! at a time; a batching server needs sequences to join and leave a running batch).
//!
//! One row per sequence. Rows share a column count (`len`): a row shorter than the
//! others is padded on the left with columns that no query attends to (`valid` is
//! false there), which is how a ragged batch is prefilled in one pass and how a
//! sequence joins a batch that has run longer. Columns are written in place into
//! preallocated storage that grows by doubling, so a decode step copies only the new
//! token's keys and values.

use tch::{Device, Kind, Tensor};

/// Keys and values of one decoder layer: `[batch, kv_heads, capacity, head_dim]`.
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

pub struct KvCache {
    layers: Vec<LayerKv>,
    /// `[batch, capacity]`: whether a column holds a real token of the row.
    valid: Tensor,
    /// `[batch, capacity]`: the token's position (for the sliding window).
    positions: Tensor,
    /// Columns in use.
    len: i64,
    batch: i64,
    kv_heads: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
}

/// Columns allocated at least, and the granularity of growth.
const MIN_CAPACITY: i64 = 64;

impl KvCache {
    /// An empty cache for `batch` rows of a model with `layers` layers.
    pub fn new(
        layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let mut c = Self {
            layers: Vec::new(),
            valid: Tensor::zeros([batch, 0], (Kind::Bool, device)),
            positions: Tensor::zeros([batch, 0], (Kind::Int64, device)),
            len: 0,
            batch,
            kv_heads,
            head_dim,
            kind,
            device,
        };
        c.layers = (0..layers)
            .map(|_| LayerKv {
                k: c.zeros(batch, 0),
                v: c.zeros(batch, 0),
            })
            .collect();
        c
    }

    fn zeros(&self, batch: i64, cap: i64) -> Tensor {
        Tensor::zeros(
            [batch, self.kv_heads, cap, self.head_dim],
            (self.kind, self.device),
        )
    }

    /// Rows (sequences) in the cache.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Columns in use (the longest row, padding included).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    fn capacity(&self) -> i64 {
        self.valid.size()[1]
    }

    /// Make room for `extra` more columns (doubling, so appends are amortised).
    fn reserve(&mut self, extra: i64) {
        let need = self.len + extra;
        if need <= self.capacity() {
            return;
        }
        let cap = need.max(2 * self.capacity()).max(MIN_CAPACITY);
        let len = self.len;
        let (b, device) = (self.batch, self.device);
        for i in 0..self.layers.len() {
            let (k, v) = (self.zeros(b, cap), self.zeros(b, cap));
            if len > 0 {
                k.narrow(2, 0, len)
                    .copy_(&self.layers[i].k.narrow(2, 0, len));
                v.narrow(2, 0, len)
                    .copy_(&self.layers[i].v.narrow(2, 0, len));
            }
            self.layers[i] = LayerKv { k, v };
        }
        let valid = Tensor::zeros([b, cap], (Kind::Bool, device));
        let positions = Tensor::zeros([b, cap], (Kind::Int64, device));
        if len > 0 {
            valid.narrow(1, 0, len).copy_(&self.valid.narrow(1, 0, len));
            positions
                .narrow(1, 0, len)
                .copy_(&self.positions.narrow(1, 0, len));
        }
        self.valid = valid;
        self.positions = positions;
    }

    /// Start a pass that appends `t` columns: the attention mask `[batch, 1, t,
    /// len + t]` (true: attend) shared by every layer. `new_valid` `[batch, t]` marks
    /// the real tokens of the new columns (false: left padding), `positions` `[batch,
    /// t]` their positions. A query attends to the valid columns up to its own, within
    /// `window` positions when set, and always to its own column, so that a padding
    /// query has something to attend to (an all-false row would give NaN, and NaN
    /// values would reach real tokens through `0 * NaN`).
    pub(crate) fn begin(
        &mut self,
        new_valid: &Tensor,
        positions: &Tensor,
        window: Option<i64>,
    ) -> CachedPass {
        let t = new_valid.size()[1];
        self.reserve(t);
        let (start, total) = (self.len, self.len + t);
        self.valid.narrow(1, start, t).copy_(new_valid);
        self.positions.narrow(1, start, t).copy_(positions);
        let key_valid = self
            .valid
            .narrow(1, 0, total)
            .view([self.batch, 1, 1, total]);
        let cols = Tensor::arange(total, (Kind::Int64, self.device));
        let query_cols = Tensor::arange_start(start, total, (Kind::Int64, self.device));
        let causal = cols.unsqueeze(0).le_tensor(&query_cols.unsqueeze(1));
        let own = cols.unsqueeze(0).eq_tensor(&query_cols.unsqueeze(1));
        let mut mask = key_valid.logical_and(&causal.view([1, 1, t, total]));
        if let Some(w) = window {
            let kpos = self
                .positions
                .narrow(1, 0, total)
                .view([self.batch, 1, 1, total]);
            let qpos = positions.view([self.batch, 1, t, 1]);
            mask = mask.logical_and(&(qpos - kpos).lt(w));
        }
        let mask = mask.logical_or(&own.view([1, 1, t, total]));
        CachedPass { mask, start, t }
    }

    /// Write layer `i`'s keys and values `[batch, kv_heads, t, head_dim]` of the pass
    /// and return all of them so far (`[batch, kv_heads, len + t, head_dim]`).
    pub(crate) fn append(
        &mut self,
        i: usize,
        pass: &CachedPass,
        k: &Tensor,
        v: &Tensor,
    ) -> (Tensor, Tensor) {
        let layer = &mut self.layers[i];
        layer.k.narrow(2, pass.start, pass.t).copy_(k);
        layer.v.narrow(2, pass.start, pass.t).copy_(v);
        let total = pass.start + pass.t;
        (layer.k.narrow(2, 0, total), layer.v.narrow(2, 0, total))
    }

    /// End the pass: its columns become part of every row.
    pub(crate) fn commit(&mut self, pass: CachedPass) {
        self.len = pass.start + pass.t;
    }

    /// Keep only `rows` (in that order): sequences that finished leave the batch.
    /// Leading columns that no remaining row uses are dropped.
    pub fn retain(&mut self, rows: &[i64]) {
        let idx = Tensor::from_slice(rows).to_device(self.device);
        let b = rows.len() as i64;
        let first = if b == 0 || self.len == 0 {
            self.len
        } else {
            // The first column any remaining row uses.
            let used = self
                .valid
                .narrow(1, 0, self.len)
                .index_select(0, &idx)
                .any_dim(0, false);
            let v: Vec<bool> = Vec::try_from(used.to_device(Device::Cpu)).unwrap_or_default();
            v.iter()
                .position(|&u| u)
                .map(|p| p as i64)
                .unwrap_or(self.len)
        };
        let keep = self.len - first;
        let cap = self.capacity() - first;
        let pick = |x: &Tensor, dim: i64| x.index_select(0, &idx).narrow(dim, first, cap);
        for l in &mut self.layers {
            l.k = pick(&l.k, 2);
            l.v = pick(&l.v, 2);
        }
        self.valid = pick(&self.valid, 1);
        self.positions = pick(&self.positions, 1);
        self.batch = b;
        self.len = keep;
    }

    /// Add the rows of `other` after this cache's (sequences join the batch). The
    /// shorter side is padded on the left so both have the same columns.
    pub fn extend(&mut self, other: KvCache) {
        assert_eq!(
            (self.layers.len(), self.kv_heads, self.head_dim),
            (other.layers.len(), other.kv_heads, other.head_dim),
            "caches of different models"
        );
        if self.batch == 0 {
            *self = other;
            return;
        }
        if other.batch == 0 {
            return;
        }
        let len = self.len.max(other.len);
        let cap = (len + 1).max(self.capacity()).max(other.capacity());
        let (a, b) = (self.shifted(len, cap), other.shifted(len, cap));
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.k = Tensor::cat(&[&a.0[i].0, &b.0[i].0], 0);
            l.v = Tensor::cat(&[&a.0[i].1, &b.0[i].1], 0);
        }
        self.valid = Tensor::cat(&[&a.1, &b.1], 0);
        self.positions = Tensor::cat(&[&a.2, &b.2], 0);
        self.batch += other.batch;
        self.len = len;
    }

    /// This cache's tensors with its `len` columns moved to end at column `len`
    /// (padding on the left), in storage of `cap` columns.
    #[allow(clippy::type_complexity)]
    fn shifted(&self, len: i64, cap: i64) -> (Vec<(Tensor, Tensor)>, Tensor, Tensor) {
        let pad = len - self.len;
        let (b, n) = (self.batch, self.len);
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let (k, v) = (self.zeros(b, cap), self.zeros(b, cap));
                if n > 0 {
                    k.narrow(2, pad, n).copy_(&l.k.narrow(2, 0, n));
                    v.narrow(2, pad, n).copy_(&l.v.narrow(2, 0, n));
                }
                (k, v)
            })
            .collect();
        let valid = Tensor::zeros([b, cap], (Kind::Bool, self.device));
        let positions = Tensor::zeros([b, cap], (Kind::Int64, self.device));
        if n > 0 {
            valid.narrow(1, pad, n).copy_(&self.valid.narrow(1, 0, n));
            positions
                .narrow(1, pad, n)
                .copy_(&self.positions.narrow(1, 0, n));
        }
        (layers, valid, positions)
    }
}

/// One forward pass over a cache: where its columns go and the attention mask.
pub struct CachedPass {
    pub(crate) mask: Tensor,
    start: i64,
    t: i64,
}
