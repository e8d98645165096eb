//! Append-only JSON-lines files under a stage's output directory (a path or an
//! object-store URL): what a stage has finished survives a kill, so a restart redoes
//! nothing that was recorded.
//!
//! On local disk records are appended and synced before `append` returns; a line cut
//! short by a kill is dropped on the next open. Object stores cannot append, so each
//! `append` writes a small part object `<name>.parts/<n>.jsonl` (one PUT, atomic),
//! and [`JsonlLog::compact`] folds the parts into `<name>` when the stage ends.
//! Readers take `<name>` and its parts together, and keep the first record per key.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::storage::Store;

/// How long one storage request is retried.
const RETRY: Duration = Duration::from_secs(120);

pub struct JsonlLog {
    store: Store,
    name: String,
    /// Local files are appended in place.
    file: Option<std::fs::File>,
    /// Next part number (object stores).
    next_part: u64,
    parts: Vec<String>,
}

fn parse_lines(text: &str, origin: &str, complete: bool) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            // The last line of a local file may have been cut by a kill.
            Err(_) if !complete && i + 1 == lines.len() => {}
            Err(e) => {
                return Err(Error::Data(format!(
                    "{origin}:{}: not a JSON record ({e}); remove the line or the file to redo it",
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

impl JsonlLog {
    /// Open (creating) `name` under `output_dir` and read what it already holds.
    pub fn open(output_dir: &str, name: &str) -> Result<(Self, Vec<Value>)> {
        let store = Store::open(output_dir, RETRY)?;
        let mut records = Vec::new();
        let mut log = Self {
            store: store.clone(),
            name: name.to_string(),
            file: None,
            next_part: 0,
            parts: vec![],
        };
        if let Some(dir) = store.local_dir() {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).ctx(|| parent.display().to_string())?;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::io(path.display().to_string(), e)),
            };
            records = parse_lines(&text, &path.display().to_string(), false)?;
            // Drop a cut-off last line so that appends start on a fresh line.
            let keep = match text.rfind('\n') {
                Some(i) => i + 1,
                None => 0,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ctx(|| path.display().to_string())?;
            if keep < text.len() {
                file.set_len(keep as u64)
                    .ctx(|| path.display().to_string())?;
            }
            log.file = Some(file);
            return Ok((log, records));
        }
        let url = format!("{}/{name}", store.url());
        match store.get_bytes(name) {
            Ok(b) => records.extend(parse_lines(&String::from_utf8_lossy(&b), &url, true)?),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let parts_dir = format!("{name}.parts");
        for (part, _) in store.list_objects(&parts_dir)? {
            let rel = format!("{parts_dir}/{part}");
            let b = store.get_bytes(&rel)?;
            records.extend(parse_lines(
                &String::from_utf8_lossy(&b),
                &format!("{}/{rel}", store.url()),
                true,
            )?);
            if let Some(n) = part
                .strip_suffix(".jsonl")
                .and_then(|n| n.parse::<u64>().ok())
            {
                log.next_part = log.next_part.max(n + 1);
            }
            log.parts.push(rel);
        }
        Ok((log, records))
    }

    /// Where the log lives (for messages).
    pub fn url(&self) -> String {
        format!("{}/{}", self.store.url(), self.name)
    }

    /// Record `records`; durable when this returns.
    pub fn append(&mut self, records: &[Value]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for r in records {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        if let Some(f) = &mut self.file {
            let url = format!("{}/{}", self.store.url(), self.name);
            f.write_all(text.as_bytes()).ctx(|| url.clone())?;
            return f.sync_data().ctx(|| url);
        }
        let rel = format!("{}.parts/{:012}.jsonl", self.name, self.next_part);
        self.next_part += 1;
        self.store.put_bytes(&rel, text.into_bytes())?;
        self.parts.push(rel);
        Ok(())
    }

    /// Object stores: write every record into `<name>` and delete the parts (a
    /// no-op on local disk). A kill in between leaves records twice, which readers
    /// deduplicate.
    pub fn compact(&mut self, records: &[Value]) -> Result<()> {
        if self.file.is_some() || self.parts.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for r in records {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        self.store.put_bytes(&self.name, text.into_bytes())?;
        self.store.delete_prefix(&format!("{}.parts", self.name))?;
        self.parts.clear();
        Ok(())
    }
}

/// Names of the JSON-lines logs directly under `dir` of `output_dir` (including
/// those that so far exist only as parts).
pub fn list_logs(output_dir: &str, dir: &str) -> Result<Vec<String>> {
    let store = Store::open(output_dir, RETRY)?;
    if let Some(local) = store.local_dir() {
        let d = local.join(dir);
        let mut names: Vec<String> = match std::fs::read_dir(&d) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".jsonl"))
                .map(|n| format!("{dir}/{n}"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(Error::io(d.display().to_string(), e)),
        };
        names.sort();
        return Ok(names);
    }
    let mut names: Vec<String> = store
        .list_objects(dir)?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".jsonl"))
        .chain(
            store
                .list_dirs(dir)?
                .into_iter()
                .filter_map(|d| d.strip_suffix(".parts").map(str::to_string)),
        )
        .map(|n| format!("{dir}/{n}"))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// `name` under `output_dir`, as a URL or path for messages.
pub fn output_url(output_dir: &str, name: &str) -> String {
    janus_crds::config::eval::output_path(output_dir, name)
}

/// Read a whole JSON document under `output_dir`, None when absent.
pub fn read_json(output_dir: &str, name: &str) -> Result<Option<Value>> {
    let store = Store::open(output_dir, RETRY)?;
    match store.get_bytes(name) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Data(format!("{}/{name}: {e}", store.url()))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write a whole file under `output_dir`.
pub fn write_file(output_dir: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
    Store::open(output_dir, RETRY)?.put_bytes(name, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        let (mut log, existing) = JsonlLog::open(out, "a/log.jsonl").unwrap();
        assert!(existing.is_empty());
        log.append(&[serde_json::json!({"k": 1}), serde_json::json!({"k": 2})])
            .unwrap();
        drop(log);
        // A kill in the middle of a line.
        let path = dir.path().join("a/log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"k\": 3, \"cut").unwrap();
        drop(f);
        let (mut log, existing) = JsonlLog::open(out, "a/log.jsonl").unwrap();
        assert_eq!(existing.len(), 2);
        log.append(&[serde_json::json!({"k": 4})]).unwrap();
        let (_, existing) = JsonlLog::open(out, "a/log.jsonl").unwrap();
        let ks: Vec<i64> = existing.iter().map(|v| v["k"].as_i64().unwrap()).collect();
        assert_eq!(ks, vec![1, 2, 4]);
        assert_eq!(
            list_logs(out, "a").unwrap(),
            vec!["a/log.jsonl".to_string()]
        );
        // A bad line in the middle is an error naming it.
        std::fs::write(&path, "{\"k\":1}\nnot json\n{\"k\":2}\n").unwrap();
        let e = JsonlLog::open(out, "a/log.jsonl")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("log.jsonl:2"), "{e}");
    }
}
