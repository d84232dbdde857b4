//! A manifest written out as a tree.
