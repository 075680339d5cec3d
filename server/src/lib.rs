//! The recorder's server: signs direct-to-bucket uploads, keeps one manifest per
//! session, plays the bucket for the local backend, and serves the pages.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod janitor;
pub mod manifests;
pub mod migrate;
pub mod routes;
pub mod s3_setup;
pub mod signing;
pub mod storage;
pub mod storage_routes;
