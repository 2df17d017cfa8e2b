//! The QUIC link to the origin (being written).
