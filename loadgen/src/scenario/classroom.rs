//! `classroom`: many rooms, each with `--room-size` students and one teacher, everyone
//! chatting at a steady rate and announcing it with a `typing` frame first.
//!
//! Clients are numbered room by room, the teacher first, so the ramp fills one classroom
//! before opening the next, as a school day starts.

use std::sync::Arc;

use serde_json::json;

use crate::cli::ClassroomArgs;
use crate::run::{self, Outcome};
use crate::scenario::{stay, Ctx};
use crate::token::Role;

pub async fn run(a: &ClassroomArgs, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    let per_room = a.room_size as usize + 1;
    let rooms = a.common.clients.div_ceil(per_room);
    let (rate, teacher_rate, typing) = (a.rate, a.teacher_rate, !a.no_typing);

    let outcome = run::execute(ctx.timing, a.common.clients, |i| {
        let ctx = Arc::clone(&ctx);
        let teacher = i % per_room == 0;
        let (role, rate) = if teacher {
            (Role::Teacher, teacher_rate)
        } else {
            (Role::Student, rate)
        };
        let plan = ctx.plan(rate, typing);
        let session = ctx
            .session(i, role, plan.is_some())
            .with_room(ctx.room("class", i / per_room));
        async move { stay(&ctx, session, plan).await }
    })
    .await;

    let params = json!({
        "rooms": rooms,
        "room_size": a.room_size,
        "rate": rate,
        "teacher_rate": teacher_rate,
        "typing": typing,
    });
    (outcome, params)
}
