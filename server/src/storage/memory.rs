//! The in-memory backend for unit tests (placeholder).
