//! Choosing the next token: the logits processors in the order and with the
//! arithmetic of Hugging Face `generate` (repetition penalty, then temperature, top-k
//! and top-p), batched with per-row settings, then greedy argmax or a seeded draw.
//!
//! Each sequence owns its random stream, so a request with a seed gives the same
//! tokens whatever else shares its batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// How one sequence picks its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0: greedy (argmax after the repetition penalty).
    pub temperature: f64,
    /// Nucleus: keep the most likely tokens whose probabilities add up to `top_p`
    /// (1: all).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (None: all).
    pub top_k: Option<usize>,
    /// Hugging Face's (CTRL's) penalty on every token already in the sequence,
    /// prompt included: positive logits are divided by it, negative ones multiplied
    /// (1: none).
    pub repetition_penalty: f64,
    /// Seed of the sequence's random stream.
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Why these settings cannot be used (the field and the rule), if they cannot.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err((
                "temperature",
                format!("must be >= 0, found {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(("top_p", format!("must be in (0, 1], found {}", self.top_p)));
        }
        if self.top_k == Some(0) {
            return Err(("top_k", "must be >= 1 when set".into()));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err((
                "repetition_penalty",
                format!("must be > 0, found {}", self.repetition_penalty),
            ));
        }
        Ok(())
    }
}

/// Per-row settings of a batch as tensors, built once per step.
struct RowSettings {
    penalty: Option<Tensor>,
    temperature: Option<Tensor>,
    top_k: Option<TopK>,
    top_p: Option<Tensor>,
}

/// Top-k of a batch: the largest k, each row's k - 1, and the rows without a top-k.
struct TopK {
    max: i64,
    index: Tensor,
    unfiltered: Tensor,
}

fn column(values: &[f64], device: Device) -> Tensor {
    Tensor::from_slice(values)
        .to_kind(Kind::Float)
        .to_device(device)
        .unsqueeze(1)
}

impl RowSettings {
    fn new(params: &[&SamplingParams], vocab: i64, device: Device) -> Self {
        let any = |f: &dyn Fn(&SamplingParams) -> bool| params.iter().any(|p| f(p));
        let penalty = any(&|p| p.repetition_penalty != 1.0).then(|| {
            let v: Vec<f64> = params.iter().map(|p| p.repetition_penalty).collect();
            column(&v, device)
        });
        // Greedy rows skip the warpers (HF applies them only when sampling).
        let sampling = |p: &SamplingParams| !p.is_greedy();
        let temperature = any(&|p| sampling(p) && p.temperature != 1.0).then(|| {
            let v: Vec<f64> = params
                .iter()
                .map(|p| if sampling(p) { p.temperature } else { 1.0 })
                .collect();
            column(&v, device)
        });
        let top_k = any(&|p| sampling(p) && p.top_k.is_some()).then(|| {
            let ks: Vec<Option<i64>> = params
                .iter()
                .map(|p| {
                    p.top_k
                        .filter(|_| sampling(p))
                        .map(|k| (k as i64).min(vocab))
                })
                .collect();
            let max = ks
                .iter()
                .flatten()
                .copied()
                .max()
                .expect("a row with top_k");
            let idx: Vec<i64> = ks.iter().map(|k| k.unwrap_or(max) - 1).collect();
            let unfiltered: Vec<bool> = ks.iter().map(Option::is_none).collect();
            TopK {
                max,
                index: Tensor::from_slice(&idx).to_device(device).unsqueeze(1),
                unfiltered: Tensor::from_slice(&unfiltered)
                    .to_device(device)
                    .unsqueeze(1),
            }
        });
        let top_p = any(&|p| sampling(p) && p.top_p < 1.0).then(|| {
            // A threshold below every cumulative probability removes nothing.
            let v: Vec<f64> = params
                .iter()
                .map(|p| {
                    if sampling(p) && p.top_p < 1.0 {
                        1.0 - p.top_p
                    } else {
                        -1.0
                    }
                })
                .collect();
            column(&v, device)
        });
        Self {
            penalty,
            temperature,
            top_k,
            top_p,
        }
    }
}

/// The processed logits `[batch, vocab]` (float32; removed tokens are `-inf`) of raw
/// `logits` `[batch, vocab]`, where `seen` `[batch, vocab]` (bool) marks the tokens
/// already in each sequence.
pub fn process_logits(
    logits: &Tensor,
    seen: Option<&Tensor>,
    params: &[&SamplingParams],
) -> Tensor {
    let vocab = logits.size()[1];
    let s = RowSettings::new(params, vocab, logits.device());
    let mut l = logits.to_kind(Kind::Float);
    if let (Some(p), Some(seen)) = (&s.penalty, seen) {
        let penalised = (&l * p).where_self(&l.lt(0.0), &(&l / p));
        l = penalised.where_self(seen, &l);
    }
    if let Some(t) = &s.temperature {
        l = &l / t;
    }
    let neg_inf = Tensor::full([1], f64::NEG_INFINITY, (Kind::Float, l.device()));
    if let Some(k) = &s.top_k {
        let (values, _) = l.topk(k.max, -1, true, true);
        let kth = neg_inf.where_self(&k.unfiltered, &values.gather(1, &k.index, false));
        l = neg_inf.where_self(&l.lt_tensor(&kth), &l);
    }
    if let Some(threshold) = &s.top_p {
        let (sorted, indices) = l.sort(-1, false);
        let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove = cumulative.le_tensor(threshold);
        // Keep at least the most likely token.
        let _ = remove.narrow(1, vocab - 1, 1).fill_(0);
        let remove = remove.scatter(1, &indices, &remove);
        l = neg_inf.where_self(&remove, &l);
    }
    l
}

/// A sequence's source of randomness: ChaCha8 from its seed, one stream per choice.
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }

    /// Draw an index from `probs` (non-negative, summing to about 1).
    pub fn draw(&mut self, probs: &[f32]) -> i64 {
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let u = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += p as f64;
                last = i;
                if u < acc {
                    return i as i64;
                }
            }
        }
        last as i64
    }
}

/// The next token of every row: argmax for greedy rows, a draw from the processed
/// distribution for the others.
pub fn choose(
    processed: &Tensor,
    params: &[&SamplingParams],
    samplers: &mut [&mut Sampler],
) -> Vec<i64> {
    let greedy: Vec<i64> =
        Vec::try_from(processed.argmax(-1, false).to_device(Device::Cpu)).expect("int64 argmax");
    if params.iter().all(|p| p.is_greedy()) {
        return greedy;
    }
    let probs = processed.softmax(-1, Kind::Float).to_device(Device::Cpu);
    let vocab = processed.size()[1] as usize;
    let flat: Vec<f32> = Vec::try_from(probs.view([-1])).expect("float probabilities");
    params
        .iter()
        .enumerate()
        .map(|(r, p)| {
            if p.is_greedy() {
                greedy[r]
            } else {
                samplers[r].draw(&flat[r * vocab..(r + 1) * vocab])
            }
        })
        .collect()
}
