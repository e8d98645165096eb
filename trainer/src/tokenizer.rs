//! Hugging Face `tokenizer.json` through the `tokenizers` crate, and a small byte-level
//! BPE trainer so tests and the demo never download a tokenizer.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use crate::error::{Error, Result};

/// A token's byte range in the text it came from.
pub type Span = (usize, usize);

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: i64,
    pub eos_id: i64,
    /// Padding uses EOS, as the Janus recipe does.
    pub pad_id: i64,
    /// sha256 of `tokenizer.json`: recorded in checkpoints and data indexes.
    pub identity: String,
    /// The file it was read from, for messages.
    pub path: std::path::PathBuf,
}

/// BOS/EOS spellings of the families we train (Mistral/Llama 2, then Llama 3).
const BOS: &[&str] = &["<s>", "<|begin_of_text|>"];
const EOS: &[&str] = &["</s>", "<|end_of_text|>"];

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        let find = |names: &[&str], what: &str| {
            names
                .iter()
                .find_map(|n| inner.token_to_id(n))
                .map(i64::from)
                .ok_or_else(|| {
                    Error::Model(format!(
                        "{}: no {what} token (looked for {names:?})",
                        path.display()
                    ))
                })
        };
        let (bos_id, eos_id) = (find(BOS, "BOS")?, find(EOS, "EOS")?);
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            pad_id: eos_id,
            identity: hex::encode(Sha256::digest(&bytes)),
            path: path.to_path_buf(),
        })
    }

    /// The `pad_token_id` a reward model's config.json names: transformers'
    /// `*ForSequenceClassification` reads each row at its last token that is not this
    /// id, and our reward inputs end with EOS (`data::reward_input`), so it cannot be
    /// EOS (our padding): `<unk>` when the vocabulary has one, else BOS (never last).
    /// Batches given to transformers are padded with it (or padded on the left).
    pub fn reward_pad_id(&self) -> i64 {
        self.inner
            .token_to_id("<unk>")
            .map(i64::from)
            .filter(|&u| u != self.eos_id)
            .unwrap_or(self.bos_id)
    }

    /// Token ids of `text`, without special tokens (the prompt format adds BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Data(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Token ids of `text` with each token's byte range in `text` (no special tokens).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<i64>, Vec<Span>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Data(format!("tokenizer: {e}")))?;
        Ok((
            enc.get_ids().iter().map(|&i| i as i64).collect(),
            enc.get_offsets().to_vec(),
        ))
    }

    /// The vocabulary's spelling of token `id` (`▁The`, `<0x0A>`, `Ġthe`).
    pub fn token(&self, id: i64) -> String {
        self.inner
            .id_to_token(id as u32)
            .unwrap_or_else(|| format!("<{id}?>"))
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::Data(format!("tokenizer: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Train a byte-level BPE with `<unk>`, `<s>`, `</s>` at ids 0, 1, 2 (Mistral's
    /// layout) on `texts`, and write it to `path`.
    pub fn train_bpe<I>(texts: I, vocab_size: usize, path: &Path) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        let specials: Vec<AddedToken> = ["<unk>", "<s>", "</s>"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut tok = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| Error::Model(format!("building tokenizer: {e}")))?;
        tok.train(&mut trainer, texts)
            .map_err(|e| Error::Model(format!("training tokenizer: {e}")))?;
        tok.save(path, false)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Self::from_file(path)
    }
}
