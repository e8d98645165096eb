//! Hugging Face safetensors: single file or sharded with `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use tch::{nn::VarStore, Kind, Tensor};

use super::ModelConfig;
use crate::error::{Error, IoContext, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Safetensors files of a model directory, in load order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(SHARD_INDEX);
    if index.exists() {
        let text = std::fs::read_to_string(&index).ctx(|| index.display().to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Model(format!("{}: {e}", index.display())))?;
        let map = v["weight_map"].as_object().ok_or_else(|| {
            Error::Model(format!("{}: missing `weight_map` object", index.display()))
        })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Model(format!(
        "{}: neither {SINGLE_FILE} nor {SHARD_INDEX} found",
        dir.display()
    )))
}

/// Copy the weights of an HF model directory into the variables of `vs` (converting
/// dtype). Every variable must be present with its shape; unknown tensors are an error.
pub fn load_model_dir(dir: &Path, vs: &VarStore, config: &ModelConfig) -> Result<()> {
    let mut vars = vs.variables();
    let mut unexpected = Vec::new();
    for file in weight_files(dir)? {
        let tensors = Tensor::read_safetensors(&file)
            .map_err(|e| Error::Model(format!("{}: {e}", file.display())))?;
        for (name, t) in tensors {
            match vars.remove(&name) {
                Some(mut var) => {
                    if var.size() != t.size() {
                        return Err(Error::Model(format!(
                            "{}: tensor `{name}` has shape {:?}, the config ({} ) needs {:?}",
                            file.display(),
                            t.size(),
                            dir.join("config.json").display(),
                            var.size()
                        )));
                    }
                    tch::no_grad(|| var.copy_(&t));
                }
                // Old checkpoints carry rotary buffers; tied models may carry the head.
                None if name.ends_with("rotary_emb.inv_freq") => {}
                None if name == "lm_head.weight" && config.tie_word_embeddings => {}
                None => unexpected.push(name),
            }
        }
    }
    if !vars.is_empty() || !unexpected.is_empty() {
        let mut missing: Vec<_> = vars.into_keys().collect();
        missing.sort();
        return Err(Error::Model(format!(
            "{}: weights do not match the config: missing {missing:?}, unexpected {unexpected:?}",
            dir.display()
        )));
    }
    Ok(())
}

struct TensorBytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Result<TensorBytes> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Int64 => Dtype::I64,
        Kind::Double => Dtype::F64,
        k => return Err(Error::Model(format!("cannot save tensors of kind {k:?}"))),
    };
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(TensorBytes {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Write named tensors to one safetensors file with HF's `{"format": "pt"}` metadata.
pub fn tensors_to_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bytes: Vec<(String, TensorBytes)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_bytes(t)?)))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &TensorBytes)> = bytes.iter().map(|(n, b)| (n.as_str(), b)).collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(views, &Some(meta), path).map_err(|e| {
        Error::io(
            path.display().to_string(),
            std::io::Error::other(e.to_string()),
        )
    })
}

/// Save the variables of `vs` as an HF model directory: `config.json` plus
/// `model.safetensors`, or shards of at most `max_shard_bytes` with an index.
/// Returns the files written (relative names).
pub fn save_model_dir(
    dir: &Path,
    vs: &VarStore,
    config: &ModelConfig,
    max_shard_bytes: usize,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).ctx(|| dir.display().to_string())?;
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let kind = vars
        .values()
        .next()
        .map(|t| t.kind())
        .unwrap_or(Kind::Float);
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in vars {
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards.last_mut().expect("non-empty").push((name, t));
    }
    let mut written = vec!["config.json".to_string()];
    let mut cfg = config.clone();
    cfg.extra.insert(
        "torch_dtype".into(),
        serde_json::Value::from(kind_name(kind)),
    );
    let cfg_path = dir.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&cfg).expect("config serializes"),
    )
    .ctx(|| cfg_path.display().to_string())?;
    if shards.len() == 1 {
        tensors_to_safetensors(&shards[0], &dir.join(SINGLE_FILE))?;
        written.push(SINGLE_FILE.into());
        return Ok(written);
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        tensors_to_safetensors(shard, &dir.join(&file))?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
        written.push(file);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let index_path = dir.join(SHARD_INDEX);
    std::fs::write(
        &index_path,
        serde_json::to_string_pretty(&index).expect("json"),
    )
    .ctx(|| index_path.display().to_string())?;
    written.push(SHARD_INDEX.into());
    Ok(written)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
