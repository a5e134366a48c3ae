//! `myelin-load`: a load generator that speaks only the standard Matrix client-server API,
//! so it drives any homeserver (Myelin, Synapse, ...) for side-by-side figures.
//!
//! Every scenario prints one JSON object on stdout (a table too with `--pretty`) and a
//! progress line on stderr while it runs. Loops are bounded by counts or durations.
//! One scenario is Myelin's own: `meetings` times `GET …/io.myelin/meetings`.

use std::sync::{atomic::Ordering, Arc};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

mod fanout;
mod hs;
mod initial_sync;
mod join_storm;
mod meetings;
mod poll;
mod report;
mod send;

use crate::{
    fanout::scenario_fanout,
    hs::Hs,
    initial_sync::scenario_initial_sync,
    join_storm::scenario_join_storm,
    meetings::scenario_meetings,
    report::{print_table, rss},
    send::{scenario_send, scenario_setup},
};

#[derive(Parser)]
#[command(name = "myelin-load", about = "Matrix homeserver load generator")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Homeserver base URL; several, comma-separated, for processes serving one server
    /// (each user's requests go to one of them, chosen by its access token; requests
    /// without a token take turns).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8008")]
    pub(crate) url: String,
    /// Print a human-readable table after the JSON.
    #[arg(long, global = true)]
    pub(crate) pretty: bool,
    /// PID of the server process, to report its RSS from /proc.
    #[arg(long, global = true)]
    pub(crate) server_pid: Option<u32>,
    /// Register with this registration token instead of m.login.dummy.
    #[arg(long, global = true)]
    pub(crate) registration_token: Option<String>,
    /// Register through the shared-secret admin API with this secret.
    #[arg(long, global = true)]
    pub(crate) shared_secret: Option<String>,
    /// Prefix of generated user names (make it unique per run against one server).
    #[arg(long, global = true, default_value = "load")]
    pub(crate) prefix: String,
    /// Concurrent requests during setup phases.
    #[arg(long, global = true, default_value_t = 8)]
    pub(crate) setup_concurrency: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// Register users, create rooms, join users; save the state to a file.
    Setup {
        #[arg(long, default_value_t = 10)]
        users: usize,
        #[arg(long, default_value_t = 2)]
        rooms: usize,
        #[arg(long)]
        state: String,
    },
    /// C clients send messages for T seconds: throughput and latency.
    Send {
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rooms the clients spread over (1: everyone in one room).
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Reuse users and rooms from a `setup` state file.
        #[arg(long)]
        state: Option<String>,
    },
    /// S users long-poll /sync in one room while one user sends M messages at a rate:
    /// delivery and send latency; with `--late-joiners J`, J more users then join the full
    /// room at once (joins/s into a big room).
    Fanout {
        #[arg(long, default_value_t = 20)]
        syncers: usize,
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Users who join the room at once after the messages.
        #[arg(long, default_value_t = 0)]
        late_joiners: usize,
    },
    /// A user in R rooms with K messages each: initial /sync time.
    InitialSync {
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        repeats: usize,
    },
    /// U users join one room at once: joins/s, then /members time.
    JoinStorm {
        #[arg(long, default_value_t = 100)]
        users: usize,
    },
    /// Myelin only: a user in R rooms, every `call-every`th with a live call and every
    /// `schedule-every`th with a future meeting schedule; times Q requests of
    /// `GET /_matrix/client/unstable/io.myelin/meetings`.
    Meetings {
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        call_every: usize,
        #[arg(long, default_value_t = 5)]
        schedule_every: usize,
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
}

/// The server's allocator: with thousands of syncers, glibc's malloc and free were a sixth
/// of the load tool's CPU, taken from the same cores the server under test runs on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let hs = Arc::new(Hs::new(&cli.common)?);
    let idle = rss(cli.common.server_pid);
    let (name, mut result) = match cli.scenario {
        Scenario::Setup {
            users,
            rooms,
            state,
        } => ("setup", scenario_setup(&hs, users, rooms, &state).await?),
        Scenario::Send {
            clients,
            seconds,
            rooms,
            state,
        } => (
            "send",
            scenario_send(&hs, clients, seconds, rooms, state.as_deref()).await?,
        ),
        Scenario::Fanout {
            syncers,
            messages,
            rate,
            late_joiners,
        } => (
            "fanout",
            scenario_fanout(&hs, syncers, messages, rate, late_joiners).await?,
        ),
        Scenario::InitialSync {
            rooms,
            messages,
            repeats,
        } => (
            "initial-sync",
            scenario_initial_sync(&hs, rooms, messages, repeats).await?,
        ),
        Scenario::JoinStorm { users } => ("join-storm", scenario_join_storm(&hs, users).await?),
        Scenario::Meetings {
            rooms,
            call_every,
            schedule_every,
            requests,
        } => (
            "meetings",
            scenario_meetings(&hs, rooms, call_every, schedule_every, requests).await?,
        ),
    };
    eprintln!();
    result["scenario"] = json!(name);
    result["server"] = json!(hs.bases.join(","));
    result["rate_limit_retries"] = json!(hs.retries.load(Ordering::Relaxed));
    if cli.common.server_pid.is_some() {
        result["server_memory"] = json!({ "before": idle, "after": rss(cli.common.server_pid) });
    }
    println!("{}", serde_json::to_string(&result)?);
    if cli.common.pretty {
        println!("{name}:");
        print_table(&result, "");
    }
    Ok(())
}
