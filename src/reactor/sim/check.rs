//! The checks at the end of a run: what each pair's story implies.

use std::io;

use super::fault::Fault;
use super::pair::{Ending, Pair};
use super::side::{Outcome, Rejection};
use super::{CLIENT_ID, FIRST_SERVER_ID, Who, Wire};
use crate::types::PeerId;

impl<P: Wire> Pair<P> {
    /// Every check at the end of the run.
    pub(super) fn check(&self) {
        self.check_proxy();
        if let Some(fault) = self.fault()
            && !self.fault_hit()
        {
            self.fail(format!("the fault {fault:?} never happened"));
        }
        if self.moves_on.is_some() && !self.moved_on {
            self.fail("the client never moved on to the next address");
        }
        match self.ending {
            Ending::Unreachable => self.check_unconnected(Outcome::ConnectTimeout),
            Ending::Fault { fault: fault @ Fault::Connect { .. }, .. } => {
                self.check_unconnected(fault.outcome(Who::Client, self.proxy.is_some()));
            }
            _ => {
                // Registering the accepted socket failed: no server link.
                let no_link = matches!(self.fault(), Some(Fault::Accept { read: None, .. }));
                let server = (!no_link).then(|| PeerId(self.next_server_id - 1));
                self.check_links(server);
                self.check_direction(Who::Client, server);
                self.check_direction(Who::Server, server);
            }
        }
    }

    /// The proxy got the client's handshake, on every connection.
    fn check_proxy(&self) {
        let Some(proxy) = self.proxy else { return };
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

    /// The client never reached the server (on its last attempt): it ended
    /// `expected`, received nothing, and got every message back.
    fn check_unconnected(&self, expected: Outcome) {
        let c = &self.client;
        if c.rec.ended != [(CLIENT_ID, expected.clone())] {
            self.fail(format!("expected the client to end {expected:?}, got {:?}", c.rec.ended));
        }
        // Only a fallback's first connection may have reached it.
        if self.next_server_id - FIRST_SERVER_ID != self.retries as u64 || !c.rec.received.is_empty() {
            self.fail("the server was reached");
        }
        self.check_earlier_server_links(self.next_server_id);
        let (accepted, rejected) = c.sent_on(CLIENT_ID);
        let back: Vec<u64> = rejected.iter().map(|(t, _)| *t).collect();
        if back != accepted || rejected.iter().any(|(_, k)| *k != Rejection::Disconnected) {
            self.fail(format!("held messages not all handed back: {accepted:x?} vs {rejected:x?}"));
        }
    }

    /// Server links before `upto` exist only in a v1 fallback, saw nothing,
    /// and ended because the client spoke v2 (or left to retry).
    fn check_earlier_server_links(&self, upto: u64) {
        let s = &self.server;
        for id in (FIRST_SERVER_ID..upto).map(PeerId) {
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
    }

    /// One terminal event per link, each with the reason the ending
    /// implies; `server` is the server's last link (`None`: it had none).
    fn check_links(&self, server: Option<PeerId>) {
        let (c, s) = (&self.client, &self.server);
        self.check_earlier_server_links(server.map_or(FIRST_SERVER_ID, |id| id.0));
        if self.fallback && self.retries != 1 {
            self.fail(format!("a v2-preferred client of a v1 server retried {} times", self.retries));
        }
        if c.rec.ended.len() != 1 {
            self.fail(format!("client ended {:?}", c.rec.ended));
        }
        if s.rec.ended.len() as u64 != self.next_server_id - FIRST_SERVER_ID {
            self.fail(format!("server ended {:?}", s.rec.ended));
        }
        let outcomes = [(Who::Client, c.outcome_of(CLIENT_ID)), (Who::Server, server.and_then(|id| s.outcome_of(id)))];
        for (who, outcome) in outcomes {
            if who == Who::Server && server.is_none() {
                continue;
            }
            let expected = self.expected(who);
            if outcome != Some(&expected) {
                self.fail(format!("{who:?} ended {outcome:?}, expected {expected:?}"));
            }
        }
    }

    /// How `who`'s (last) link ends in this pair's story.
    fn expected(&self, who: Who) -> Outcome {
        match self.ending {
            Ending::Flush { who: closer, .. } if who == closer => Outcome::Flushed,
            Ending::Flush { .. } => Outcome::PeerClosed,
            Ending::Drop { who: dropper, .. } if who == dropper => Outcome::Requested,
            Ending::Drop { rst: false, .. } => Outcome::PeerClosed,
            Ending::Drop { rst: true, .. } => Outcome::Io(io::ErrorKind::ConnectionReset),
            Ending::Corrupt { who: sender, .. } if who == sender => Outcome::PeerClosed,
            Ending::Corrupt { .. } => Outcome::Codec(if self.expect_v1 { "BadChecksum" } else { "V2Auth" }),
            Ending::Fault { fault, .. } => fault.outcome(who, self.proxy.is_some()),
            Ending::Unreachable => unreachable!("checked by check_unconnected"),
        }
    }

    /// What `who` sent on its last link: what arrived is a prefix of it,
    /// handed back messages are the tail of what was accepted, and some
    /// endings promise everything (or everything up to the corrupt frame).
    /// `server` is the server's last link (`None`: it had none, and nothing
    /// can have arrived).
    fn check_direction(&self, who: Who, server: Option<PeerId>) {
        let (c, s) = (&self.client, &self.server);
        let (sender, receiver, sender_id, receiver_id) = match who {
            Who::Client => (c, s, Some(CLIENT_ID), server),
            Who::Server => (s, c, server, Some(CLIENT_ID)),
        };
        let Some(sender_id) = sender_id else {
            if !receiver.rec.received.is_empty() {
                self.fail(format!("{:?} received {:x?} from no link", who.other(), receiver.rec.received));
            }
            return;
        };
        let (accepted, rejected) = sender.sent_on(sender_id);
        let closing: Vec<u64> = rejected.iter().filter(|(_, k)| *k == Rejection::Closing).map(|(t, _)| *t).collect();
        let back: Vec<u64> = rejected.iter().filter(|(_, k)| *k == Rejection::Disconnected).map(|(t, _)| *t).collect();
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
        let received = receiver_id.map(|id| receiver.received_on(id)).unwrap_or_default();
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
