//! Which handler answers a request. xapi picks handlers by the longest registered prefix of
//! the path, so `/export_raw_vdi/` reaches the export and any unknown POST path reaches
//! XML-RPC (protocol reference §1.1, §2.1).

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::reply::{self, Reply};
use super::rpc::BodyReading;
use super::{export, import, rpc};
use crate::lab::Lab;
use crate::lab::faults::Plane;

pub(super) async fn handle(lab: Lab, reading: &BodyReading, request: Request<Incoming>) -> Reply {
    let path = request.uri().path();
    let plane = match *request.method() {
        Method::GET if path.starts_with("/export_raw_vdi") => Some(Plane::Export),
        Method::PUT if path.starts_with("/import_raw_vdi") => Some(Plane::Import),
        _ => None,
    };
    if let Some(to) = plane.and_then(|plane| lab.faults().on_transfer_request(plane)) {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or(path, |pq| pq.as_str());
        return reply::found(&format!("{to}{path_and_query}"));
    }
    match *request.method() {
        Method::GET if path.starts_with("/export_raw_vdi") => {
            let (parts, _) = request.into_parts();
            export::handle(lab, parts).await
        }
        Method::PUT if path.starts_with("/import_raw_vdi") => import::handle(lab, request).await,
        Method::POST if path.starts_with("/jsonrpc") => rpc::json_rpc(lab, request, reading).await,
        Method::POST => rpc::xml_rpc(lab, request, reading).await,
        Method::OPTIONS => reply::cors_preflight(),
        _ => reply::not_found(),
    }
}
