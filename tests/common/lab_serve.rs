//! One lab host served on a free local port, with a client logged in to it: what the lab's
//! own integration tests start from.

use std::path::Path;

use vhdsync::lab::Lab;
use vhdsync::lab::http::LabServer;
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::tls::Trust;

/// The root password the lab tests initialise their labs with.
pub const PASSWORD: &str = "lab";

/// Serve the lab initialised in `dir` (HTTPS with its self-signed certificate when `tls`)
/// and log in as root.
pub async fn serve(dir: &Path, tls: bool) -> (Lab, LabServer, XapiClient) {
    let lab = Lab::open(dir).unwrap();
    let server = LabServer::start(lab.clone(), "127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let client = login(&server.base_url()).await;
    (lab, server, client)
}

/// Log in as root to the lab at `base_url`, trusting any certificate.
pub async fn login(base_url: &str) -> XapiClient {
    let url = base_url.replacen("://", &format!("://root:{PASSWORD}@"), 1);
    XapiClient::connect(HostUrl::parse(&url).unwrap(), &Trust::Insecure, None)
        .await
        .unwrap()
}
