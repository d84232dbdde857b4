//! Image distribution, the controller's side.
//!
//! * [`plan`] — which images each host should hold (pre-pull), pure.
