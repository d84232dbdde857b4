//! The sans-I/O transfer planner.
