//! Progress: a bar on a terminal, structured log lines elsewhere (pods, CI).

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    /// Only rank 0 reports steps; the others stay quiet.
    enabled: bool,
}

impl Progress {
    pub fn new(draw_bar: bool, enabled: bool, total: u64, start: u64) -> Self {
        let bar = (draw_bar && enabled).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} steps {msg}",
                )
                .expect("valid template"),
            );
            b.set_position(start);
            b
        });
        Self {
            bar,
            total,
            enabled,
        }
    }

    /// Report a finished step; `log` marks the steps that also get a log line.
    pub fn step(&self, step: u64, fields: &[(&str, f64)], log: bool) {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
                .unwrap_or(f64::NAN)
        };
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!(
                "loss {:.4} lr {:.2e} tok/s {:.0}",
                get("loss"),
                get("learning_rate"),
                get("tokens_per_second")
            ));
            return;
        }
        if log && self.enabled {
            let extra: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        *k,
                        "loss" | "learning_rate" | "grad_norm" | "tokens_per_second"
                    )
                })
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect();
            tracing::info!(
                step,
                total_steps = self.total,
                loss = get("loss"),
                learning_rate = get("learning_rate"),
                grad_norm = get("grad_norm"),
                tokens_per_second = get("tokens_per_second"),
                metrics = %serde_json::Value::Object(extra),
                "train step"
            );
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Logs: human-readable on a terminal, JSON lines otherwise (`RUST_LOG` filters).
pub fn init_logging(terminal: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if terminal {
        builder.compact().init();
    } else {
        builder.json().flatten_event(true).init();
    }
}
