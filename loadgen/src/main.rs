//! `hubbub-loadgen`: a load generator for chat protocol v1 servers (`shared/PROTOCOL.md`),
//! hubbub and the benchmark peers alike.
//!
//! Modules, from the wire up:
//! - `scan`: the fields a received frame is read for, by byte search, no JSON parse;
//! - `order`: loss and order checks on each connection's `seq` numbers;
//! - `token`: HS256 tokens for the simulated users;
//! - `clock`: the µs timestamps senders embed and receivers subtract;
//! - `session`: one simulated user and what each received frame means for the stats;
//! - `client`: one connection's I/O: dial, join, chat on a schedule, leave, close;
//! - `stats`: per-thread counters and histograms, gathered once a second;
//! - `run`: ramp, progress line, stop and drain;
//! - `scenario`: classroom, lecture, dm, churn and idle;
//! - `report` and `plot`: the table, the JSON file and the PNG chart.

mod cli;
mod client;
mod clock;
mod order;
mod plot;
mod report;
mod run;
mod scan;
mod scenario;
mod session;
mod stats;
mod token;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::cli::{Cli, Common, Scenario};
use crate::client::Dialer;
use crate::report::Summary;
use crate::run::Timing;
use crate::scenario::Ctx;
use crate::session::SERVER_RATE_LIMIT;
use crate::token::Minter;

/// Tokens stay valid this long past the end of the run, so a slow close never meets a 401.
const TOKEN_SLACK_SECS: u64 = 3600;

fn main() {
    // Print the error chain plainly; anyhow's Debug form adds a backtrace when
    // RUST_BACKTRACE is set, which reads like a crash for what is usually a bad flag.
    if let Err(e) = start() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn start() -> Result<()> {
    let cli = Cli::parse();
    let common = cli.scenario.common();
    let targets = common
        .url
        .split(',')
        .map(|url| target(common, url.trim()))
        .collect::<Result<Vec<_>>>()?;
    raise_fd_limit(common.clients);

    let threads = usize::from(common.threads);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(&cli.scenario, targets))
}

async fn run(scenario: &Scenario, targets: Vec<(SocketAddr, String)>) -> Result<()> {
    let common = scenario.common();
    let tag = common
        .tag
        .clone()
        .unwrap_or_else(|| format!("lg{:x}", clock::now_us() % 0xff_ffff));
    let exp = clock::now_secs() + (common.duration + common.drain).as_secs() + TOKEN_SLACK_SECS;
    eprintln!(
        "{} against {} with {} clients for {} (tag {tag})",
        scenario.name(),
        common.url,
        common.clients,
        humantime::format_duration(common.duration)
    );

    let ctx = Arc::new(Ctx {
        dialer: Dialer {
            targets,
            source_ips: common.source_ips,
            connect_timeout: common.connect_timeout,
        },
        // Every room of the run is named `<tag>-...`, so one prefix pattern admits them all.
        minter: Minter::new(common.secret.as_bytes(), exp).with_rooms(format!("{tag}-*")),
        timing: Timing::new(common.duration, common.drain, common.ramp),
        tag,
        sample: common.sample,
        size: common.size,
        join_timeout: common.connect_timeout,
    });
    let (outcome, params) = scenario::run(scenario, ctx).await;

    let limit = SERVER_RATE_LIMIT.load(Ordering::Relaxed);
    let summary = Summary::new(
        scenario.name(),
        &common.url,
        common.clients,
        params,
        &outcome,
        (limit > 0).then_some(limit),
    );
    print!("{}", summary.table());
    if scenario.name() == "idle" {
        println!(
            "held         {} connections joined and open when the hold ended",
            outcome.held
        );
    }
    warn_about_rate_limit(scenario, limit);

    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&summary.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &common.plot {
        let title = format!(
            "{} — {} clients — {}",
            scenario.name(),
            common.clients,
            common.url
        );
        plot::draw(path, &title, &outcome)
            .with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Resolves one `--url` to an address and the prefix the token is appended to.
fn target(common: &Common, url: &str) -> Result<(SocketAddr, String)> {
    let uri: Uri = url.parse().with_context(|| format!("--url {url}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("--url must start with ws:// (the generator speaks plain WebSocket only)");
    }
    let host = uri.host().context("--url has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolved to no address"))?;

    if !common.allow_remote && !is_loopback_v4(&addr) {
        bail!("{addr} is not a 127.0.0.0/8 address; pass --allow-remote to load it anyway");
    }
    if common.source_ips > 1 && !addr.is_ipv4() {
        bail!("--source-ips needs an IPv4 server address");
    }

    let sep = if url.contains('?') { '&' } else { '?' };
    Ok((addr, format!("{url}{sep}")))
}

fn is_loopback_v4(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V4(v4) if v4.ip().is_loopback())
}

/// Lifts the soft open-file limit to the hard one: every client holds a socket, and the
/// usual soft default of 1024 would fail a run of a few thousand clients.
fn raise_fd_limit(clients: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write to / read from a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let wanted = clients as u64 + 64;
    if lim.rlim_cur < wanted {
        eprintln!(
            "warning: the open-file limit ({}) is below the {clients} clients asked for",
            lim.rlim_cur
        );
    }
}

/// Says so when the scenario sends faster per user than the server's advertised limit,
/// because the `rate_limited` errors that follow are then the generator's doing.
fn warn_about_rate_limit(scenario: &Scenario, limit: u64) {
    let fastest = match scenario {
        Scenario::Classroom(a) => a.rate.max(a.teacher_rate),
        Scenario::Lecture(a) => a.rate.max(a.student_rate),
        Scenario::Dm(a) => a.rate,
        Scenario::Churn(a) => a.rate,
        Scenario::Idle(_) => 0.0,
    };
    if limit > 0 && fastest > limit as f64 {
        eprintln!(
            "warning: {fastest} messages/s per user exceeds the server's limit of {limit}/s \
             (welcome.limits.messages_per_sec); expect rate_limited errors"
        );
    }
}
