//! Command-line interface: the flags every scenario shares and one subcommand per scenario.
//!
//! Only parsing and validation live here; what the numbers mean for a run is decided by
//! `run` and the scenario modules.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Drive a chat protocol v1 server (hubbub or a peer) with many WebSocket clients and report
/// latency, throughput, errors and message loss.
#[derive(Debug, Parser)]
#[command(name = "hubbub-loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios, each with the common flags plus its own sizes and rates.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Many rooms of ~30 students and a teacher: steady chat plus typing indicators.
    Classroom(ClassroomArgs),
    /// One teacher broadcasting to one huge room (or a few): fan-out cost.
    Lecture(LectureArgs),
    /// Pairs of users sending direct messages to each other.
    Dm(DmArgs),
    /// Students who connect, join, chat, leave, and reconnect resuming with `since`.
    Churn(ChurnArgs),
    /// Open N connections, join, and hold them without traffic (memory per connection).
    Idle(IdleArgs),
}

impl Scenario {
    /// The flags shared by every scenario.
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Classroom(a) => &a.common,
            Scenario::Lecture(a) => &a.common,
            Scenario::Dm(a) => &a.common,
            Scenario::Churn(a) => &a.common,
            Scenario::Idle(a) => &a.common,
        }
    }

    /// The scenario's name as it appears in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Classroom(_) => "classroom",
            Scenario::Lecture(_) => "lecture",
            Scenario::Dm(_) => "dm",
            Scenario::Churn(_) => "churn",
            Scenario::Idle(_) => "idle",
        }
    }
}

/// Flags every scenario takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Common options")]
pub struct Common {
    /// Full WebSocket URL of the chat endpoint, path included (ws:// only). Several URLs,
    /// separated by commas, spread the clients over them in turn: client i connects to URL
    /// i mod N, so the rooms of a scenario span every node of a cluster.
    #[arg(long, default_value = "ws://127.0.0.1:3001/ws/chat")]
    pub url: String,

    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "CHAT_JWT_SECRET",
        default_value = "dev-secret",
        hide_env_values = true
    )]
    pub secret: String,

    /// Number of client connections.
    #[arg(long, default_value_t = 300)]
    pub clients: usize,

    /// Total run time from the first connection attempt, ramp included (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// New connections opened per second while ramping up.
    #[arg(long, default_value_t = 500.0, value_parser = positive_f64)]
    pub ramp: f64,

    /// After --duration, how long to keep reading for messages still in flight before
    /// closing; they count as delivered, not lost.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Give up on a connection attempt (TCP connect plus upgrade) after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Spread client source addresses over 127.0.0.1..127.0.0.N (each source address has
    /// its own ~28k ephemeral ports towards one server port).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ips: u8,

    /// Fraction of receiving connections whose delivery latency is recorded (0..=1).
    /// Every connection still counts deliveries and checks seq order.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    pub sample: f64,

    /// Bytes of message content, the timestamp mark included (padding fills the rest).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Worker threads of the client runtime. One keeps the generator on one core so the
    /// server keeps the other; raise it when the send lag shows the generator saturating.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    /// Prefix for user ids and room names; defaults to a tag unique to this run, so a
    /// server that keeps history or de-duplicates message ids sees fresh rooms and users.
    #[arg(long)]
    pub tag: Option<String>,

    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Draw latency percentiles and throughput per second to this PNG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Allow a --url whose host is not a 127.0.0.0/8 address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// `classroom`: rooms of students and one teacher each.
#[derive(Debug, Args)]
pub struct ClassroomArgs {
    /// Students per room; each room also has one teacher.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub room_size: u32,

    /// Messages per second each student sends.
    #[arg(long, default_value_t = 0.2, value_parser = non_negative_f64)]
    pub rate: f64,

    /// Messages per second each teacher sends.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_f64)]
    pub teacher_rate: f64,

    /// Do not send a `typing` frame ahead of each message.
    #[arg(long)]
    pub no_typing: bool,

    #[command(flatten)]
    pub common: Common,
}

/// `lecture`: one teacher per room broadcasting to everyone else.
#[derive(Debug, Args)]
pub struct LectureArgs {
    /// Number of lecture rooms; the clients are split evenly, one teacher each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms: u32,

    /// Messages per second each teacher sends.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative_f64)]
    pub rate: f64,

    /// Messages per second each student sends (questions); 0 keeps students silent.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f64)]
    pub student_rate: f64,

    #[command(flatten)]
    pub common: Common,
}

/// `dm`: clients paired up, each sending direct messages to its partner.
#[derive(Debug, Args)]
pub struct DmArgs {
    /// Direct messages per second each client sends to its partner.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_f64)]
    pub rate: f64,

    #[command(flatten)]
    pub common: Common,
}

/// `churn`: students cycling through connect, join, chat, leave, disconnect, reconnect.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// Students per room.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub room_size: u32,

    /// Messages per second each connected student sends.
    #[arg(long, default_value_t = 0.5, value_parser = non_negative_f64)]
    pub rate: f64,

    /// Mean time a student stays connected; each session lasts 0.5x to 1.5x of it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub session: Duration,

    /// Time a student stays away between leaving and reconnecting.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub away: Duration,

    #[command(flatten)]
    pub common: Common,
}

/// `idle`: connections that join and then only hold.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Connections per room.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub room_size: u32,

    #[command(flatten)]
    pub common: Common,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a number above 0".into())
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a number of 0 or more".into())
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    let v = non_negative_f64(s)?;
    if v <= 1.0 {
        Ok(v)
    } else {
        Err("must be between 0 and 1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_classroom_run() {
        let cli = Cli::try_parse_from([
            "hubbub-loadgen",
            "classroom",
            "--url",
            "ws://127.0.0.1:9/ws/chat",
            "--clients",
            "62",
            "--duration",
            "5s",
            "--rate",
            "2",
        ])
        .unwrap();
        let Scenario::Classroom(args) = &cli.scenario else {
            panic!("wrong scenario")
        };
        assert_eq!(args.common.clients, 62);
        assert_eq!(args.common.duration, Duration::from_secs(5));
        assert_eq!(args.rate, 2.0);
        assert_eq!(args.room_size, 30);
    }

    #[test]
    fn rejects_a_sample_above_one() {
        assert!(Cli::try_parse_from(["hubbub-loadgen", "idle", "--sample", "1.5"]).is_err());
    }
}
