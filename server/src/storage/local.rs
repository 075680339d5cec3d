//! The local-folder backend (placeholder).
