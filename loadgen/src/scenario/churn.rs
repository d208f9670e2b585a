//! `churn`: students who keep coming and going. Each one connects, joins its room (resuming
//! with `since` = the last `seq` it saw, after the first time), chats for a session of
//! random length, leaves, disconnects, stays away a while, and starts over.
//!
//! A server that honours `since` replays what a student missed while away, so its stream
//! stays gap-free; gaps across a reconnect are counted as `resume_missed`, apart from live
//! losses. The peers ignore `since`, so against them `resume_missed` grows; that is expected.

use std::sync::Arc;

use serde_json::json;
use tokio::time::{sleep_until, Instant};

use crate::cli::ChurnArgs;
use crate::run::{self, Outcome};
use crate::scenario::Ctx;
use crate::session::Session;
use crate::token::Role;

pub async fn run(a: &ChurnArgs, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    let per_room = a.room_size as usize;
    let (rate, session_len, away) = (a.rate, a.session, a.away);

    let outcome = run::execute(ctx.timing, a.common.clients, |i| {
        let ctx = Arc::clone(&ctx);
        let plan = ctx.plan(rate, false);
        let session = ctx
            .session(i, Role::Student, plan.is_some())
            .with_room(ctx.room("churn", i / per_room));
        async move { cycle(&ctx, session, plan, session_len, away).await }
    })
    .await;

    let params = json!({
        "rooms": a.common.clients.div_ceil(per_room),
        "room_size": a.room_size,
        "rate": rate,
        "session_s": session_len.as_secs_f64(),
        "away_s": away.as_secs_f64(),
    });
    (outcome, params)
}

/// One student's comings and goings until the run stops.
async fn cycle(
    ctx: &Ctx,
    mut s: Session,
    plan: Option<crate::client::Plan>,
    session_len: std::time::Duration,
    away: std::time::Duration,
) {
    let t = ctx.timing;
    let mut resume = false;
    while Instant::now() < t.stop_at {
        let leave_at = Instant::now() + session_len.mul_f64(0.5 + fastrand::f64());
        if let Some(mut conn) = ctx.dialer.open(&mut s).await {
            if !conn.join(&mut s, resume, ctx.join_timeout).await {
                conn.close(&mut s).await;
            } else {
                resume = true;
                let ok = conn
                    .run(&mut s, plan, leave_at.min(t.stop_at))
                    .await
                    .is_ok();
                if ok && Instant::now() >= t.stop_at {
                    // The run is over: read what is in flight and close for good.
                    if conn.run(&mut s, None, t.close_at).await.is_ok() {
                        conn.close(&mut s).await;
                    }
                    return;
                }
                if ok && conn.leave(&mut s).await.is_ok() {
                    conn.close(&mut s).await;
                }
            }
        }
        sleep_until((Instant::now() + away).min(t.stop_at)).await;
    }
}
