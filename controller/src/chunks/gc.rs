//! Mark-and-sweep.
