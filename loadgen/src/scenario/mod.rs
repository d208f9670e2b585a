//! The scenarios: who the simulated users are, which rooms they join, and how they send.
//!
//! Each scenario module turns its flags into one `Session` and one life cycle per client and
//! hands them to `run::execute`; connection handling and accounting are shared.

pub mod churn;
pub mod classroom;
pub mod dm;
pub mod idle;
pub mod lecture;

use std::sync::Arc;
use std::time::Duration;

use crate::cli::Scenario;
use crate::client::{Dialer, Plan};
use crate::run::{Outcome, Timing};
use crate::session::{is_sampled, Session};
use crate::stats;
use crate::token::{Minter, Role};

/// What every client of a run shares.
pub struct Ctx {
    pub dialer: Dialer,
    pub minter: Minter,
    pub timing: Timing,
    /// Prefix of user ids and room names, unique to the run by default.
    pub tag: String,
    /// Fraction of users whose received messages are timed.
    pub sample: f64,
    /// Content bytes per message.
    pub size: usize,
    /// How long joins may take to be acked.
    pub join_timeout: Duration,
}

impl Ctx {
    /// User `index`'s session, not yet in any room.
    pub fn session(&self, index: usize, role: Role, sends: bool) -> Session {
        let index = u32::try_from(index).expect("client count fits u32");
        let user = format!("{}-u{index}", self.tag);
        let sampled = is_sampled(index, self.sample);
        Session::new(&self.minter, index, user, role, sampled, sends)
    }

    /// The name of room `n` of kind `kind`.
    pub fn room(&self, kind: &str, n: usize) -> String {
        format!("{}-{kind}{n}", self.tag)
    }

    /// A sending plan at `rate` messages per second, or none for a silent user.
    pub fn plan(&self, rate: f64, typing: bool) -> Option<Plan> {
        (rate > 0.0).then_some(Plan {
            rate,
            typing,
            size: self.size,
        })
    }
}

/// Runs the chosen scenario; returns what happened and the scenario's own parameters.
pub async fn run(scenario: &Scenario, ctx: Arc<Ctx>) -> (Outcome, serde_json::Value) {
    match scenario {
        Scenario::Classroom(a) => classroom::run(a, ctx).await,
        Scenario::Lecture(a) => lecture::run(a, ctx).await,
        Scenario::Dm(a) => dm::run(a, ctx).await,
        Scenario::Churn(a) => churn::run(a, ctx).await,
        Scenario::Idle(a) => idle::run(a, ctx).await,
    }
}

/// The life of a client that stays for the whole run: connect, join, send on `plan` until
/// the stop, read through the drain, close.
pub async fn stay(ctx: &Ctx, mut s: Session, plan: Option<Plan>) {
    let Some(mut conn) = ctx.dialer.open(&mut s).await else {
        return;
    };
    if !conn.join(&mut s, false, ctx.join_timeout).await {
        conn.close(&mut s).await;
        return;
    }
    let stayed = conn.run(&mut s, plan, ctx.timing.stop_at).await.is_ok()
        && conn.run(&mut s, None, ctx.timing.close_at).await.is_ok();
    if stayed {
        conn.close(&mut s).await;
    }
    let holes = s.finish();
    stats::record(|iv| iv.lost += holes);
}
