//! The backend gRPC API (`proto/bimip_admin.proto`) of `bimip serve`: bearer-secret authentication, one engine call
//! per RPC on the user's home shard (`crate::core::operator`), and an audit line per call (tracing target
//! `bimip::audit`: the call, whom it concerns, its outcome; never a token or the secret).

use std::net::SocketAddr;

use prost::Message;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use super::proto::admin_server::{Admin, AdminServer};
use super::proto::{self as pb};
use crate::core::operator::{OperatorError, RevokeScope};
use crate::core::{Engine, Millis, Transport};
use crate::net::Operator;

/// The header a call's credential travels in.
pub const AUTHORIZATION: &str = "authorization";

/// Checks each call's `authorization: Bearer <secret>`.
#[derive(Clone)]
pub struct BearerCheck {
    expected: std::sync::Arc<str>,
}

impl BearerCheck {
    pub fn new(secret: &str) -> Self {
        BearerCheck {
            expected: format!("Bearer {secret}").into(),
        }
    }
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time: the comparison must not tell a caller how much of the secret it guessed.
        if bool::from(given.ct_eq(self.expected.as_bytes())) {
            Ok(request)
        } else {
            tracing::warn!(target: "bimip::audit", outcome = "unauthenticated", "admin call without the admin secret");
            Err(Status::unauthenticated(
                "this call needs `authorization: Bearer <admin secret>` (the server's grpc_secret_file)",
            ))
        }
    }
}

/// The service: reaches the engine through an [`Operator`].
#[derive(Clone)]
pub struct AdminService {
    operator: Operator,
    node: String,
    /// The admin secret: forwarded calls carry it to the user's home node, which checks it.
    secret: std::sync::Arc<str>,
}

impl AdminService {
    pub fn new(operator: Operator, node: impl Into<String>, secret: &str) -> Self {
        AdminService {
            operator,
            node: node.into(),
            secret: secret.into(),
        }
    }

    /// The tonic service with the credential check in front.
    pub fn into_server(
        self,
    ) -> tonic::service::interceptor::InterceptedService<AdminServer<AdminService>, BearerCheck> {
        let check = BearerCheck::new(&self.secret);
        AdminServer::with_interceptor(self, check)
    }

    /// Runs `f` on `eid`'s home shard and writes the audit line.
    fn call<T>(
        &self,
        call: &'static str,
        eid: &str,
        f: impl FnOnce(&mut Engine, Millis) -> Result<T, OperatorError>,
    ) -> Result<T, Status> {
        let result = self.operator.on_home(eid, f).unwrap_or_else(|| {
            Err(OperatorError::Unavailable(
                "the user's home is on another node of the cluster; call that node".into(),
            ))
        });
        match &result {
            Ok(_) => tracing::info!(target: "bimip::audit", call, eid, outcome = "ok"),
            Err(e) => tracing::info!(target: "bimip::audit", call, eid, outcome = "refused", reason = %e),
        }
        result.map_err(status)
    }
}

fn status(error: OperatorError) -> Status {
    let message = error.to_string();
    match error {
        OperatorError::InvalidArgument(_) => Status::invalid_argument(message),
        OperatorError::NotFound(_) => Status::not_found(message),
        OperatorError::FailedPrecondition(_) => Status::failed_precondition(message),
        OperatorError::Unavailable(_) => Status::unavailable(message),
    }
}

fn token_reply(minted: crate::core::operator::Minted) -> pb::TokenReply {
    pb::TokenReply {
        token: minted.token,
        jti: minted.jti,
        expires_at: minted.expires_at,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Where a token-by-value call runs: the home of the token's user, read unverified only to route (the engine
/// verifies it). A string that is not a token at all is refused here.
fn token_home(token: &str) -> Result<String, Status> {
    RevokeScope::Token(token)
        .eid()
        .ok_or_else(|| Status::invalid_argument("not a token of this server (token_malformed)"))
}

/// A call forwarded over NATS to the node that is its user's home (a cluster, src/cluster): the node that took it
/// sends the request as it came, with the admin secret it was made with; the home checks the secret, runs it as its
/// own call (audit line included) and sends back the reply or the status.
#[derive(Clone, PartialEq, prost::Message)]
struct Forwarded {
    #[prost(string, tag = "1")]
    secret: String,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ForwardedReply {
    /// A gRPC status code; 0: `body` is the reply.
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

impl AdminService {
    /// Runs `method` on `node`, the home of the user it concerns, and returns its answer as if made here.
    async fn forward<Req: prost::Message, Rep: prost::Message + Default>(
        &self,
        node: usize,
        method: &'static str,
        request: &Req,
    ) -> Result<Response<Rep>, Status> {
        let forwarded = Forwarded {
            secret: self.secret.to_string(),
            method: method.into(),
            body: request.encode_to_vec(),
        };
        let answer = self
            .operator
            .request(node, forwarded.encode_to_vec().into())
            .await
            .map_err(|e| Status::unavailable(format!("the user's home node: {e}")))?;
        let reply = ForwardedReply::decode(answer)
            .map_err(|e| Status::internal(format!("an undecodable answer from the user's home node: {e}")))?;
        if reply.code != 0 {
            return Err(Status::new(tonic::Code::from_i32(reply.code), reply.message));
        }
        Rep::decode(reply.body.as_slice())
            .map(Response::new)
            .map_err(|e| Status::internal(format!("an undecodable reply from the user's home node: {e}")))
    }

    /// Runs a call another node forwarded (`Forwarded`), after checking the secret it came with.
    async fn dispatch(&self, forwarded: &[u8]) -> ForwardedReply {
        let answer = match Forwarded::decode(forwarded) {
            Err(e) => Err(Status::invalid_argument(format!("undecodable forwarded call: {e}"))),
            Ok(call) if !bool::from(call.secret.as_bytes().ct_eq(self.secret.as_bytes())) => {
                tracing::warn!(target: "bimip::audit", call = %call.method, outcome = "unauthenticated", "forwarded admin call with a wrong secret");
                Err(Status::unauthenticated("the nodes of a cluster share one admin secret"))
            }
            Ok(call) => self.run(&call.method, &call.body).await,
        };
        match answer {
            Ok(body) => ForwardedReply {
                code: 0,
                message: String::new(),
                body,
            },
            Err(status) => ForwardedReply {
                code: status.code() as i32,
                message: status.message().to_string(),
                body: Vec::new(),
            },
        }
    }

    async fn run(&self, method: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
        macro_rules! calls {
            ($($name:literal => $call:ident),* $(,)?) => {
                match method {
                    $($name => {
                        let request = prost::Message::decode(body)
                            .map_err(|e| Status::invalid_argument(format!("undecodable {}: {e}", $name)))?;
                        Ok(self.$call(Request::new(request)).await?.into_inner().encode_to_vec())
                    })*
                    other => Err(Status::unimplemented(format!("no call {other}"))),
                }
            };
        }
        calls!(
            "MintToken" => mint_token,
            "RefreshToken" => refresh_token,
            "RevokeToken" => revoke_token,
            "RevokeDevice" => revoke_device,
            "RevokeUser" => revoke_user,
            "ListSessions" => list_sessions,
            "EndSession" => end_session,
            "Push" => push,
            "GetAwareness" => get_awareness,
            "AddSubscriber" => add_subscriber,
            "RemoveSubscriber" => remove_subscriber,
            "Block" => block,
            "Unblock" => unblock,
        )
    }

    /// Serves the calls other nodes of a cluster forward to this one, until the connection ends.
    pub fn serve_forwarded(self) -> Option<tokio::task::JoinHandle<()>> {
        let (client, node) = self.operator.nats()?;
        Some(tokio::spawn(async move {
            let mut calls = match client.subscribe(crate::net::admin_subject(&node)).await {
                Ok(calls) => calls,
                Err(e) => {
                    tracing::error!("cannot serve forwarded admin calls: {e}");
                    return;
                }
            };
            while let Some(call) = futures::StreamExt::next(&mut calls).await {
                let Some(reply_to) = call.reply else { continue };
                let answer = self.dispatch(&call.payload).await;
                if let Err(e) = client.publish(reply_to, answer.encode_to_vec().into()).await {
                    tracing::warn!("a forwarded admin call's answer was not sent: {e}");
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn mint_token(&self, request: Request<pb::MintTokenRequest>) -> Result<Response<pb::TokenReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "MintToken", &r).await;
        }
        let minted = self.call("MintToken", &r.eid, |engine, now| {
            engine.mint_token(&r.eid, &r.device_id, r.lifetime_s, now)
        })?;
        Ok(Response::new(token_reply(minted)))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        let r = request.into_inner();
        let eid = token_home(&r.token)?;
        if let Some(node) = self.operator.remote_home(&eid) {
            return self.forward(node, "RefreshToken", &r).await;
        }
        let minted = self.call("RefreshToken", &eid, |engine, now| engine.refresh_token(&r.token, now))?;
        Ok(Response::new(token_reply(minted)))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeReply>, Status> {
        let r = request.into_inner();
        let eid = token_home(&r.token)?;
        if let Some(node) = self.operator.remote_home(&eid) {
            return self.forward(node, "RevokeToken", &r).await;
        }
        let ended = self.call("RevokeToken", &eid, |engine, now| {
            engine.revoke(RevokeScope::Token(&r.token), now)
        })?;
        Ok(Response::new(pb::RevokeReply {
            sessions_ended: count(ended),
        }))
    }

    async fn revoke_device(&self, request: Request<pb::Device>) -> Result<Response<pb::RevokeReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "RevokeDevice", &r).await;
        }
        let scope = RevokeScope::Device {
            eid: &r.eid,
            device: &r.device_id,
        };
        let ended = self.call("RevokeDevice", &r.eid, |engine, now| engine.revoke(scope, now))?;
        Ok(Response::new(pb::RevokeReply {
            sessions_ended: count(ended),
        }))
    }

    async fn revoke_user(&self, request: Request<pb::User>) -> Result<Response<pb::RevokeReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "RevokeUser", &r).await;
        }
        let ended = self.call("RevokeUser", &r.eid, |engine, now| {
            engine.revoke(RevokeScope::User { eid: &r.eid }, now)
        })?;
        Ok(Response::new(pb::RevokeReply {
            sessions_ended: count(ended),
        }))
    }

    async fn list_sessions(&self, request: Request<pb::User>) -> Result<Response<pb::SessionList>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "ListSessions", &r).await;
        }
        let sessions = self.call("ListSessions", &r.eid, |engine, _| engine.sessions_of(&r.eid))?;
        let sessions = sessions
            .into_iter()
            .map(|s| pb::Session {
                device_id: s.device,
                transport: match s.transport {
                    Transport::WebSocket => pb::Transport::Websocket,
                    Transport::Tcp => pb::Transport::Tcp,
                }
                .into(),
                node: self.node.clone(),
                since: s.since,
                token_expires_at: s.token_expires_at,
            })
            .collect();
        Ok(Response::new(pb::SessionList { sessions }))
    }

    async fn end_session(&self, request: Request<pb::Device>) -> Result<Response<pb::EndSessionReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "EndSession", &r).await;
        }
        self.call("EndSession", &r.eid, |engine, now| {
            engine.end_session(&r.eid, &r.device_id, now)
        })?;
        Ok(Response::new(pb::EndSessionReply {}))
    }

    async fn push(&self, request: Request<pb::PushRequest>) -> Result<Response<pb::PushReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "Push", &r).await;
        }
        let data = r.data.into_iter().collect();
        let devices = self.call("Push", &r.eid, |engine, now| {
            engine.push(&r.eid, &r.r#type, data, now).map_err(|_| {
                OperatorError::InvalidArgument(
                    "an EID, a type of 1 to 64 bytes, data keys of 1 to 256 and values of 1 to 4096 bytes (SPEC PUSH-2)"
                        .into(),
                )
            })
        })?;
        Ok(Response::new(pb::PushReply {
            devices: count(devices),
        }))
    }

    async fn get_awareness(&self, request: Request<pb::User>) -> Result<Response<pb::AwarenessReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.eid) {
            return self.forward(node, "GetAwareness", &r).await;
        }
        let a = self.call("GetAwareness", &r.eid, |engine, _| engine.awareness_of(&r.eid))?;
        Ok(Response::new(pb::AwarenessReply {
            status: a.status,
            status_lapses_at: a.lapses_at.unwrap_or(0),
            last_seen: a.last_seen.unwrap_or(0),
            devices_online: count(a.devices_online),
            visibility: a.visibility,
            location_sharing: a.location_sharing,
            subscribers: a.subscribers,
            blocked: a.blocked,
        }))
    }

    async fn add_subscriber(&self, request: Request<pb::Relation>) -> Result<Response<pb::RelationReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.owner) {
            return self.forward(node, "AddSubscriber", &r).await;
        }
        let changed = self.call("AddSubscriber", &r.owner, |engine, now| {
            engine.set_subscriber(&r.owner, &r.other, Some((&r.nickname, &r.group)), now)
        })?;
        Ok(Response::new(pb::RelationReply { changed }))
    }

    async fn remove_subscriber(&self, request: Request<pb::Relation>) -> Result<Response<pb::RelationReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.owner) {
            return self.forward(node, "RemoveSubscriber", &r).await;
        }
        let changed = self.call("RemoveSubscriber", &r.owner, |engine, now| {
            engine.set_subscriber(&r.owner, &r.other, None, now)
        })?;
        Ok(Response::new(pb::RelationReply { changed }))
    }

    async fn block(&self, request: Request<pb::Relation>) -> Result<Response<pb::RelationReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.owner) {
            return self.forward(node, "Block", &r).await;
        }
        let changed = self.call("Block", &r.owner, |engine, now| {
            engine.set_block(&r.owner, &r.other, true, now)
        })?;
        Ok(Response::new(pb::RelationReply { changed }))
    }

    async fn unblock(&self, request: Request<pb::Relation>) -> Result<Response<pb::RelationReply>, Status> {
        let r = request.into_inner();
        if let Some(node) = self.operator.remote_home(&r.owner) {
            return self.forward(node, "Unblock", &r).await;
        }
        let changed = self.call("Unblock", &r.owner, |engine, now| {
            engine.set_block(&r.owner, &r.other, false, now)
        })?;
        Ok(Response::new(pb::RelationReply { changed }))
    }

    async fn get_stats(&self, _request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsReply>, Status> {
        let s = self.operator.snapshot();
        tracing::info!(target: "bimip::audit", call = "GetStats", outcome = "ok");
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(Response::new(pb::StatsReply {
            connections: wide(s.connections),
            users_online: wide(s.users_online),
            sessions_started: s.stats.sessions_started,
            connections_closed: s.stats.connections_closed,
            stanzas_in: s.stats.stanzas_in.values().sum(),
            stanzas_out: s.stats.stanzas_out.values().sum(),
            errors: s.stats.errors.values().sum(),
            shards: count(self.operator.shards()),
            node: self.node.clone(),
        }))
    }
}

/// Why the gRPC listener may not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "the backend API on {0} would take the admin secret in plaintext off the network: listen on loopback, or configure [tls]"
    )]
    PlaintextOffLoopback(SocketAddr),
}

/// Refuses a plaintext listener anywhere but loopback: the bearer secret must not cross a network unencrypted.
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<(), ListenError> {
    if tls || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ListenError::PlaintextOffLoopback(addr))
    }
}

/// A client of the API at `url` (`http://HOST:PORT`, or `https://` with the server's CA in `ca_pem`) that sends
/// `secret` with every call.
pub async fn connect(
    url: &str,
    secret: &str,
    ca_pem: Option<&[u8]>,
) -> Result<
    pb::admin_client::AdminClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerHeader>,
    >,
    tonic::transport::Error,
> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?;
    if let Some(ca) = ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let header = BearerHeader(format!("Bearer {secret}").parse().ok());
    Ok(pb::admin_client::AdminClient::with_interceptor(channel, header))
}

/// Adds the bearer secret to a client's calls.
#[derive(Clone)]
pub struct BearerHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_listens_only_on_loopback() {
        assert!(check_listen("127.0.0.1:7423".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:7423".parse().unwrap(), false).is_ok());
        assert!(check_listen("0.0.0.0:7423".parse().unwrap(), true).is_ok());
        let refused = check_listen("0.0.0.0:7423".parse().unwrap(), false).unwrap_err();
        assert!(refused.to_string().contains("0.0.0.0:7423"), "{refused}");
    }

    #[test]
    fn the_bearer_check_wants_the_exact_secret() {
        use tonic::service::Interceptor;
        let mut check = BearerCheck::new("s3cret-s3cret-s3cret");
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(v) = value {
                request.metadata_mut().insert(AUTHORIZATION, v.parse().unwrap());
            }
            request
        };
        assert!(check.call(with(Some("Bearer s3cret-s3cret-s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cret"),
            Some("s3cret-s3cret-s3cret"),
            Some("Bearer s3cret-s3cret-s3creT"),
        ] {
            let status = check.call(with(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
