//! The host's own clock, for times several machines must agree on.

use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::PoolRecord;
use crate::xapi::rpc::Value;

impl XapiClient {
    /// The pool master's reference: the host whose clock [`XapiClient::server_time`] reads.
    pub async fn pool_master(&self) -> Result<String, ClientError> {
        let pools = self.get_all_records::<PoolRecord>().await?;
        pools
            .into_iter()
            .map(|(_, pool)| pool.master)
            .next()
            .ok_or_else(|| ClientError::Protocol {
                host: self.host(),
                method: "pool.get_all_records".into(),
                message: "the host reports no pool".into(),
            })
    }

    /// `host.get_servertime`: the host's time, as xapi writes datetimes
    /// (`YYYYMMDDTHH:MM:SSZ`), in Unix seconds.
    pub async fn server_time(&self, host: &str) -> Result<i64, ClientError> {
        let answer = self
            .call("host.get_servertime", vec![Value::from(host)])
            .await?;
        answer
            .as_datetime()
            .and_then(crate::replicate::keys::parse_datetime)
            .ok_or_else(|| ClientError::Protocol {
                host: self.host(),
                method: "host.get_servertime".into(),
                message: format!("expected a datetime, found {}", answer.kind()),
            })
    }
}
