//! Test support for Cairn's end-to-end tests and load tools.
//!
//! * [`cluster`] — controllers and agents as real processes on loopback.
//! * [`debs`] — the Debian packages of the controller, the agent and the CLI.
//! * [`docker`] — the Docker Engine from tests: its CLI and clean-up guards.
//! * [`hollow`] — hollow hosts enrolled in-process, for scale measurements.
//! * [`images`] — small local images built without any registry, cached by tag.
//! * [`jupyter`] — a minimal Jupyter client: run code in a kernel over HTTP and WebSocket.
//! * [`openstack`] — a real mini OpenStack (Nova with the fake driver) in a container,
//!   and a harness that plays its hypervisor.
//! * [`procstat`] — CPU and memory of a process from /proc, for benchmarks.
//! * [`registry`] — a real image registry (Debian's `docker-registry`) on loopback.
//! * [`rawlink`] — a hand-driven link client for negative protocol tests.
//! * [`require`] — what a test needs from the machine: a missing need fails the test
//!   unless `CAIRN_TEST_SKIP` names it.
//! * [`testapp`] — the image of the test app the proxy tests run.
//! * [`vm`] — "VM"s: containers with systemd as PID 1 and cloud-init, for packages,
//!   units and Ansible.
//! * [`volumes`] — blueprints with volumes, launches naming one, commands in containers.

pub mod cluster;
pub mod debs;
pub mod docker;
pub mod etcd;
pub mod hollow;
pub mod images;
pub mod jupyter;
pub mod oidc;
pub mod openstack;
pub mod procstat;
pub mod rawlink;
pub mod registry;
pub mod require;
pub mod testapp;
pub mod vm;
pub mod volumes;
