//! A typed client of a node's own `dataspace.v1.Admin` service (the
//! authz layer admits only the node's own certificate: this is how the
//! CLI, the demo and the tests drive a node). One method per RPC, plain
//! arguments in, the answer out (domain types where the node's own are at
//! hand, the protobuf response otherwise), every failure a [`PeerError`].

use std::path::Path;

use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::exchange::fetch::{FetchProgress, Fetched};
use crate::peer::{AccessAsk, PeerError};
use crate::service::GrantStatus;
use crate::wire::client::PeerChannel;
use crate::wire::pb;
use crate::wire::pb::admin_client::AdminClient as Rpc;
use crate::witness::protocol::Exchanged;

/// The largest publish answer accepted: the signed manifest lists every
/// chunk's hash.
const MAX_PUBLISH_ANSWER: usize = 16 << 20;

/// How `Admin.Fetch` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Replace the output if it exists.
    pub force: bool,
    /// Reconnects (and resumes) allowed after a broken connection.
    pub retries: u32,
    /// Parallel streams; 0: the node's default.
    pub streams: u32,
    /// Also check the whole content's SHA-256 before the output is put
    /// in place.
    pub verify_sha256: bool,
}

/// A node's own Admin API, over a connection made with the node's own
/// certificate. Cheap to clone; calls may run at the same time.
#[derive(Clone)]
pub struct AdminClient {
    channel: Channel,
}

impl AdminClient {
    /// The Admin API of the node at the other end of `conn` (which must
    /// have been made with that node's own certificate).
    pub fn new(conn: &PeerChannel) -> Self {
        Self {
            channel: conn.channel.clone(),
        }
    }

    fn rpc(&self) -> Rpc<Channel> {
        Rpc::new(self.channel.clone())
    }

    /// `Admin.Publish`: sends `header`, then each piece of `content` as it
    /// comes; the node publishes all of it or nothing. The stream may be
    /// produced as it is read (a progress bar counts the pieces it
    /// yields); the call ends when the stream does.
    pub async fn publish(
        &self,
        header: pb::PublishHeader,
        content: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Result<pb::PublishResponse, PeerError> {
        let first = pb::PublishRequest {
            part: Some(pb::publish_request::Part::Header(header)),
        };
        let parts = tokio_stream::once(first).chain(content.map(|piece| pb::PublishRequest {
            part: Some(pb::publish_request::Part::Data(piece)),
        }));
        Ok(self
            .rpc()
            .max_decoding_message_size(MAX_PUBLISH_ANSWER)
            .publish(parts)
            .await?
            .into_inner())
    }

    /// `Admin.RequestAccess`: the node asks the publisher at `peer`
    /// (`HOST:PORT`) for access, as itself, and keeps the grant it gets.
    pub async fn request_access(
        &self,
        peer: &str,
        ask: AccessAsk,
    ) -> Result<pb::AdminRequestAccessResponse, PeerError> {
        let AccessAsk {
            dataset_id,
            purpose,
            actions,
            duration_secs,
        } = ask;
        Ok(self
            .rpc()
            .request_access(pb::AdminRequestAccessRequest {
                peer: peer.to_owned(),
                dataset_id,
                purpose,
                actions,
                duration_secs,
            })
            .await?
            .into_inner())
    }

    /// `Admin.Fetch`: the node fetches with its grant `grant_id` from the
    /// publisher at `peer`, verifies, writes `out` (a path on the node's
    /// machine) and exchanges receipts, as `options` say. Its progress,
    /// then its result, come as [`FetchEvents`].
    pub async fn fetch(
        &self,
        peer: &str,
        grant_id: &str,
        out: &Path,
        options: &FetchOptions,
    ) -> Result<FetchEvents, PeerError> {
        let FetchOptions {
            force,
            retries,
            streams,
            verify_sha256,
        } = *options;
        let stream = self
            .rpc()
            .fetch(pb::AdminFetchRequest {
                peer: peer.to_owned(),
                grant_id: grant_id.to_owned(),
                out: out.display().to_string(),
                force,
                retries,
                streams,
                verify_sha256,
            })
            .await?
            .into_inner();
        Ok(FetchEvents { stream })
    }

    /// `Admin.ListGrants`, one page: the grants matching `request` from
    /// its page token on, and the token of the next page (empty on the
    /// last).
    pub async fn list_grants_page(
        &self,
        request: pb::ListGrantsRequest,
    ) -> Result<(Vec<GrantStatus>, String), PeerError> {
        let pb::ListGrantsResponse {
            grants,
            next_page_token,
        } = self.rpc().list_grants(request).await?.into_inner();
        let grants = grants
            .into_iter()
            .map(GrantStatus::try_from)
            .collect::<Result<_, _>>()?;
        Ok((grants, next_page_token))
    }

    /// `Admin.ListGrants`, every page: every grant matching `request` the
    /// node issued, then every one it holds.
    pub async fn list_grants_matching(
        &self,
        mut request: pb::ListGrantsRequest,
    ) -> Result<Vec<GrantStatus>, PeerError> {
        let mut all = Vec::new();
        loop {
            let (page, next) = self.list_grants_page(request.clone()).await?;
            all.extend(page);
            if next.is_empty() {
                return Ok(all);
            }
            if next == request.page_token {
                return Err(PeerError::new(
                    crate::peer::Code::DataLoss,
                    "ListGrants returned the page token it was given: it would never end",
                ));
            }
            request.page_token = next;
        }
    }

    /// `Admin.ListGrants`, every page, unfiltered.
    pub async fn list_grants(&self) -> Result<Vec<GrantStatus>, PeerError> {
        self.list_grants_matching(pb::ListGrantsRequest::default())
            .await
    }

    /// `Admin.RevokeGrant`: revokes a grant the node issued (once; again
    /// is `already_revoked`).
    pub async fn revoke_grant(
        &self,
        grant_id: &str,
        reason: &str,
    ) -> Result<pb::RevokeGrantResponse, PeerError> {
        Ok(self
            .rpc()
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: grant_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// `Admin.Status`: the node's identity, version, uptime and open
    /// connections.
    pub async fn status(&self) -> Result<pb::StatusResponse, PeerError> {
        Ok(self.rpc().status(pb::StatusRequest {}).await?.into_inner())
    }

    /// `Admin.AuditStorage`: the node reads back and checks every chunk
    /// of its published datasets.
    pub async fn audit_storage(&self) -> Result<pb::AuditStorageResponse, PeerError> {
        Ok(self
            .rpc()
            .audit_storage(pb::AuditStorageRequest {})
            .await?
            .into_inner())
    }

    /// `Admin.ResendReceipts`: the node submits again to the publisher at
    /// `peer` the receipts it keeps for its grant `grant_id` that its
    /// ledger does not record as taken.
    pub async fn resend_receipts(
        &self,
        peer: &str,
        grant_id: &str,
    ) -> Result<pb::AdminResendReceiptsResponse, PeerError> {
        Ok(self
            .rpc()
            .resend_receipts(pb::AdminResendReceiptsRequest {
                peer: peer.to_owned(),
                grant_id: grant_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// `Admin.Witness`: the node exchanges checkpoints with the node at
    /// `peer` now (each witnesses the other's log).
    pub async fn witness(&self, peer: &str) -> Result<Exchanged, PeerError> {
        self.rpc()
            .witness(pb::AdminWitnessRequest {
                peer: peer.to_owned(),
            })
            .await?
            .into_inner()
            .try_into()
    }
}

/// What a running `Admin.Fetch` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// How far it is.
    Progress(FetchProgress),
    /// It completed (the last event).
    Done(Fetched),
}

/// The events of one `Admin.Fetch`, in order. Dropping them stops the
/// fetch; what it verified is kept for a resume.
pub struct FetchEvents {
    stream: tonic::Streaming<pb::AdminFetchEvent>,
}

impl FetchEvents {
    /// The next event; `None` once the node ended the stream (after
    /// [`FetchEvent::Done`], or without a result).
    pub async fn next(&mut self) -> Result<Option<FetchEvent>, PeerError> {
        while let Some(pb::AdminFetchEvent { event }) = self.stream.message().await? {
            match event {
                Some(pb::admin_fetch_event::Event::Progress(p)) => {
                    return Ok(Some(FetchEvent::Progress(p.into())));
                }
                Some(pb::admin_fetch_event::Event::Done(d)) => {
                    return Ok(Some(FetchEvent::Done(d.try_into()?)));
                }
                // An event this client does not know: skipped.
                None => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Code;

    fn fetched() -> Fetched {
        Fetched {
            dataset_id: "ds_x".into(),
            bytes: 26,
            content_sha256: [7; 32],
            ledger_index: 4,
            publisher_ledger_index: 9,
            resumed_chunks: 1,
            reconnects: 2,
            chunk_list_sha256: [8; 32],
            content_verified: true,
            streams: 3,
        }
    }

    /// What the node's Admin service sends comes back as it was.
    #[test]
    fn answers_come_back_as_the_node_sent_them() {
        let done = fetched();
        assert_eq!(
            Fetched::try_from(pb::AdminFetchResponse::from(done.clone())),
            Ok(done)
        );
        let progress = FetchProgress {
            bytes: 1,
            total_bytes: 2,
            chunks: 3,
            total_chunks: 4,
            resumed_chunks: 5,
        };
        assert_eq!(
            FetchProgress::from(pb::AdminFetchProgress::from(progress)),
            progress
        );
        let id = crate::identity::NodeId::from_public_key(&[1; 32]);
        let witnessed = Exchanged::try_from(pb::AdminWitnessResponse {
            peer_node_id: id.to_string(),
            peer_size: 12,
            peer_grew: true,
            cosigned_by_peer: false,
        })
        .expect("a witness result");
        assert_eq!(
            witnessed,
            Exchanged {
                peer: id,
                peer_size: 12,
                peer_grew: true,
                cosigned_by_peer: false,
            }
        );
    }

    /// An answer a node would never send is refused, not trusted.
    #[test]
    fn answers_that_do_not_parse_are_data_loss() {
        let mut done = pb::AdminFetchResponse::from(fetched());
        done.content_sha256.pop();
        let err = Fetched::try_from(done).expect_err("31-byte hash");
        assert_eq!(err.code, Code::DataLoss);
        assert!(err.message.contains("31 bytes"), "{}", err.message);

        let err = Exchanged::try_from(pb::AdminWitnessResponse {
            peer_node_id: "node-7".into(),
            ..Default::default()
        })
        .expect_err("not a node id");
        assert_eq!(err.code, Code::DataLoss);
        assert!(err.message.contains("`node-7`"), "{}", err.message);

        let err = GrantStatus::try_from(pb::GrantStatus {
            grant: None,
            revoked: false,
            issued: true,
        })
        .expect_err("no grant");
        assert_eq!(err.code, Code::DataLoss);
    }
}
