//! Publishing: the content arrives in pieces; it is chunked and stored
//! while it streams, the manifest is signed and `DatasetPublished`
//! recorded. Nothing is published unless everything succeeds: a failure
//! removes the chunks this publication created (unless the ledger may hold
//! the entry, which the catalog settles at the next start).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tokio_stream::{Stream, StreamExt};

use super::blob::BlobStore;
use super::catalog::{Catalog, Dataset, GrantCheck, PublishError, PublishRequest};
use super::chunk::Chunker;
use crate::ledger::{Appended, Ledger};

/// Content pieces buffered between the stream and the chunker.
const PIECES_IN_FLIGHT: usize = 16;

/// What publishing needs of a node.
pub struct Publishing<'a> {
    /// The datasets it publishes.
    pub catalog: &'a Catalog,
    /// Where chunks are stored.
    pub blobs: &'a Arc<dyn BlobStore>,
    /// Its held grants, for derivations of other publishers' datasets.
    pub grants: &'a dyn GrantCheck,
    /// Its ledger.
    pub ledger: &'a Ledger,
    /// Its signing key, for the manifest.
    pub key: &'a SigningKey,
    /// One publication at a time: a new version's checks and its
    /// recording cannot race another's.
    pub one_at_a_time: &'a tokio::sync::Mutex<()>,
}

impl Publishing<'_> {
    /// Removes the chunks a failed publication created, off the runtime's
    /// threads (an object store's deletes are round trips).
    async fn remove(&self, created: Vec<crate::digest::Hash>) {
        let blobs = self.blobs.clone();
        let _ = tokio::task::spawn_blocking(move || blobs.remove(&created)).await;
    }

    /// Publishes the content of `pieces` under `request`; `announced` is
    /// the size the publisher stated (0: not stated), checked against what
    /// arrives. A piece that is an `Err` ends the publication with it.
    pub async fn publish<S>(
        &self,
        request: PublishRequest,
        announced: u64,
        mut pieces: S,
    ) -> Result<(Arc<Dataset>, Appended), PublishError>
    where
        S: Stream<Item = Result<Vec<u8>, PublishError>> + Unpin,
    {
        let _one = self.one_at_a_time.lock().await;
        // Every check that needs no content happens before any byte is stored.
        let prepared = self.catalog.prepare(request, self.grants)?;

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIECES_IN_FLIGHT);
        let mut chunker = Chunker::new(self.blobs.clone(), prepared.chunk_size());
        let worker = tokio::task::spawn_blocking(move || {
            while let Some(piece) = rx.blocking_recv() {
                chunker.push(&piece)?;
            }
            chunker.finish()
        });
        let mut received = 0u64;
        let mut failure = None;
        while let Some(piece) = pieces.next().await {
            let bytes = match piece {
                Ok(bytes) => bytes,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            received += bytes.len() as u64;
            if announced != 0 && received > announced {
                failure = Some(PublishError::Content(format!(
                    "the stream carries more than the announced {announced} bytes"
                )));
                break;
            }
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
        drop(tx);
        let chunked = worker
            .await
            .map_err(|e| PublishError::Store {
                context: "chunking",
                source: Box::new(e),
            })?
            .map_err(|e| PublishError::Store {
                context: "storing chunks",
                source: Box::new(e),
            })?;
        let failure = failure.or_else(|| {
            (announced != 0 && chunked.size != announced).then(|| {
                PublishError::Content(format!(
                    "announced {announced} bytes but the stream carried {}",
                    chunked.size
                ))
            })
        });
        if let Some(e) = failure {
            self.remove(chunked.created).await;
            return Err(e);
        }
        let created = chunked.created.clone();
        match self
            .catalog
            .finish(prepared, chunked, self.key, self.ledger)
            .await
        {
            Ok((dataset, appended)) => {
                tracing::info!(dataset = %dataset.id, index = appended.index, "published");
                Ok((dataset, appended))
            }
            Err(e) => {
                // If the ledger may hold the entry, keep everything: the
                // catalog settles it against the ledger at the next start.
                if !matches!(e, PublishError::Uncertain(_)) {
                    self.remove(created).await;
                }
                Err(e)
            }
        }
    }
}
