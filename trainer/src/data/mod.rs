//! Multifaceted Collection data: reading (JSONL, Parquet), typed records with the
//! published field variants, prompt formats, tokenisation with loss masks and
//! truncation accounting, packing, and batches.

mod batch;
mod examples;
mod format;
mod reader;
mod records;
pub mod shards;
pub mod stream;

pub use batch::{pack, Batch, PreferenceBatch, IGNORE};
pub use examples::{Example, Pair, Tokenization, TokenizeStats};
pub use format::PromptFormat;
pub use reader::{read_rows, write_jsonl, write_parquet, Row};
pub use records::{load_records, LoadStats, PreferenceRecord, Record, SftRecord};
