//! `dm`: clients paired off (0 with 1, 2 with 3, ...), each sending direct messages to its
//! partner. With an odd client count the last one connects but has nobody to write to.
//!
//! The peers do not implement `dm` and answer each one with `bad_request`; against them
//! this scenario shows up as errors, which is expected.

use std::sync::Arc;

use serde_json::json;

use crate::cli::DmArgs;
use crate::run::{self, Outcome};
use crate::scenario::{stay, Ctx};
use crate::token::Role;

pub async fn run(a: &DmArgs, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    let clients = a.common.clients;
    let rate = a.rate;

    let outcome = run::execute(ctx.timing, clients, |i| {
        let ctx = Arc::clone(&ctx);
        let partner = i ^ 1;
        let paired = partner < clients;
        let plan = ctx.plan(if paired { rate } else { 0.0 }, false);
        let mut session = ctx.session(i, Role::Student, plan.is_some());
        if paired {
            session = session.with_partner(format!("{}-u{partner}", ctx.tag));
        }
        async move { stay(&ctx, session, plan).await }
    })
    .await;

    (outcome, json!({ "pairs": clients / 2, "rate": rate }))
}
