//! The tracing subscriber: human-readable or JSON lines on stdout.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// `RUST_LOG`, when set, overrides `log.level`. Safe to call twice (tests): the second call
/// leaves the first subscriber in place.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: files and log collectors get plain text, and
    // the escape codes cost a measurable share of each request line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match settings.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
