//! Process start and stop: the history writer, one pinned monoio runtime per
//! worker with its own SO_REUSEPORT listener, and the shutdown sequence.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::FutureExt;
use monoio::net::{ListenerOpts, TcpListener};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::auth::Verifier;
use crate::config::{Config, DriverChoice, JwtKey};
use crate::http;
use crate::shard::{inbox, Inbox, Shard, ShardMsg, Shared};
use crate::store::writer::{self, WriterConfig};
use crate::store::{EmbeddedStore, HistoryStore, MongoStore};

/// Accept backlog per worker listener.
const BACKLOG: i32 = 4096;

/// io_uring submission queue entries per worker.
const RING_ENTRIES: u32 = 1024;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    writers: Vec<JoinHandle<()>>,
    /// The tokio side runtime, when a backend uses one; dropped last.
    side: Option<tokio::runtime::Runtime>,
}

/// Start everything and return once every worker is listening.
/// Raise the file descriptor limit and derive `--max-connections` from it
/// when it was not set.
pub fn apply_fd_defaults(config: &mut Config) {
    let nofile = raise_nofile_limit();
    if config.limits.max_connections == 0 {
        // Leave room for the store, listeners and sockets being accepted.
        config.limits.max_connections = (nofile as usize * 9 / 10).saturating_sub(64).max(1);
    }
}

pub fn start(mut config: Config) -> anyhow::Result<Running> {
    apply_fd_defaults(&mut config);
    if let JwtKey::Secret { dev: true, .. } = config.jwt.key {
        tracing::warn!(
            "no --jwt-secret or --jwt-public-key: using the built-in DEVELOPMENT secret; \
             anyone can mint tokens for this server"
        );
    }

    // The tokio side runtime, for the backends that need one; the workers
    // never run on it and never block on it.
    let side = match config.mongo.is_some() || config.redis.is_some() {
        true => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("hubbub-side")
                .enable_all()
                .build()
                .context("cannot start the side runtime")?,
        ),
        false => None,
    };

    // The history store and its writers.
    let store: Arc<dyn HistoryStore> = match (&config.mongo, &side) {
        (Some(m), Some(rt)) => {
            let store = MongoStore::connect(&m.url, &m.db, m.retention, rt.handle().clone())
                .context("history store (check --mongo-url)")?;
            tracing::info!(db = %m.db, "connected to MongoDB");
            Arc::new(store)
        }
        _ => Arc::new(
            EmbeddedStore::open(&config.data_dir).context("history store (check --data-dir)")?,
        ),
    };
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..config.workers).map(|_| inbox::channel()).unzip();
    let notify = {
        let mailboxes = mailboxes.clone();
        move |owner: usize, reports| mailboxes[owner].send(ShardMsg::Stored(reports))
    };
    let writer_cfg = WriterConfig {
        max_batch: config.history_batch,
        queue: config.history_queue,
        max_wait: config.history_max_wait,
        batch_age: config.history_batch_age,
        lanes: config.history_lanes,
        contiguous: config.redis.is_none(),
    };
    let (writer, writer_threads) = writer::spawn(store.clone(), writer_cfg, notify)?;

    let verifier = Verifier::new(&config.jwt, config.room_policy)?;
    let addr = resolve_port(config.listen)?;
    let cluster = config
        .redis
        .as_ref()
        .map(|r| crate::cluster::Cluster::new(Arc::from(r.node_id.as_str()), r.gap_wait));
    let (cluster, cluster_cmds) = match cluster {
        Some((c, rx)) => (Some(c), Some(rx)),
        None => (None, None),
    };
    let shared = Arc::new(Shared::new(
        config, verifier, store, writer, mailboxes, cluster,
    ));
    if let (Some(r), Some(cmds), Some(rt), Some(cluster)) =
        (&shared.config.redis, cluster_cmds, &side, &shared.cluster)
    {
        let cfg = crate::cluster::link::LinkConfig {
            url: r.url.clone(),
            node_ttl: r.node_ttl,
        };
        crate::cluster::link::start(cfg, cluster, cmds, shared.clone(), rt.handle().clone())
            .context("cluster link (check --redis-url)")?;
        tracing::info!(node = %r.node_id, "cluster mode: sharing rooms through Redis");
    }
    shared.admission.watch_memory(shared.config.memory_limit_mb);

    // One thread per worker; each reports back once its listener is bound.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut workers = Vec::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("hubbub-w{id}"))
            .spawn(move || run_worker(id, shared, inbox, addr, ready))?;
        workers.push(thread);
    }
    drop(ready_tx);
    for _ in 0..workers.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a worker died while starting"),
        }
    }

    tracing::info!(
        addr = %addr,
        workers = workers.len(),
        driver = shared.driver.get().copied().unwrap_or("unknown"),
        store = shared.store.kind(),
        data_dir = %shared.config.data_dir.display(),
        max_connections = shared.config.limits.max_connections,
        "listening"
    );
    if shared.config.demo {
        let port = addr.port();
        tracing::info!("demo chat page at http://localhost:{port}/ (development only)");
    }
    Ok(Running {
        addr,
        shared,
        workers,
        writers: writer_threads,
        side,
    })
}

impl Running {
    /// Block until SIGTERM or SIGINT, then shut down. A second signal during
    /// shutdown exits at once.
    pub fn run_until_signal(self) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let first = signals.forever().next();
        tracing::info!(signal = first, "shutting down");
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::warn!(signal = sig, "second signal: exiting now");
                std::process::exit(1);
            }
        });
        self.shutdown();
        Ok(())
    }

    /// Stop accepting, close connections with 1001, flush history, return.
    pub fn shutdown(self) {
        let started = Instant::now();
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        for mailbox in &self.shared.mailboxes {
            mailbox.send(ShardMsg::Shutdown);
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        // Everything queued is committed before the writers return, within
        // the grace (at least a second for the flush itself): a store that is
        // down would otherwise keep a stopping process up for good. What is
        // left was never acked, since acks follow commits.
        let deadline = (started + self.shared.config.shutdown_grace)
            .max(Instant::now() + Duration::from_secs(1));
        let told = self.shared.writer.stop(deadline);
        let mut flushed = told;
        for writer in self.writers {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if writer.is_finished() {
                let _ = writer.join();
            } else {
                flushed = false;
            }
        }
        if !flushed {
            let unsent = self.shared.writer.queue_len()
                + self.shared.writer.status.sending.load(Ordering::Relaxed) as usize;
            tracing::warn!(
                unsent,
                "history store did not take the queue within the grace; exiting without it \
                 (none of it was acknowledged)"
            );
        }
        if let (Some(r), Some(rt)) = (&self.shared.config.redis, &self.side) {
            if let Some(cluster) = &self.shared.cluster {
                cluster.status.stopping.store(true, Ordering::Relaxed);
            }
            crate::cluster::link::goodbye(&r.url, &r.node_id, rt.handle());
        }
        if let Some(rt) = self.side {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    }
}

type Ready = mpsc::Sender<Result<(), String>>;

fn run_worker(
    id: usize,
    shared: Arc<Shared>,
    inbox: Inbox<ShardMsg>,
    addr: SocketAddr,
    ready: Ready,
) {
    // Pin to one of the CPUs this process may use (a cpuset or systemd
    // CPUAffinity= need not start at CPU 0); a failure costs locality only.
    let cpus = allowed_cpus();
    if let Some(cpu) = cpus.get(id % cpus.len().max(1)) {
        if let Err(e) = monoio::utils::bind_to_cpu_set([*cpu]) {
            tracing::debug!(shard = id, err = ?e, "could not pin worker to a core");
        }
    }

    let choice = shared.config.driver;
    if choice != DriverChoice::Epoll {
        match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                let _ = shared.driver.set("io_uring");
                return rt.block_on(worker_main(id, shared, inbox, addr, ready));
            }
            Err(e) if choice == DriverChoice::IoUring => {
                let _ = ready.send(Err(format!(
                    "io_uring unavailable (--driver io_uring): {e}"
                )));
                return;
            }
            Err(e) => {
                static WARN: Once = Once::new();
                WARN.call_once(
                    || tracing::warn!(err = %e, "io_uring refused by the kernel; using epoll"),
                );
            }
        }
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => {
            let _ = shared.driver.set("epoll");
            rt.block_on(worker_main(id, shared, inbox, addr, ready))
        }
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the event loop: {e}")));
        }
    }
}

async fn worker_main(
    id: usize,
    shared: Arc<Shared>,
    inbox: Inbox<ShardMsg>,
    addr: SocketAddr,
    ready: Ready,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(BACKLOG);
    let listener = match TcpListener::bind_with_config(addr, &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot listen on {addr} (check --listen): {e}"
            )));
            return;
        }
    };
    let _ = ready.send(Ok(()));

    let shard = Rc::new(Shard::new(id, shared.clone()));
    monoio::spawn(shard.clone().dispatch(inbox));
    monoio::spawn(shard.clone().keepalive());
    accept_loop(&shard, &listener).await;
    drop(listener);

    // Connections got their 1001 close; give them the grace period to go.
    let deadline = Instant::now() + shared.config.shutdown_grace;
    while shard.conn_count() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::debug!(shard = id, left = shard.conn_count(), "worker stopped");
}

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    let mut last_emfile: Option<Instant> = None;
    loop {
        let accepted = monoio::select! {
            res = listener.accept() => res,
            _ = shard.stopped() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(why) = shard.shared.admission.check_ip(peer.ip()) {
                    shard.note_refused(why, "");
                    monoio::spawn(http::refuse_early(stream, why));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = std::panic::AssertUnwindSafe(http::serve(shard.clone(), stream));
                let shard_id = shard.id;
                monoio::spawn(async move {
                    // A bug in one connection must not take its worker down.
                    if conn.catch_unwind().await.is_err() {
                        tracing::error!(shard = shard_id, "connection task panicked");
                    }
                });
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                // Out of file descriptors: back off instead of spinning, and
                // log once per burst.
                if last_emfile.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    let shard = shard.id;
                    tracing::warn!(shard, err = %e, "out of file descriptors; backing off");
                    last_emfile = Some(Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!(shard = shard.id, err = %e, "accept failed"),
        }
    }
}

/// The CPUs in this process's affinity mask, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid, and the size passed is its own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

/// Port 0 means "any free port": pick one now so that every worker's
/// SO_REUSEPORT listener binds the same one.
fn resolve_port(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = StdListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    Ok(probe.local_addr()?)
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: each connection is a file
/// descriptor, and distributions default the soft limit to 1024.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    tracing::debug!(nofile = lim.rlim_cur, "file descriptor limit");
    lim.rlim_cur as u64
}
