//! Logging: JSON lines (or text for humans) through `tracing`.
//!
//! Installed once by the binary; tests run without a subscriber. Secrets never reach a
//! log line because the config holds them as `SecretString`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it twice is harmless (the second call is a
/// no-op), which keeps tests that start several origins simple.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the process-wide TLS crypto provider (ring) used by the HTTP clients.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
