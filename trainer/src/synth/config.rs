//! What a synthesis run derives from its config: the client of the generating model
//! (the judge's OpenAI-compatible client: rate limit, retries, `Retry-After`) and each
//! call's seed.

use std::time::Duration;

use janus_crds::config::synth::{SynthConfig, SynthStage};

use super::records::Key;
use crate::error::{Error, Result};
use crate::openai::{ClientOptions, JudgeClient};

/// The client of `cfg.llm`, its API key read from the variable `llm.api_key_env` names.
pub fn client(cfg: &SynthConfig) -> Result<JudgeClient> {
    let l = &cfg.llm;
    let api_key = crate::openai::api_key_from_env(l.api_key_env.as_deref());
    JudgeClient::new(ClientOptions {
        url: l.url.clone(),
        model: l.model.clone(),
        api_key,
        requests_per_minute: l.requests_per_minute,
        timeout: Duration::from_secs(l.timeout_seconds),
        max_retries: l.max_retries,
        temperature: l.temperature,
        top_p: l.top_p,
        max_tokens: l.max_tokens,
    })
    .map_err(|e| Error::Config(format!("llm.url `{}`: {e}", l.url)))
}

/// The seed of a call: a function of the config's seed, the stage, the key and the try
/// only (so a rerun sends the same requests, and a re-ask another sample), below 2^53
/// so that every JSON reader keeps it exact.
pub fn seed(base: u64, stage: SynthStage, key: Key, attempt: usize) -> u64 {
    let parts = [
        base,
        stage as u64,
        key.instruction as u64,
        key.set as u64,
        key.preference.map_or(u64::MAX, |p| p as u64),
        attempt as u64,
    ];
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for p in parts {
        // splitmix64 over the running hash and each part.
        h = h.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h & ((1 << 53) - 1)
}
