//! Hollow hosts for scale measurements: many agents enrolled in this process, each
//! with its own key, certificate and (later) QUIC connection, sharing one UDP
//! endpoint. They never stand in for Docker in functional tests.

use std::sync::Arc;

use anyhow::Result;
use cairn_agent::enrol::{self, JoinOptions};
use cairn_agent::state::AgentState;
use cairn_shared::identity::Fingerprint;

use crate::cluster::Controller;

/// Enrols `n` hollow hosts (`hollow-0`, `hollow-1`, …) on `ctl`, 32 at a time.
/// Returns the client endpoint they should dial from and each host's state, by index.
pub async fn enrol(
    ctl: &Controller,
    n: usize,
) -> Result<(quinn::Endpoint, Vec<(usize, AgentState)>)> {
    let token = ctl.token("1h", n as u32);
    let fp = Fingerprint::parse(&ctl.ca_sha256)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ep, sem, token, link) = (endpoint.clone(), sem.clone(), token.clone(), ctl.link);
        tasks.spawn(async move {
            let _permit = sem.acquire().await;
            let opts = JoinOptions {
                controller: link.to_string(),
                token,
                ca_sha256: fp,
                state_dir: Default::default(),
                labels: Default::default(),
                hostname: format!("hollow-{i}"),
                force: true,
            };
            enrol::enrol_on(&ep, link, &opts).await.map(|s| (i, s))
        });
    }
    let mut states = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        states.push(r??);
    }
    states.sort_by_key(|(i, _)| *i);
    Ok((endpoint, states))
}
