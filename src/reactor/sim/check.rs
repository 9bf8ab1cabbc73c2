//! The checks at the end of a run: what each pair's story implies.

use std::io;

use super::pair::{Ending, Pair};
use super::side::{Outcome, Rejection};
use super::{CLIENT_ID, FIRST_SERVER_ID, Who, Wire};
use crate::types::PeerId;

impl<P: Wire> Pair<P> {
    /// Every check at the end of the run.
    pub(super) fn check(&self) {
        if let Some(proxy) = self.proxy {
            let expected = proxy.expected(self.index);
            for (i, conn) in self.conns.iter().enumerate() {
                // Before the client's link fails or gets the whole reply it
                // may have written part of its handshake only.
                let sent = &conn.c2s.to_proxy;
                if !expected.starts_with(sent) || (conn.c2s.written > 0 && *sent != expected) {
                    self.fail(format!("conn {i}: the proxy got {sent:02x?}, expected {expected:02x?}"));
                }
            }
        }
        let (c, s) = (&self.client, &self.server);
        if let Ending::Unreachable = self.ending {
            if c.rec.ended != [(CLIENT_ID, Outcome::ConnectTimeout)] {
                self.fail(format!("expected a connect timeout, got {:?}", c.rec.ended));
            }
            if self.next_server_id != FIRST_SERVER_ID || !c.rec.received.is_empty() {
                self.fail("an unreachable server was reached");
            }
            let (accepted, rejected) = c.sent_on(CLIENT_ID);
            let back: Vec<u64> = rejected.iter().map(|(t, _)| *t).collect();
            if back != accepted || rejected.iter().any(|(_, k)| *k != Rejection::Disconnected) {
                self.fail(format!("held messages not all handed back: {accepted:x?} vs {rejected:x?}"));
            }
            return;
        }
        let final_server = PeerId(self.next_server_id - 1);
        // Earlier server links exist only in a v1 fallback, saw nothing, and
        // ended because the client spoke v2 (or left to retry).
        for id in FIRST_SERVER_ID..self.next_server_id - 1 {
            let id = PeerId(id);
            if !self.fallback {
                self.fail(format!("server link {id} without a fallback"));
            }
            match s.outcome_of(id) {
                Some(Outcome::Codec("BadMagic") | Outcome::PeerClosed) => {}
                other => self.fail(format!("first server link {id} ended {other:?}")),
            }
            if !s.received_on(id).is_empty() {
                self.fail(format!("first server link {id} received messages"));
            }
        }
        if self.fallback && self.retries != 1 {
            self.fail(format!("a v2-preferred client of a v1 server retried {} times", self.retries));
        }
        if c.rec.ended.len() != 1 {
            self.fail(format!("client ended {:?}", c.rec.ended));
        }
        if s.rec.ended.len() as u64 != self.next_server_id - FIRST_SERVER_ID {
            self.fail(format!("server ended {:?}", s.rec.ended));
        }
        let outcome = |who: Who| match who {
            Who::Client => c.outcome_of(CLIENT_ID),
            Who::Server => s.outcome_of(final_server),
        };
        let expected = |who: Who| -> Outcome {
            match self.ending {
                Ending::Flush { who: closer, .. } if who == closer => Outcome::Flushed,
                Ending::Flush { .. } => Outcome::PeerClosed,
                Ending::Drop { who: dropper, .. } if who == dropper => Outcome::Requested,
                Ending::Drop { rst: false, .. } => Outcome::PeerClosed,
                Ending::Drop { rst: true, .. } => Outcome::Io(io::ErrorKind::ConnectionReset),
                Ending::Corrupt { who: sender, .. } if who == sender => Outcome::PeerClosed,
                Ending::Corrupt { .. } => Outcome::Codec(if self.expect_v1 { "BadChecksum" } else { "V2Auth" }),
                Ending::Unreachable => unreachable!("handled above"),
            }
        };
        for who in [Who::Client, Who::Server] {
            if outcome(who) != Some(&expected(who)) {
                self.fail(format!("{who:?} ended {:?}, expected {:?}", outcome(who), expected(who)));
            }
        }
        // Per direction: what arrived is a prefix of what was sent, handed
        // back messages are the tail of what was accepted, and some endings
        // promise everything (or everything up to the corrupt frame).
        for who in [Who::Client, Who::Server] {
            let (sender, receiver, sender_id, receiver_id) = match who {
                Who::Client => (c, s, CLIENT_ID, final_server),
                Who::Server => (s, c, final_server, CLIENT_ID),
            };
            let (accepted, rejected) = sender.sent_on(sender_id);
            let closing: Vec<u64> =
                rejected.iter().filter(|(_, k)| *k == Rejection::Closing).map(|(t, _)| *t).collect();
            let back: Vec<u64> =
                rejected.iter().filter(|(_, k)| *k == Rejection::Disconnected).map(|(t, _)| *t).collect();
            if rejected.iter().any(|(_, k)| *k == Rejection::Other) {
                self.fail(format!("{who:?}: unexpected rejection {rejected:x?}"));
            }
            let closer = matches!(self.ending, Ending::Flush { who: w, .. } if w == who);
            let expected_closing: Vec<u64> = self.closing_tag.filter(|_| closer).into_iter().collect();
            if closing != expected_closing {
                self.fail(format!("{who:?}: refused as closing {closing:x?}, expected {expected_closing:x?}"));
            }
            let normal: Vec<u64> = accepted.iter().copied().filter(|t| !closing.contains(t)).collect();
            if !normal.ends_with(&back) {
                self.fail(format!("{who:?}: handed back {back:x?} is not the tail of {normal:x?}"));
            }
            let sent = &normal[..normal.len() - back.len()];
            let received = receiver.received_on(receiver_id);
            if !sent.starts_with(&received) {
                self.fail(format!("{who:?} sent {sent:x?}\n  but the peer received {received:x?}"));
            }
            match self.ending {
                Ending::Flush { who: closer, .. } if closer == who && (!back.is_empty() || received != sent) => {
                    self.fail(format!("flushed, yet sent {sent:x?}, handed back {back:x?}, received {received:x?}"));
                }
                Ending::Corrupt { who: sender, .. } if sender == who => {
                    let corrupt = self.corrupt_tag.expect("fired");
                    let upto = sent.iter().position(|t| *t == corrupt).expect("the corrupt message was sent");
                    if received != sent[..upto] {
                        self.fail(format!("expected {:x?} before the corrupt frame, got {received:x?}", &sent[..upto]));
                    }
                }
                _ => {}
            }
        }
    }
}
