//! Myelin: a fast, single-binary Matrix homeserver.

pub mod error;

pub use error::{Error, Result};
