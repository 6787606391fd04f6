//! The version and the commit the binary was built from (`build.rs` embeds the commit), for
//! `--version`, the summary and the report.

/// The version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BULKPROMPT_COMMIT"),
    ")"
);

pub fn version() -> &'static str {
    VERSION
}
