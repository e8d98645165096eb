//! The judge as the paper ran it, checked against Python itself: the messages `janus
//! eval judge` sends equal, byte for byte, what the original's `prepare_inputs`
//! (kaistAI/Janus `run_eval_openai.py`) builds from the same bench records with
//! `ABS_USER_PROMPT_TEMPLATE.format(...).strip()` and `json.dumps(rubric, indent=4)`
//! (rendered here by a Python script written from that documented format), with the
//! original's request parameters; and `judge.parser: original` reads what Python's
//! `re` reads with the published pattern and flags.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};

use janus::config::EvalConfig;
use janus::eval::answers::Answer;
use janus::eval::progress::StageProgress;
use janus::stage_log::JsonlLog;
use serde_json::{json, Value};

/// The original's rendering: what `prepare_inputs` sends for each (record, rubric).
const PYTHON_RENDERING: &str = r####"
import json, sys

ABS_SYSTEM_PROMPT = "You are a fair judge assistant tasked with providing clear, objective feedback based on specific criteria, ensuring each assessment reflects the absolute standards set for performance."

ABS_USER_PROMPT_TEMPLATE = """
###Task Description:
An instruction (might include an Input inside it), a response to evaluate, and a score rubric representing a evaluation criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not evaluating in general.
2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
3. The output format should look as follows: "Feedback: (write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

###Reference Answer (Score 5):
{reference_answer}

###Score Rubrics:
{score_rubric}

###Feedback: """

bench, answers, system_key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
if bench.endswith(".parquet"):
    import pyarrow.parquet as pq
    records = pq.read_table(bench).to_pylist()
else:
    records = [json.loads(l) for l in open(bench, encoding="utf-8") if l.strip()]
out = []
for i, record in enumerate(records):
    user = record.get("prompt") or record.get("instruction")
    if system_key and record.get("system"):
        instruction = f"{record['system']}\n{user}"
    else:
        instruction = user
    rubrics = record.get("rubrics") or record.get("rubric")
    shown = [json.dumps(r, indent=4) for r in rubrics] if isinstance(rubrics, list) else [rubrics]
    for rubric_str in shown:
        content = ABS_USER_PROMPT_TEMPLATE.format(
            instruction=instruction,
            response=answers[i],
            reference_answer=record["reference_answer"],
            score_rubric=rubric_str,
        ).strip()
        out.append([{"role": "system", "content": ABS_SYSTEM_PROMPT}, {"role": "user", "content": content}])
print(json.dumps(out))
"####;

fn python_script(dir: &Path, name: &str, text: &str, args: &[&str]) -> String {
    let script = dir.join(name);
    std::fs::write(&script, text).unwrap();
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The scripted judge (tests/python/judge_server.py) logging whole request bodies.
struct ScriptedJudge {
    port: u16,
    log: PathBuf,
    _child: std::process::Child,
}

impl ScriptedJudge {
    fn start(dir: &Path) -> Self {
        let log = dir.join("judge-calls.jsonl");
        let mut cmd = std::process::Command::new(common::python());
        cmd.arg(common::repo().join("tests/python/judge_server.py"))
            .args(["--log", log.to_str().unwrap(), "--log-bodies"])
            .stdout(std::process::Stdio::piped());
        let mut child = common::spawn_tied(cmd);
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        Self {
            port,
            log,
            _child: child,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["body"].clone())
            .collect()
    }
}

/// Records with the text that trips a renderer: quotes, backslashes, newlines, tabs,
/// braces, control characters, DEL, non-ASCII and astral characters, rubric keys out of
/// alphabetical order with extra members (nested, empty, numbers), a legacy string
/// `rubric` and `instruction` in place of `prompt`.
fn tricky_records() -> Vec<String> {
    let descriptions = |tag: &str| {
        json!({"1": format!("{tag}: \"none\" at all"), "2": "weak\nand thin", "3": "fair \\ so-so",
               "4": "good — très bien", "5": "perfect 😀 {score}"})
    };
    let first = format!(
        r#"{{"source": "s", "system": "Be terse.\tAlways.", "prompt": "Say \"hi\" to {{name}} and 'bye'\nthen\\n stop.", "reference_answer": "Hi \"name\" — ünïcödé\u007f\u0001 end", "rubrics": [{{"score_descriptions": {}, "criteria": "Does it \"greet\"?\nReally?", "weight": 0.5, "tags": [], "extra": {{}}, "n": 1e-05}}, {{"criteria": "Plain", "score_descriptions": {}}}]}}"#,
        descriptions("a"),
        descriptions("b")
    );
    let legacy_rubric =
        json!({"criteria": "Old style: \"quoted\"", "score_descriptions": descriptions("c")});
    let second = json!({
        "source": "t", "instruction": "Ｗide ｃhars and 🚀 rockets?", "reference_answer": "{{braces}} stay",
        "rubric": format!("  {}\n", serde_json::to_string_pretty(&legacy_rubric).unwrap()),
    })
    .to_string();
    vec![first, second]
}

fn answers(out: &Path, texts: &[&str]) {
    let (mut log, _) = JsonlLog::open(out.to_str().unwrap(), "answers/shard-00000.jsonl").unwrap();
    let records: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(item, t)| {
            serde_json::to_value(Answer {
                item,
                response: t.to_string(),
                finish_reason: "stop".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                samples: 1,
                reward: None,
            })
            .unwrap()
        })
        .collect();
    log.append(&records).unwrap();
}

/// Judge `bench` through the scripted judge; the bodies it received, in (item, rubric)
/// order, and Python's rendering of the same records.
fn judged_and_python(dir: &Path, bench: &Path, show_system: bool) -> (Vec<Value>, Vec<Value>) {
    let responses = ["A \"quoted\"\nanswer {x} — ok", "Second\\answer\u{7f} 🚀"];
    let out = dir.join(format!("out-{show_system}"));
    answers(&out, &responses);
    let server = ScriptedJudge::start(&out);
    let cfg = EvalConfig::resolve(
        None,
        &[
            format!("bench.path={}", bench.display()),
            format!("output_dir={}", out.display()),
            format!("judge.url=http://127.0.0.1:{}/v1", server.port),
            "judge.api_key_env=null".into(),
            "judge.runs=1".into(),
            "judge.concurrency=1".into(),
            format!("judge.show_system={show_system}"),
        ],
    )
    .unwrap();
    janus::eval::judge::run(&cfg, &mut StageProgress::quiet("judge")).unwrap();
    let mut bodies = server.bodies();
    // One call per (item, rubric), asked in that order with concurrency 1.
    bodies.retain(|b| b.is_object());
    let theirs = python_script(
        dir,
        "render.py",
        PYTHON_RENDERING,
        &[
            bench.to_str().unwrap(),
            &serde_json::to_string(&responses).unwrap(),
            if show_system { "1" } else { "0" },
        ],
    );
    let theirs: Vec<Value> = serde_json::from_str(&theirs).unwrap();
    (bodies, theirs)
}

fn assert_same_messages(ours: &[Value], theirs: &[Value]) {
    assert_eq!(ours.len(), theirs.len(), "calls");
    for (k, (o, t)) in ours.iter().zip(theirs).enumerate() {
        let (o, t) = (&o["messages"], t);
        for m in 0..2 {
            let (a, b) = (
                o[m]["content"].as_str().unwrap(),
                t[m]["content"].as_str().unwrap(),
            );
            assert!(
                a.as_bytes() == b.as_bytes(),
                "call {k}, message {m} differs\n--- ours ---\n{a}\n--- the original ---\n{b}"
            );
            assert_eq!(o[m]["role"], t[m]["role"]);
        }
    }
}

#[test]
fn judge_messages_equal_the_originals_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench.jsonl");
    std::fs::write(&bench, tricky_records().join("\n") + "\n").unwrap();
    for show_system in [false, true] {
        let (ours, theirs) = judged_and_python(dir.path(), &bench, show_system);
        assert_eq!(
            ours.len(),
            3,
            "2 rubrics of item 0, the legacy rubric of item 1"
        );
        assert_same_messages(&ours, &theirs);
        // The non-ASCII really is escaped, as json.dumps does.
        let user = ours[0]["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("tr\\u00e8s bien") && user.contains("\\ud83d\\ude00"));
        assert!(
            user.contains("\"score_descriptions\": {\n        \"1\": \"a: \\\"none\\\" at all\"")
        );
        assert_eq!(user.contains("Be terse.\tAlways.\nSay"), show_system);
        // The original's request parameters and model.
        for b in &ours {
            assert_eq!(
                (
                    &b["model"],
                    &b["max_tokens"],
                    &b["temperature"],
                    &b["top_p"]
                ),
                (
                    &json!("gpt-4-0125-preview"),
                    &json!(1024),
                    &json!(1.0),
                    &json!(0.9)
                )
            );
        }
    }
}

#[test]
fn a_parquet_bench_renders_as_the_original_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // Parquet keeps one schema: rubrics of the published shape, nested text tricky.
    let rows: Vec<Value> = (0..2)
        .map(|i| {
            let d = json!({"1": "n\"o\"", "2": "é\n", "3": "\\", "4": "{x}", "5": format!("best {i} 😀")});
            json!({
                "source": "s", "system": "S", "prompt": format!("Q{i} \"quoted\"\n"),
                "reference_answer": "R — ref",
                "rubrics": [{"criteria": format!("C{i}\t\"c\""), "score_descriptions": d}],
            })
        })
        .collect();
    let bench = dir.path().join("bench.parquet");
    janus::data::write_parquet(&bench, &rows).unwrap();
    let (ours, theirs) = judged_and_python(dir.path(), &bench, false);
    assert_eq!(ours.len(), 2);
    assert_same_messages(&ours, &theirs);
}

/// The published pattern and flags (kaistAI/Janus `utils/output_parser.py`).
const PYTHON_PARSER: &str = r####"
import json, re, sys
abs_pattern = r"""(?:\[RESULT\]|Score|\[SCORE\]|\[RESULT\]:|Score:|score:|Result:|\[Result\]|score of)\s*(?:\(\s*|\[\s*|)\s*(\d+)"""
def parse_judgment_abs(output):
    matches = re.search(abs_pattern, output, re.IGNORECASE | re.VERBOSE)
    if matches:
        result = next((int(match) for match in matches.groups() if match), None)
        if result is not None:
            return result
    return None
print(json.dumps([parse_judgment_abs(t) for t in json.load(open(sys.argv[1], encoding="utf-8"))]))
"####;

#[test]
fn the_original_parser_reads_what_pythons_re_reads() {
    let texts = [
        "Feedback: good. [RESULT] 4",
        "[RESULT]: 4",
        "[RESULT] 10",
        "[RESULT] 0",
        "It is closer to Score 3 than 5. [RESULT] 4",
        "[RESULT] 2 at first, on reflection [RESULT] 5",
        "Poor performance. [RESULT] score of 1",
        "Good job. [3]",
        "Good job. (Score 5)",
        "Good job. [Score 4]",
        "Well done. [RESULT] Result: 4",
        "[RESULT] four",
        "Score: 4",
        "",
        "[result] 3",
        "[RESULT] **5**",
        "[RESULT] (2)",
        "The score of 2 is fair",
        "Scores 3",
        "[RESULT] \u{664}",
        "[RESULT]\u{1c}4",
        "[RESULT] 4.5",
        "[Result]:\n 2",
        "Feedback [result] 2 [RESULT] 3",
        "SCORE:5",
        "ſcore 3",
    ];
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.json");
    std::fs::write(&table, serde_json::to_string(&texts).unwrap()).unwrap();
    let theirs: Vec<Option<u64>> = serde_json::from_str(&python_script(
        dir.path(),
        "parse.py",
        PYTHON_PARSER,
        &[table.to_str().unwrap()],
    ))
    .unwrap();
    for (t, want) in texts.iter().zip(theirs) {
        let ours = janus::eval::parse::parse_original(t).map(u64::from);
        assert_eq!(ours, want, "{t:?}");
    }
}
