//! Running the stages: which calls each stage needs (from the instructions and what
//! the earlier stages recorded), asking those without a record (online,
//! [`super::calls`], or through the Batch API, [`super::batch`]), and writing each
//! stage's data set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use janus_crds::config::eval::JudgeMode;
use janus_crds::config::synth::{layout, SynthConfig, SynthStage};

use super::calls::{ask_all, Log, Task};
use super::config::client;
use super::input::{self, Instruction};
use super::output;
use super::progress::{StageCounts, SynthProgress};
use super::prompts::Prompts;
use super::records::{Collected, Key, StageRecord};
use crate::error::Result;
use crate::openai::JudgeClient;

/// What a run did, stage by stage (printed, and written as `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub output_dir: String,
    pub instructions: usize,
    pub stages: Vec<StageCounts>,
}

fn log_name(stage: SynthStage) -> Option<&'static str> {
    match stage {
        SynthStage::Preferences => Some(layout::PREFERENCES_LOG),
        SynthStage::System => Some(layout::SYSTEM_LOG),
        SynthStage::Answers => Some(layout::ANSWERS_LOG),
        SynthStage::Rubrics => Some(layout::RUBRICS_LOG),
        SynthStage::Pairs => None,
    }
}

fn user(content: String) -> Value {
    json!({"role": "user", "content": content})
}

/// A run under way: the instructions, the prompts and every stage's log.
pub struct Run<'a> {
    cfg: &'a SynthConfig,
    instructions: Vec<Instruction>,
    prompts: Prompts,
    logs: BTreeMap<SynthStage, Log>,
    client: Option<Arc<JudgeClient>>,
}

impl<'a> Run<'a> {
    pub fn open(cfg: &'a SynthConfig) -> Result<Self> {
        let instructions = input::load(&cfg.input.path, cfg.input.limit)?;
        let prompts = Prompts::load(cfg)?;
        let mut logs = BTreeMap::new();
        for stage in SynthStage::ALL {
            if let Some(name) = log_name(stage) {
                logs.insert(stage, Log::open(cfg, name)?);
            }
        }
        Ok(Self {
            cfg,
            instructions,
            prompts,
            logs,
            client: None,
        })
    }

    fn records(&self, stage: SynthStage) -> &BTreeMap<Key, StageRecord> {
        &self.logs[&stage].records
    }

    fn collected(&self) -> Collected {
        Collected::from_logs(
            self.records(SynthStage::Preferences),
            self.records(SynthStage::System),
            self.records(SynthStage::Answers),
            self.records(SynthStage::Rubrics),
        )
    }

    /// Every call `stage` needs, given what the earlier stages kept.
    fn tasks(&self, stage: SynthStage, c: &Collected) -> Vec<Task> {
        let p = &self.prompts;
        let n = self.cfg.synthesis.sets_per_instruction;
        let ins = |i: usize| self.instructions[i].prompt.as_str();
        match stage {
            SynthStage::Preferences => (0..self.instructions.len())
                .flat_map(|i| (0..n).map(move |s| (i, s)))
                .map(|(i, s)| Task {
                    key: Key::of_set(i, s),
                    messages: vec![user(p.preferences.render(&[
                        ("instruction", ins(i)),
                        ("set_index", (s + 1).to_string().as_str()),
                        ("sets", n.to_string().as_str()),
                    ]))],
                })
                .collect(),
            SynthStage::System => c
                .sets
                .iter()
                .map(|(&(i, s), set)| Task {
                    key: Key::of_set(i, s),
                    messages: vec![user(
                        p.system.render(&[
                            ("instruction", ins(i)),
                            (
                                "preference_set",
                                serde_json::to_string_pretty(set)
                                    .expect("serializes")
                                    .as_str(),
                            ),
                        ]),
                    )],
                })
                .collect(),
            SynthStage::Answers => c
                .systems
                .iter()
                .map(|(&(i, s), system)| Task {
                    key: Key::of_set(i, s),
                    messages: vec![
                        json!({"role": "system", "content": system}),
                        user(p.answer.render(&[("instruction", ins(i))])),
                    ],
                })
                .collect(),
            SynthStage::Rubrics => c
                .systems
                .iter()
                .flat_map(|(&(i, s), system)| {
                    c.sets[&(i, s)]
                        .iter()
                        .enumerate()
                        .map(move |(k, pref)| Task {
                            key: Key {
                                instruction: i,
                                set: s,
                                preference: Some(k),
                            },
                            messages: vec![user(p.rubric.render(&[
                                ("instruction", ins(i)),
                                ("system", system.as_str()),
                                ("dimension", pref.dimension.as_str()),
                                ("subdimension", pref.subdimension.as_str()),
                                ("preference", pref.preference.as_str()),
                                ("description", pref.description.as_str()),
                            ]))],
                        })
                })
                .collect(),
            SynthStage::Pairs => vec![],
        }
    }

    fn client(&mut self) -> Result<Arc<JudgeClient>> {
        if self.client.is_none() {
            self.client = Some(Arc::new(client(self.cfg)?));
        }
        Ok(self.client.clone().expect("set"))
    }

    /// Run `stage`: ask what has no record, then write its data set.
    pub fn stage(
        &mut self,
        stage: SynthStage,
        progress: &mut SynthProgress,
    ) -> Result<StageCounts> {
        let mut counts = StageCounts {
            stage: stage.name().into(),
            ..Default::default()
        };
        if stage == SynthStage::Pairs {
            let rows = output::pair_rows(
                &self.instructions,
                &self.collected(),
                self.cfg.synthesis.rejected_per_chosen,
            );
            self.write(layout::PAIRS, Some(layout::PAIRS_SHARDS), &rows)?;
            counts.records_out = Some(rows.len());
            return Ok(counts);
        }
        let tasks = self.tasks(stage, &self.collected());
        counts.tasks = tasks.len();
        let records = self.records(stage);
        for t in &tasks {
            match records.get(&t.key) {
                Some(r) if r.value.is_some() => counts.valid += 1,
                Some(_) => counts.invalid += 1,
                None => {}
            }
        }
        counts.already_done = counts.valid + counts.invalid;
        let todo: Vec<Task> = tasks
            .into_iter()
            .filter(|t| !records.contains_key(&t.key))
            .collect();
        tracing::info!(
            stage = stage.name(), calls = counts.tasks, recorded = counts.already_done,
            to_ask = todo.len(), model = %self.cfg.llm.model, "synthesizing"
        );
        progress.start(&counts);
        if !todo.is_empty() {
            let client = self.client()?;
            let log = self.logs.get_mut(&stage).expect("a log per calling stage");
            match self.cfg.llm.mode {
                JudgeMode::Online => {
                    ask_all(self.cfg, &client, stage, todo, log, &mut counts, progress)?
                }
                JudgeMode::Batch => {
                    super::batch::run(self.cfg, &client, stage, todo, log, &mut counts, progress)?
                }
            }
        }
        self.logs.get_mut(&stage).expect("log").compact()?;
        let c = self.collected();
        match stage {
            SynthStage::Preferences => counts.duplicates = c.duplicate_sets,
            SynthStage::System => counts.duplicates = c.duplicate_systems,
            SynthStage::Answers => {
                let rows = output::sft_rows(&self.instructions, &c);
                self.write(layout::SFT, Some(layout::SFT_SHARDS), &rows)?;
                counts.records_out = Some(rows.len());
            }
            SynthStage::Rubrics => {
                let rows = output::bench_rows(&self.instructions, &c);
                self.write(layout::BENCH, None, &rows)?;
                counts.records_out = Some(rows.len());
            }
            SynthStage::Pairs => {}
        }
        Ok(counts)
    }

    fn write(&self, name: &str, shards: Option<&str>, rows: &[Value]) -> Result<()> {
        output::write_jsonl(self.cfg, name, rows)?;
        if let Some(dir) = shards {
            output::write_sharded(self.cfg, name, dir, rows.len())?;
        }
        Ok(())
    }
}

/// Run the configured stages in order; the summary is also written as `summary.json`.
pub fn run(cfg: &SynthConfig, progress: &mut SynthProgress) -> Result<SynthSummary> {
    let mut run = Run::open(cfg)?;
    let mut summary = SynthSummary {
        output_dir: cfg.output_dir.clone(),
        instructions: run.instructions.len(),
        stages: vec![],
    };
    for &stage in &cfg.synthesis.stages {
        let counts = run.stage(stage, progress)?;
        tracing::info!(summary = %serde_json::to_string(&counts).expect("serializes"), "stage done");
        summary.stages.push(counts);
    }
    progress.finish();
    let text = serde_json::to_vec_pretty(&summary).expect("serializes");
    crate::stage_log::write_file(&cfg.output_dir, layout::SUMMARY, text)?;
    Ok(summary)
}
