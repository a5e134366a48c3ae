//! Myelin: a fast, single-binary Matrix homeserver.

pub mod config;
pub mod error;
pub mod storage;

pub use error::{Error, Result};
