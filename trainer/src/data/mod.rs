//! Multifaceted Collection data: reading (JSONL, Parquet), typed records with the
//! published field variants, prompt formats, tokenisation with loss masks and
//! truncation accounting, packing, and batches.

mod batch;
mod examples;
pub mod inspect;
mod reader;
mod records;
pub mod shards;
pub mod stream;
pub mod tokens;

pub use batch::{pack, Batch, PreferenceBatch, RewardBatch, IGNORE};
pub use examples::{
    encode_joint, reward_input, Ending, Example, Pair, Tokenization, TokenizeStats,
};
pub use janus_crds::config::PromptFormat;
pub use reader::{read_rows, read_rows_with_text, write_jsonl, write_parquet, Row};
pub use records::{load_records, LoadStats, PreferenceRecord, Record, SftRecord};
