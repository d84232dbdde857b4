//! A directory turned into a manifest.
