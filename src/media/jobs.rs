//! Running thumbnail and preview jobs: on the blocking pool, a few at a time, with a time
//! limit, and with panics in the (third-party) decoders turned into errors.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{Error, Result};

/// Runs `job` on the blocking pool holding one of `jobs`' permits. Waiting over `limit`
/// for a permit gives 429 `M_LIMIT_EXCEEDED`; a job still running after `limit` gives
/// 400 `M_UNKNOWN` (the spec's answer for content the server cannot thumbnail) and keeps
/// its permit until it really ends (a blocking thread cannot be stopped), so runaway jobs
/// never outnumber the permits. A panic in the job is a 400 `M_UNKNOWN` too.
pub async fn run_limited<T: Send + 'static>(
    jobs: &Arc<Semaphore>,
    limit: Duration,
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let permit = match tokio::time::timeout(limit, jobs.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(e)) => return Err(Error::internal(format!("thumbnail permits: {e}"))),
        Err(_) => return Err(Error::limit_exceeded(limit)),
    };
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        guarded(job)
    });
    match tokio::time::timeout(limit, task).await {
        Ok(joined) => joined.map_err(|e| Error::internal(e.to_string()))?,
        Err(_) => {
            tracing::warn!(?limit, "a thumbnail took too long; the request gave up");
            Err(cannot_thumbnail("it took too long"))
        }
    }
}

fn cannot_thumbnail(why: &str) -> Error {
    Error::matrix(
        crate::ErrorKind::Invalid,
        "M_UNKNOWN",
        format!("Cannot generate a thumbnail of this file: {why}"),
    )
}

/// Runs `job`, turning a panic into an error.
fn guarded<T>(job: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::warn!(panic = %what, "a thumbnail decoder panicked");
        Err(cannot_thumbnail("the file is malformed"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn slow_jobs_time_out_and_keep_their_permit() {
        let jobs = Arc::new(Semaphore::new(1));
        let limit = Duration::from_millis(100);
        let started = Instant::now();
        let err = run_limited(&jobs, limit, || {
            std::thread::sleep(Duration::from_millis(600));
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.errcode(), "M_UNKNOWN");
        assert!(started.elapsed() < Duration::from_millis(400));
        // the runaway still holds the only permit: the next job is turned away, not piled up
        let err = run_limited(&jobs, limit, || Ok(())).await.unwrap_err();
        assert_eq!(err.errcode(), "M_LIMIT_EXCEEDED");
        // once it really ended, jobs run again
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(run_limited(&jobs, limit, || Ok(5)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_panic_is_an_error() {
        let jobs = Arc::new(Semaphore::new(1));
        let limit = Duration::from_secs(5);
        let err = run_limited::<()>(&jobs, limit, || panic!("malformed"))
            .await
            .unwrap_err();
        assert_eq!(err.errcode(), "M_UNKNOWN");
        // and the permit came back
        assert_eq!(run_limited(&jobs, limit, || Ok(1)).await.unwrap(), 1);
    }
}
