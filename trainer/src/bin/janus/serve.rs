//! `janus serve`: an OpenAI-compatible server on a model directory.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, ValueEnum};
use janus::data::PromptFormat;
use janus::generate::EngineOptions;
use janus::serve::{self, ServeOptions};
use janus::Result;

use crate::args::{DeviceArg, DtypeArg};

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// `[INST] {system}\n{prompt} [/INST]`
    Mistral,
    /// `<|im_start|>...<|im_end|>` markers
    Chatml,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Hugging Face model directory (a path or an s3:// gs:// az:// file:// URL).
    #[arg(long)]
    model: String,
    /// `tokenizer.json` (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<String>,
    /// The prompt format the model was trained with.
    #[arg(long, value_enum, default_value = "mistral")]
    prompt_format: FormatArg,
    #[arg(long, value_enum, default_value = "bfloat16")]
    dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients send (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoded together (requests beyond it wait in the queue).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Prompt tokens prefilled in one pass.
    #[arg(long, default_value_t = 8192)]
    max_prefill_tokens: usize,
    /// Longest prompt + completion (default: the model's max_position_embeddings).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Environment variable holding the API key clients must send as a bearer token
    /// (unset or empty: no authentication).
    #[arg(long, default_value = "JANUS_API_KEY")]
    api_key_env: String,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        a.model
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("model")
            .to_string()
    });
    let api_key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
    serve::run(ServeOptions {
        model: a.model,
        tokenizer: a.tokenizer,
        dtype: a.dtype.dtype(),
        device: a.device.choice(),
        prompt_format: match a.prompt_format {
            FormatArg::Mistral => PromptFormat::Mistral,
            FormatArg::Chatml => PromptFormat::Chatml,
        },
        served_name: name,
        addr: SocketAddr::new(a.host, a.port),
        engine: EngineOptions {
            max_batch: a.max_batch,
            max_prefill_tokens: a.max_prefill_tokens,
        },
        max_model_len: a.max_model_len,
        api_key,
    })
}
