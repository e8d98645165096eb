//! Rows of a data file as JSON values, each with its location (`file:line` for JSONL,
//! `file:row N` for Parquet), so a malformed record can be named precisely.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::error::{Error, IoContext, Result};

/// One row: where it came from, and its value or why it could not be parsed.
pub struct Row {
    pub location: String,
    pub value: std::result::Result<Value, String>,
    /// The row's JSON text (a JSONL line, or a Parquet row as arrow-json writes it,
    /// columns in schema order), kept by [`read_rows_with_text`] for readers that need
    /// the record's key order (`serde_json::Value` sorts keys); None otherwise.
    pub text: Option<String>,
}

/// Read every row of a `.jsonl`, `.json` (an array) or `.parquet` file.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    read(path, false)
}

/// [`read_rows`], keeping each row's text (not for training data: it doubles the
/// memory; `.json` arrays keep none).
pub fn read_rows_with_text(path: &Path) -> Result<Vec<Row>> {
    read(path, true)
}

fn read(path: &Path, keep_text: bool) -> Result<Vec<Row>> {
    let name = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("ndjson") => {
            let f = File::open(path).ctx(|| name.clone())?;
            let mut rows = Vec::new();
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.ctx(|| format!("{name}:{}", i + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                rows.push(Row {
                    location: format!("{name}:{}", i + 1),
                    value: serde_json::from_str(&line).map_err(|e| format!("invalid JSON: {e}")),
                    text: keep_text.then_some(line),
                });
            }
            Ok(rows)
        }
        Some("json") => {
            let text = std::fs::read_to_string(path).ctx(|| name.clone())?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Data(format!("{name}: invalid JSON: {e}")))?;
            let Value::Array(items) = v else {
                return Err(Error::Data(format!(
                    "{name}: expected a JSON array of records"
                )));
            };
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| Row {
                    location: format!("{name}[{i}]"),
                    value: Ok(v),
                    text: None,
                })
                .collect())
        }
        Some("parquet") => read_parquet(path, keep_text),
        _ => Err(Error::Data(format!(
            "{name}: unknown data file type (expected .jsonl, .json or .parquet)"
        ))),
    }
}

fn read_parquet(path: &Path, keep_text: bool) -> Result<Vec<Row>> {
    let name = path.display().to_string();
    let bad = |e: &dyn std::fmt::Display| Error::Data(format!("{name}: {e}"));
    let f = File::open(path).ctx(|| name.clone())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| bad(&e))?
        .build()
        .map_err(|e| bad(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let mut buf = Vec::new();
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        w.write(&batch).map_err(|e| bad(&e))?;
        w.finish().map_err(|e| bad(&e))?;
        drop(w);
        for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let location = format!("{name}:row {}", rows.len());
            rows.push(Row {
                location,
                value: serde_json::from_slice(line)
                    .map_err(|e| format!("row is not a record: {e}")),
                text: keep_text.then(|| String::from_utf8_lossy(line).into_owned()),
            });
        }
    }
    Ok(rows)
}

/// Write records as JSON lines.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let name = path.display().to_string();
    let mut w = BufWriter::new(File::create(path).ctx(|| name.clone())?);
    for r in rows {
        writeln!(w, "{r}").ctx(|| name.clone())?;
    }
    w.flush().ctx(|| name)
}

/// Write records as a snappy-compressed Parquet file, schema inferred from the values
/// (nested lists and structs become Parquet lists and structs, as on the hub).
pub fn write_parquet(path: &Path, rows: &[Value]) -> Result<()> {
    let name = path.display().to_string();
    let bad = |e: &dyn std::fmt::Display| Error::Data(format!("{name}: {e}"));
    let schema =
        Arc::new(infer_json_schema_from_iterator(rows.iter().map(Ok)).map_err(|e| bad(&e))?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let f = File::create(path).ctx(|| name.clone())?;
    let mut writer = ArrowWriter::try_new(f, schema.clone(), Some(props)).map_err(|e| bad(&e))?;
    const CHUNK: usize = 1024;
    for chunk in rows.chunks(CHUNK) {
        let mut decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(CHUNK)
            .build_decoder()
            .map_err(|e| bad(&e))?;
        decoder.serialize(chunk).map_err(|e| bad(&e))?;
        if let Some(batch) = decoder.flush().map_err(|e| bad(&e))? {
            writer.write(&batch).map_err(|e| bad(&e))?;
        }
    }
    writer.close().map_err(|e| bad(&e))?;
    Ok(())
}
