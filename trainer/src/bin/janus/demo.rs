//! `janus demo`: the README's first command on a fresh machine.

use std::path::{Path, PathBuf};

use clap::Args;
use janus::config::TrainConfig;
use janus::sample::{self, TokenizerSource};
use janus::train::{self, RunOptions, Summary};
use janus::Result;

use crate::make::{arch_config, corpus_of, Arch};

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "target/janus-demo")]
    pub dir: PathBuf,
}

/// The README's first command: data, model, SFT, then ORPO, DPO and a reward model
/// from the SFT model, then the evaluation.
pub fn run(dir: &Path, terminal: bool) -> Result<()> {
    let data = dir.join("data");
    sample::write_sample_data(&data, 96, 0)?;
    let model = dir.join("tiny-model");
    if !model.join("config.json").exists() {
        let corpus = corpus_of(&[data.join("sft.jsonl")])?;
        sample::init_model(
            &model,
            arch_config(Arch::TinyMistral),
            TokenizerSource::Train {
                corpus,
                vocab_size: 1024,
            },
            tch::Kind::Float,
            0,
        )?;
    }
    let d = dir.display();
    let sft = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            "job=demo-sft".into(),
            format!("model.path={d}/tiny-model"),
            format!("data.train=[{d}/data/sft.parquet]"),
            format!("checkpoint.dir={d}/checkpoints"),
            format!("output_dir={d}/sft-model"),
            // A demo run always starts from scratch.
            "checkpoint.resume=false".into(),
        ],
    )?;
    let opts = RunOptions {
        stop_after_steps: None,
        progress_bar: terminal,
        world: None,
        stop: None,
        attempt: None,
    };
    let s1 = train::run(&sft, &opts)?;
    let orpo = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            "job=demo-orpo".into(),
            "method=orpo".into(),
            "data.packing=false".into(),
            "data.prompt_format=chatml".into(),
            "hyperparameters.learning_rate=5e-4".into(),
            "hyperparameters.max_steps=24".into(),
            format!("model.path={d}/sft-model"),
            format!("data.train=[{d}/data/preference.parquet]"),
            format!("checkpoint.dir={d}/checkpoints"),
            format!("output_dir={d}/orpo-model"),
            "checkpoint.resume=false".into(),
        ],
    )?;
    let s2 = train::run(&orpo, &opts)?;
    let from_sft = |job: &str, method: &str, steps: u32, lr: &str| {
        TrainConfig::resolve(
            Some("tiny"),
            None,
            &[
                format!("job={job}"),
                format!("method={method}"),
                "data.packing=false".into(),
                format!("hyperparameters.learning_rate={lr}"),
                format!("hyperparameters.max_steps={steps}"),
                format!("model.path={d}/sft-model"),
                format!("data.train=[{d}/data/preference.parquet]"),
                format!("checkpoint.dir={d}/checkpoints"),
                format!("output_dir={d}/{}-model", job.trim_start_matches("demo-")),
                "checkpoint.resume=false".into(),
            ],
        )
    };
    // DPO from the SFT model (reference log-probs precomputed once), and a reward
    // model from the same SFT model that ranks best-of-N samples in the evaluation.
    let s3 = train::run(&from_sft("demo-dpo", "dpo", 16, "5e-4")?, &opts)?;
    // Measured: at 1e-3 for 16 steps (under one epoch) the loss stayed at ln 2; at
    // 3e-4 for 64 steps (about two epochs) it falls.
    let s4 = train::run(&from_sft("demo-rm", "reward", 64, "3e-4")?, &opts)?;
    let accuracy = held_out_accuracy(dir)?;
    let judge = train_judge(dir, &opts)?;
    let eval = evaluate(dir, &judge.output_dir.clone().unwrap_or_default(), terminal)?;
    println!(
        "\njanus demo: tiny Mistral-style model on {} sample records, CPU",
        s1.records
    );
    for s in [&s1, &s2, &s3, &s4, &judge] {
        print_summary(s);
    }
    println!(
        "  reward model: held-out pair accuracy {:.3} ({} of {} pairs of unseen personas ranked right)",
        accuracy.0 as f64 / accuracy.1.max(1) as f64,
        accuracy.0,
        accuracy.1
    );
    println!(
        "\nMultifaceted Bench protocol on {} sample bench items: the ORPO model (baseline: the SFT model), judged by `janus serve` on the demo judge (its grades show the plumbing, not quality)\n",
        eval.orpo.items.len()
    );
    print!("{}", janus::eval::report::table(&eval.orpo));
    println!(
        "\nthe DPO model, best of 2 samples ranked by the reward model (baseline: the SFT model)\n"
    );
    print!("{}", janus::eval::report::table(&eval.dpo));
    println!(
        "reports: {}, {}",
        dir.join("eval/orpo").join(janus::eval::REPORT).display(),
        dir.join("eval/dpo-best-of-2")
            .join(janus::eval::REPORT)
            .display()
    );
    Ok(())
}

/// The reward model's accuracy on preference pairs it never saw (sample data of
/// another seed: other personas): (pairs whose chosen answer gets the higher reward,
/// pairs), read through the reranker best-of-N uses.
fn held_out_accuracy(dir: &Path) -> Result<(usize, usize)> {
    let held_out = sample::generate(24, 1).preference;
    let d = dir.display();
    let cfg = janus::config::EvalConfig::resolve(
        None,
        &[
            "job=demo-rm-accuracy".into(),
            format!("model.path={d}/rm-model"),
            "model.dtype=float32".into(),
            "model.device=cpu".into(),
            "model.prompt_format=mistral".into(),
            format!("output_dir={d}/eval/held-out"),
        ],
    )?;
    let mut rm = janus::eval::generation::reward_model(&format!("{d}/rm-model"), &cfg)?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut right = 0;
    for (i, r) in held_out.iter().enumerate() {
        let item = janus::eval::bench::BenchItem {
            id: i,
            source: "held-out".into(),
            system: text(&r["system"]),
            prompt: text(&r["prompt"]),
            reference_answer: String::new(),
            rubrics: vec![],
            preference_set: None,
        };
        let pair = [
            text(&r["chosen"][1]["content"]),
            text(&r["rejected"][1]["content"]),
        ];
        let rewards = rm.rewards(&item, "", &pair)?;
        right += usize::from(rewards[0] > rewards[1]);
    }
    Ok((right, held_out.len()))
}

/// A short judge prompt the tiny demo judge is trained on (the built-in one is
/// longer than the demo's sequence length).
const DEMO_TEMPLATE: &str = "Criterion: {criteria}\nAnswer: {response}\nGrade the answer by the criterion, then write [RESULT] and a grade from 1 to 5.";

/// A tiny judge for the demo: SFT of the tiny model on judge transcripts in the
/// protocol's shape (reference answers graded 5, another item's answer graded 2), so
/// that `janus serve` answers with a `[RESULT] n` the parser reads.
fn train_judge(dir: &Path, opts: &RunOptions) -> Result<Summary> {
    use janus::eval::template::Template;
    let bench = janus::eval::bench::load(&dir.join("data/bench.jsonl").to_string_lossy(), None)?;
    let t = Template::parse(DEMO_TEMPLATE, "the demo judge template", false)?;
    let n = bench.items.len();
    let mut lines = String::new();
    for (i, item) in bench.items.iter().enumerate() {
        let other = &bench.items[(i + 1) % n];
        for rubric in &item.rubrics {
            for (answer, k) in [(&item.reference_answer, 5), (&other.reference_answer, 2)] {
                let p = t.render(item, rubric, answer);
                let rec = serde_json::json!({
                    "system": p.system,
                    "prompt": p.user,
                    "output": format!("[RESULT] {k}"),
                });
                lines.push_str(&rec.to_string());
                lines.push('\n');
            }
        }
    }
    let data = dir.join("data/judge-sft.jsonl");
    std::fs::write(&data, lines).map_err(|e| janus::Error::io(data.display().to_string(), e))?;
    let d = dir.display();
    let cfg = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            "job=demo-judge".into(),
            format!("model.path={d}/tiny-model"),
            format!("data.train=[{}]", data.display()),
            "data.max_seq_len=384".into(),
            "data.min_response_tokens=1".into(),
            // Measured: the loss falls from 5 to 0.1 in 30 steps at this rate.
            "hyperparameters.learning_rate=3e-3".into(),
            "hyperparameters.max_steps=40".into(),
            format!("checkpoint.dir={d}/checkpoints"),
            format!("output_dir={d}/judge-model"),
            "checkpoint.resume=false".into(),
        ],
    )?;
    train::run(&cfg, opts)
}

/// `janus serve` on `model`, stopped when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &str, name: &str) -> Result<Server> {
    let port = janus::dist::launch::free_port()?;
    let exe = std::env::current_exe().map_err(|e| janus::Error::io("the janus binary", e))?;
    let child = std::process::Command::new(exe)
        .args(["serve", "--model", model, "--port", &port.to_string()])
        .args([
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--served-model-name",
            name,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| janus::Error::io("janus serve", e))?;
    let server = Server { child, port };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !healthy(port) {
        if std::time::Instant::now() > deadline {
            return Err(janus::Error::io(
                format!("janus serve on port {port}"),
                std::io::Error::other("not healthy within 120 s"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(server)
}

/// `GET /health` answers 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// One evaluated model of the demo.
struct Evaluated<'a> {
    /// Directory under the demo's, and its prompt format.
    model: &'a str,
    format: &'a str,
    out: PathBuf,
    /// Earlier results it is compared with.
    baseline: Option<&'a Path>,
    /// A reward model (directory under the demo's) ranking best-of-2 samples.
    reward_model: Option<&'a str>,
}

/// Generate, judge and score `e.model` on sample bench items into `e.out`.
fn eval_model(
    dir: &Path,
    e: &Evaluated,
    judge_port: u16,
    terminal: bool,
) -> Result<janus::eval::score::Results> {
    use janus::eval::{generation, judge, progress::StageProgress, score};
    let (model, format, out, baseline, reward_model) =
        (e.model, e.format, &e.out, e.baseline, e.reward_model);
    let template = dir.join("data/judge-template.txt");
    std::fs::write(&template, DEMO_TEMPLATE)
        .map_err(|e| janus::Error::io(template.display().to_string(), e))?;
    let d = dir.display();
    let mut o = vec![
        "job=demo-eval".into(),
        format!("model.path={d}/{model}"),
        "model.dtype=float32".into(),
        "model.device=cpu".into(),
        format!("model.prompt_format={format}"),
        format!("bench.path={d}/data/bench.jsonl"),
        "bench.limit=8".into(),
        "generation.max_new_tokens=48".into(),
        "generation.batch_size=8".into(),
        format!("judge.url=http://127.0.0.1:{judge_port}/v1"),
        "judge.model=demo-judge".into(),
        "judge.api_key_env=null".into(),
        format!("judge.template={}", template.display()),
        "judge.runs=3".into(),
        "judge.concurrency=4".into(),
        "judge.max_tokens=24".into(),
        // The paper's sampling (temperature 1.0, top_p 0.9) is for GPT-4; the tiny
        // judge sampled that way wrote `[RESULT] [REST] ...` on a third of its calls.
        // Greedy, it answers what it was trained to.
        "judge.temperature=0".into(),
        "judge.top_p=1".into(),
        format!("output_dir={}", out.display()),
    ];
    if let Some(b) = baseline {
        o.push(format!(
            "baseline={}",
            b.join(janus::eval::RESULTS).display()
        ));
    }
    if let Some(rm) = reward_model {
        o.push("generation.best_of=2".into());
        o.push(format!("generation.reward_model={d}/{rm}"));
    }
    let cfg = janus::config::EvalConfig::resolve(None, &o)?;
    let reranker = match &cfg.generation.reward_model {
        Some(rm) => Some(generation::reward_model(rm, &cfg)?),
        None => None,
    };
    generation::run(
        &cfg,
        generation::Shard::all(),
        reranker,
        &mut StageProgress::new("generate", terminal),
    )?;
    judge::run(&cfg, &mut StageProgress::new("judge", terminal))?;
    score::run(&cfg, &mut StageProgress::new("score", terminal))
}

struct DemoEval {
    orpo: janus::eval::score::Results,
    dpo: janus::eval::score::Results,
}

/// The ORPO model, and the DPO model's best of 2 by the reward model, each against the
/// SFT model on sample bench items, judged by the demo judge behind `janus serve`.
fn evaluate(dir: &Path, judge_model: &str, terminal: bool) -> Result<DemoEval> {
    let out = dir.join("eval");
    // A demo run always starts from scratch.
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .map_err(|e| janus::Error::io(out.display().to_string(), e))?;
    }
    let server = serve(judge_model, "demo-judge")?;
    let sft = out.join("sft");
    let run = |e: Evaluated| eval_model(dir, &e, server.port, terminal);
    run(Evaluated {
        model: "sft-model",
        format: "mistral",
        out: sft.clone(),
        baseline: None,
        reward_model: None,
    })?;
    let orpo = run(Evaluated {
        model: "orpo-model",
        format: "chatml",
        out: out.join("orpo"),
        baseline: Some(&sft),
        reward_model: None,
    })?;
    let dpo = run(Evaluated {
        model: "dpo-model",
        format: "mistral",
        out: out.join("dpo-best-of-2"),
        baseline: Some(&sft),
        reward_model: Some("rm-model"),
    })?;
    Ok(DemoEval { orpo, dpo })
}

fn print_summary(s: &Summary) {
    println!(
        "  {:<6} {:>3} steps  loss {:.4} -> {:.4}  {:>8.0} tokens/s  checkpoint {}  model {}",
        format!("{:?}", s.method).to_uppercase(),
        s.steps_completed,
        s.first_loss.unwrap_or(f64::NAN),
        s.last_loss.unwrap_or(f64::NAN),
        s.tokens_per_second,
        s.last_checkpoint.clone().unwrap_or_default(),
        s.output_dir.clone().unwrap_or_default(),
    );
}
