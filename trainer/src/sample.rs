//! Small synthetic data in the published Multifaceted schemas (SFT, preference pairs,
//! bench), and random models with a tokenizer trained on that data: everything a
//! first run or a test needs, with nothing downloaded.
//!
//! Answers follow their system message's four preferences with fixed phrasings, so a
//! model can learn the mapping from system message to answer style in a few steps.

use std::path::{Path, PathBuf};

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::data::{write_jsonl, write_parquet};
use crate::error::{IoContext, Result};
use crate::model::{save_model_dir, ModelConfig};
use crate::tokenizer::Tokenizer;

/// (subdimension, preference, description, how the answer shows it)
type Facet = (&'static str, &'static str, &'static str, &'static str);

const DIMENSIONS: [(&str, &[Facet]); 4] = [
    (
        "style",
        &[
            (
                "conciseness",
                "brief answers",
                "The user wants the shortest answer that is still complete.",
                "In short:",
            ),
            (
                "vividness",
                "vivid imagery",
                "The user enjoys concrete images and comparisons.",
                "Picture it like this:",
            ),
            (
                "formality",
                "formal tone",
                "The user expects a formal and precise register.",
                "Formally stated:",
            ),
        ],
    ),
    (
        "background_knowledge",
        &[
            (
                "novice",
                "no prior knowledge",
                "Assume the user has never studied the subject.",
                "in plain words,",
            ),
            (
                "expert",
                "expert reader",
                "Assume deep familiarity and use the technical terms.",
                "technically,",
            ),
        ],
    ),
    (
        "informativeness",
        &[
            (
                "practicality",
                "practical steps",
                "Focus on what the user can do right away.",
                "Step one is to start small.",
            ),
            (
                "depth",
                "underlying reasons",
                "Explain why things work, not only how.",
                "The reason is the underlying mechanism.",
            ),
        ],
    ),
    (
        "harmlessness",
        &[
            (
                "safety",
                "safety first",
                "Point out risks and precautions.",
                "Stay safe and check the risks first.",
            ),
            (
                "sensitivity",
                "respectful neutrality",
                "Stay neutral and respectful of every view.",
                "Views differ, and that is fine.",
            ),
        ],
    ),
];

const TOPICS: [(&str, &str); 16] = [
    ("bread", "yeast makes the dough rise by producing gas"),
    ("tides", "the moon's gravity pulls the oceans into bulges"),
    (
        "compound interest",
        "interest earns interest when it is reinvested",
    ),
    (
        "photosynthesis",
        "plants turn light, water and carbon dioxide into sugar",
    ),
    (
        "a bicycle gear",
        "a larger rear gear trades speed for pulling force",
    ),
    (
        "sorting a list",
        "merge sort splits the list and merges sorted halves",
    ),
    (
        "rainbows",
        "raindrops bend and reflect sunlight into its colours",
    ),
    (
        "vaccines",
        "a vaccine trains the immune system with a harmless copy",
    ),
    (
        "a sourdough starter",
        "wild yeast and bacteria ferment flour and water",
    ),
    (
        "public speaking",
        "practice and a clear structure calm the nerves",
    ),
    (
        "the stock market",
        "prices move as buyers and sellers change their minds",
    ),
    (
        "a chess opening",
        "control of the centre gives the pieces room",
    ),
    (
        "recycling plastic",
        "only some plastics can be melted and reused",
    ),
    (
        "learning a language",
        "daily practice beats long rare sessions",
    ),
    (
        "black holes",
        "gravity is so strong that light cannot escape",
    ),
    (
        "a garden compost",
        "microbes break scraps down into rich soil",
    ),
];

const ASKS: [&str; 4] = [
    "Explain {}.",
    "How does {} work?",
    "What should I know about {}?",
    "Teach me about {}.",
];

struct Persona {
    facets: Vec<(&'static str, Facet)>,
}

impl Persona {
    fn system(&self) -> String {
        let wants: Vec<String> = self.facets.iter().map(|(_, f)| f.2.to_string()).collect();
        format!("You are a helpful assistant. {}", wants.join(" "))
    }

    fn preference_set(&self) -> Value {
        Value::Array(
            self.facets
                .iter()
                .map(|(d, f)| json!({"dimension": d, "subdimension": f.0, "preference": f.1, "description": f.2}))
                .collect(),
        )
    }

    fn answer(&self, topic: &str, fact: &str) -> String {
        let [style, knowledge, info, harm] = [0, 1, 2, 3].map(|i| self.facets[i].1 .3);
        format!("{style} {knowledge} for {topic}, {fact}. {info} {harm}")
    }
}

fn personas(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<Persona> {
    (0..n)
        .map(|_| Persona {
            facets: DIMENSIONS
                .iter()
                .map(|(d, fs)| (*d, *fs.choose(rng).expect("non-empty")))
                .collect(),
        })
        .collect()
}

/// The three data sets, as JSON records in the published schemas.
pub struct SampleData {
    pub sft: Vec<Value>,
    pub preference: Vec<Value>,
    pub bench: Vec<Value>,
}

/// `instructions` instructions, each with 3 system messages and their answers.
pub fn generate(instructions: usize, seed: u64) -> SampleData {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = SampleData {
        sft: vec![],
        preference: vec![],
        bench: vec![],
    };
    for i in 0..instructions {
        let (topic, fact) = TOPICS[i % TOPICS.len()];
        let prompt = ASKS[(i / TOPICS.len()) % ASKS.len()].replace("{}", topic);
        let ps = personas(&mut rng, 3);
        let answers: Vec<String> = ps.iter().map(|p| p.answer(topic, fact)).collect();
        for (k, p) in ps.iter().enumerate() {
            out.sft.push(json!({
                "main_source": "janus-sample", "original_source": "synthetic",
                "preference_set": p.preference_set(), "system": p.system(), "prompt": prompt, "output": answers[k],
            }));
            out.preference.push(json!({
                "main_source": "janus-sample", "original_source": "synthetic", "system": p.system(), "prompt": prompt,
                "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answers[k]}],
                "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answers[(k + 1) % 3]}],
            }));
        }
        let p = &ps[0];
        let rubrics: Vec<Value> = p
            .facets
            .iter()
            .map(|(d, f)| {
                json!({
                    "criteria": format!("Does the response follow the {d} preference for {}?", f.1),
                    "score_descriptions": {
                        "1": "The response ignores the preference.",
                        "2": "The response rarely reflects the preference.",
                        "3": "The response partly reflects the preference.",
                        "4": "The response mostly reflects the preference.",
                        "5": "The response fully reflects the preference.",
                    }
                })
            })
            .collect();
        out.bench.push(json!({
            "source": "janus-sample", "preference_set": p.preference_set(), "system": p.system(), "prompt": prompt,
            "reference_answer": answers[0], "rubrics": rubrics,
        }));
    }
    out
}

/// Write `sft`, `preference` and `bench` as `.jsonl` and `.parquet` under `dir`.
pub fn write_sample_data(dir: &Path, instructions: usize, seed: u64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).ctx(|| dir.display().to_string())?;
    let data = generate(instructions, seed);
    let mut written = vec![];
    for (name, rows) in [
        ("sft", &data.sft),
        ("preference", &data.preference),
        ("bench", &data.bench),
    ] {
        let jsonl = dir.join(format!("{name}.jsonl"));
        write_jsonl(&jsonl, rows)?;
        let parquet = dir.join(format!("{name}.parquet"));
        write_parquet(&parquet, rows)?;
        written.extend([jsonl, parquet]);
    }
    Ok(written)
}

/// Texts to train a tokenizer on: every string field of the records, plus the
/// prompt-format markup.
pub fn tokenizer_corpus(records: &[Value]) -> Vec<String> {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    records.iter().for_each(|r| strings(r, &mut out));
    for _ in 0..8 {
        out.push("[INST] [/INST] <|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n".into());
    }
    out
}

/// Create a model directory: tokenizer (given, or trained on `corpus`) and a random
/// model of `config` (whose vocab is widened to the tokenizer's when smaller).
pub fn init_model(
    out: &Path,
    mut config: ModelConfig,
    tokenizer: TokenizerSource,
    kind: tch::Kind,
    seed: u64,
) -> Result<ModelConfig> {
    std::fs::create_dir_all(out).ctx(|| out.display().to_string())?;
    let tok_path = out.join("tokenizer.json");
    let tok = match tokenizer {
        TokenizerSource::File(p) => {
            std::fs::copy(&p, &tok_path).ctx(|| p.display().to_string())?;
            Tokenizer::from_file(&tok_path)?
        }
        TokenizerSource::Train { corpus, vocab_size } => {
            Tokenizer::train_bpe(corpus.into_iter(), vocab_size, &tok_path)?
        }
    };
    config.vocab_size = config.vocab_size.max(tok.vocab_size());
    config.bos_token_id = Some(tok.bos_id);
    config.eos_token_id = Some(Value::from(tok.eos_id));
    tch::manual_seed(seed as i64);
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = crate::model::Transformer::new(&vs.root(), &config);
    vs.set_kind(kind);
    save_model_dir(out, &vs, &config, crate::checkpoint::MAX_SHARD_BYTES)?;
    Ok(config)
}

pub enum TokenizerSource {
    File(PathBuf),
    Train {
        corpus: Vec<String>,
        vocab_size: usize,
    },
}
