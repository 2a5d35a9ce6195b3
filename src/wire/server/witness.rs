//! `Peering.ExchangeCheckpoints`, the called side (the protocol is
//! [`crate::witness::protocol`]).

use tonic::Status;

use super::NodeContext;
use crate::identity::PeerIdentity;
use crate::wire::pb;

/// Witnesses the caller's checkpoint and answers with this node's.
pub(super) async fn serve(
    node: &NodeContext,
    caller: &PeerIdentity,
    req: pb::ExchangeCheckpointsRequest,
) -> Result<pb::ExchangeCheckpointsResponse, Status> {
    let answer = node.answer_checkpoints(caller, &req.into()).await?;
    Ok(answer.into())
}
