//! The Redis side of cluster mode: a thread that drains the shards' command
//! queue into pipelines, a subscriber whose pushes go straight to the owner
//! shards' inboxes, and a supervisor that keeps both connected.
//!
//! Both connections are `redis` connection managers on the tokio side
//! runtime (RESP3, so that pub/sub pushes share the connection). The
//! driver's own resubscription covers a short blip; a longer outage leaves
//! it without a subscription and nothing to tell, so the supervisor pings
//! every second and, whenever the connection was lost, resubscribes every
//! topic this node holds and asks the shards to resync.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};

use super::{scripts, wire, Cluster, Cmd, Remote, Status, Topic};
use crate::shard::{ShardMsg, Shared};

/// Commands taken off the queue into one pipeline.
const MAX_PIPELINE: usize = 1024;

/// How far above the highest known seq a counter that Redis lost resumes:
/// more than one room can have reserved and not yet stored across the
/// cluster (see `scripts::RESERVE`).
const LOST_COUNTER_JUMP: u64 = 10_000;

/// How often the supervisor pings and the heartbeat is refreshed.
const TICK: Duration = Duration::from_secs(1);

/// Settings of the link.
pub struct LinkConfig {
    pub url: String,
    /// How long a node's presence outlives its last heartbeat.
    pub node_ttl: Duration,
}

/// Topics this node listens on.
type Topics = Arc<Mutex<HashMap<Topic, Interest>>>;

struct Interest {
    /// Local interests (owner shards, or shards with the user's connections).
    count: u32,
    /// Subscribed in Redis (counted in `Status::subscriptions`).
    active: bool,
}

/// This node's presence as its shards last declared it: room → user id →
/// user JSON. What Redis is made to agree with after an outage, during
/// which presence commands were lost.
type Presence = Arc<Mutex<HashMap<Arc<str>, HashMap<Arc<str>, Vec<u8>>>>>;

/// Committed messages (and skips) whose publish failed, to publish again
/// once Redis answers: receivers drop what they already have by seq, but a
/// message lost here would otherwise show on other nodes only when a later
/// one in its room opens a gap.
type Unsent = Arc<Mutex<std::collections::VecDeque<(Vec<u8>, Bytes)>>>;

/// Most unsent publishes kept; past it the oldest are left to gap filling.
const MAX_UNSENT: usize = 100_000;

static SYNC: LazyLock<String> = LazyLock::new(scripts::sync);
static REAP: LazyLock<String> = LazyLock::new(scripts::reap);

/// Connect (lazily: a Redis that is down at start is retried like any
/// outage) and start the command thread and the supervisor.
pub fn start(
    cfg: LinkConfig,
    cluster: &Cluster,
    cmds: Receiver<Cmd>,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<JoinHandle<()>> {
    let url = resp3(&cfg.url);
    let client = redis::Client::open(url.as_str())
        .map_err(|e| anyhow::anyhow!("--redis-url is not a Redis URL: {e}"))?;
    let status = cluster.status.clone();
    let lost = Arc::new(tokio::sync::Notify::new());

    let manager = |push: Option<Router>| {
        let mut c = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        if let Some(push) = push {
            c = c.set_push_sender(push).set_automatic_resubscription();
        }
        let _guard = rt.enter();
        ConnectionManager::new_lazy_with_config(client.clone(), c)
    };
    let router = Router {
        shared: shared.clone(),
        status: status.clone(),
        lost: lost.clone(),
        node: cluster.node.clone(),
    };
    let sub = manager(Some(router))?;
    let con = manager(None)?;

    let link = Link {
        unsent: Arc::default(),
        sub,
        con,
        topics: Arc::default(),
        presence: Arc::default(),
        shared,
        status,
    };
    let supervisor = Supervisor {
        link: link.clone(),
        lost,
        node: cluster.node.clone(),
        ttl: cfg.node_ttl,
    };
    rt.spawn(supervisor.run());

    let worker = Commands { link };
    let thread = std::thread::Builder::new()
        .name("hubbub-cluster".into())
        .spawn(move || worker.run(cmds, rt))?;
    Ok(thread)
}

/// Ask for RESP3 unless the URL chose a protocol: pushes need it.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

/// Delivers pushes from Redis to the owner shards without blocking the
/// connection's reader.
struct Router {
    shared: Arc<Shared>,
    status: Arc<Status>,
    lost: Arc<tokio::sync::Notify>,
    node: Arc<str>,
}

impl redis::aio::AsyncPushSender for Router {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Message => {
                let mut data = info.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return Ok(());
                };
                if channel == wire::NODES_CHANNEL {
                    let node = String::from_utf8_lossy(payload.get(1..).unwrap_or_default());
                    // This node, reaped while alive (it stalled): the
                    // supervisor re-registers its presence on its next tick.
                    if node == *self.node {
                        self.status.up.store(false, Ordering::Relaxed);
                        self.lost.notify_one();
                    }
                    tracing::info!(%node, "a node died; catching up from the history store");
                    for shard in 0..self.shared.mailboxes.len() {
                        self.shared.send(shard, ShardMsg::Resync);
                    }
                    return Ok(());
                }
                if wire::topic(&channel).is_none() {
                    return Ok(());
                }
                match wire::decode(Bytes::from(payload)) {
                    Some(Remote::UserTyping { to, json }) => {
                        let frame = crate::ws::encode(crate::ws::OpCode::Text, &json);
                        for shard in 0..self.shared.mailboxes.len() {
                            let msg = ShardMsg::DeliverUsers {
                                users: vec![to.clone()],
                                frame: frame.clone(),
                                skip: None,
                            };
                            self.shared.send(shard, msg);
                        }
                    }
                    Some(remote) => {
                        self.status.received.fetch_add(1, Ordering::Relaxed);
                        let owner = self.shared.owner(remote.room());
                        self.shared.send(owner, ShardMsg::Remote(Box::new(remote)));
                    }
                    None => tracing::debug!("malformed cluster payload dropped"),
                }
            }
            PushKind::Disconnection => {
                if self.status.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!("lost the Redis connection; reconnecting");
                }
                self.lost.notify_one();
            }
            _ => {}
        }
        Ok(())
    }
}

/// What the supervisor and the command thread share.
#[derive(Clone)]
struct Link {
    unsent: Unsent,
    sub: ConnectionManager,
    con: ConnectionManager,
    topics: Topics,
    presence: Presence,
    shared: Arc<Shared>,
    status: Arc<Status>,
}

/// Keeps the node connected, registered and resubscribed.
struct Supervisor {
    link: Link,
    lost: Arc<tokio::sync::Notify>,
    node: Arc<str>,
    ttl: Duration,
}

impl Supervisor {
    async fn run(mut self) {
        let mut synced = false;
        let mut started = false;
        loop {
            // A lost connection wakes us at once; otherwise once a tick.
            tokio::select! {
                _ = self.lost.notified() => synced = false,
                _ = tokio::time::sleep(TICK) => {}
            }
            // Stopping: `goodbye` removes this node; a heartbeat now would
            // bring it back until the TTL.
            if self.link.status.stopping.load(Ordering::Relaxed) {
                return;
            }
            if !self.link.status.up.load(Ordering::Relaxed) {
                synced = false;
            }
            // A node restarted under the same --node-id must not keep the
            // memberships of its previous life: reap them once, first.
            if !started {
                match self.forget_previous_life().await {
                    Ok(()) => started = true,
                    Err(_) => continue,
                }
            }
            match self.tick(synced).await {
                Ok(false) => {
                    let node = &self.node;
                    tracing::warn!(%node, "this node was reaped as dead; re-registering");
                    synced = false;
                }
                Ok(true) => {
                    if !synced {
                        synced = true;
                        self.link.status.up.store(true, Ordering::Relaxed);
                        self.link.status.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = %self.node, "connected to Redis; shards resyncing");
                        for shard in 0..self.link.shared.mailboxes.len() {
                            self.link.shared.send(shard, ShardMsg::Resync);
                        }
                    }
                }
                Err(e) => {
                    crate::metrics::get()
                        .backend_errors
                        .with_label_values(&["redis"])
                        .inc();
                    if self.link.status.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(err = %e, "Redis unreachable; retrying");
                    }
                    synced = false;
                }
            }
        }
    }

    async fn forget_previous_life(&mut self) -> redis::RedisResult<()> {
        remove_node(&self.node)
            .query_async::<()>(&mut self.link.con)
            .await
    }

    /// Ping both connections; when not `synced`, resubscribe and make
    /// Redis's presence agree with this node's; refresh the heartbeat and
    /// reap dead nodes. False when this node was found reaped although
    /// synced (it stalled past --node-ttl): it must sync again.
    async fn tick(&mut self, synced: bool) -> redis::RedisResult<bool> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.link.sub)
            .await?;

        // The heartbeat first, so that no other node's reaper removes what
        // the sync below registers.
        let ttl = self.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(wire::key("node:", &self.node))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("SADD")
            .arg(wire::key("nodes", ""))
            .arg(&*self.node);
        let (added,): (u64,) = pipe.query_async(&mut self.link.con).await?;
        if synced && added == 1 {
            return Ok(false);
        }

        if !synced {
            self.link.sub.subscribe(wire::NODES_CHANNEL).await?;
            let topics: Vec<Topic> = self.link.topics.lock().unwrap().keys().cloned().collect();
            for topic in &topics {
                self.link.sub.subscribe(wire::channel(topic)).await?;
            }
            {
                // Only what was subscribed just now counts as active; a
                // topic added meanwhile is subscribed by its own command.
                let mut current = self.link.topics.lock().unwrap();
                for topic in &topics {
                    if let Some(interest) = current.get_mut(topic) {
                        interest.active = true;
                    }
                }
                let active = current.values().filter(|i| i.active).count();
                self.link
                    .status
                    .subscriptions
                    .store(active as u64, Ordering::Relaxed);
            }
            self.sync_presence().await?;
            self.publish_unsent().await?;
        }

        let reaped: u64 = reap().query_async(&mut self.link.con).await?;
        if reaped > 0 {
            tracing::info!(
                reaped,
                "removed the presence of nodes that stopped heartbeating"
            );
        }
        Ok(true)
    }

    /// Publish again what failed to publish during the outage.
    async fn publish_unsent(&mut self) -> redis::RedisResult<()> {
        let unsent: Vec<(Vec<u8>, Bytes)> = self.link.unsent.lock().unwrap().drain(..).collect();
        if unsent.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (channel, payload) in &unsent {
            pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut self.link.con).await {
            let mut queue = self.link.unsent.lock().unwrap();
            for item in unsent.into_iter().rev() {
                queue.push_front(item);
            }
            return Err(e);
        }
        tracing::info!(count = unsent.len(), "published what an outage held back");
        Ok(())
    }

    /// Every room where this node has members now, or had according to
    /// Redis: one SYNC script each.
    async fn sync_presence(&mut self) -> redis::RedisResult<()> {
        let known: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(wire::key("nr:", &self.node))
            .query_async(&mut self.link.con)
            .await?;
        let mut pipe = redis::pipe();
        let mut rooms = 0;
        {
            let presence = self.link.presence.lock().unwrap();
            let stale = known
                .iter()
                .filter_map(|r| std::str::from_utf8(r).ok())
                .filter(|r| !presence.contains_key(*r));
            let empty = HashMap::new();
            let all = presence
                .iter()
                .map(|(room, users)| (&**room, users))
                .chain(stale.map(|room| (room, &empty)));
            for (room, users) in all {
                let cmd = pipe.cmd("EVAL").arg(&*SYNC).arg(0);
                cmd.arg(wire::PREFIX).arg(&*self.node).arg(room);
                for (id, json) in users {
                    cmd.arg(&**id).arg(&json[..]);
                }
                cmd.ignore();
                rooms += 1;
            }
        }
        if rooms > 0 {
            pipe.query_async::<()>(&mut self.link.con).await?;
        }
        tracing::debug!(rooms, "presence synced");
        Ok(())
    }
}

/// Drains the shards' commands into pipelines.
struct Commands {
    link: Link,
}

/// What a pipeline entry was, to route its answer.
enum Sent {
    Reserve {
        room: Arc<str>,
        count: u32,
        owner: usize,
    },
    Members {
        room: Arc<str>,
        owner: usize,
        full: bool,
        asked: std::time::Instant,
    },
    /// A channel and payload, kept to publish again if this fails.
    Publish(Vec<u8>, Bytes),
    Other,
}

impl Commands {
    fn run(mut self, cmds: Receiver<Cmd>, rt: tokio::runtime::Handle) {
        let node = self.link.shared.cluster.as_ref().map(|c| c.node.clone());
        let node = node.expect("the link runs only in cluster mode");
        let mut batch = Vec::with_capacity(MAX_PIPELINE);
        while let Ok(first) = cmds.recv() {
            batch.push(first);
            while batch.len() < MAX_PIPELINE {
                match cmds.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            rt.block_on(self.run_batch(&node, &mut batch));
        }
        tracing::debug!("cluster link stopped");
    }

    async fn run_batch(&mut self, node: &str, batch: &mut Vec<Cmd>) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(batch.len());
        for cmd in batch.drain(..) {
            match cmd {
                Cmd::Reserve {
                    room,
                    count,
                    floor,
                    owner,
                } => {
                    pipe.cmd("EVAL")
                        .arg(scripts::RESERVE)
                        .arg(1)
                        .arg(wire::key("seq:", &room))
                        .arg(count)
                        .arg(floor)
                        .arg(LOST_COUNTER_JUMP);
                    sent.push(Sent::Reserve { room, count, owner });
                }
                Cmd::Publish { topics, payload } => {
                    for topic in &topics {
                        let channel = wire::channel(topic);
                        pipe.cmd("PUBLISH").arg(&channel).arg(&payload[..]);
                        sent.push(Sent::Publish(channel, payload.clone()));
                    }
                }
                Cmd::PresenceJoin { room, user } => {
                    let json = presence(&mut pipe, node, &room, &user, true);
                    let mut declared = self.link.presence.lock().unwrap();
                    let users = declared.entry(room).or_default();
                    users.insert(user.id.clone(), json);
                    sent.push(Sent::Other);
                }
                Cmd::PresenceLeave { room, user } => {
                    presence(&mut pipe, node, &room, &user, false);
                    let mut declared = self.link.presence.lock().unwrap();
                    if let Some(users) = declared.get_mut(&room) {
                        users.remove(&user.id);
                        if users.is_empty() {
                            declared.remove(&room);
                        }
                    }
                    sent.push(Sent::Other);
                }
                Cmd::Members {
                    room,
                    owner,
                    full,
                    asked,
                } => {
                    pipe.cmd("HVALS").arg(wire::key("p:", &room));
                    sent.push(Sent::Members {
                        room,
                        owner,
                        full,
                        asked,
                    });
                }
                Cmd::Subscribe(topic, owner) => self.subscribe(topic, owner).await,
                Cmd::Unsubscribe(topic) => self.unsubscribe(topic).await,
            }
        }
        if sent.is_empty() {
            return;
        }

        let answers = pipe.query_async::<Vec<Value>>(&mut self.link.con).await;
        let answers = match answers {
            Ok(a) if a.len() == sent.len() => a,
            Ok(_) | Err(_) => {
                if let Err(e) = &answers {
                    tracing::debug!(err = %e, "Redis pipeline failed");
                }
                // Nothing reserved; the supervisor resyncs the rest.
                self.link.status.up.store(false, Ordering::Relaxed);
                vec![Value::Nil; sent.len()]
            }
        };
        for (what, answer) in sent.into_iter().zip(answers) {
            match what {
                Sent::Reserve { room, count, owner } => {
                    let first = match answer {
                        Value::Int(n) if n > 0 => Some(n as u64),
                        _ => None,
                    };
                    let msg = ShardMsg::Reserved { room, first, count };
                    self.link.shared.send(owner, msg);
                }
                Sent::Members {
                    room,
                    owner,
                    full,
                    asked,
                } => {
                    let (Value::Array(rows) | Value::Set(rows)) = answer else {
                        continue;
                    };
                    let users = rows
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::BulkString(b) => wire::parse_user(&b).map(Arc::new),
                            _ => None,
                        })
                        .collect();
                    let remote = Remote::Members {
                        room,
                        users,
                        full,
                        asked,
                    };
                    self.link
                        .shared
                        .send(owner, ShardMsg::Remote(Box::new(remote)));
                }
                Sent::Publish(channel, payload) => {
                    if !matches!(answer, Value::ServerError(_) | Value::Nil) {
                        self.link.status.published.fetch_add(1, Ordering::Relaxed);
                    } else if matches!(payload.first(), Some(b'M' | b'S')) {
                        // Typing is not worth sending late.
                        let mut unsent = self.link.unsent.lock().unwrap();
                        if unsent.len() == MAX_UNSENT {
                            unsent.pop_front();
                        }
                        unsent.push_back((channel, payload));
                    }
                }
                Sent::Other => {}
            }
        }
    }

    async fn subscribe(&mut self, topic: Topic, owner: usize) {
        let first = {
            let mut topics = self.link.topics.lock().unwrap();
            let entry = topics.entry(topic.clone()).or_insert(Interest {
                count: 0,
                active: false,
            });
            entry.count += 1;
            entry.count == 1
        };
        if first {
            // On failure the topic stays in the set: the supervisor
            // subscribes it once Redis answers, and the owner resyncs then.
            if let Err(e) = self.link.sub.subscribe(wire::channel(&topic)).await {
                tracing::debug!(err = %e, "subscribe failed; retried after reconnect");
                self.link.status.up.store(false, Ordering::Relaxed);
                return;
            }
            if let Some(interest) = self.link.topics.lock().unwrap().get_mut(&topic) {
                if !interest.active {
                    interest.active = true;
                    self.link
                        .status
                        .subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Topic::Room(room) = topic {
            let remote = Remote::Subscribed { room };
            self.link
                .shared
                .send(owner, ShardMsg::Remote(Box::new(remote)));
        }
    }

    async fn unsubscribe(&mut self, topic: Topic) {
        let last = {
            let mut topics = self.link.topics.lock().unwrap();
            match topics.get_mut(&topic) {
                Some(entry) if entry.count > 1 => {
                    entry.count -= 1;
                    None
                }
                Some(_) => topics.remove(&topic).map(|i| i.active),
                None => None,
            }
        };
        if let Some(active) = last {
            if active {
                self.link
                    .status
                    .subscriptions
                    .fetch_sub(1, Ordering::Relaxed);
            }
            let _ = self.link.sub.unsubscribe(wire::channel(&topic)).await;
        }
    }
}

/// On shutdown: drop this node's heartbeat and reap it at once, so that its
/// users' leaves are published now rather than after `--node-ttl`.
pub fn goodbye(url: &str, node: &str, rt: &tokio::runtime::Handle) {
    let Ok(client) = redis::Client::open(resp3(url).as_str()) else {
        return;
    };
    let done = rt.block_on(async {
        let bye = async {
            let mut con = client.get_multiplexed_async_connection().await?;
            remove_node(node).query_async::<()>(&mut con).await
        };
        tokio::time::timeout(Duration::from_secs(2), bye).await
    });
    if !matches!(done, Ok(Ok(()))) {
        tracing::warn!(node, "could not remove this node's presence from Redis");
    }
}

/// The reaper script: removes the nodes whose heartbeat expired; answers
/// how many.
fn reap() -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(&*REAP)
        .arg(1)
        .arg(wire::key("nodes", ""))
        .arg(wire::PREFIX);
    cmd
}

/// Drop `node`'s heartbeat and reap it at once: its users' leaves are
/// published now rather than after `--node-ttl`.
fn remove_node(node: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(wire::key("node:", node)).ignore();
    pipe.add_command(reap()).ignore();
    pipe
}

/// Queue a presence script for one user in one room on this node; returns
/// the user's JSON.
fn presence(
    pipe: &mut redis::Pipeline,
    node: &str,
    room: &str,
    user: &crate::auth::User,
    on: bool,
) -> Vec<u8> {
    let json = crate::protocol::user_json(user);
    pipe.cmd("EVAL")
        .arg(if on { scripts::JOIN } else { scripts::LEAVE })
        .arg(6)
        .arg(wire::key("p:", room))
        .arg(wire::presence_nodes_key(room, &user.id))
        .arg(wire::key("nr:", node))
        .arg(wire::node_users_key(node, room))
        .arg(wire::channel(&Topic::Room(room.into())))
        .arg(wire::key("nodes", ""))
        .arg(node)
        .arg(&*user.id)
        .arg(&json[..])
        .arg(room)
        .arg(wire::presence(on, room, &json));
    json
}
