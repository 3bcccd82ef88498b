//! Logging on stderr: warnings by default, `-q` for none, `-v`... for more,
//! `RUST_LOG` over all of them when set. Lines read `warning: ...`,
//! `debug: ...`; the CLI's own info lines (the fetch summary) have no prefix.

use std::io::Write;
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The target of the CLI's own events (the binary's module path would be
/// `wasm_cache`, the library's name).
pub(crate) const TARGET: &str = "wasm_cache_cli";

/// Our crates, whose events `-v` turns up first.
const OURS: [&str; 7] = [
    TARGET,
    "wasm_cache",
    "wasm_cache_core",
    "wasm_store_fs",
    "wasm_fetch_http",
    "wasm_fetch_oci",
    "wasm_fetch_transport",
];

/// The filter for `-q` / `-v` counts when `RUST_LOG` is not set.
pub(crate) fn default_directives(verbose: u8, quiet: bool) -> String {
    if quiet {
        return "off".to_owned();
    }
    let (ours, others) = match verbose {
        0 => return format!("warn,{TARGET}=info"),
        1 => ("info", "warn"),
        2 => ("debug", "info"),
        _ => ("trace", "debug"),
    };
    let mut d = others.to_owned();
    for c in OURS {
        d.push_str(&format!(",{c}={ours}"));
    }
    d
}

pub(crate) fn init(verbose: u8, quiet: bool) {
    let default = default_directives(verbose, quiet);
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            bad_env = Some(e.to_string());
            EnvFilter::new(&default)
        }),
        _ => EnvFilter::new(&default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrAroundBar)
        .event_format(Lines)
        .init();
    if let Some(e) = bad_env {
        tracing::warn!(target: TARGET, "ignoring RUST_LOG: {e}");
    }
}

/// One event per line: a lower-case level prefix (none for info), the message
/// and its fields.
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let prefix = match *meta.level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(writer, "{prefix}")?;
        if *meta.level() >= Level::DEBUG {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The progress bar on screen, if any, so that log lines do not tear it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Sets (or clears) the bar log lines must be printed around.
pub(crate) fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = bar;
}

/// Writes to stderr, hiding the progress bar during the write.
#[derive(Clone, Copy)]
struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrAroundBar {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_show_warnings_and_the_summary_and_quiet_shows_nothing() {
        assert_eq!(default_directives(0, false), "warn,wasm_cache_cli=info");
        assert_eq!(default_directives(3, true), "off");
        let vv = default_directives(2, false);
        assert!(vv.starts_with("info,"), "{vv}");
        assert!(vv.contains("wasm_fetch_oci=debug"), "{vv}");
        for v in 0..4 {
            EnvFilter::try_new(default_directives(v, false)).unwrap();
        }
    }
}
