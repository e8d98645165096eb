//! Sharded datasets: deterministic shards, rank-sharded streaming that covers the data
//! exactly once, resumable positions, and errors that name the shard or record.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use janus::data::shards::{write_shards, ShardIndex, ShardOptions, INDEX};
use janus::data::stream::{ShardedData, StreamPlan};
use janus::storage::Store;
use serde_json::Value;

const RETRY: Duration = Duration::from_secs(5);

/// Small blocks so that a few hundred records make many blocks and several shards.
fn small() -> ShardOptions {
    ShardOptions {
        shard_bytes: 8 << 10,
        block_bytes: 4 << 10,
        ..Default::default()
    }
}

fn shard(input: &Path, out: &Path, opts: &ShardOptions) -> ShardIndex {
    let store = Store::open(&out.display().to_string(), RETRY).unwrap();
    write_shards(&input.display().to_string(), &store, opts, RETRY, |_, _| {}).unwrap()
}

fn plan(rank: usize, world: usize, seed: u64, epoch: u64) -> StreamPlan {
    StreamPlan {
        seed,
        epoch,
        rank,
        world,
        window_blocks: 3,
        prefetch_windows: 2,
    }
}

fn read_all(data: &ShardedData, p: StreamPlan, start: u64) -> Vec<Value> {
    let mut s = data.stream::<Value>(p, start).unwrap();
    let mut out = vec![];
    while let Some(r) = s.next_record().unwrap() {
        out.push(r.parsed.unwrap());
    }
    out
}

fn source_records(path: &Path) -> Vec<Value> {
    janus::data::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect()
}

/// Records as a multiset of their canonical JSON.
fn multiset(v: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in v {
        *m.entry(r.to_string()).or_default() += 1;
    }
    m
}

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn shards_are_deterministic_and_streams_cover_every_record_once_for_1_2_3_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    janus::sample::write_sample_data(&data, 64, 0).unwrap();
    let input = data.join("sft.parquet");
    let a = shard(&input, &tmp.path().join("a"), &small());
    let b = shard(&input, &tmp.path().join("b"), &small());
    assert_eq!(a, b);
    assert!(
        a.shards.len() >= 3,
        "want several shards: {}",
        a.shards.len()
    );
    let fa = files_of(&tmp.path().join("a"));
    assert_eq!(
        fa,
        files_of(&tmp.path().join("b")),
        "shards differ between runs"
    );
    assert_eq!(fa.len(), a.shards.len() + 1);
    assert_eq!(a.sources[0].path, "sft.parquet");

    let source = source_records(&input);
    assert_eq!(a.samples as usize, source.len());
    let ds = ShardedData::open(&tmp.path().join("a").display().to_string(), RETRY).unwrap();
    for world in 1..=3 {
        let parts: Vec<Vec<Value>> = (0..world)
            .map(|r| read_all(&ds, plan(r, world, 7, 0), 0))
            .collect();
        // Disjoint and covering: the union is the source, each record once.
        let all: Vec<Value> = parts.iter().flatten().cloned().collect();
        assert_eq!(multiset(&all), multiset(&source), "world {world}");
        for (r, p) in parts.iter().enumerate() {
            assert_eq!(
                p.len() as u64,
                ds.rank_samples(7, 0, world)[r],
                "world {world} rank {r}"
            );
            // The same seed gives the same records in the same order.
            assert_eq!(p, &read_all(&ds, plan(r, world, 7, 0), 0));
        }
    }
    let one = read_all(&ds, plan(0, 1, 7, 0), 0);
    assert_ne!(one, source, "records are not shuffled");
    assert_ne!(one, read_all(&ds, plan(0, 1, 8, 0), 0), "seed is ignored");
    assert_ne!(one, read_all(&ds, plan(0, 1, 7, 1), 0), "epoch is ignored");
}

#[test]
fn a_stream_started_at_a_position_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    janus::sample::write_sample_data(&data, 48, 0).unwrap();
    shard(
        &data.join("preference.jsonl"),
        &tmp.path().join("s"),
        &small(),
    );
    let ds =
        ShardedData::open(&format!("file://{}", tmp.path().join("s").display()), RETRY).unwrap();
    let full = read_all(&ds, plan(1, 2, 3, 2), 0);
    for start in [1, 5, 17, full.len() as u64 - 1, full.len() as u64] {
        assert_eq!(
            read_all(&ds, plan(1, 2, 3, 2), start),
            full[start as usize..],
            "start {start}"
        );
    }
}

fn stream_cli(dataset: &Path) -> std::process::Output {
    let mut cmd = common::janus();
    cmd.args(["data", "stream", "--dataset"])
        .arg(dataset)
        .args(["--stats"]);
    cmd.output().unwrap()
}

#[test]
fn a_corrupt_or_missing_shard_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    janus::sample::write_sample_data(&data, 32, 0).unwrap();
    let out = tmp.path().join("s");
    let index = shard(&data.join("sft.jsonl"), &out, &small());
    let victim = &index.shards[1];
    let path = out.join(&victim.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = victim.blocks[1].offset as usize + 7;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let o = stream_cli(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&victim.name) && err.contains("block 1") && err.contains("checksum mismatch"),
        "{err}"
    );

    std::fs::remove_file(&path).unwrap();
    let o = stream_cli(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("{}/{}", out.display(), victim.name))
            && err.contains("no such object"),
        "{err}"
    );

    std::fs::remove_file(out.join(INDEX)).unwrap();
    let o = stream_cli(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("index.json: no such object"), "{err}");
}

#[test]
fn sharding_names_a_bad_record_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    let good = r#"{"system": "Be brief.", "prompt": "Hi?", "output": "Hello."}"#;
    std::fs::write(src.join("a.jsonl"), format!("{good}\n{good}\n")).unwrap();
    std::fs::write(
        src.join("b.jsonl"),
        format!("{good}\n{{\"system\": \"x\", \"prompt\": \"y\"}}\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut cmd = common::janus();
    cmd.args(["data", "shard", "--input"])
        .arg(&src)
        .arg("--output")
        .arg(&out);
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("b.jsonl:2") && err.contains("output"), "{err}");
    assert!(!out.join(INDEX).exists(), "a failed sharding left an index");

    let mut cmd = common::janus();
    cmd.args(["data", "shard", "--skip-bad-records", "--input"])
        .arg(&src)
        .arg("--output")
        .arg(&out);
    let o = cmd.output().unwrap();
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && line.contains("\"samples\":3"),
        "{o:?}"
    );
    let index: ShardIndex =
        ShardIndex::parse(&std::fs::read(out.join(INDEX)).unwrap(), "index").unwrap();
    assert_eq!(
        index
            .sources
            .iter()
            .map(|s| (s.path.as_str(), s.records, s.skipped))
            .collect::<Vec<_>>(),
        [("a.jsonl", 2, 0), ("b.jsonl", 1, 1)]
    );

    let mut again = common::janus();
    again
        .args(["data", "shard", "--input"])
        .arg(&src)
        .arg("--output")
        .arg(&out);
    let o = again.output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"),
        "{o:?}"
    );
}
