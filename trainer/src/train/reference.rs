//! DPO's reference log-probabilities: precomputed in one pass of the reference model
//! over the data before the first step (stored beside the job's checkpoints, keyed by
//! the tokenised data and the reference model's files, so a resume never recomputes
//! them), or from a frozen copy of the reference model kept in memory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::head;
use crate::checkpoint::CheckpointDir;
use crate::config::{DpoReference, TrainConfig};
use crate::data::{Pair, PreferenceBatch};
use crate::dist::{all_reduce_f64, Collective};
use crate::error::{Error, IoContext, Result};
use crate::model::{load_model_dir, AttentionLayout, ModelConfig, Transformer};
use crate::model_dir::ModelDir;

/// Where the precomputed values live under the job's checkpoint prefix.
pub const FILE: &str = "reference-logps.json";

pub enum Reference {
    /// Per pair id: the reference's summed log-probabilities of (chosen, rejected).
    Precomputed(Vec<[f64; 2]>),
    /// A frozen reference model run on every micro-batch.
    Model(Box<Frozen>),
}

pub struct Frozen {
    _vs: VarStore,
    model: Transformer,
}

impl Frozen {
    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// Load the reference model from `dir`, frozen, in `kind` on `device`.
    pub fn load(dir: &Path, config: &ModelConfig, kind: Kind, device: Device) -> Result<Self> {
        let mut vs = VarStore::new(device);
        let model = Transformer::new(&vs.root(), config);
        vs.set_kind(kind);
        load_model_dir(dir, &vs, config)?;
        vs.freeze();
        Ok(Self { _vs: vs, model })
    }
}

/// The reference's summed response log-probabilities of a batch's rows `[2n]`.
pub fn batch_logps(model: &Transformer, b: &PreferenceBatch) -> Tensor {
    tch::no_grad(|| {
        let hidden = model.hidden_states(&b.input_ids, &b.positions, &AttentionLayout::Causal);
        head::sequence_logps(model, &hidden, b)
    })
}

impl Reference {
    /// The reference side of a micro-batch `[2n]` (chosen rows first).
    pub fn logps(&self, b: &PreferenceBatch) -> Tensor {
        match self {
            Reference::Precomputed(v) => {
                let n = b.ids.len();
                let mut out = vec![0f32; 2 * n];
                for (i, &id) in b.ids.iter().enumerate() {
                    out[i] = v[id][0] as f32;
                    out[n + i] = v[id][1] as f32;
                }
                Tensor::from_slice(&out).to_device(b.input_ids.device())
            }
            Reference::Model(f) => batch_logps(&f.model, b),
        }
    }
}

/// What the stored values were computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    format: String,
    data_key: String,
    model_key: String,
    logps: Vec<[f64; 2]>,
}

const FORMAT: &str = "janus-reference-logps/v1";

/// sha256 of the tokenised pairs (ids and loss boundaries), in order.
pub fn data_key(pairs: &[Pair]) -> String {
    let mut h = Sha256::new();
    for p in pairs {
        for e in [&p.chosen, &p.rejected] {
            h.update((e.prompt_len as u64).to_le_bytes());
            h.update((e.tokens.len() as u64).to_le_bytes());
            for t in &e.tokens {
                h.update(t.to_le_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// sha256 over the reference model's `config.json` and weight files.
pub fn model_key(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ctx(|| dir.display().to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n == "config.json" || n.ends_with(".safetensors"))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        let mut f = std::fs::File::open(dir.join(&n)).ctx(|| dir.join(&n).display().to_string())?;
        std::io::copy(&mut f, &mut h).ctx(|| dir.join(&n).display().to_string())?;
    }
    Ok(hex::encode(h.finalize()))
}

/// One pass of `model` over `pairs`: each rank computes its share (pair i on rank
/// i mod world) in micro-batches, and the sums are all-reduced so every rank holds all.
pub fn precompute(
    model: &Transformer,
    pairs: &[Pair],
    micro: usize,
    pad_id: i64,
    device: Device,
    comm: &mut dyn Collective,
) -> Result<Vec<[f64; 2]>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let mine: Vec<&Pair> = pairs.iter().skip(rank).step_by(world).collect();
    let mut flat = vec![0f64; 2 * pairs.len()];
    for chunk in mine.chunks(micro.max(1)) {
        let b = PreferenceBatch::new(chunk, pad_id, false, device);
        let v = Vec::<f32>::try_from(batch_logps(model, &b).to_device(Device::Cpu))
            .map_err(|e| Error::Model(format!("reference log-probs: {e}")))?;
        let n = chunk.len();
        for (i, p) in chunk.iter().enumerate() {
            flat[2 * p.id] = v[i] as f64;
            flat[2 * p.id + 1] = v[n + i] as f64;
        }
    }
    let flat = all_reduce_f64(comm, &flat)?;
    Ok(flat.chunks(2).map(|c| [c[0], c[1]]).collect())
}

/// The stored values of `ckpt`'s job, when they were computed from the same data and
/// reference model.
pub fn load(
    ckpt: &CheckpointDir,
    data_key: &str,
    model_key: &str,
) -> Result<Option<Vec<[f64; 2]>>> {
    let Some(bytes) = ckpt.get_extra(FILE)? else {
        return Ok(None);
    };
    let s: Stored = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(file = FILE, error = %e, "unreadable reference log-probs; recomputing");
            return Ok(None);
        }
    };
    if s.format != FORMAT || s.data_key != data_key || s.model_key != model_key {
        tracing::warn!(
            file = FILE,
            "stored reference log-probs are of other data or another reference model; recomputing"
        );
        return Ok(None);
    }
    Ok(Some(s.logps))
}

pub fn store(
    ckpt: &CheckpointDir,
    data_key: &str,
    model_key: &str,
    logps: &[[f64; 2]],
) -> Result<()> {
    let s = Stored {
        format: FORMAT.into(),
        data_key: data_key.into(),
        model_key: model_key.into(),
        logps: logps.to_vec(),
    };
    ckpt.put_extra(FILE, serde_json::to_vec(&s).expect("serializes"))
}

/// The reference of a DPO run: a frozen model in memory, or log-probabilities
/// precomputed once (loaded from beside the checkpoints when they were computed from
/// the same data and reference model). A fresh run computes them with `policy`, the
/// model it just loaded (the reference, before any update), unless another reference
/// model is named; a resumed run that lacks them loads the reference model apart.
/// `pairs`: the run's pairs when they are in memory.
#[allow(clippy::too_many_arguments)]
pub fn for_run(
    cfg: &TrainConfig,
    ckpt: &CheckpointDir,
    pairs: Option<&[Pair]>,
    policy: &Transformer,
    comm: &mut dyn Collective,
    model_path: &Path,
    pad: i64,
    resumed: bool,
    device: Device,
    retry: Duration,
) -> Result<Reference> {
    let kind = crate::config::kind(cfg.model.dtype);
    let named = cfg
        .dpo
        .reference_model
        .as_ref()
        .map(|p| ModelDir::fetch(&p.to_string_lossy(), None, retry))
        .transpose()?;
    let ref_dir = named
        .as_ref()
        .map(|m| m.dir.clone())
        .unwrap_or_else(|| model_path.to_path_buf());
    let ref_config = ModelConfig::from_file(&ref_dir.join("config.json"))?;
    if cfg.dpo.reference == DpoReference::Model {
        tracing::info!(reference = %ref_dir.display(), "DPO reference model kept in memory");
        return Ok(Reference::Model(Box::new(Frozen::load(
            &ref_dir,
            &ref_config,
            kind,
            device,
        )?)));
    }
    let pairs = pairs.ok_or_else(|| {
        Error::Config(
            "`dpo.reference: precompute` needs the pairs in memory; a streamed dataset takes `dpo.reference: model`".into(),
        )
    })?;
    let t = Instant::now();
    let (data_key, model_key) = (data_key(pairs), model_key(&ref_dir)?);
    if let Some(v) = load(ckpt, &data_key, &model_key)? {
        if v.len() == pairs.len() {
            tracing::info!(pairs = v.len(), file = %format!("{}/{}", ckpt.url(), FILE), "reference log-probs loaded");
            return Ok(Reference::Precomputed(v));
        }
    }
    let micro = cfg.hyperparameters.micro_batch_size;
    let logps = if named.is_none() && !resumed {
        precompute(policy, pairs, micro, pad, device, comm)?
    } else {
        let frozen = Frozen::load(&ref_dir, &ref_config, kind, device)?;
        precompute(frozen.model(), pairs, micro, pad, device, comm)?
    };
    if comm.rank() == 0 {
        store(ckpt, &data_key, &model_key, &logps)?;
    }
    comm.barrier()?;
    tracing::info!(
        pairs = logps.len(),
        seconds = t.elapsed().as_secs_f64(),
        "reference log-probs computed"
    );
    Ok(Reference::Precomputed(logps))
}
