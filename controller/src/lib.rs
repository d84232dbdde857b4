//! The Cairn controller: the only stateful component.
//!
//! * [`config`] — the config file and data directory layout.
//! * [`pki`] — the CA, the server certificate, `init`.
//! * [`auth`] — admin and join token secrets.
//! * [`store`] — the state behind one seam: sled or etcd, with a schema-version guard.
//! * [`tokens`] — join tokens.
//! * [`retention`] — what the controller forgets, and when.
//! * [`users`] — accounts, API tokens, and the principal of a request.
//! * [`blueprints`] — blueprint specs, validation and revisions.
//! * [`chunks`] — the chunk store (every pushed byte) and its collector.
//! * [`datasets`] — pushed datasets and their immutable versions.
//! * [`instances`] — instance lifecycle, desired state per host.
//! * [`autoscaler`] — pool sizes: decisions (pure) and the provider behind them.
//! * [`scheduler`] — where instances go: the deterministic placement core.
//! * [`hosts`] — the host registry and its liveness state machine.
//! * [`link`] — the QUIC server agents dial: enrolment and sessions.
//! * [`metrics`] — Prometheus metrics: what is counted where, and `/metrics`.
//! * [`service`] — every user and admin action as one typed operation: the rules.
//! * [`api`] — the REST API.
//! * [`http_server`] — the HTTP listener: accept loop, timeouts, connection cap.
//! * [`https`] — TLS for the HTTP listener, with certificate reload.
//! * [`web`] — the web UI: server-rendered pages for users and admins.
//! * [`proxy`] — the reverse proxy to instances, over the agents' links.
//! * [`app`] — wiring, start and graceful shutdown.
//! * [`cli`] — the `cairn-controller` subcommands.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod autoscaler;
pub mod blueprints;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod groups;
pub mod hosts;
pub mod http_server;
pub mod https;
pub mod images;
pub mod instances;
pub mod link;
pub mod metrics;
pub mod periodic;
pub mod pki;
pub mod proxy;
pub mod retention;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tokens;
pub mod users;
pub mod volumes;
pub mod web;
