//! `idle`: connections that join a room and then only hold, for measuring the server's
//! memory per connection. The generator reports how many it held when the hold ended; the
//! caller reads the server's RSS while they are held (after "clients joined" is printed).

use std::sync::Arc;

use serde_json::json;

use crate::cli::IdleArgs;
use crate::run::{self, Outcome};
use crate::scenario::{stay, Ctx};
use crate::token::Role;

pub async fn run(a: &IdleArgs, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    let per_room = a.room_size as usize;

    let outcome = run::execute(ctx.timing, a.common.clients, |i| {
        let ctx = Arc::clone(&ctx);
        let session = ctx
            .session(i, Role::Student, false)
            .with_room(ctx.room("idle", i / per_room));
        async move { stay(&ctx, session, None).await }
    })
    .await;

    let params = json!({
        "rooms": a.common.clients.div_ceil(per_room),
        "room_size": a.room_size,
    });
    (outcome, params)
}
