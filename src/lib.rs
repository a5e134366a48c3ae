//! Myelin: a fast, single-binary Matrix homeserver.

pub mod api;
pub mod config;
pub mod error;
pub mod events;
pub mod rooms;
pub mod rtc;
pub mod services;
pub mod storage;
pub mod sync;
pub mod users;

pub use error::{Error, Result};
