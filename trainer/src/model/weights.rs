//! Hugging Face safetensors: single file or sharded with `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Kind, Tensor};

use super::config::ModelConfig;
use crate::error::{Error, IoContext, Result};
use crate::storage::{ObjectWriter, Store, Written};

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
    load_weights(dir, vs, config, false).map(|_| ())
}

/// Start a reward model from a causal LM's directory: the body's weights are loaded,
/// the LM head is left out and the value head (`score.weight`), when the directory has
/// none, is drawn from N(0, 0.02) by a generator of its own seeded with `seed`.
pub fn load_reward_init(dir: &Path, vs: &VarStore, config: &ModelConfig, seed: u64) -> Result<()> {
    if let Some(head) = load_weights(dir, vs, config, true)? {
        init_value_head(&head, seed);
    }
    Ok(())
}

/// torch's global generator is shared by every thread of the process (tests, the
/// server), so a head drawn from it depends on what else ran; this draw does not.
fn init_value_head(head: &Tensor, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5c0e_4ead);
    let n = head.numel();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box-Muller: two uniforms in (0, 1] give one standard normal.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (0.02 * z) as f32
        })
        .collect();
    let drawn = Tensor::from_slice(&values)
        .view(head.size().as_slice())
        .to_kind(head.kind())
        .to_device(head.device());
    tch::no_grad(|| {
        let mut head = head.shallow_clone();
        head.copy_(&drawn);
    });
}

/// Returns the value head when `new_head` and the directory has none.
fn load_weights(
    dir: &Path,
    vs: &VarStore,
    config: &ModelConfig,
    new_head: bool,
) -> Result<Option<Tensor>> {
    let mut vars = vs.variables();
    let mut unexpected = Vec::new();
    for file in weight_files(dir)? {
        // Mapped, and copied once, straight from the page cache into each variable.
        let st = SafetensorsFile::open(&file).map_err(|e| Error::Model(e.to_string()))?;
        for name in st.names() {
            // OpenRLHF names the value head `value_head`; ours (HF's) is `score`.
            let var_name = if config.is_openrlhf_reward() && name == "value_head.weight" {
                "score.weight".to_string()
            } else {
                name.clone()
            };
            match vars.remove(&var_name) {
                Some(mut var) => {
                    let shape = st.spec(&name).map(|(_, s)| s.to_vec()).unwrap_or_default();
                    if var.size() != shape {
                        return Err(Error::Model(format!(
                            "{}: tensor `{name}` has shape {shape:?}, the config ({} ) needs {:?}",
                            file.display(),
                            dir.join("config.json").display(),
                            var.size()
                        )));
                    }
                    st.with_view(&name, |t| tch::no_grad(|| var.copy_(t)))
                        .map_err(|e| Error::Model(e.to_string()))?;
                }
                // Old checkpoints carry rotary buffers; tied models may carry the head.
                None if name.ends_with("rotary_emb.inv_freq") => {}
                None if name == "lm_head.weight" && config.tie_word_embeddings => {}
                None if name == "lm_head.weight" && new_head => {}
                None => unexpected.push(name),
            }
        }
    }
    let head = if new_head {
        vars.remove("score.weight")
    } else {
        None
    };
    if !vars.is_empty() || !unexpected.is_empty() {
        let mut missing: Vec<_> = vars.into_keys().collect();
        missing.sort();
        return Err(Error::Model(format!(
            "{}: weights do not match the config: missing {missing:?}, unexpected {unexpected:?}",
            dir.display()
        )));
    }
    Ok(head)
}

/// Name, kind and shape of a tensor in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn of(name: impl Into<String>, t: &Tensor) -> Self {
        Self {
            name: name.into(),
            kind: t.kind(),
            shape: t.size(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<i64>().max(0) as usize * self.kind.elt_size_in_bytes()
    }
}

fn dtype_name(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Int64 => "I64",
        Kind::Double => "F64",
        Kind::Int => "I32",
        k => return Err(Error::Model(format!("cannot save tensors of kind {k:?}"))),
    })
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "I64" => Kind::Int64,
        "F64" => Kind::Double,
        "I32" => Kind::Int,
        _ => return None,
    })
}

/// The bytes before the data of a safetensors file of `specs`, in their order: the
/// header's length, then the header (with HF's `{"format": "pt"}` metadata). The
/// streaming writer and a checkpoint's host snapshot share it, so both give the same
/// file.
pub fn safetensors_header(specs: &[TensorSpec]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for s in specs {
        let end = offset + s.bytes();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": dtype_name(s.kind)?, "shape": s.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header).expect("header serializes");
    // The format pads the header with spaces to a multiple of 8 bytes.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut head = (text.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(text.as_bytes());
    Ok(head)
}

/// Writes a safetensors file one tensor at a time: the header first (from the specs,
/// with HF's `{"format": "pt"}` metadata), then each tensor's bytes straight from its
/// storage (never copied into a buffer: a file gets them by `write`, an upload sends
/// the storage itself), hashed as they go. No file-sized buffer is ever held, so a 7B
/// model's optimizer state can be written while it is gathered bucket by bucket.
pub struct SafetensorsWriter {
    out: ObjectWriter,
    specs: Vec<TensorSpec>,
    next: usize,
}

/// A CPU tensor's bytes, kept alive by the tensor (a shallow clone of its storage).
struct HostBytes(Tensor, usize);

impl AsRef<[u8]> for HostBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a contiguous CPU tensor of exactly `self.1` bytes, alive in `self.0`.
        unsafe { std::slice::from_raw_parts(self.0.data_ptr() as *const u8, self.1) }
    }
}

impl SafetensorsWriter {
    pub fn create(path: &Path, specs: Vec<TensorSpec>) -> Result<Self> {
        Self::new(ObjectWriter::local_file(path)?, specs)
    }

    /// Write to `out` (a file, or an object being uploaded).
    pub fn new(mut out: ObjectWriter, specs: Vec<TensorSpec>) -> Result<Self> {
        out.write(&safetensors_header(&specs)?)?;
        Ok(Self {
            out,
            specs,
            next: 0,
        })
    }

    /// The next tensor, in the order of the specs.
    pub fn write(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            Error::Model(format!(
                "{}: more tensors than announced ({name})",
                self.out.url()
            ))
        })?;
        if spec.name != name || spec.kind != t.kind() || spec.shape != t.size() {
            return Err(Error::Model(format!(
                "{}: expected {} {:?} {:?} next, got {name} {:?} {:?}",
                self.out.url(),
                spec.name,
                spec.kind,
                spec.shape,
                t.kind(),
                t.size()
            )));
        }
        self.next += 1;
        let n = spec.bytes();
        if n > 0 {
            let host = t.to_device(tch::Device::Cpu).contiguous();
            self.out
                .write_shared(bytes::Bytes::from_owner(HostBytes(host, n)))?;
        }
        Ok(())
    }

    /// Flush; returns the file's size and sha256 (and, for an upload, its completion).
    pub fn finish(self) -> Result<Written> {
        if self.next != self.specs.len() {
            return Err(Error::Model(format!(
                "{}: {} of {} tensors written",
                self.out.url(),
                self.next,
                self.specs.len()
            )));
        }
        self.out.finish()
    }
}

/// Write named tensors to one safetensors file with HF's `{"format": "pt"}` metadata.
pub fn tensors_to_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    write_tensors(tensors, ObjectWriter::local_file(path)?)?
        .wait()
        .map(|_| ())
}

fn write_tensors(tensors: &[(String, Tensor)], out: ObjectWriter) -> Result<Written> {
    let specs = tensors.iter().map(|(n, t)| TensorSpec::of(n, t)).collect();
    let mut w = SafetensorsWriter::new(out, specs)?;
    for (n, t) in tensors {
        w.write(n, t)?;
    }
    w.finish()
}

/// A safetensors file mapped into memory: tensors (or parts of them) are read without
/// loading the whole file, so each rank reads only its shard of the optimizer state.
pub struct SafetensorsFile {
    map: memmap2::Mmap,
    data_start: usize,
    entries: HashMap<String, (Kind, Vec<i64>, usize, usize)>,
    path: PathBuf,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |what: String| Error::Checkpoint(format!("{}: {what}", path.display()));
        let file = std::fs::File::open(path).ctx(|| path.display().to_string())?;
        // SAFETY: checkpoint files are written once and never modified while read.
        let map = unsafe { memmap2::Mmap::map(&file) }.ctx(|| path.display().to_string())?;
        if map.len() < 8 {
            return Err(bad("too short for a safetensors header".into()));
        }
        let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
        let header: serde_json::Map<String, serde_json::Value> = map
            .get(8..8 + n)
            .and_then(|h| serde_json::from_slice(h).ok())
            .ok_or_else(|| bad("unreadable header".into()))?;
        let mut entries = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let kind = v["dtype"]
                .as_str()
                .and_then(kind_of)
                .ok_or_else(|| bad(format!("`{name}` has an unsupported dtype")))?;
            let shape: Vec<i64> = serde_json::from_value(v["shape"].clone())
                .map_err(|e| bad(format!("`{name}` shape: {e}")))?;
            let off: [usize; 2] = serde_json::from_value(v["data_offsets"].clone())
                .map_err(|e| bad(format!("`{name}` offsets: {e}")))?;
            if off[1] < off[0] || 8 + n + off[1] > map.len() {
                return Err(bad(format!("`{name}` lies outside the file")));
            }
            entries.insert(name, (kind, shape, off[0], off[1]));
        }
        Ok(Self {
            map,
            data_start: 8 + n,
            entries,
            path: path.to_path_buf(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Kind and shape of `name`.
    pub fn spec(&self, name: &str) -> Option<(Kind, &[i64])> {
        self.entries
            .get(name)
            .map(|(k, s, _, _)| (*k, s.as_slice()))
    }

    /// Elements `start..start + len` of the flattened tensor `name`, as a 1-d CPU tensor.
    pub fn read_flat(&self, name: &str, start: usize, len: usize) -> Result<Tensor> {
        let (kind, shape, begin, end) = self.entries.get(name).ok_or_else(|| {
            Error::Checkpoint(format!("{}: no tensor `{name}`", self.path.display()))
        })?;
        let elt = kind.elt_size_in_bytes();
        let numel = shape.iter().product::<i64>() as usize;
        if start + len > numel || end - begin != numel * elt {
            return Err(Error::Checkpoint(format!(
                "{}: `{name}` has {numel} elements, asked for {start}..{}",
                self.path.display(),
                start + len
            )));
        }
        let at = self.data_start + begin + start * elt;
        Ok(Tensor::from_data_size(
            &self.map[at..at + len * elt],
            &[len as i64],
            *kind,
        ))
    }

    /// Run `f` on a tensor that views `name`'s bytes in the mapped file, without
    /// copying them (e.g. to `copy_` them into a variable). The view lives only for `f`.
    pub fn with_view<R>(&self, name: &str, f: impl FnOnce(&Tensor) -> R) -> Result<R> {
        let (kind, shape, begin, end) = self.entries.get(name).ok_or_else(|| {
            Error::Checkpoint(format!("{}: no tensor `{name}`", self.path.display()))
        })?;
        let numel = shape.iter().product::<i64>() as usize;
        if end - begin != numel * kind.elt_size_in_bytes() {
            return Err(Error::Checkpoint(format!(
                "{}: `{name}` has {} bytes for {numel} elements",
                self.path.display(),
                end - begin
            )));
        }
        if numel == 0 {
            return Ok(f(&Tensor::zeros(
                shape.as_slice(),
                (*kind, tch::Device::Cpu),
            )));
        }
        let data = &self.map[self.data_start + begin..self.data_start + end];
        // SAFETY: `data` holds exactly the tensor's bytes and outlives the view, which
        // is dropped before this returns; libtorch only reads it (the map is read-only).
        let view = unsafe { Tensor::from_blob(data.as_ptr(), shape, &[], *kind, tch::Device::Cpu) };
        let r = f(&view);
        drop(view);
        Ok(r)
    }

    /// The whole tensor `name` in its shape.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let (_, shape) = self.spec(name).ok_or_else(|| {
            Error::Checkpoint(format!("{}: no tensor `{name}`", self.path.display()))
        })?;
        let shape = shape.to_vec();
        let numel = shape.iter().product::<i64>() as usize;
        Ok(self.read_flat(name, 0, numel)?.view(shape.as_slice()))
    }
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
    let store = Store::open(
        &dir.display().to_string(),
        std::time::Duration::from_secs(60),
    )?;
    let mut names = Vec::new();
    for (name, w) in save_model(&store, vs, config, max_shard_bytes)? {
        w.wait()?;
        names.push(name);
    }
    Ok(names)
}

/// The files of an HF model directory, in the order they are written: `config.json`
/// (with `torch_dtype`), the weight files with their tensors (shallow references to
/// the variables), and the shard index when there are several.
pub struct ModelFiles {
    pub config_json: Vec<u8>,
    pub shards: Vec<(String, Vec<(String, Tensor)>)>,
    pub index_json: Option<Vec<u8>>,
}

/// Lay out the variables of `vs` as `save_model` writes them (one file, or shards of at
/// most `max_shard_bytes` with an index): one definition for the streaming save and a
/// checkpoint's host snapshot.
pub fn model_files(vs: &VarStore, config: &ModelConfig, max_shard_bytes: usize) -> ModelFiles {
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
    let mut cfg = config.clone();
    cfg.extra.insert(
        "torch_dtype".into(),
        serde_json::Value::from(kind_name(kind)),
    );
    let config_json = serde_json::to_string_pretty(&cfg)
        .expect("config serializes")
        .into_bytes();
    if shards.len() == 1 {
        let only = shards.pop().expect("one shard");
        return ModelFiles {
            config_json,
            shards: vec![(SINGLE_FILE.into(), only)],
            index_json: None,
        };
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut named = Vec::with_capacity(n);
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone());
        }
        named.push((file, shard));
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    ModelFiles {
        config_json,
        shards: named,
        index_json: Some(
            serde_json::to_string_pretty(&index)
                .expect("json")
                .into_bytes(),
        ),
    }
}

/// `save_model_dir` into any store: every file is hashed as it is written, and
/// uploads complete in the background (`Written::wait`).
pub fn save_model(
    store: &Store,
    vs: &VarStore,
    config: &ModelConfig,
    max_shard_bytes: usize,
) -> Result<Vec<(String, Written)>> {
    let files = model_files(vs, config, max_shard_bytes);
    let put = |name: &str, bytes: &[u8]| -> Result<(String, Written)> {
        let mut w = store.writer(name)?;
        w.write(bytes)?;
        Ok((name.to_string(), w.finish()?))
    };
    let mut written = vec![put("config.json", &files.config_json)?];
    for (file, shard) in &files.shards {
        written.push((file.clone(), write_tensors(shard, store.writer(file)?)?));
    }
    if let Some(index) = &files.index_json {
        written.push(put(SHARD_INDEX, index)?);
    }
    Ok(written)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transformer;

    fn reward_head(lm_dir: &Path, lm: &ModelConfig, seed: u64, torch_seed: i64) -> Tensor {
        let config = lm.as_reward_model(0);
        let vs = VarStore::new(tch::Device::Cpu);
        let _model = Transformer::new(&vs.root(), &config);
        // Whatever else drew from torch's global generator before this load.
        tch::manual_seed(torch_seed);
        load_reward_init(lm_dir, &vs, &config, seed).unwrap();
        vs.variables()["score.weight"].copy()
    }

    #[test]
    fn a_new_value_head_depends_on_the_seed_only() {
        let tmp = tempfile::tempdir().unwrap();
        let lm = ModelConfig::small("mistral", 64, 32, 64, 1, 4, 2);
        let vs = VarStore::new(tch::Device::Cpu);
        let _model = Transformer::new(&vs.root(), &lm);
        save_model_dir(tmp.path(), &vs, &lm, usize::MAX).unwrap();

        let a = reward_head(tmp.path(), &lm, 7, 1);
        let b = reward_head(tmp.path(), &lm, 7, 2);
        let c = reward_head(tmp.path(), &lm, 8, 1);
        assert!(a.equal(&b), "the head moved with torch's global generator");
        assert!(!a.equal(&c), "the seed must choose the head");
        let std = a.std(true).double_value(&[]);
        assert!((0.01..0.04).contains(&std), "std {std}");
    }
}
