//! A link's receive buffer: the bytes of an incomplete frame, read into
//! without zeroing the same memory again for every read.

/// `buf[..filled]` holds the bytes received; `buf[filled..]` is memory the
/// buffer initialised before (zeroed once, or input already consumed),
/// which the next read fills. Safe Rust cannot read into uninitialised
/// memory, so [`RxBuf::spare`] zeroes only what the buffer never held: a
/// frame costs one zeroing pass the first time a buffer grows to its size,
/// not one per read, and a pooled buffer keeps its initialised length.
#[derive(Debug, Default)]
pub(crate) struct RxBuf {
    buf: Vec<u8>,
    filled: usize,
}

impl RxBuf {
    /// Bytes received and not consumed.
    pub(crate) fn len(&self) -> usize {
        self.filled
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The bytes received.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Forgets the bytes received (keeps the memory).
    pub(crate) fn clear(&mut self) {
        self.filled = 0;
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `data`.
    pub(crate) fn extend(&mut self, data: &[u8]) {
        let end = self.filled + data.len();
        if end <= self.buf.len() {
            self.buf[self.filled..end].copy_from_slice(data);
        } else {
            self.buf.truncate(self.filled);
            self.buf.extend_from_slice(data);
        }
        self.filled = end;
    }

    /// Room for `want` more bytes, to read into and then [`commit`](Self::commit).
    /// Capacity grows by doubling, but never past `frame_len` (the validated
    /// length of the frame being received), so it never runs ahead of the
    /// bytes that actually arrived by more than those already received.
    pub(crate) fn spare(&mut self, want: usize, frame_len: Option<usize>) -> &mut [u8] {
        let needed = self.filled + want;
        if self.buf.capacity() < needed {
            let target = (self.buf.capacity() * 2).max(needed);
            let target = frame_len.map_or(target, |f| target.min(f.max(needed)));
            self.buf.reserve_exact(target - self.buf.len());
        }
        if self.buf.len() < needed {
            self.buf.resize(needed, 0);
        }
        &mut self.buf[self.filled..needed]
    }

    /// `n` bytes of the last [`spare`](Self::spare) were filled.
    pub(crate) fn commit(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// The first `used` bytes were decoded: the rest moves to the front.
    pub(crate) fn consume(&mut self, used: usize) {
        let used = used.min(self.filled);
        if used < self.filled {
            self.buf.copy_within(used..self.filled, 0);
        }
        self.filled -= used;
    }

    /// The allocation, for the buffer pool, leaving this buffer without one.
    pub(crate) fn take_memory(&mut self) -> Vec<u8> {
        self.filled = 0;
        std::mem::take(&mut self.buf)
    }

    /// Takes `memory` (initialised to its length) if this buffer has none.
    pub(crate) fn give_memory(&mut self, memory: Vec<u8>) {
        debug_assert!(self.buf.capacity() == 0 && self.filled == 0);
        self.buf = memory;
    }
}

#[cfg(test)]
mod tests {
    use super::RxBuf;

    #[test]
    fn reads_fill_consumed_memory_without_zeroing_it_again() {
        let mut rx = RxBuf::default();
        rx.extend(b"head");
        let spare = rx.spare(6, Some(10));
        assert_eq!(spare.len(), 6);
        spare[..3].copy_from_slice(b"abc");
        rx.commit(3);
        assert_eq!(rx.data(), b"headabc");
        assert!(rx.capacity() <= 10, "never past the frame's length");
        rx.consume(4);
        assert_eq!(rx.data(), b"abc");
        // The memory after the data is reused as it is: what a read puts
        // there is what counts.
        let spare = rx.spare(2, None);
        assert_eq!(spare.len(), 2);
        spare.copy_from_slice(b"de");
        rx.commit(2);
        assert_eq!(rx.data(), b"abcde");
        rx.extend(b"fghijklmn");
        assert_eq!(rx.data(), b"abcdefghijklmn");
        rx.consume(14);
        assert!(rx.is_empty());
        rx.extend(b"x");
        assert_eq!(rx.data(), b"x");
        let memory = rx.take_memory();
        assert!(rx.is_empty() && rx.capacity() == 0);
        let mut other = RxBuf::default();
        other.give_memory(memory);
        assert!(other.is_empty(), "pooled memory holds no data");
        other.extend(b"yz");
        assert_eq!(other.data(), b"yz");
    }
}
