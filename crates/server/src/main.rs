//! `tessera-server`: the Tessera HTTP service (also available as `tessera serve`).

use clap::Parser;

/// Tessera capability token service.
#[derive(Parser)]
#[command(name = "tessera-server", version, about)]
struct Cli {
    #[command(flatten)]
    config: tessera_server::Config,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match tessera_server::run(cli.config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `run` logged why.
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
