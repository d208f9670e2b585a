//! The `hubbub` binary: serve (the default), mint a token, or check config.

use std::process::ExitCode;

use clap::Parser;
use hubbub::config::{Cli, Command, JwtKey, LogFormat};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.options.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hubbub: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };

    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(args) => {
            let JwtKey::Secret { secret, .. } = &config.jwt.key else {
                eprintln!("hubbub: `token` signs with --jwt-secret; this server uses a public key");
                return ExitCode::from(2);
            };
            let req = hubbub::auth::MintRequest {
                sub: &args.sub,
                name: args.name.as_deref(),
                role: &args.role,
                rooms: &args.rooms,
                ttl: args.ttl,
                issuer: config.jwt.issuer.as_deref(),
                audience: config.jwt.audience.as_deref(),
            };
            match hubbub::auth::mint(secret, &req) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hubbub: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => {
            let mut config = config;
            hubbub::server::apply_fd_defaults(&mut config);
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::ConfigReference => {
            print!("{}", hubbub::config::reference());
            ExitCode::SUCCESS
        }
        Command::Ready => probe_exit(config.listen.port(), "/ready"),
        Command::Alive => probe_exit(config.listen.port(), "/health"),
        Command::Serve => {
            init_logging(&config.log, config.log_format);
            let result = hubbub::server::start(config).and_then(|s| s.run_until_signal());
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("hubbub: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Exit 0 when the local server answers `GET path` with 200.
fn probe_exit(port: u16, path: &str) -> ExitCode {
    match probe(port, path) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hubbub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET path` on the local server; true on 200.
fn probe(port: u16, path: &str) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(&head[9..12] == b"200")
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
