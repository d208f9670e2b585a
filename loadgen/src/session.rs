//! One simulated user: who it is, what it joined, and what it has seen so far.
//!
//! A `Session` outlives its connections, so a churning student keeps its per-room `seq`
//! position across a reconnect and can resume with `since`. This module also turns each
//! received frame into counts, latencies and loss verdicts; `client` does the I/O.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock;
use crate::order::{PairWindow, RoomOrder, Verdict};
use crate::scan::{self, Kind};
use crate::stats::{record_us, Interval};
use crate::token::{Minter, Role};

/// `limits.messages_per_sec` from the server's last `welcome`; 0 when it sent none.
pub static SERVER_RATE_LIMIT: AtomicU64 = AtomicU64::new(0);

/// One joined (or to-be-joined) room and this user's position in it.
struct RoomState {
    name: String,
    order: RoomOrder,
}

/// The partner of a direct-message pair and what this side saw of the pair's numbers.
struct Pair {
    partner: String,
    /// Both kinds of numbers: acks of own sends and the partner's dms.
    window: PairWindow,
    /// Last `seq` of a received `dm`; those alone must rise strictly.
    last_in: Option<u64>,
}

/// A simulated user.
pub struct Session {
    /// Index of this user in the run; written into its messages' content mark.
    pub index: u32,
    /// Signed token for `?token=`.
    pub token: String,
    /// Whether deliveries from others are timed on this user's connections.
    sampled: bool,
    /// Whether this user sends; only senders need their own echoes timed.
    sends: bool,
    rooms: Vec<RoomState>,
    pair: Option<Pair>,
    /// Counter that makes request ids unique within this user.
    next_request: u64,
    /// Join requests still waiting for an ack or error.
    pub pending_joins: usize,
    /// A join got an `error` instead of an ack.
    pub join_failed: bool,
    /// Leave requests still waiting for an ack or error.
    pub pending_leaves: usize,
    /// Whether any connection of this user got through before (so the next is a reconnect).
    pub connected_before: bool,
}

/// Whether user `index` is in the sampled fraction. Stepping by the golden ratio spreads the
/// sampled users evenly over rooms and roles, where `index % n` could line up with them.
pub fn is_sampled(index: u32, fraction: f64) -> bool {
    (f64::from(index) * 0.618_033_988_749_895).fract() < fraction
}

impl Session {
    /// A user named after its index, in `rooms` (or paired with `partner` for dms).
    pub fn new(
        minter: &Minter,
        index: u32,
        user: String,
        role: Role,
        sampled: bool,
        sends: bool,
    ) -> Self {
        let name = format!("{role:?} {index}");
        let token = minter.mint(&user, &name, role);
        Session {
            index,
            token,
            sampled,
            sends,
            rooms: Vec::new(),
            pair: None,
            next_request: 0,
            pending_joins: 0,
            join_failed: false,
            pending_leaves: 0,
            connected_before: false,
        }
    }

    /// Adds a room to join on every connection.
    pub fn with_room(mut self, room: String) -> Self {
        self.rooms.push(RoomState {
            name: room,
            order: RoomOrder::default(),
        });
        self
    }

    /// Makes this user one side of a direct-message pair.
    pub fn with_partner(mut self, partner: String) -> Self {
        self.pair = Some(Pair {
            partner,
            window: PairWindow::default(),
            last_in: None,
        });
        self
    }

    /// The frames that join every room; with `resume`, each carries the last `seq` seen as
    /// `since` so the server replays what this user missed while away.
    pub fn join_frames(&mut self, resume: bool) -> Vec<String> {
        self.pending_joins = self.rooms.len();
        self.join_failed = false;
        let mut frames = Vec::with_capacity(self.rooms.len());
        for (i, room) in self.rooms.iter_mut().enumerate() {
            let since = if resume { room.order.last() } else { None };
            room.order.joining(since);
            let mut f = format!(r#"{{"type":"join","id":"j{i}","room":"{}""#, room.name);
            if let Some(s) = since {
                let _ = write!(f, r#","since":{s}"#);
            }
            f.push('}');
            frames.push(f);
        }
        frames
    }

    /// The frames that leave every room.
    pub fn leave_frames(&mut self) -> Vec<String> {
        self.pending_leaves = self.rooms.len();
        self.rooms
            .iter()
            .enumerate()
            .map(|(i, r)| format!(r#"{{"type":"leave","id":"l{i}","room":"{}"}}"#, r.name))
            .collect()
    }

    /// A `message` to the first room, or a `dm` to the partner, with `size` bytes of content
    /// starting with the send-time mark.
    pub fn chat_frame(&mut self, size: usize) -> String {
        let now = clock::now_us();
        self.next_request += 1;
        let k = self.next_request;

        // The id carries the send time, so the ack's latency needs no lookup table, and the
        // per-user counter keeps ids unique for the server's resend de-duplication.
        let mark = format!("t={now};c={};", self.index);
        let pad = size.saturating_sub(mark.len());
        let mut f = String::with_capacity(size + 96);
        match (&self.pair, self.rooms.first()) {
            (Some(p), _) => {
                let _ = write!(f, r#"{{"type":"dm","id":"m{now}.{k}","to":"{}""#, p.partner);
            }
            (None, Some(r)) => {
                let _ = write!(
                    f,
                    r#"{{"type":"message","id":"m{now}.{k}","room":"{}""#,
                    r.name
                );
            }
            (None, None) => unreachable!("a sender has a room or a partner"),
        }
        f.push_str(r#","content":""#);
        f.push_str(&mark);
        f.extend(std::iter::repeat_n('x', pad));
        f.push_str("\"}");
        f
    }

    /// A `typing` start for the first room (none for dm pairs, whose typing has no room).
    pub fn typing_frame(&self) -> Option<String> {
        let room = self.rooms.first()?;
        Some(format!(
            r#"{{"type":"typing","room":"{}","state":true}}"#,
            room.name
        ))
    }

    /// Holes left in the dm pair's numbers; call once when the user is done.
    pub fn finish(&self) -> u64 {
        self.pair.as_ref().map_or(0, |p| p.window.finish())
    }

    /// Accounts for one received text frame.
    pub fn on_text(&mut self, frame: &[u8], iv: &mut Interval) {
        match scan::kind(frame) {
            Kind::Message => {
                iv.delivered += 1;
                let mut replayed = false;
                if let (Some(room), Some(seq)) = (scan::room(frame), scan::seq(frame)) {
                    if let Some(r) = self.rooms.iter_mut().find(|r| r.name.as_bytes() == room) {
                        let v = r.order.observe(seq);
                        replayed = v.replayed;
                        apply(iv, v);
                    }
                }
                if !replayed {
                    self.time_delivery(frame, iv);
                }
            }
            Kind::Dm => {
                iv.delivered += 1;
                if let (Some(p), Some(seq)) = (self.pair.as_mut(), scan::seq(frame)) {
                    if p.last_in.is_some_and(|l| seq <= l) {
                        iv.out_of_order += 1;
                    }
                    p.last_in = Some(p.last_in.map_or(seq, |l| l.max(seq)));
                    iv.lost += p.window.see(seq).0;
                }
                self.time_delivery(frame, iv);
            }
            Kind::Ack => self.on_ack(frame, iv),
            Kind::Typing => iv.typing += 1,
            Kind::Error => {
                let code = scan::code(frame).and_then(|c| std::str::from_utf8(c).ok());
                iv.errors.add(code.unwrap_or("unknown"), 1);
                match scan::id(frame).and_then(|id| id.first()) {
                    Some(b'j') => {
                        self.pending_joins = self.pending_joins.saturating_sub(1);
                        self.join_failed = true;
                    }
                    Some(b'l') => self.pending_leaves = self.pending_leaves.saturating_sub(1),
                    _ => {}
                }
            }
            Kind::Welcome => on_welcome(frame),
            Kind::Pong | Kind::Presence | Kind::History | Kind::Other => {}
        }
    }

    /// Times a delivered message from its content mark: the sender's own copy as echo
    /// latency, anyone else's (on sampled users only) as delivery latency.
    fn time_delivery(&self, frame: &[u8], iv: &mut Interval) {
        if !self.sampled && !self.sends {
            return;
        }
        let Some(mark) = scan::mark(frame) else {
            return;
        };
        let took = clock::now_us().saturating_sub(mark.sent_us);
        if mark.conn == self.index {
            record_us(&mut iv.echo, took);
        } else if self.sampled {
            record_us(&mut iv.delivery, took);
        }
    }

    fn on_ack(&mut self, frame: &[u8], iv: &mut Interval) {
        // A join ack carries `last_seq`, and its `members` may hold user ids that would
        // shadow the request id for the byte scanner; it is rare, so parse it in full.
        if let Some(last_seq) = scan::last_seq(frame) {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
                return;
            };
            let room = v.get("room").and_then(|r| r.as_str());
            if let Some(r) = self
                .rooms
                .iter_mut()
                .find(|r| Some(r.name.as_str()) == room)
            {
                r.order.joined(last_seq);
            }
            iv.joins += 1;
            self.pending_joins = self.pending_joins.saturating_sub(1);
            return;
        }

        let Some(id) = scan::id(frame) else { return };
        match id.split_first() {
            Some((b'm', rest)) => {
                iv.acked += 1;
                if let Some((sent_us, _)) = scan::leading_number(rest) {
                    record_us(&mut iv.ack, clock::now_us().saturating_sub(sent_us));
                }
                if let (Some(p), Some(seq)) = (self.pair.as_mut(), scan::seq(frame)) {
                    iv.lost += p.window.see(seq).0;
                }
            }
            Some((b'l', _)) => self.pending_leaves = self.pending_leaves.saturating_sub(1),
            // A join ack without `last_seq` still completes the join; the room's baseline
            // then comes from its first message.
            Some((b'j', _)) => {
                iv.joins += 1;
                self.pending_joins = self.pending_joins.saturating_sub(1);
            }
            _ => {}
        }
    }
}

fn apply(iv: &mut Interval, v: Verdict) {
    iv.lost += v.lost;
    iv.out_of_order += v.out_of_order;
    iv.resume_missed += v.resume_missed;
    iv.replayed += u64::from(v.replayed);
}

/// Notes the server's advertised rate limit, so the run can warn when it sends faster.
fn on_welcome(frame: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
        return;
    };
    let limit = v
        .pointer("/limits/messages_per_sec")
        .and_then(|l| l.as_f64());
    if let Some(l) = limit {
        SERVER_RATE_LIMIT.store(l.ceil() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn student(index: u32) -> Session {
        let minter = Minter::new(b"k", 2_000_000_000);
        Session::new(
            &minter,
            index,
            format!("s{index}"),
            Role::Student,
            true,
            true,
        )
        .with_room("r".into())
    }

    #[test]
    fn message_frames_carry_a_parsable_mark() {
        let mut s = student(7);
        let frame = s.chat_frame(100);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["room"], "r");
        assert_eq!(v["content"].as_str().unwrap().len(), 100);
        let mark = scan::mark(frame.as_bytes()).unwrap();
        assert_eq!(mark.conn, 7);
        assert!(v["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("m{}.", mark.sent_us)));
    }

    #[test]
    fn join_frames_resume_from_the_last_seq() {
        let mut s = student(1);
        let fresh = s.join_frames(false);
        assert_eq!(fresh, [r#"{"type":"join","id":"j0","room":"r"}"#]);
        let mut iv = Interval::default();
        s.on_text(
            br#"{"type":"ack","id":"j0","room":"r","members":2,"last_seq":4}"#,
            &mut iv,
        );
        s.on_text(
            br#"{"type":"message","room":"r","seq":5,"content":"hi"}"#,
            &mut iv,
        );
        assert_eq!((iv.joins, s.pending_joins), (1, 0));

        let resumed = s.join_frames(true);
        assert_eq!(
            resumed,
            [r#"{"type":"join","id":"j0","room":"r","since":5}"#]
        );
    }

    #[test]
    fn frames_update_the_counts() {
        let mut s = student(3);
        let mut iv = Interval::default();
        s.join_frames(false);
        s.on_text(
            br#"{"type":"ack","id":"j0","room":"r","members":[{"id":"x"}],"last_seq":0}"#,
            &mut iv,
        );
        let own = s.chat_frame(40);
        let mark = scan::mark(own.as_bytes()).unwrap();
        let other = r#"{"type":"message","room":"r","seq":1,"content":"t=1;c=99;"}"#;
        let echo = format!(
            r#"{{"type":"message","room":"r","seq":3,"content":"t={};c=3;"}}"#,
            mark.sent_us
        );
        s.on_text(other.as_bytes(), &mut iv);
        s.on_text(echo.as_bytes(), &mut iv);
        s.on_text(
            br#"{"type":"typing","room":"r","user":"u","state":true}"#,
            &mut iv,
        );
        s.on_text(
            br#"{"type":"error","id":"m1.1","code":"rate_limited"}"#,
            &mut iv,
        );
        let ack = format!(
            r#"{{"type":"ack","id":"m{}.1","room":"r","seq":3}}"#,
            mark.sent_us
        );
        s.on_text(ack.as_bytes(), &mut iv);

        assert_eq!((iv.delivered, iv.typing, iv.acked, iv.lost), (2, 1, 1, 1));
        assert_eq!(iv.errors.iter().collect::<Vec<_>>(), [("rate_limited", 1)]);
        assert_eq!((iv.delivery.len(), iv.echo.len(), iv.ack.len()), (1, 1, 1));
    }

    #[test]
    fn a_failed_join_is_noticed() {
        let mut s = student(2);
        s.join_frames(false);
        let mut iv = Interval::default();
        s.on_text(
            br#"{"type":"error","id":"j0","code":"forbidden","message":"no"}"#,
            &mut iv,
        );
        assert!(s.join_failed);
        assert_eq!(s.pending_joins, 0);
    }

    #[test]
    fn dm_pairs_check_both_acks_and_deliveries() {
        let minter = Minter::new(b"k", 2_000_000_000);
        let mut s = Session::new(&minter, 0, "a".into(), Role::Student, true, true)
            .with_partner("b".into());
        let mut iv = Interval::default();
        // Own sends got 1 and 3, the partner's arrive as 2 and 5, out of step with the acks.
        s.on_text(br#"{"type":"ack","id":"m1.1","seq":1}"#, &mut iv);
        s.on_text(br#"{"type":"dm","seq":2,"content":"t=1;c=1;"}"#, &mut iv);
        s.on_text(br#"{"type":"dm","seq":5,"content":"t=1;c=1;"}"#, &mut iv);
        s.on_text(br#"{"type":"ack","id":"m1.2","seq":3}"#, &mut iv);
        assert_eq!((iv.lost, iv.out_of_order), (0, 0));
        // 4 never came.
        assert_eq!(s.finish(), 1);
        s.on_text(br#"{"type":"dm","seq":5,"content":"t=1;c=1;"}"#, &mut iv);
        assert_eq!(iv.out_of_order, 1);
    }

    #[test]
    fn sampling_takes_about_the_fraction() {
        let n = (0..10_000).filter(|&i| is_sampled(i, 0.1)).count();
        assert!((900..=1100).contains(&n), "{n}");
        assert!((0..100).all(|i| is_sampled(i, 1.0)));
        assert!(!(0..100).any(|i| is_sampled(i, 0.0)));
    }
}
