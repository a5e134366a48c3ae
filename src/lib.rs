//! Myelin: a fast, single-binary Matrix homeserver.

pub mod api;
pub mod config;
pub mod error;
pub mod services;
pub mod storage;
pub mod users;

pub use error::{Error, Result};
