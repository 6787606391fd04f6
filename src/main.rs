//! The `bulkprompt` binary: parse flags, set up logging, run the command, print any error and
//! exit with the code the command chose. Everything else lives in the library.

use bulkprompt::cli::{Cli, LogFormat};
use clap::{CommandFactory, FromArgMatches};
use std::alloc::{GlobalAlloc, Layout};

// Thousands of small allocations a second across threads (request bodies, responses, records):
// mimalloc spends about a third less CPU on them than glibc's malloc here.
#[global_allocator]
static GLOBAL: Allocator = Allocator;

extern "C" {
    // mimalloc's own (libmimalloc-sys links them).
    #[cfg(target_os = "linux")]
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_malloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_zalloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_realloc(p: *mut std::ffi::c_void, size: usize) -> *mut std::ffi::c_void;
}

/// mimalloc, asked through its plain entry points for what needs no more than a word's
/// alignment (nearly everything: strings, byte buffers, boxes): every block it hands out is
/// word-aligned, and `mi_malloc` is about half the instructions of the `mi_malloc_aligned` that
/// `mimalloc::MiMalloc` calls for every allocation (some 30 a request). Wider alignments (a
/// task's cell is 128) go to `MiMalloc` as before; both are freed by `mi_free`.
struct Allocator;

/// What every mimalloc block is aligned to.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each call is mimalloc's, whose blocks are word-aligned; a layout asking for more goes
// to MiMalloc, which honours any alignment.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr.cast(), size).cast()
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, size)
        }
    }
}
/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e`.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

/// Arenas committed as they are used, not eagerly: at 4,096 requests in flight the process
/// holds about 150 MB instead of 230, at no CPU cost measured (BENCHMARKS.md). The variable
/// `MIMALLOC_ARENA_EAGER_COMMIT`, when set, decides instead. mimalloc reserves its first arena
/// at the first allocation, before `main`, so this runs from `.init_array`, before any Rust
/// code allocates (the std runtime's first allocations come after the constructors; the
/// variable's name fits std's stack buffer, so reading it allocates nothing unless it is set).
#[cfg(target_os = "linux")]
extern "C" fn lazy_arenas() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads when it reserves an arena.
        unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LAZY_ARENAS: extern "C" fn() = lazy_arenas;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, zeroed when asked, and
    /// keeps its bytes through a realloc, whichever entry point serves it.
    #[test]
    fn the_allocator_honours_every_alignment() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 9, 24, 40, 100, 1000, 5000, 70_000, 3 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero layout, freed with the same layout.
                unsafe {
                    let p = Allocator.alloc_zeroed(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                    std::ptr::write_bytes(p, 0xAB, size);
                    let q = Allocator.realloc(p, layout, size * 3);
                    assert!(
                        !q.is_null() && (q as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xAB));
                    Allocator.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let r = Allocator.alloc(layout);
                    assert!(
                        !r.is_null() && (r as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    Allocator.dealloc(r, layout);
                }
            }
        }
    }
}
