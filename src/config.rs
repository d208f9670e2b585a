//! Configuration: command-line flags, `HUBBUB_*` environment variables and an
//! optional TOML file, resolved into one [`Config`].
//!
//! Precedence is flags, then environment, then file, then the defaults written
//! on each field below. clap handles the first two (each flag names its
//! variable); the file is read with serde into the same [`Options`] struct, and
//! [`Options::resolve`] fills what is still unset.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// The secret used when neither `--jwt-secret` nor `--jwt-public-key` is set.
/// Anyone can mint tokens for it: the server logs a warning at start.
pub const DEV_SECRET: &str = "hubbub-development-secret-change-me";

#[derive(Parser, Debug)]
#[command(name = "hubbub", version, about = "WebSocket chat edge server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub options: Options,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Print a token signed with the configured secret, for trying things out.
    Token(TokenArgs),
    /// Validate the configuration, print it with secrets redacted, and exit.
    CheckConfig,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// student, teacher or admin.
    #[arg(long, default_value = "student")]
    pub role: String,
    /// Rooms the token may join, comma separated; `prefix:*` patterns allowed.
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Lifetime, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Who may join which room when a token carries no `rooms` claim.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoomPolicy {
    /// Any valid room id (development default).
    Open,
    /// Only rooms listed in the token's `rooms` claim; no claim, no rooms.
    Claims,
}

/// Which monoio driver the workers run.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring, falling back to epoll (with a warning) where it is refused.
    Auto,
    /// io_uring or fail to start.
    #[value(name = "io_uring", alias = "io-uring")]
    IoUring,
    /// epoll only (containers whose seccomp profile blocks io_uring).
    Epoll,
}

/// What happens to HTML in message content.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContentPolicy {
    /// Escape `& < > " ' /` so that the text renders literally as HTML.
    Escape,
    /// Remove every tag and keep the text (the result is escaped HTML text).
    Strip,
    /// Leave markup as sent (clients must never render content as HTML).
    None,
}

#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, unset by default so that the layers can be merged. The
/// defaults are applied in [`Options::resolve`] and documented on each flag.
#[derive(Args, Deserialize, Serialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "HUBBUB_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 0.0.0.0:3001].
    #[arg(long, env = "HUBBUB_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// Directory of the embedded history store [default: ./data].
    #[arg(long, env = "HUBBUB_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Worker threads, one per core [default: the number of CPUs].
    #[arg(long, env = "HUBBUB_WORKERS", global = true)]
    pub workers: Option<usize>,

    /// Event-loop driver: auto, io_uring or epoll [default: auto].
    #[arg(long, env = "HUBBUB_DRIVER", global = true)]
    pub driver: Option<DriverChoice>,

    /// HS256 shared secret (the Next.js app's signing secret).
    #[arg(long, env = "HUBBUB_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (a file path, or the PEM text) for RS256 or ES256 tokens.
    #[arg(long, env = "HUBBUB_JWT_PUBLIC_KEY", global = true, allow_hyphen_values = true)]
    pub jwt_public_key: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "HUBBUB_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "HUBBUB_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds [default: 30].
    #[arg(long, env = "HUBBUB_JWT_LEEWAY", global = true)]
    pub jwt_leeway: Option<u64>,

    /// Room access for tokens without a `rooms` claim [default: open].
    #[arg(long, env = "HUBBUB_ROOM_POLICY", global = true)]
    pub room_policy: Option<RoomPolicy>,

    /// HTML handling in message content [default: escape].
    #[arg(long, env = "HUBBUB_CONTENT_POLICY", global = true)]
    pub content_policy: Option<ContentPolicy>,

    /// Serve `/ws/echo` for the Autobahn conformance suite [default: false].
    #[arg(long, env = "HUBBUB_ECHO_ENDPOINT", global = true, num_args = 0..=1,
          default_missing_value = "true")]
    pub echo_endpoint: Option<bool>,

    /// Serve the demo chat page at `/` and development tokens at
    /// `/demo/token` [default: on only with the development secret].
    #[arg(long, env = "HUBBUB_DEMO", global = true, num_args = 0..=1,
          default_missing_value = "true")]
    pub demo: Option<bool>,

    /// Log format: text or json [default: text].
    #[arg(long, env = "HUBBUB_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,

    /// Log filter in `tracing` syntax, e.g. `info,hubbub=debug` [default: info].
    #[arg(long, env = "HUBBUB_LOG", global = true)]
    pub log: Option<String>,

    /// Largest message content in bytes, after sanitising [default: 4096].
    #[arg(long, env = "HUBBUB_MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<usize>,

    /// Largest WebSocket frame or message in bytes; larger closes with 1009
    /// [default: 65536].
    #[arg(long, env = "HUBBUB_MAX_FRAME_BYTES", global = true)]
    pub max_frame_bytes: Option<usize>,

    /// Sustained messages per second per connection [default: 10].
    #[arg(long, env = "HUBBUB_MESSAGES_PER_SEC", global = true)]
    pub messages_per_sec: Option<u32>,

    /// Messages a connection may send at once above the sustained rate
    /// [default: 40].
    #[arg(long, env = "HUBBUB_MESSAGE_BURST", global = true)]
    pub message_burst: Option<u32>,

    /// Sustained messages per second per user, across all of its connections
    /// [default: 20].
    #[arg(long, env = "HUBBUB_USER_MESSAGES_PER_SEC", global = true)]
    pub user_messages_per_sec: Option<u32>,

    /// Typing events per second per connection; extra ones are dropped
    /// [default: 5].
    #[arg(long, env = "HUBBUB_TYPING_PER_SEC", global = true)]
    pub typing_per_sec: Option<u32>,

    /// Joins per second per connection, with a burst of five times that
    /// [default: 10].
    #[arg(long, env = "HUBBUB_JOINS_PER_SEC", global = true)]
    pub joins_per_sec: Option<u32>,

    /// History and presence requests per second per connection, with a burst
    /// of four times that [default: 5].
    #[arg(long, env = "HUBBUB_HISTORY_PER_SEC", global = true)]
    pub history_per_sec: Option<u32>,

    /// New TCP connections per second from one IP address, with a burst of
    /// five times that; more get HTTP 429. Schools put many students behind
    /// one address, so keep it generous [default: 50].
    #[arg(long, env = "HUBBUB_CONNECTIONS_PER_IP_PER_SEC", global = true)]
    pub connections_per_ip_per_sec: Option<u32>,

    /// WebSocket connections per user; more get HTTP 429 [default: 10].
    #[arg(long, env = "HUBBUB_MAX_CONNS_PER_USER", global = true)]
    pub max_conns_per_user: Option<usize>,

    /// WebSocket connections per process; more get HTTP 503 [default: 90% of
    /// the file descriptor limit].
    #[arg(long, env = "HUBBUB_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Resident memory in MiB above which new connections get HTTP 503
    /// (0: no limit) [default: 0].
    #[arg(long, env = "HUBBUB_MEMORY_LIMIT_MB", global = true)]
    pub memory_limit_mb: Option<u64>,

    /// Browser origins allowed to open WebSockets and call the HTTP API,
    /// comma separated (`https://app.example.com`); `*` allows any. Unset:
    /// any origin with the development secret, none otherwise (requests
    /// without an Origin header, i.e. not from a browser, always pass).
    #[arg(long, env = "HUBBUB_ALLOWED_ORIGINS", global = true, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Seconds without a frame from a client before the server pings it
    /// [default: 30].
    #[arg(long, env = "HUBBUB_PING_INTERVAL", global = true)]
    pub ping_interval: Option<u64>,

    /// Seconds a pinged client has to answer before it is disconnected
    /// (half-open TCP) [default: 20].
    #[arg(long, env = "HUBBUB_PONG_TIMEOUT", global = true)]
    pub pong_timeout: Option<u64>,

    /// Rooms one connection may be in at once [default: 100].
    #[arg(long, env = "HUBBUB_MAX_ROOMS_PER_CONN", global = true)]
    pub max_rooms_per_conn: Option<usize>,

    /// Recent messages per active room kept in memory [default: 256].
    #[arg(long, env = "HUBBUB_HISTORY_CACHE", global = true)]
    pub history_cache: Option<usize>,

    /// Largest history write batch (one commit) [default: 1024].
    #[arg(long, env = "HUBBUB_HISTORY_BATCH", global = true)]
    pub history_batch: Option<usize>,

    /// Messages waiting for the history store before new ones are refused
    /// with `unavailable` [default: 65536].
    #[arg(long, env = "HUBBUB_HISTORY_QUEUE", global = true)]
    pub history_queue: Option<usize>,

    /// MongoDB connection string; history goes to MongoDB instead of the
    /// embedded store. Write concern and TLS are set in the URL
    /// (`?w=majority`).
    #[arg(long, env = "HUBBUB_MONGO_URL", global = true, hide_env_values = true)]
    pub mongo_url: Option<String>,

    /// MongoDB database name [default: hubbub].
    #[arg(long, env = "HUBBUB_MONGO_DB", global = true)]
    pub mongo_db: Option<String>,

    /// Days of history to keep in MongoDB (a TTL index on `ts`); unset keeps
    /// everything.
    #[arg(long, env = "HUBBUB_MONGO_RETENTION_DAYS", global = true)]
    pub mongo_retention_days: Option<u64>,

    /// History writer threads, each with its own batch in flight; rooms are
    /// spread over them [default: 1 embedded, 4 MongoDB].
    #[arg(long, env = "HUBBUB_HISTORY_LANES", global = true)]
    pub history_lanes: Option<usize>,

    /// Milliseconds a history write may wait for its batch to fill (0: commit
    /// whatever is queued at once) [default: 0].
    #[arg(long, env = "HUBBUB_HISTORY_BATCH_AGE_MS", global = true)]
    pub history_batch_age_ms: Option<u64>,

    /// Seconds a message may wait in the history queue (for example while
    /// the store is down) before it is refused with `unavailable`
    /// [default: 10].
    #[arg(long, env = "HUBBUB_HISTORY_MAX_WAIT", global = true)]
    pub history_max_wait: Option<u64>,

    /// Outbound bytes queued for one connection before it is closed as a slow
    /// consumer (close 1013) [default: 4194304].
    #[arg(long, env = "HUBBUB_MAX_OUTBOUND_BYTES", global = true)]
    pub max_outbound_bytes: Option<usize>,

    /// Seconds a client has to send its upgrade request [default: 10].
    #[arg(long, env = "HUBBUB_HANDSHAKE_TIMEOUT", global = true)]
    pub handshake_timeout: Option<u64>,

    /// Seconds given to connections and the history queue to drain on
    /// SIGTERM [default: 10].
    #[arg(long, env = "HUBBUB_SHUTDOWN_GRACE", global = true)]
    pub shutdown_grace: Option<u64>,
}

/// The resolved configuration. See the flags on [`Options`] for meanings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub driver: DriverChoice,
    pub jwt: JwtConfig,
    pub room_policy: RoomPolicy,
    pub content_policy: ContentPolicy,
    pub echo_endpoint: bool,
    pub demo: bool,
    pub log_format: LogFormat,
    pub log: String,
    pub limits: Limits,
    pub allowed_origins: Origins,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub memory_limit_mb: u64,
    pub history_cache: usize,
    pub history_batch: usize,
    pub history_queue: usize,
    pub history_batch_age: Duration,
    pub mongo: Option<MongoConfig>,
    pub history_lanes: usize,
    pub history_max_wait: Duration,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Clone)]
pub struct MongoConfig {
    pub url: String,
    pub db: String,
    pub retention: Option<Duration>,
}

impl std::fmt::Debug for MongoConfig {
    // The URL may carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &"<redacted>")
            .field("db", &self.db)
            .field("retention", &self.retention)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
}

#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with this secret; `dev` marks the built-in development secret.
    Secret { secret: String, dev: bool },
    /// RS256 or ES256, chosen by the key's type.
    PublicPem(String),
}

impl std::fmt::Debug for JwtKey {
    // Secrets never reach a log line, not even at debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Secret { dev: true, .. } => f.write_str("Secret(<development secret>)"),
            JwtKey::Secret { .. } => f.write_str("Secret(<redacted>)"),
            JwtKey::PublicPem(_) => f.write_str("PublicPem(..)"),
        }
    }
}

/// The limits enforced on clients. The same struct feeds the checks and the
/// `limits` object of the `welcome` frame, so the two cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub messages_per_sec: u32,
    pub message_burst: u32,
    pub max_rooms_per_conn: usize,
    pub max_outbound_bytes: usize,
    /// Largest `limit` of a history page.
    pub max_history_page: usize,
    /// Largest number of members listed in a join ack or presence answer.
    pub max_members_listed: usize,
    /// Most messages replayed for one `join` with `since`; older ones are
    /// left to `history` paging.
    pub max_resume: usize,
    pub user_messages_per_sec: u32,
    pub typing_per_sec: u32,
    pub joins_per_sec: u32,
    pub history_per_sec: u32,
    pub connections_per_ip_per_sec: u32,
    pub max_conns_per_user: usize,
    /// 0 until [`Options::resolve`]'s caller fills it from the fd limit.
    pub max_connections: usize,
}

/// Which browser origins may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    List(Vec<String>),
}

impl Origins {
    /// Is a request with this `Origin` header (None: not a browser) allowed?
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (_, None) | (Origins::Any, _) => true,
            (Origins::List(list), Some(o)) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }
}

impl Options {
    /// Merge the TOML file named by `--config` (if any) under these options
    /// and apply the defaults.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --config {}", path.display()))?;
                toml::from_str::<Options>(&text)
                    .with_context(|| format!("invalid --config {}", path.display()))?
            }
            None => Options::default(),
        };
        let o = self.clone().or(file);

        let key = match (o.jwt_secret, o.jwt_public_key) {
            (Some(_), Some(_)) => bail!("set --jwt-secret or --jwt-public-key, not both"),
            (Some(secret), None) if secret.is_empty() => bail!("--jwt-secret is empty"),
            (Some(secret), None) => JwtKey::Secret { secret, dev: false },
            (None, Some(key)) => JwtKey::PublicPem(read_pem(&key)?),
            (None, None) => JwtKey::Secret { secret: DEV_SECRET.to_owned(), dev: true },
        };
        let workers = match o.workers {
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        let limits = Limits {
            max_message_bytes: o.max_message_bytes.unwrap_or(4096),
            max_frame_bytes: o.max_frame_bytes.unwrap_or(64 * 1024),
            messages_per_sec: o.messages_per_sec.unwrap_or(10),
            message_burst: o.message_burst.unwrap_or(40),
            max_rooms_per_conn: o.max_rooms_per_conn.unwrap_or(100),
            max_outbound_bytes: o.max_outbound_bytes.unwrap_or(4 << 20),
            max_history_page: 100,
            max_members_listed: 1000,
            max_resume: 10_000,
            user_messages_per_sec: o.user_messages_per_sec.unwrap_or(20),
            typing_per_sec: o.typing_per_sec.unwrap_or(5),
            joins_per_sec: o.joins_per_sec.unwrap_or(10),
            history_per_sec: o.history_per_sec.unwrap_or(5),
            connections_per_ip_per_sec: o.connections_per_ip_per_sec.unwrap_or(50),
            max_conns_per_user: o.max_conns_per_user.unwrap_or(10),
            max_connections: o.max_connections.unwrap_or(0),
        };
        let rates = [
            limits.user_messages_per_sec,
            limits.typing_per_sec,
            limits.joins_per_sec,
            limits.history_per_sec,
            limits.connections_per_ip_per_sec,
        ];
        if rates.contains(&0) || limits.max_conns_per_user == 0 {
            bail!("rate limits and --max-conns-per-user must be at least 1");
        }
        let dev = matches!(key, JwtKey::Secret { dev: true, .. });
        let allowed_origins = match o.allowed_origins {
            Some(list) if list.iter().any(|o| o.trim() == "*") => Origins::Any,
            Some(list) => Origins::List(
                list.into_iter().map(|o| o.trim().trim_end_matches('/').to_owned()).collect(),
            ),
            None if dev => Origins::Any,
            None => Origins::List(Vec::new()),
        };
        if limits.max_frame_bytes < limits.max_message_bytes + 1024 {
            bail!("--max-frame-bytes must exceed --max-message-bytes by at least 1024");
        }
        if limits.messages_per_sec == 0 || limits.message_burst == 0 {
            bail!("--messages-per-sec and --message-burst must be at least 1");
        }

        Ok(Config {
            listen: o.listen.unwrap_or_else(|| "0.0.0.0:3001".parse().unwrap()),
            data_dir: o.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            workers,
            driver: o.driver.unwrap_or(DriverChoice::Auto),
            jwt: JwtConfig {
                key,
                issuer: o.jwt_issuer,
                audience: o.jwt_audience,
                leeway_secs: o.jwt_leeway.unwrap_or(30),
            },
            room_policy: o.room_policy.unwrap_or(RoomPolicy::Open),
            content_policy: o.content_policy.unwrap_or(ContentPolicy::Escape),
            echo_endpoint: o.echo_endpoint.unwrap_or(false),
            demo: o.demo.unwrap_or(dev),
            log_format: o.log_format.unwrap_or(LogFormat::Text),
            log: o.log.unwrap_or_else(|| "info".to_owned()),
            limits,
            allowed_origins,
            ping_interval: Duration::from_secs(o.ping_interval.unwrap_or(30).max(1)),
            pong_timeout: Duration::from_secs(o.pong_timeout.unwrap_or(20).max(1)),
            memory_limit_mb: o.memory_limit_mb.unwrap_or(0),
            history_cache: o.history_cache.unwrap_or(256).max(1),
            history_batch: o.history_batch.unwrap_or(1024).max(1),
            history_queue: o.history_queue.unwrap_or(65_536).max(1),
            history_batch_age: Duration::from_millis(o.history_batch_age_ms.unwrap_or(0)),
            history_lanes: o.history_lanes.unwrap_or(if o.mongo_url.is_some() { 4 } else { 1 }).max(1),
            mongo: o.mongo_url.map(|url| MongoConfig {
                url,
                db: o.mongo_db.unwrap_or_else(|| "hubbub".to_owned()),
                retention: o.mongo_retention_days.map(|d| Duration::from_secs(d * 86_400)),
            }),
            history_max_wait: Duration::from_secs(o.history_max_wait.unwrap_or(10).max(1)),
            handshake_timeout: Duration::from_secs(o.handshake_timeout.unwrap_or(10).max(1)),
            shutdown_grace: Duration::from_secs(o.shutdown_grace.unwrap_or(10)),
        })
    }

    /// Field by field: a value set here wins over the one in `lower`.
    fn or(self, lower: Options) -> Options {
        macro_rules! pick {
            ($($f:ident),* $(,)?) => { Options { $($f: self.$f.or(lower.$f)),* } };
        }
        pick!(
            config, listen, data_dir, workers, driver, jwt_secret, jwt_public_key, jwt_issuer,
            jwt_audience, jwt_leeway, room_policy, content_policy, echo_endpoint, demo, log_format,
            log, max_message_bytes, max_frame_bytes, messages_per_sec, message_burst,
            max_rooms_per_conn, history_cache, user_messages_per_sec, typing_per_sec,
            joins_per_sec, history_per_sec, connections_per_ip_per_sec, max_conns_per_user,
            max_connections, memory_limit_mb, allowed_origins, ping_interval, pong_timeout, history_batch, history_queue,
            max_outbound_bytes, mongo_url, mongo_db, mongo_retention_days, history_lanes,
            history_batch_age_ms, history_max_wait, handshake_timeout, shutdown_grace,
        )
    }
}

/// `--jwt-public-key` takes the PEM text itself or a path to it.
fn read_pem(value: &str) -> anyhow::Result<String> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value).with_context(|| format!("cannot read --jwt-public-key {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut argv = vec!["hubbub"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).options
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let cfg = Options::default().resolve().unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:3001");
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert!(matches!(cfg.jwt.key, JwtKey::Secret { dev: true, .. }));
        assert_eq!(cfg.room_policy, RoomPolicy::Open);
        assert!(!cfg.echo_endpoint);
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hubbub.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nworkers = 3\nroom_policy = \"claims\"\n")
            .unwrap();

        let opts = parse(&["--config", path.to_str().unwrap(), "--workers", "2"]);
        let cfg = opts.resolve().unwrap();
        assert_eq!(cfg.workers, 2, "flag wins over file");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000", "file wins over default");
        assert_eq!(cfg.room_policy, RoomPolicy::Claims);
    }

    #[test]
    fn unknown_file_keys_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).resolve().unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }

    #[test]
    fn secret_and_key_together_are_refused() {
        let opts = parse(&["--jwt-secret", "s", "--jwt-public-key", "-----BEGIN PUBLIC KEY-----"]);
        assert!(opts.resolve().is_err());
    }

    #[test]
    fn origins_default_open_only_with_the_development_secret() {
        let dev = Options::default().resolve().unwrap();
        assert_eq!(dev.allowed_origins, Origins::Any);
        let prod = parse(&["--jwt-secret", "s"]).resolve().unwrap();
        assert!(!prod.allowed_origins.allows(Some("https://evil.example")));
        assert!(prod.allowed_origins.allows(None), "non-browser clients send no Origin");
        let listed = parse(&["--jwt-secret", "s", "--allowed-origins", "https://app.example/,x"])
            .resolve()
            .unwrap();
        assert!(listed.allowed_origins.allows(Some("https://app.example")));
        assert!(!listed.allowed_origins.allows(Some("https://app.example.evil")));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let cfg = parse(&["--jwt-secret", "hunter2"]).resolve().unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
