//! The Cairn agent: one per Docker host or VM.
//!
//! It enrols once with a join token ([`enrol`]), keeps its identity in a state
//! directory ([`state`]), and then holds one mutually authenticated QUIC connection to
//! the controller ([`link`]), over which it reports what it sees of its host
//! ([`facts`]) and on which it receives the instances to run ([`runtime`]) and the
//! images to hold ([`images`]). [`docker`] is its one way to reach the Docker Engine;
//! [`run`] wires a running agent from its state directory; [`metrics`] counts what it
//! does and serves the counts to Prometheus when asked to.
#![forbid(unsafe_code)]

pub mod chunks;
pub mod datasets;
pub mod docker;
pub mod enrol;
pub mod facts;
pub mod images;
pub mod link;
pub mod metrics;
pub mod run;
pub mod runtime;
pub mod state;
pub mod volumes;
