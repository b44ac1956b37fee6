//! Logging setup: the `log` facade to the systemd journal when systemd
//! started us (JOURNAL_STREAM is set), to stderr otherwise.
//!
//! Garage logs through `tracing`; with no tracing subscriber installed its
//! events arrive here as `log` records (tracing's `log` feature), so one
//! filter governs both. Garage's chatter is held at `warn` unless RUST_LOG
//! asks for more. This module must not decide anything else.

use log::LevelFilter;

/// Crates whose info-level output would flood an operator's console.
const QUIET_TARGETS: &[&str] = &[
    "garage_util",
    "garage_net",
    "garage_rpc",
    "garage_db",
    "garage_table",
    "garage_block",
    "garage_model",
];

/// Installs the logger once; later calls are ignored (tests start several nodes).
pub fn init(verbose: bool) {
    let level = if verbose { LevelFilter::Debug } else { LevelFilter::Info };
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            if log::set_boxed_logger(Box::new(QuietGarage { inner: journal })).is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    for t in QUIET_TARGETS {
        builder.filter_module(t, LevelFilter::Warn);
    }
    // RUST_LOG, when set, overrides the defaults above (e.g. RUST_LOG=garage_rpc=debug).
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_millis();
    let _ = builder.try_init();
}

/// Holds Garage's targets at `warn` in front of a logger that has no
/// per-target filter of its own (the journal's).
struct QuietGarage<L> {
    inner: L,
}

fn is_quiet(target: &str) -> bool {
    QUIET_TARGETS
        .iter()
        .any(|t| target == *t || target.strip_prefix(t).is_some_and(|rest| rest.starts_with("::")))
}

impl<L: log::Log> log::Log for QuietGarage<L> {
    fn enabled(&self, m: &log::Metadata) -> bool {
        (m.level() <= log::Level::Warn || !is_quiet(m.target())) && self.inner.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.inner.log(r);
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn garage_targets_are_quiet() {
        assert!(super::is_quiet("garage_rpc::system"));
        assert!(super::is_quiet("garage_table"));
        assert!(!super::is_quiet("garage_rpcx"));
        assert!(!super::is_quiet("estafette::storage"));
    }
}
