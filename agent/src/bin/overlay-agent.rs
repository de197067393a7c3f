//! `overlay-agent`: the per-host daemon. See `overlay-agent --help`.

use clap::Parser;
use overlay_agent::config::{Cli, ConfigError, KV_PASSWORD_ENV, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, e.g. "unexpected argument '--bogus' found".
            let text = e.to_string();
            let line = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("overlay-agent: {line}");
            return std::process::ExitCode::from(2);
        }
    };
    let settings = match Settings::resolve(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("overlay-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The password is in the settings now; children (nft, ip) need not inherit it.
    // SAFETY: no other thread exists yet (the runtime is built below), so nothing reads the
    // environment concurrently.
    unsafe { std::env::remove_var(KV_PASSWORD_ENV) };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OVERLAY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(overlay_agent::daemon::run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Settings only the running system can judge (etcd refusing our TLS material or
        // credentials, an unknown group): one line, exit code 2 like any bad setting.
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("overlay-agent: {e}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("overlay-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
