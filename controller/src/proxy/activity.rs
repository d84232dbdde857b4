//! What counts as use of an instance, for idle culling: a request through the
//! proxy, or a WebSocket message in either direction that is not a ping or a pong.
//!
//! JupyterHub's culler is faulted both ways: active servers culled (activity seen
//! only on some routes) and idle ones kept (keep-alive pings counted as use). So
//! every request counts, and WebSocket traffic is read frame by frame as it is
//! spliced ([`FrameScanner`], which only looks at headers and copies nothing):
//! a kernel's pings every 30 s keep nothing alive, a keystroke does.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_shared::ids::InstanceId;

/// Each instance's last activity, in memory (after a controller restart an
/// instance's idle clock starts again from the restart).
#[derive(Debug, Default)]
pub struct Activity {
    last: Mutex<HashMap<InstanceId, u64>>,
}

impl Activity {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, u64>> {
        // Entries are plain numbers; a panic elsewhere cannot leave one half-written.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn touch(&self, id: &InstanceId, now_ms: u64) {
        let mut m = self.map();
        match m.get_mut(id) {
            Some(t) => *t = (*t).max(now_ms),
            None => {
                m.insert(id.clone(), now_ms);
            }
        }
    }

    pub fn last(&self, id: &InstanceId) -> Option<u64> {
        self.map().get(id).copied()
    }

    /// Drops the entries of instances `keep` says are gone.
    pub fn retain(&self, keep: impl Fn(&InstanceId) -> bool) {
        self.map().retain(|id, _| keep(id));
    }
}

/// Follows WebSocket frame boundaries in one direction of a byte stream and says
/// when a frame other than a ping or pong begins.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// The header read so far (at most 14 bytes: 2 + 8 of length + 4 of mask).
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to skip.
    skip: u64,
}

const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl FrameScanner {
    /// Feeds the next bytes; `true` if a non-ping, non-pong frame started in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut active = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let need = self.header_len();
            let take = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            let opcode = self.header[0] & 0x0F;
            active |= opcode != PING && opcode != PONG;
            self.skip = self.payload_len();
            self.have = 0;
        }
        active
    }

    /// The header's full length, as far as the bytes read so far tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => n as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len <= u16::MAX as usize {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        // Payload bytes that look like frame headers must not confuse it.
        f.extend(std::iter::repeat_n(0x81, len));
        f
    }

    #[test]
    fn pings_and_pongs_are_not_activity_messages_are() {
        let mut s = FrameScanner::default();
        assert!(!s.feed(&frame(PING, true, 4)));
        assert!(!s.feed(&frame(PONG, false, 0)));
        assert!(s.feed(&frame(0x1, true, 5)), "a text message");
        assert!(!s.feed(&frame(PING, false, 125)));
        assert!(s.feed(&frame(0x2, false, 70_000)), "a long binary message");
        assert!(!s.feed(&frame(PONG, true, 300)));
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut stream = frame(PING, true, 10);
        stream.extend(frame(PONG, true, 200));
        stream.extend(frame(PING, false, 0));
        let text_at = stream.len();
        stream.extend(frame(0x1, true, 300));
        stream.extend(frame(PING, true, 3));
        for cut in 1..stream.len() {
            let mut s = FrameScanner::default();
            let mut seen = false;
            for (i, chunk) in stream.chunks(cut).enumerate() {
                let hit = s.feed(chunk);
                let start = i * cut;
                // Reported once its header is whole: 2 bytes, 2 of length, 4 of mask.
                let header = text_at..text_at + 8;
                if hit {
                    assert!(
                        start < header.end && start + chunk.len() > header.start,
                        "activity reported in a chunk without the text frame's header (cut {cut})"
                    );
                }
                seen |= hit;
            }
            assert!(seen, "the text frame was missed with chunks of {cut}");
        }
    }

    #[test]
    fn activity_keeps_the_latest_time_and_forgets_ended_instances() {
        let a = Activity::default();
        let id = InstanceId::generate();
        a.touch(&id, 10);
        a.touch(&id, 5);
        assert_eq!(a.last(&id), Some(10));
        a.retain(|_| false);
        assert_eq!(a.last(&id), None);
    }
}
