//! Myelin: a fast, single-binary Matrix homeserver.

pub mod accounts;
pub mod api;
pub mod appservice;
pub mod backup;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod events;
pub mod media;
pub mod meetings;
pub mod metrics;
pub mod pipeline;
pub mod purge;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod rtc;
pub mod services;
pub mod storage;
pub mod stream;
pub mod sync;
pub mod users;
pub mod web;

pub use error::{Error, ErrorKind, Result};
