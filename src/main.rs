//! The `bulkprompt` binary: parse flags, set up logging, run the command, print any error and
//! exit with the code the command chose. Everything else lives in the library.

use bulkprompt::cli::{Cli, LogFormat};
use clap::{CommandFactory, FromArgMatches};

// Thousands of small allocations a second across threads (request bodies, responses, records):
// mimalloc spends about a third less CPU on them than glibc's malloc here. At thousands of
// requests in flight it holds more memory; MIMALLOC_ARENA_EAGER_COMMIT=0 in the environment
// trades about a quarter more CPU for about a third less (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The flags; help piped to a file or a pager is 80 columns wide (clap's default is 100
/// where it cannot see a terminal).
fn parse() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        command = command.term_width(80);
    }
    Cli::from_arg_matches(&command.try_get_matches()?)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are answers; any other parse error is a usage error: exit 1
            // (clap's own 2 means "finished with failed jobs" here).
            use clap::error::ErrorKind;
            let asked = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            std::process::exit(if asked { 0 } else { 1 });
        }
    };
    let quiet = matches!(&cli.command, bulkprompt::cli::Command::Run(a) if a.quiet);
    let level = match (cli.verbose, quiet) {
        (0, true) => tracing::Level::WARN,
        (0, false) => tracing::Level::INFO,
        (1, _) => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(terminal && !bulkprompt::app::no_color());
    match cli.log_format {
        LogFormat::Json => {
            bulkprompt::app::JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            builder.json().init()
        }
        // On a terminal a person reads along; in a log file each line needs its time.
        LogFormat::Text if terminal => builder.without_time().init(),
        LogFormat::Text => builder.init(),
    }
    let code = match bulkprompt::app::execute(cli.command, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulkprompt: error: {}", bulkprompt::app::render_chain(&e));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
