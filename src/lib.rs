//! hubbub: a thread-per-core WebSocket chat edge server.
//!
//! Vocabulary used throughout:
//! - **Conn**: one WebSocket connection (one socket).
//! - **User**: the `sub` of a token; may have several conns.
//! - **Room**: a chat room, or a DM pair room `dm:<a>:<b>`; has members and a
//!   `seq` order.
//! - **Shard**: one worker core and everything it owns (see [`shard`]).
//! - **Node**: one hubbub process.
//! - "channel" means a Rust queue or a Redis channel, never a room.
//!
//! Modules:
//! - [`config`]: flags, environment and TOML file → [`config::Config`].
//! - [`admin`]: the admin HTTP API.
//! - [`admission`]: connection admission and limits shared by all workers.
//! - [`auth`]: JWT verification and room access.
//! - [`protocol`]: the frames of `PROTOCOL.md` and their JSON.
//! - [`content`]: message content sanitising.
//! - [`ws`]: the RFC 6455 codec, sans I/O.
//! - [`http`]: the request head, upgrade routes, health and REST history.
//! - [`metrics`]: the Prometheus metrics.
//! - [`conn`]: one connection's session, outbound queue and socket loops.
//! - [`shard`]: per-core state, room ownership and cross-core messages.
//! - [`store`]: the history store interface, embedded store and batch writer.
//! - [`server`]: start-up, worker threads and shutdown.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod content;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod store;
pub mod ws;
