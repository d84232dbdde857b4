//! One agent's session: authenticate by client certificate, read the Hello, then
//! heartbeats on the control stream and requests on streams of their own.

use std::sync::Arc;
use std::time::Duration;

use cairn_shared::framing::{self, FrameError};
use cairn_shared::identity;
use cairn_shared::ids::HostId;
use cairn_shared::protocol::{
    describe_connection_error, peek_version, AgentMsg, AgentRequest, AgentResponse, CloseCode,
    ControllerMsg, Hello, RefusalCode, Welcome, PROTOCOL_VERSION,
};
use cairn_shared::validate::Validate;
use tracing::Instrument;

use super::{first_frame, refuse, FIRST_FRAME_TIMEOUT};
use crate::app::App;

/// Requests are small; bulk transfers will get their own framing.
const MAX_REQUEST_FRAME: u32 = 64 * 1024;

pub async fn serve(app: Arc<App>, conn: quinn::Connection) {
    let Some(certs) = identity::peer_certificates(&conn).filter(|c| !c.is_empty()) else {
        return refuse(
            &conn,
            CloseCode::Unauthenticated,
            "client certificate required: enrol this host with `cairn-agent join` first",
        );
    };
    let host = match identity::host_id_of(&certs[0]) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                &conn,
                CloseCode::Unauthenticated,
                &format!("client certificate does not name a host: {e}"),
            )
        }
    };
    if !app.registry.contains(&host) || app.registry.is_removed(&host) {
        return refuse(
            &conn,
            CloseCode::UnknownHost,
            &format!("host {host} is not enrolled with this controller; enrol again with `cairn-agent join`"),
        );
    }
    run(app, conn, host.clone())
        .instrument(tracing::info_span!("agent", %host))
        .await
}

async fn run(app: Arc<App>, conn: quinn::Connection, host: HostId) {
    let max = app.config.link.max_frame_bytes;
    let Some((mut send, mut recv, payload)) = first_frame(&conn, max, "hello").await else {
        return;
    };
    match peek_version(&payload) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return refuse(
                &conn,
                CloseCode::VersionMismatch,
                &format!("protocol version mismatch: the controller speaks {PROTOCOL_VERSION}, the agent {v}; upgrade the older side"),
            )
        }
        None => return refuse(&conn, CloseCode::Garbled, "garbled hello"),
    }
    let hello: Hello = match postcard::from_bytes(&payload) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                &conn,
                CloseCode::Garbled,
                &format!("bad hello: {}", FrameError::from(e)),
            )
        }
    };
    if let Err(e) = hello.validate() {
        return refuse(&conn, CloseCode::Garbled, &format!("invalid hello: {e}"));
    }
    let now = cairn_shared::time::now_ms();
    // Messages for the agent queue here until the Welcome is written; a writer task
    // then owns the send side, so nobody else ever interleaves bytes into it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ControllerMsg>();
    let generation = match app
        .registry
        .connected(&host, conn.clone(), tx, hello, now)
        .await
    {
        Ok(g) => g,
        Err(e) => return refuse(&conn, CloseCode::UnknownHost, &e.to_string()),
    };
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        host_id: host.clone(),
        heartbeat_interval_ms: app.config.hosts.heartbeat_interval_ms,
        controller_time_ms: now,
    };
    if let Err(e) = framing::write(&mut send, &welcome, max).await {
        tracing::info!(error = %e, "could not send welcome");
    }
    tracing::info!(remote = %conn.remote_address(), "agent connected");
    let writer_conn = conn.clone();
    let writer = tokio::spawn(
        async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = framing::write(&mut send, &msg, max).await {
                    tracing::debug!(error = %e, "control stream write failed");
                    writer_conn.close(
                        CloseCode::ProtocolViolation.into(),
                        b"control stream write failed",
                    );
                    break;
                }
            }
        }
        .in_current_span(),
    );
    app.instances.host_connected(&host);
    app.instances.schedule(cairn_shared::time::now_ms()).await;

    let requests = serve_requests(app.clone(), conn.clone(), host.clone());
    let control = control_loop(&app, &conn, &host, generation, &mut recv, max);
    let reason = tokio::select! {
        r = control => r,
        r = requests => r,
    };
    writer.abort();
    let _ = app
        .registry
        .disconnected(&host, generation, &reason, cairn_shared::time::now_ms())
        .await;
    tracing::info!(%reason, "agent disconnected");
}

/// Reads heartbeats until the stream or connection ends; returns why it ended.
async fn control_loop(
    app: &App,
    conn: &quinn::Connection,
    host: &HostId,
    generation: u64,
    recv: &mut quinn::RecvStream,
    max: u32,
) -> String {
    loop {
        let msg = framing::read::<_, AgentMsg>(recv, max).await;
        if let Some(e) = conn.close_reason() {
            return describe_connection_error(&e);
        }
        match msg {
            Ok(Some(m @ AgentMsg::Heartbeat(_))) => {
                if let Err(e) = m.validate() {
                    refuse(conn, CloseCode::Garbled, &format!("invalid heartbeat: {e}"));
                    return format!("invalid heartbeat: {e}");
                }
                let AgentMsg::Heartbeat(hb) = m else { continue };
                if let Err(e) = app
                    .registry
                    .heartbeat(host, generation, hb, cairn_shared::time::now_ms())
                    .await
                {
                    tracing::error!(error = %e, "could not record heartbeat");
                }
            }
            Ok(Some(m @ AgentMsg::Instances { .. })) => {
                if let Err(e) = m.validate() {
                    refuse(
                        conn,
                        CloseCode::Garbled,
                        &format!("invalid instance reports: {e}"),
                    );
                    return format!("invalid instance reports: {e}");
                }
                let AgentMsg::Instances { reports, full } = m else {
                    continue;
                };
                tracing::debug!(count = reports.len(), full, "instance reports");
                app.instances
                    .on_reports(host, reports, cairn_shared::time::now_ms())
                    .await;
            }
            Ok(Some(AgentMsg::ResyncDesired)) => app.instances.sync_host(host, true),
            Ok(None) => {
                refuse(conn, CloseCode::ProtocolViolation, "control stream closed");
                return "control stream closed by agent".into();
            }
            Err(FrameError::Io(e)) => {
                // Usually the connection going away; give quinn a moment to say why.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return conn
                    .close_reason()
                    .map(|e| describe_connection_error(&e))
                    .unwrap_or_else(|| format!("control stream error: {e}"));
            }
            Err(e) => {
                let reason = e.to_string();
                refuse(conn, e.close_code(), &reason);
                return reason;
            }
        }
    }
}

/// Accepts request streams until the connection ends; returns why it ended.
async fn serve_requests(app: Arc<App>, conn: quinn::Connection, host: HostId) -> String {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (app, host) = (app.clone(), host.clone());
                tokio::spawn(
                    async move { handle_request(app, host, send, recv).await }.in_current_span(),
                );
            }
            Err(e) => return describe_connection_error(&e),
        }
    }
}

async fn handle_request(
    app: Arc<App>,
    host: HostId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req = match tokio::time::timeout(
        FIRST_FRAME_TIMEOUT,
        framing::read::<_, AgentRequest>(&mut recv, MAX_REQUEST_FRAME),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bad request frame");
            let _ = send.reset(quinn::VarInt::from_u32(e.close_code() as u32));
            return;
        }
        Err(_) => return,
    };
    let response = match req.validate() {
        Err(e) => AgentResponse::Refused {
            code: RefusalCode::BadRequest,
            message: e.to_string(),
        },
        Ok(()) => match req {
            AgentRequest::RenewCertificate { csr_der } => renew(&app, &host, &csr_der).await,
            AgentRequest::FetchImage { archive, offset } => {
                // Streams the archive itself when it can, and finishes the stream.
                match serve_archive(&app, &archive, offset, &mut send).await {
                    Ok(()) => return,
                    Err(refusal) => refusal,
                }
            }
            AgentRequest::FetchManifest { manifest } => {
                match super::chunks::serve_manifest(app.chunks.as_ref(), manifest, &mut send).await
                {
                    Ok(()) => return,
                    Err(refusal) => refusal,
                }
            }
            AgentRequest::FetchManifestDelta { manifest, base } => {
                match super::chunks::serve_manifest_delta(
                    app.chunks.as_ref(),
                    manifest,
                    base,
                    &mut send,
                )
                .await
                {
                    Ok(()) => return,
                    Err(refusal) => refusal,
                }
            }
            AgentRequest::FetchImageManifest { archive } => {
                let manifest = app
                    .archives
                    .get(&archive)
                    .and_then(|r| cairn_shared::chunks::ChunkId::from_hex(&r.manifest));
                match manifest {
                    None => AgentResponse::Refused {
                        code: RefusalCode::BadRequest,
                        message: format!(
                            "image archive {archive} is not on the controller as chunks (unknown, or pushed before archives were chunked)"
                        ),
                    },
                    Some(m) => {
                        match super::chunks::serve_manifest(app.chunks.as_ref(), m, &mut send)
                            .await
                        {
                            Ok(()) => return,
                            Err(refusal) => refusal,
                        }
                    }
                }
            }
            AgentRequest::FetchChunks { chunks } => {
                match super::chunks::serve_chunks(app.chunks.as_ref(), &chunks, &mut send).await {
                    Ok(()) => return,
                    Err(refusal) => refusal,
                }
            }
            AgentRequest::MissingChunks { chunks } => super::volumes::missing(&app, &chunks).await,
            AgentRequest::StoreChunks { len } => super::volumes::store(&app, &mut recv, len).await,
            AgentRequest::StoreChunkDeltas { len } => {
                super::volumes::store_deltas(&app, &mut recv, len).await
            }
            AgentRequest::ChunkSignatures { chunks } => {
                match super::volumes::signatures(&app, &chunks, &mut send).await {
                    Ok(()) => return,
                    Err(refusal) => refusal,
                }
            }
            AgentRequest::CommitSnapshot {
                instance,
                base_generation,
                final_save,
                len,
                delta,
            } => {
                let req = super::volumes::Commit {
                    instance,
                    base_generation,
                    final_save,
                    len,
                    delta,
                };
                super::volumes::commit(&app, &host, &mut recv, req).await
            }
        },
    };
    if framing::write(&mut send, &response, MAX_REQUEST_FRAME)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

/// Answers a `FetchImage`: an [`AgentResponse::ImageStream`] frame, then the archive's
/// bytes from `offset` to the end, read from the chunk store chunk by chunk in the
/// manifest's order (whole chunks before `offset` skipped), each verified, then the
/// end of the stream. A refusal (unknown archive, offset past the end, a chunk the
/// store lost or damaged where the stream would start) is returned for the caller to
/// send instead; once bytes flow, a failure resets the stream and the agent resumes
/// from what it has (and, at a damaged chunk, gets the refusal).
async fn serve_archive(
    app: &App,
    archive: &str,
    offset: u64,
    send: &mut quinn::SendStream,
) -> Result<(), AgentResponse> {
    use crate::images::archives::ArchivesError;
    use crate::images::chunked::{chunk_starts, fetch_chunk, locate};

    let unreadable = || AgentResponse::Refused {
        code: RefusalCode::Internal,
        message: format!("the controller cannot read image archive {archive}; see its log"),
    };
    let (rec, chunks) = match app.archives.open_archive(archive).await {
        Ok(f) => f,
        Err(ArchivesError::NotFound(_)) => {
            tracing::info!(%archive, "agent asked for an unknown image archive");
            return Err(AgentResponse::Refused {
                code: RefusalCode::BadRequest,
                message: format!(
                    "no image archive {archive} on this controller (removed, or never pushed); push it again with `cairn images push`"
                ),
            });
        }
        Err(e) => {
            tracing::error!(%archive, error = %e, "cannot serve image archive");
            return Err(unreadable());
        }
    };
    if offset > rec.size_bytes {
        return Err(AgentResponse::Refused {
            code: RefusalCode::BadRequest,
            message: format!(
                "offset {offset} is past the end of image archive {archive} ({} bytes)",
                rec.size_bytes
            ),
        });
    }
    let starts = chunk_starts(&chunks);
    let (first, skip) = locate(&starts, offset).unwrap_or((chunks.len(), 0));
    let store = app.chunks.as_ref();
    // The first chunk is read before anything is sent, so a damaged one is a
    // refusal the agent can report, not a broken stream it retries forever.
    let mut next = match chunks.get(first) {
        None => None,
        Some(c) => match fetch_chunk(store, c).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(%archive, offset, chunk = %c.id, error = %e, "image archive chunk unreadable");
                return Err(AgentResponse::Refused {
                    code: RefusalCode::Internal,
                    message: format!(
                        "the controller's copy of image archive {archive} is damaged at byte {offset} ({e}); push the image again"
                    ),
                });
            }
        },
    };
    let started = std::time::Instant::now();
    let header = AgentResponse::ImageStream {
        size_bytes: rec.size_bytes,
    };
    if let Err(e) = framing::write(send, &header, MAX_REQUEST_FRAME).await {
        tracing::debug!(%archive, error = %e, "agent went away before the archive was sent");
        return Ok(());
    }
    let mut sent = 0u64;
    let mut i = first;
    let mut skip = skip as usize;
    while let Some(bytes) = next.take() {
        if let Err(e) = send.write_all(&bytes[skip..]).await {
            tracing::info!(%archive, offset, sent, error = %e, "image archive fetch broke off");
            return Ok(());
        }
        sent += (bytes.len() - skip) as u64;
        skip = 0;
        i += 1;
        if let Some(c) = chunks.get(i) {
            match fetch_chunk(store, c).await {
                Ok(b) => next = Some(b),
                Err(e) => {
                    tracing::error!(%archive, offset, sent, chunk = %c.id, error = %e, "image archive chunk unreadable; stream reset");
                    let _ = send.reset(quinn::VarInt::from_u32(RefusalCode::Internal as u32));
                    return Ok(());
                }
            }
        }
    }
    let _ = send.finish();
    tracing::info!(%archive, offset, bytes = sent, elapsed_ms = started.elapsed().as_millis() as u64, "image archive sent");
    Ok(())
}

async fn renew(app: &App, host: &HostId, csr_der: &[u8]) -> AgentResponse {
    let ttl = Duration::from_secs(app.config.certificates.agent_cert_ttl_secs);
    match app.pki.ca.sign_host(csr_der, host, ttl) {
        Ok(cert_der) => {
            let not_after = identity::cert_info(&cert_der)
                .map(|i| i.not_after_unix)
                .unwrap_or_default();
            if let Err(e) = app.registry.cert_renewed(host, not_after).await {
                tracing::error!(error = %e, "could not record renewed certificate");
                return AgentResponse::Refused {
                    code: RefusalCode::Internal,
                    message: "could not record the renewal".into(),
                };
            }
            tracing::info!(not_after, "renewed host certificate");
            AgentResponse::Certificate { cert_der }
        }
        Err(e) => AgentResponse::Refused {
            code: RefusalCode::BadRequest,
            message: format!("certificate request rejected: {e}"),
        },
    }
}
