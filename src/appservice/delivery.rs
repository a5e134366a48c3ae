//! Transactions to an appservice: one pipeline consumer per appservice with a URL
//! (`appservice.<id>`), so a slow or down appservice holds up nobody else.
//!
//! For each batch of durable events the consumer keeps those the appservice is interested
//! in, cuts them into transactions of at most [`MAX_EVENTS`], and for each one first
//! records `{txn_id, end, body}` durably as `pending` (tree `appservice_delivery`), then
//! `PUT {url}/_matrix/app/v1/transactions/{txn_id}` with the `hs_token` until a 2xx comes
//! back (exponential backoff up to [`MAX_BACKOFF`]), then records `acked_through = end`.
//! After a restart a pending transaction is sent again as it was: same id, same events.

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use myelin_appservice::{Registration, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppserviceService;
use crate::{
    pipeline::{Appended, Checkpoint, EventConsumer},
    storage::Batch,
    Result,
};

/// Events in one transaction, at most.
pub const MAX_EVENTS: usize = 100;
/// First pause after a failed transaction; doubles on each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The stored delivery state of one appservice.
#[derive(Default, Serialize, Deserialize)]
struct DeliveryState {
    /// The id of the next new transaction.
    next_txn: u64,
    /// Every interesting event up to this stream position was acknowledged.
    acked_through: u64,
    /// The transaction sent and not acknowledged yet.
    pending: Option<Pending>,
}

#[derive(Serialize, Deserialize)]
struct Pending {
    txn_id: String,
    /// Stream position of its last event.
    end: u64,
    body: Value,
}

/// The pipeline consumer of one appservice.
pub struct AppserviceConsumer {
    service: Arc<AppserviceService>,
    reg: Arc<Registration>,
    name: &'static str,
}

impl AppserviceConsumer {
    /// One consumer per appservice that has a URL.
    pub fn all(service: &Arc<AppserviceService>) -> Vec<Arc<dyn EventConsumer>> {
        service
            .registrations()
            .iter()
            .filter(|r| r.url.is_some())
            .map(|reg| {
                // Leaked once per registration at start: the pipeline names consumers
                // with `&'static str`.
                let name: &'static str =
                    Box::leak(format!("appservice.{}", reg.id).into_boxed_str());
                Arc::new(AppserviceConsumer {
                    service: service.clone(),
                    reg: reg.clone(),
                    name,
                }) as Arc<dyn EventConsumer>
            })
            .collect()
    }

    fn load(&self) -> Result<DeliveryState> {
        Ok(self
            .service
            .storage
            .trees
            .appservice_delivery
            .get_json::<DeliveryState>(self.reg.id.as_bytes())?
            .unwrap_or_default())
    }

    async fn save(&self, state: &DeliveryState) -> Result<()> {
        let mut batch = Batch::new();
        batch.insert_json(
            &self.service.storage.trees.appservice_delivery,
            self.reg.id.as_bytes(),
            state,
        )?;
        self.service.storage.commit_durable(batch).await
    }

    /// Sends one transaction until the appservice acknowledges it.
    async fn send_until_acknowledged(&self, txn_id: &str, body: &Value) {
        let Some(url) = &self.reg.url else {
            return;
        };
        let target = format!("{url}/_matrix/app/v1/transactions/{txn_id}");
        let mut pause = FIRST_BACKOFF;
        loop {
            let sent = self
                .service
                .http
                .put(&target)
                .bearer_auth(&self.reg.hs_token)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => tracing::warn!(
                    appservice = %self.reg.id, txn_id, status = %resp.status(),
                    retry_in_ms = pause.as_millis() as u64, "appservice refused a transaction"
                ),
                Err(e) => tracing::warn!(
                    appservice = %self.reg.id, txn_id, error = %e.without_url(),
                    retry_in_ms = pause.as_millis() as u64, "appservice unreachable"
                ),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

impl EventConsumer for AppserviceConsumer {
    fn name(&self) -> &'static str {
        self.name
    }

    fn consume<'a>(
        &'a self,
        events: &'a [Appended],
        checkpoint: Checkpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.load()?;
            let mut sent = false;
            loop {
                if let Some(p) = state.pending.take() {
                    sent = true;
                    self.send_until_acknowledged(&p.txn_id, &p.body).await;
                    state.acked_through = state.acked_through.max(p.end);
                    self.save(&state).await?;
                    continue;
                }
                let mut chosen = Vec::new();
                let mut end = 0;
                for e in events.iter().filter(|e| e.pos > state.acked_through) {
                    if chosen.len() == MAX_EVENTS {
                        break;
                    }
                    if self.service.is_interested(&self.reg, &e.pdu)? {
                        chosen.push(e.pdu.to_client_event());
                        end = e.pos;
                    }
                }
                if chosen.is_empty() {
                    break;
                }
                sent = true;
                let body = serde_json::to_value(Transaction {
                    events: chosen,
                    ..Transaction::default()
                })?;
                state.pending = Some(Pending {
                    txn_id: state.next_txn.to_string(),
                    end,
                    body,
                });
                state.next_txn += 1;
                // Durable before it leaves: a restart re-sends it with the same id.
                self.save(&state).await?;
            }
            if !sent {
                // Nothing for this bridge: seeing these events again sends nothing.
                return checkpoint.skip();
            }
            self.service.storage.commit(checkpoint.into_batch())
        })
    }
}
