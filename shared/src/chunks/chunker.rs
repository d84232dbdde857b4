//! FastCDC chunk boundaries.
