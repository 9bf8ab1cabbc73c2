//! One connection's buffers and counters, and the event outbox.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use mio::net::TcpStream;

use crate::codec::{Codec, Decoded};
use crate::event::{Direction, DisconnectReason, Event, PeerId};
use crate::handle::{Gate, Shared};
use crate::peer::{PeerInfo, PeerStats};
use crate::protocol::Protocol;

/// Most forwarded session messages kept for a peer before `Ready`.
const MAX_BEFORE_READY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Connecting,
    Open,
}

pub(super) struct Conn<C: Codec, P> {
    pub(super) id: PeerId,
    pub(super) stream: TcpStream,
    pub(super) codec: C,
    pub(super) proto: P,
    pub(super) state: State,
    /// Disconnect requested after flush: no new messages, close when empty.
    pub(super) closing: bool,
    pub(super) direction: Direction,
    pub(super) addr: SocketAddr,
    pub(super) local: Option<SocketAddr>,
    /// The user has been told about this peer (`Connected` or `Ready`).
    pub(super) announced: bool,
    /// Deadline of the protocol timer currently in the heap.
    pub(super) proto_timer: Option<Instant>,
    /// Bytes of an incomplete frame.
    pub(super) rx: Vec<u8>,
    /// Length of the incomplete frame, once the codec knows it.
    pub(super) rx_frame_len: Option<usize>,
    pub(super) frame_started: Option<Instant>,
    /// A frame timer is in the heap.
    pub(super) frame_armed: bool,
    /// Reading is paused while our send queue is over the limit (Core's
    /// `fPauseSend`): a peer that makes us answer cannot grow the queue.
    pub(super) read_paused: bool,
    /// Deadline of this connection attempt's connect timer.
    pub(super) connect_deadline: Option<Instant>,
    pub(super) tx: Vec<u8>,
    pub(super) tx_pos: usize,
    pub(super) tx_progress: Instant,
    pub(super) stall_armed: bool,
    pub(super) writable: bool,
    pub(super) in_read_queue: bool,
    pub(super) in_write_queue: bool,
    /// The send gate shared with the handles.
    pub(super) gate: Arc<Gate>,
    /// User messages that arrived while the send buffer was over its limit.
    pub(super) held: VecDeque<C::Message>,
    /// Session messages forwarded (by configuration) before the peer was
    /// announced; delivered right after `Ready`.
    pub(super) before_ready: Vec<(C::Message, usize)>,
    /// Our side is flushed and shut down; we read and discard until the peer
    /// closes (or the linger timer fires), so that closing cannot reset the
    /// connection and lose what we sent.
    pub(super) lingering: bool,
    pub(super) connected_at: Instant,
    pub(super) last_send: Option<Instant>,
    pub(super) last_recv: Option<Instant>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) msgs_in: u64,
    pub(super) msgs_out: u64,
}

impl<C: Codec, P> Conn<C, P> {
    #[allow(clippy::too_many_arguments, reason = "a constructor taking each field that has no default")]
    pub(super) fn new(
        id: PeerId,
        stream: TcpStream,
        codec: C,
        proto: P,
        state: State,
        direction: Direction,
        addr: SocketAddr,
        gate: Arc<Gate>,
        now: Instant,
    ) -> Self {
        Conn {
            id,
            stream,
            codec,
            proto,
            state,
            closing: false,
            direction,
            addr,
            local: None,
            announced: false,
            proto_timer: None,
            rx: Vec::new(),
            rx_frame_len: None,
            frame_started: None,
            frame_armed: false,
            read_paused: false,
            connect_deadline: None,
            tx: Vec::new(),
            tx_pos: 0,
            tx_progress: now,
            stall_armed: false,
            writable: false,
            in_read_queue: false,
            in_write_queue: false,
            gate,
            held: VecDeque::new(),
            before_ready: Vec::new(),
            lingering: false,
            connected_at: now,
            last_send: None,
            last_recv: None,
            bytes_in: 0,
            bytes_out: 0,
            msgs_in: 0,
            msgs_out: 0,
        }
    }

    pub(super) fn queued(&self) -> usize {
        self.tx.len() - self.tx_pos
    }

    /// Encodes messages the protocol layer produced. They bypass the send
    /// cap: they are few and small (handshake, pong, ping).
    pub(super) fn queue_protocol<Pr: Protocol<Message = C::Message, Conn = P>>(
        &mut self,
        protocol: &mut Pr,
        messages: &mut Vec<C::Message>,
        now: Instant,
    ) -> Result<(), DisconnectReason<C::Error>> {
        if self.queued() == 0 && !messages.is_empty() {
            // The stall clock starts when the queue stops being empty.
            self.tx_progress = now;
        }
        for message in messages.drain(..) {
            let before = self.tx.len();
            self.codec.encode(&message, &mut self.tx).map_err(DisconnectReason::Codec)?;
            self.msgs_out += 1;
            protocol.sent(&mut self.proto, &message, self.tx.len() - before);
        }
        Ok(())
    }

    pub(super) fn info<Pr: Protocol<Message = C::Message, Conn = P>>(&self, protocol: &Pr) -> PeerInfo {
        let mut info = PeerInfo {
            peer: self.id,
            addr: self.addr,
            local_addr: self.local,
            direction: self.direction,
            transport: self.codec.transport(),
            version: None,
            features: Default::default(),
            ready: false,
        };
        protocol.info(&self.proto, &mut info);
        info
    }

    pub(super) fn stats<Pr: Protocol<Message = C::Message, Conn = P>>(&self, protocol: &Pr) -> PeerStats {
        let mut stats = PeerStats {
            peer: self.id,
            connected_at: self.connected_at,
            last_send: self.last_send,
            last_recv: self.last_recv,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            msgs_in: self.msgs_in,
            msgs_out: self.msgs_out,
            per_command: Vec::new(),
            last_ping: None,
            min_ping: None,
            send_queue: self.queued(),
        };
        protocol.stats(&self.proto, &mut stats);
        stats
    }
}

/// The event side: a bounded channel of event batches. Events of one round
/// are collected in `batch` and sent together at the end of the round (or
/// once `batch_max` have gathered): one channel operation and at most one
/// wake-up of the consumer per batch. When the channel is full the batch
/// waits in `overflow` and the reactor is paused: no socket is read and no
/// connection accepted until the user catches up, so `overflow` holds at most
/// one decoded message beyond a full batch, plus events caused by user
/// commands (bounded by the in-flight cap) and timers.
pub(super) struct Outbox<M, E> {
    pub(super) tx: Sender<Vec<Event<M, E>>>,
    pub(super) batch: Vec<Event<M, E>>,
    pub(super) batch_max: usize,
    pub(super) overflow: VecDeque<Vec<Event<M, E>>>,
    pub(super) shared: Arc<Shared>,
}

impl<M, E> Outbox<M, E> {
    pub(super) fn paused(&self) -> bool {
        !self.overflow.is_empty()
    }

    pub(super) fn emit(&mut self, event: Event<M, E>) {
        self.batch.push(event);
        if self.batch.len() >= self.batch_max {
            self.send_batch();
        }
    }

    /// Hands the current batch to the consumer, or parks it in `overflow`.
    pub(super) fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_max.min(64)));
        self.overflow.push_back(batch);
        self.flush();
        if !self.overflow.is_empty() {
            self.shared.events_blocked.store(true, Ordering::SeqCst);
            // The consumer may have made room before it could see the flag.
            self.flush();
        }
    }

    /// Moves parked batches into the channel while there is room.
    pub(super) fn flush(&mut self) {
        while let Some(batch) = self.overflow.pop_front() {
            match self.tx.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => {
                    self.overflow.push_front(batch);
                    self.shared.events_blocked.store(true, Ordering::SeqCst);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }
}

/// Decodes every complete frame in `buf` (stopping early if the event
/// channel fills), runs each message through the protocol layer, and returns
/// the bytes used.
pub(super) fn decode_all<C: Codec, Pr: Protocol<Message = C::Message>>(
    conn: &mut Conn<C, Pr::Conn>,
    protocol: &mut Pr,
    scratch_out: &mut Vec<C::Message>,
    out: &mut Outbox<C::Message, C::Error>,
    buf: &[u8],
    now: Instant,
    send_limit: usize,
) -> Result<usize, DisconnectReason<C::Error>> {
    let mut used = 0;
    // Stop, leaving the rest buffered, when the event channel is full or when
    // our answers (pongs, handshake replies) have filled the send queue.
    while !out.paused() && used < buf.len() && conn.queued() <= send_limit {
        if conn.queued() == 0 {
            // Bytes the codec may queue (a handshake reply) start the stall clock.
            conn.tx_progress = now;
        }
        let result = conn.codec.decode(&buf[used..], &mut conn.tx);
        // A raw-mode peer is announced the moment its transport is up, before
        // any message that came in the same read.
        if !conn.announced && conn.state == State::Open && protocol.announce_on_connect() && conn.codec.is_established()
        {
            conn.announced = true;
            let local = conn.local.unwrap_or(conn.addr);
            out.emit(Event::Connected { peer: conn.id, direction: conn.direction, local, remote: conn.addr });
        }
        match result {
            Ok(Decoded::NeedMore { frame_len }) => {
                conn.rx_frame_len = frame_len;
                break;
            }
            Ok(Decoded::Message { message, consumed }) => {
                used += consumed;
                conn.rx_frame_len = None;
                conn.frame_started = None;
                conn.msgs_in += 1;
                let delivered = protocol
                    .received(&mut conn.proto, message, consumed, now, scratch_out)
                    .map_err(DisconnectReason::Session)?;
                conn.queue_protocol(protocol, scratch_out, now)?;
                if protocol.take_ready(&mut conn.proto) {
                    conn.announced = true;
                    out.emit(Event::Ready { peer: conn.id, info: Box::new(conn.info(protocol)) });
                    // Session messages forwarded before Ready follow it.
                    for (message, wire_size) in conn.before_ready.drain(..) {
                        out.emit(Event::Message { peer: conn.id, message, wire_size });
                    }
                }
                if let Some(message) = delivered {
                    if conn.announced {
                        out.emit(Event::Message { peer: conn.id, message, wire_size: consumed });
                    } else if conn.before_ready.len() < MAX_BEFORE_READY {
                        conn.before_ready.push((message, consumed));
                    } else {
                        log::debug!("peer {}: dropping a forwarded message before the handshake", conn.id);
                    }
                }
            }
            Ok(Decoded::Consumed(consumed)) => {
                used += consumed.clamp(1, buf.len() - used);
                conn.frame_started = None;
            }
            Err(e) => return Err(DisconnectReason::Codec(e)),
        }
    }
    Ok(used)
}
