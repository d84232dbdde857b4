//! Which images each host should hold before anyone launches (pre-pull). Pure.
