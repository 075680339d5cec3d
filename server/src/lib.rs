//! The recorder's server.
