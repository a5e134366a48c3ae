//! Two processes sharing one PostgreSQL database (and the media directory): a download
//! waiting on one for an upload made through the other.

use std::sync::Arc;

use futures_util::Stream;
use ruma::UserId;

use super::{Access, MediaService};
use crate::{
    config::Config,
    storage::{test_database, Storage},
    stream::test_support::{eventually, WAIT},
};

/// The media services of two processes on one fresh database and one media directory.
fn two_processes() -> (tempfile::TempDir, Arc<MediaService>, Arc<MediaService>) {
    let dir = tempfile::tempdir().unwrap();
    let url = test_database();
    let open = || {
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let storage = Storage::open_postgres_shared(&url, 2).unwrap();
        Arc::new(MediaService::new(Arc::new(config), Arc::new(storage)).unwrap())
    };
    let (a, b) = (open(), open());
    (dir, a, b)
}

fn body(
    data: &'static [u8],
) -> impl Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(data))])
}

#[tokio::test]
async fn a_download_waiting_on_one_process_gets_an_upload_made_through_the_other() {
    let (_dir, a, b) = two_processes();
    let alice = <&UserId>::try_from("@alice:localhost").unwrap();
    let (uri, _) = a.create(alice).await.unwrap();
    let id = uri.rsplit('/').next().unwrap().to_owned();
    // B waits for the upload (longer than the test waits for it).
    let download = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move {
            b.content("localhost", &id, WAIT * 2, Access::Authenticated)
                .await
        })
    };
    eventually("the download waits on B", || b.waiting_downloads(&id) == 1).await;
    a.upload_to(
        alice,
        "localhost",
        &id,
        Some("text/plain"),
        None,
        body(b"hello"),
    )
    .await
    .unwrap();
    let (record, content) = tokio::time::timeout(WAIT, download)
        .await
        .expect("B's download is woken by A's upload")
        .unwrap()
        .unwrap();
    assert_eq!(record.size, 5);
    assert_eq!(std::fs::read(content.path).unwrap(), b"hello");
    assert_eq!(b.waiting_downloads(&id), 0);
}
