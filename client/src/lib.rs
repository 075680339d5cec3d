//! The browser client (placeholder until the browser-client work lands).
