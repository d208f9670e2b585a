//! The connection side of a shard: registering connections, local room
//! membership, and writing delivered frames into outboxes.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{LocalConn, Shard, ShardMsg};
use crate::auth::User;
use crate::conn::outbox::Outbox;

impl Shard {
    /// Register a new connection and return its local number.
    pub fn register(&self, user: Arc<User>, outbox: Rc<Outbox>) -> u32 {
        let local = self.next_conn.get();
        self.next_conn.set(local.wrapping_add(1).max(1));

        let mut users = self.users.borrow_mut();
        let list = users.entry(user.id.clone()).or_default();
        list.push(local);
        // Cluster mode: DMs to this user reach this node on its channel.
        if let (Some(cluster), 1) = (&self.shared.cluster, list.len()) {
            let topic = crate::cluster::Topic::User(user.id.clone());
            cluster.send(crate::cluster::Cmd::Subscribe(topic, self.id));
        }
        drop(users);
        let conn = LocalConn {
            user,
            outbox,
            rooms: Default::default(),
        };
        self.conns.borrow_mut().insert(local, conn);
        self.shared
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.inc();
        local
    }

    /// Forget a closed connection and leave its rooms.
    pub fn unregister(&self, local: u32) {
        let Some(conn) = self.conns.borrow_mut().remove(&local) else {
            return;
        };
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.dec();

        let mut users = self.users.borrow_mut();
        if let Some(list) = users.get_mut(&conn.user.id) {
            list.retain(|c| *c != local);
            if list.is_empty() {
                users.remove(&conn.user.id);
                if let Some(cluster) = &self.shared.cluster {
                    let topic = crate::cluster::Topic::User(conn.user.id.clone());
                    cluster.send(crate::cluster::Cmd::Unsubscribe(topic));
                }
            }
        }
        drop(users);

        for room in conn.rooms {
            self.remove_member(&room, local);
            let owner = self.shared.owner(&room);
            let id = self.conn_id(local);
            self.shared.send(
                owner,
                ShardMsg::Leave {
                    room,
                    conn: id,
                    user: conn.user.clone(),
                },
            );
        }
    }

    /// Run `f` on a live connection.
    pub fn with_conn<R>(&self, local: u32, f: impl FnOnce(&mut LocalConn) -> R) -> Option<R> {
        self.conns.borrow_mut().get_mut(&local).map(f)
    }

    /// Stop delivering a room to a connection (leave or close).
    pub fn remove_member(&self, room: &str, local: u32) {
        let mut members = self.members.borrow_mut();
        if let Some(list) = members.get_mut(room) {
            list.retain(|c| *c != local);
            if list.is_empty() {
                members.remove(room);
            }
        }
    }

    pub(super) fn deliver_room(&self, room: &str, frame: &Bytes, skip_user: Option<&str>) {
        let members = self.members.borrow();
        let Some(list) = members.get(room) else {
            return;
        };
        let conns = self.conns.borrow();
        let mut queued = 0;
        for local in list {
            let Some(conn) = conns.get(local) else {
                continue;
            };
            if skip_user.is_some_and(|u| *conn.user.id == *u) {
                continue;
            }
            queued += self.push(conn, frame.clone()) as u64;
        }
        self.metrics.messages_out.inc_by(queued);
    }

    pub(super) fn deliver_users(
        &self,
        users: &[Arc<str>],
        frame: &Bytes,
        skip: Option<super::ConnId>,
    ) {
        let skip = skip
            .filter(|c| c.shard as usize == self.id)
            .map(|c| c.local);
        let by_user = self.users.borrow();
        let conns = self.conns.borrow();
        for (i, user) in users.iter().enumerate() {
            // A DM to oneself names the same user twice; deliver once.
            if users[..i].contains(user) {
                continue;
            }
            for local in by_user.get(user).into_iter().flatten() {
                if Some(*local) == skip {
                    continue;
                }
                if let Some(conn) = conns.get(local) {
                    self.push(conn, frame.clone());
                }
            }
        }
    }

    /// Close every local connection of `user` with 4001 (a private-use code:
    /// "disconnected by the server"; the client should not retry at once).
    pub(super) fn disconnect_user(&self, user: &str) {
        let by_user = self.users.borrow();
        let conns = self.conns.borrow();
        for local in by_user.get(user).into_iter().flatten() {
            if let Some(conn) = conns.get(local) {
                conn.outbox.close(4001, "disconnected by the server");
            }
        }
    }

    pub(super) fn deliver_conn(&self, local: u32, frame: Bytes) {
        if let Some(conn) = self.conns.borrow().get(&local) {
            self.push(conn, frame);
        }
    }

    pub(super) fn on_joined(&self, local: u32, room: Arc<str>, ack: Bytes, backlog: Vec<Bytes>) {
        let conns = self.conns.borrow();
        let Some(conn) = conns.get(&local) else {
            return;
        };
        self.push(conn, ack);

        // Left (or asked to leave) while the join was on its way: the owner
        // has the leave queued after the join, so nothing more to do.
        if !conn.rooms.contains(&room) {
            return;
        }
        let mut members = self.members.borrow_mut();
        let list = members.entry(room).or_default();
        if !list.contains(&local) {
            list.push(local);
        }
        for frame in backlog {
            if !self.push(conn, frame) {
                break;
            }
        }
    }

    /// Queue a frame; count and log a slow consumer the first time it
    /// overflows.
    fn push(&self, conn: &LocalConn, frame: Bytes) -> bool {
        let was_open = conn.outbox.state() == crate::conn::outbox::State::Open;
        let queued = conn.outbox.push(frame);
        if !queued && was_open {
            self.shared
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.slow_consumers.inc();
            tracing::warn!(user = %conn.user.id, shard = self.id, "slow consumer closed");
        }
        queued
    }
}
