//! The data sets a run writes, in the published schemas, read by `janus train` and
//! `janus eval` as they are: the SFT set (Multifaceted Collection: `main_source`,
//! `original_source`, `preference_set`, `system`, `prompt`, `output`), preference pairs
//! (the DPO / ORPO sets: `chosen` / `rejected` as `[user, assistant]` message lists)
//! and bench items (Multifaceted Bench: `source`, `preference_set`, `system`, `prompt`,
//! `reference_answer`, `rubrics`). Each is a JSON-lines file; the SFT set and the pairs
//! are also a sharded dataset (`index.json` + shards, as `janus data shard` writes)
//! that training streams. Outputs are rebuilt whole from the stage logs, so the same
//! logs always give the same files.

use std::time::Duration;

use serde_json::{json, Value};

use janus_crds::config::synth::SynthConfig;

use super::input::Instruction;
use super::records::Collected;
use crate::data::shards::{write_shards, ShardOptions};
use crate::error::Result;
use crate::storage::Store;

/// How long one storage request is retried.
const RETRY: Duration = Duration::from_secs(180);

fn messages(prompt: &str, answer: &str) -> Value {
    json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
}

/// The SFT records: one per kept system message with its answer.
pub fn sft_rows(instructions: &[Instruction], c: &Collected) -> Vec<Value> {
    c.answers
        .iter()
        .map(|(&(i, s), output)| {
            let ins = &instructions[i];
            json!({
                "main_source": ins.main_source, "original_source": ins.original_source,
                "preference_set": c.sets[&(i, s)], "system": c.systems[&(i, s)],
                "prompt": ins.prompt, "output": output,
            })
        })
        .collect()
}

/// The preference pairs: each answered system message as chosen, with the answers to
/// the next `rejected_per_chosen` other system messages of its instruction (in set
/// order, wrapping around) as rejected.
pub fn pair_rows(
    instructions: &[Instruction],
    c: &Collected,
    rejected_per_chosen: usize,
) -> Vec<Value> {
    let mut out = vec![];
    for (i, ins) in instructions.iter().enumerate() {
        let sets: Vec<usize> = c
            .answers
            .range((i, 0)..(i + 1, 0))
            .map(|(&(_, s), _)| s)
            .collect();
        for (k, &s) in sets.iter().enumerate() {
            let chosen = &c.answers[&(i, s)];
            for r in (1..sets.len()).take(rejected_per_chosen) {
                let rejected = &c.answers[&(i, sets[(k + r) % sets.len()])];
                out.push(json!({
                    "main_source": ins.main_source, "original_source": ins.original_source,
                    "system": c.systems[&(i, s)], "prompt": ins.prompt,
                    "chosen": messages(&ins.prompt, chosen),
                    "rejected": messages(&ins.prompt, rejected),
                }));
            }
        }
    }
    out
}

/// The bench items: each answered set with a rubric for every preference, the gold
/// answer as the reference answer (score 5) and the rubrics in the set's order.
pub fn bench_rows(instructions: &[Instruction], c: &Collected) -> Vec<Value> {
    let mut out = vec![];
    for (&(i, s), answer) in &c.answers {
        let set = &c.sets[&(i, s)];
        let rubrics: Option<Vec<Value>> = (0..set.len())
            .map(|k| c.rubrics.get(&(i, s, k)).map(|r| json!(r)))
            .collect();
        let Some(rubrics) = rubrics else { continue };
        let ins = &instructions[i];
        let source = ins
            .original_source
            .clone()
            .or_else(|| ins.main_source.clone())
            .unwrap_or_else(|| "janus-synthesize".into());
        out.push(json!({
            "source": source, "preference_set": set, "system": c.systems[&(i, s)],
            "prompt": ins.prompt, "reference_answer": answer, "rubrics": rubrics,
        }));
    }
    out
}

/// Write `rows` as `name` (JSON lines) under the output directory.
pub fn write_jsonl(cfg: &SynthConfig, name: &str, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    Store::open(&cfg.output_dir, RETRY)?.put_bytes(name, text.into_bytes())
}

/// Shard the JSON-lines file `name` into the dataset `dir` (replacing an older one:
/// the file is the whole set); nothing when it has no records.
pub fn write_sharded(cfg: &SynthConfig, name: &str, dir: &str, records: usize) -> Result<()> {
    let store = Store::open(&cfg.output_dir, RETRY)?;
    store.delete_prefix(dir)?;
    if records == 0 {
        tracing::warn!(file = name, "no records: no sharded dataset written");
        return Ok(());
    }
    let opts = ShardOptions {
        shard_bytes: cfg.synthesis.shard_size.0,
        ..Default::default()
    };
    let input = crate::stage_log::output_url(&cfg.output_dir, name);
    write_shards(&input, &store.child(dir), &opts, RETRY, |_, _| {})?;
    Ok(())
}
