//! `lecture`: one teacher per room broadcasting to every other client in it; the fan-out
//! test. Students stay silent unless `--student-rate` is set.
//!
//! Client `i` sits in room `i % rooms`, so the first `rooms` clients, the teachers, connect
//! first and their broadcasts reach each student from the moment it joins.

use std::sync::Arc;

use serde_json::json;

use crate::cli::LectureArgs;
use crate::run::{self, Outcome};
use crate::scenario::{stay, Ctx};
use crate::token::Role;

pub async fn run(a: &LectureArgs, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    let rooms = a.rooms as usize;
    let (rate, student_rate) = (a.rate, a.student_rate);

    let outcome = run::execute(ctx.timing, a.common.clients, |i| {
        let ctx = Arc::clone(&ctx);
        let teacher = i < rooms;
        let (role, rate) = if teacher {
            (Role::Teacher, rate)
        } else {
            (Role::Student, student_rate)
        };
        let plan = ctx.plan(rate, false);
        let session = ctx
            .session(i, role, plan.is_some())
            .with_room(ctx.room("lecture", i % rooms));
        async move { stay(&ctx, session, plan).await }
    })
    .await;

    let params = json!({
        "rooms": rooms,
        "room_size": a.common.clients.div_ceil(rooms),
        "rate": rate,
        "student_rate": student_rate,
    });
    (outcome, params)
}
