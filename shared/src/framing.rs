//! Length-prefixed postcard frames with a hard size limit.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of
//! postcard. The length is checked against the receiver's limit *before* a single
//! payload byte is buffered, so a peer that announces a 4 GiB frame costs four bytes
//! of memory, not four gigabytes.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::CloseCode;

/// The largest frame this build sends or accepts on the control stream: 1 MiB, room for
/// a heartbeat listing thousands of images.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("garbled frame: {0}")]
    Garbled(#[from] postcard::Error),
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The close code a connection gets when this error ends it.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
            FrameError::Garbled(_) | FrameError::Truncated { .. } => CloseCode::Garbled,
            FrameError::Io(_) => CloseCode::ProtocolViolation,
        }
    }
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf))?;
    let len = (buf.len() - HEADER_LEN) as u64;
    if len > u64::from(max) {
        return Err(FrameError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Splits one frame off the front of `buf`: `Ok(None)` if more bytes are needed.
/// Returns the payload and the total bytes consumed.
pub fn split(buf: &[u8], max: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[HEADER_LEN..end], end)))
}

/// Decodes one complete frame held in `buf` (header included); trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: u32) -> Result<T, FrameError> {
    match split(buf, max)? {
        None => Err(FrameError::Truncated {
            got: buf.len().saturating_sub(HEADER_LEN),
            expected: if buf.len() >= HEADER_LEN {
                u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
            } else {
                HEADER_LEN
            },
        }),
        Some((payload, used)) if used == buf.len() => Ok(postcard::from_bytes(payload)?),
        Some(_) => Err(FrameError::Garbled(postcard::Error::DeserializeBadEncoding)),
    }
}

/// Writes one frame.
pub async fn write<W, T>(w: &mut W, msg: &T, max: u32) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode(msg, max)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame's payload: `Ok(None)` on a clean end of stream between frames.
pub async fn read_payload<R>(r: &mut R, max: u32) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated {
                    got,
                    expected: HEADER_LEN,
                })
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    let mut payload = vec![0u8; len as usize];
    let mut got = 0;
    while got < payload.len() {
        let n = r.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                got,
                expected: len as usize,
            });
        }
        got += n;
    }
    Ok(Some(payload))
}

/// Reads and decodes one frame: `Ok(None)` on a clean end of stream between frames.
pub async fn read<R, T>(r: &mut R, max: u32) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_payload(r, max).await? {
        None => Ok(None),
        Some(p) => Ok(Some(postcard::from_bytes(&p)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use crate::resources::*;
    use proptest::prelude::*;

    fn hello(hostname: String, labels: Vec<(String, String)>, images: Vec<(String, u64)>) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            facts: HostFacts {
                hostname,
                labels: labels.into_iter().collect(),
                ..Default::default()
            },
            capacity: Capacity {
                cpus: 2,
                memory_total_bytes: 10,
                memory_available_bytes: 5,
                ..Default::default()
            },
            runtime: RuntimeFacts::Docker(DockerFacts {
                images: images
                    .into_iter()
                    .map(|(id, size)| ImageInfo {
                        id,
                        tags: vec![],
                        repo_digests: vec![],
                        size_bytes: size,
                        created_unix: 0,
                    })
                    .collect(),
                ..Default::default()
            }),
            isolation: Isolation::Failed {
                error: "iptables: permission denied".into(),
            },
        }
    }

    proptest! {
        #[test]
        fn hello_round_trips(host in ".{0,64}", labels in prop::collection::vec(("[a-z]{1,8}", ".{0,16}"), 0..8),
                             images in prop::collection::vec((".{0,40}", any::<u64>()), 0..20)) {
            let msg = hello(host, labels, images);
            let buf = encode(&msg, MAX_FRAME_LEN).unwrap();
            let back: Hello = decode(&buf, MAX_FRAME_LEN).unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn heartbeat_round_trips_through_a_stream(seq in any::<u64>(), avail in any::<u64>(), load in 0.0f64..1e6) {
            let msg = AgentMsg::Heartbeat(Heartbeat {
                seq,
                capacity: Capacity { memory_total_bytes: avail, memory_available_bytes: avail, load_average: [load; 3], ..Default::default() },
                runtime: RuntimeFacts::Unavailable { error: "docker down".into() },
                pulls: vec![],
                isolation: Isolation::Enforced,
                datasets: vec![],
                launch_queue: (seq % 1000) as u32,
            });
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let back: AgentMsg = rt.block_on(async {
                let (mut a, mut b) = tokio::io::duplex(64);
                let m = msg.clone();
                let w = tokio::spawn(async move { write(&mut a, &m, MAX_FRAME_LEN).await });
                let r = read(&mut b, MAX_FRAME_LEN).await.unwrap().unwrap();
                w.await.unwrap().unwrap();
                r
            });
            prop_assert_eq!(back, msg);
        }

        /// Random bytes never panic the decoder; they decode, or fail with a frame error.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<Hello>(&bytes, MAX_FRAME_LEN);
            let _ = decode::<AgentMsg>(&bytes, MAX_FRAME_LEN);
            let _ = decode::<EnrolRequest>(&bytes, MAX_FRAME_LEN);
            let _ = peek_version(&bytes);
        }

        /// A random payload inside a valid header is rejected or decoded, never a panic,
        /// and validation bounds whatever decodes.
        #[test]
        fn garbage_payload_in_valid_frame(payload in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(&payload);
            if let Ok(m) = decode::<AgentMsg>(&buf, MAX_FRAME_LEN) {
                let _ = crate::validate::Validate::validate(&m);
            }
        }

        /// Every strict prefix of a frame is reported as truncated, never decoded.
        #[test]
        fn truncated_frames_are_detected(host in ".{0,64}", cut in any::<prop::sample::Index>()) {
            let buf = encode(&hello(host, vec![], vec![]), MAX_FRAME_LEN).unwrap();
            let at = cut.index(buf.len());
            let err = decode::<Hello>(&buf[..at], MAX_FRAME_LEN).unwrap_err();
            prop_assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let r = rt.block_on(async { let mut s = &buf[..at]; read::<_, Hello>(&mut s, MAX_FRAME_LEN).await });
            if at == 0 { prop_assert!(matches!(r, Ok(None)), "expected clean end"); }
            else { prop_assert!(matches!(r, Err(FrameError::Truncated { .. })), "expected truncation"); }
        }

        /// Any announced length over the limit is refused from the header alone.
        #[test]
        fn oversize_is_refused_from_the_header(len in (MAX_FRAME_LEN + 1)..=u32::MAX) {
            let buf = len.to_be_bytes();
            let err = split(&buf, MAX_FRAME_LEN).unwrap_err();
            prop_assert!(matches!(err, FrameError::TooLarge { .. }), "{}", err);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let r = rt.block_on(async { let mut s = &buf[..]; read_payload(&mut s, MAX_FRAME_LEN).await });
            prop_assert!(matches!(r, Err(FrameError::TooLarge { .. })), "expected too large");
        }
    }

    #[test]
    fn encoder_refuses_oversize_messages() {
        let msg = hello("x".repeat(2000), vec![], vec![]);
        assert!(matches!(
            encode(&msg, 1000),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// A heartbeat as agents sent it before `launch_queue` (same variant index).
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum AgentMsgBeforeQueue {
        Heartbeat {
            seq: u64,
            capacity: Capacity,
            runtime: RuntimeFacts,
            pulls: Vec<crate::images::PullProgress>,
            isolation: Isolation,
            datasets: Vec<crate::chunks::ChunkId>,
        },
    }

    #[test]
    fn heartbeats_with_and_without_the_launch_queue_decode_on_either_side() {
        let old = AgentMsgBeforeQueue::Heartbeat {
            seq: 7,
            capacity: Capacity::default(),
            runtime: RuntimeFacts::Unavailable { error: "x".into() },
            pulls: vec![],
            isolation: Isolation::Enforced,
            datasets: vec![crate::chunks::ChunkId([3; 32])],
        };
        // An older agent's heartbeat reads as an empty queue …
        let buf = encode(&old, MAX_FRAME_LEN).unwrap();
        let AgentMsg::Heartbeat(h) = decode::<AgentMsg>(&buf, MAX_FRAME_LEN).unwrap() else {
            panic!("not a heartbeat")
        };
        assert_eq!((h.seq, h.launch_queue), (7, 0));
        assert_eq!(h.datasets, vec![crate::chunks::ChunkId([3; 32])]);
        // … and a newer agent's reads whole here and, minus the queue, on an older
        // controller.
        let new = AgentMsg::Heartbeat(Heartbeat {
            launch_queue: 42,
            ..h
        });
        let buf = encode(&new, MAX_FRAME_LEN).unwrap();
        assert_eq!(decode::<AgentMsg>(&buf, MAX_FRAME_LEN).unwrap(), new);
        assert_eq!(
            decode::<AgentMsgBeforeQueue>(&buf, MAX_FRAME_LEN).unwrap(),
            old
        );
    }

    #[test]
    fn version_is_readable_from_any_future_hello() {
        #[derive(serde::Serialize)]
        struct FutureHello {
            protocol_version: u32,
            something_new: Vec<String>,
        }
        let bytes = postcard::to_stdvec(&FutureHello {
            protocol_version: 99,
            something_new: vec!["x".into()],
        })
        .unwrap();
        assert_eq!(peek_version(&bytes), Some(99));
        assert!(postcard::from_bytes::<Hello>(&bytes).is_err());
    }

    #[test]
    fn close_codes_round_trip() {
        for v in 0..20u64 {
            if let Some(c) = CloseCode::from_u64(v) {
                assert_eq!(c as u64, v);
            }
        }
        assert_eq!(CloseCode::from_u64(8), Some(CloseCode::EnrolRefused));
    }
}
