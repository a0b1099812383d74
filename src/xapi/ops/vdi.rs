//! `VDI` calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{map_value, record};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::StringMap;
use crate::xapi::rpc::Value;

/// How long [`XapiClient::destroy_vdi_once_free`] waits for a VDI to be free.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// xapi's refusals of an operation on a VDI another operation holds for now.
fn is_busy(error: &ClientError) -> bool {
    matches!(
        error.xapi_code(),
        Some("VDI_IN_USE" | "OTHER_OPERATION_IN_PROGRESS")
    )
}

/// A new empty user VDI.
#[derive(Debug, Clone, Copy)]
pub struct NewVdi<'a> {
    pub name_label: &'a str,
    pub sr: &'a str,
    /// Bytes.
    pub virtual_size: u64,
    pub other_config: &'a StringMap,
}

impl XapiClient {
    /// `VDI.create`: the new VDI's reference.
    pub async fn create_vdi(&self, vdi: &NewVdi<'_>) -> Result<String, ClientError> {
        let fields = record([
            ("name_label", Value::from(vdi.name_label)),
            ("name_description", Value::from("")),
            ("SR", Value::from(vdi.sr)),
            ("virtual_size", Value::Int(vdi.virtual_size as i64)),
            ("type", Value::from("user")),
            ("sharable", Value::Bool(false)),
            ("read_only", Value::Bool(false)),
            ("other_config", map_value(vdi.other_config)),
            ("xenstore_data", Value::Struct(BTreeMap::new())),
            ("sm_config", Value::Struct(BTreeMap::new())),
            ("tags", Value::Array(Vec::new())),
        ]);
        self.call_for_string("VDI.create", vec![fields]).await
    }

    /// `VDI.clone` (copy on write): the clone's reference.
    pub async fn clone_vdi(&self, vdi: &str) -> Result<String, ClientError> {
        let params = vec![Value::from(vdi), Value::Struct(BTreeMap::new())];
        self.call_for_string("VDI.clone", params).await
    }

    /// `VDI.resize` to `size` bytes.
    pub async fn resize_vdi(&self, vdi: &str, size: u64) -> Result<(), ClientError> {
        let params = vec![Value::from(vdi), Value::Int(size as i64)];
        self.call_unit("VDI.resize", params).await
    }

    pub async fn destroy_vdi(&self, vdi: &str) -> Result<(), ClientError> {
        self.call_unit("VDI.destroy", vec![Value::from(vdi)]).await
    }

    /// `VDI.destroy`, waiting (at most 10 s) for a transfer still winding down on
    /// the VDI: an import or export whose client was killed holds the VDI until the host
    /// notices the closed connection at its next read or write, and xapi refuses the
    /// destroy meanwhile (`VDI_IN_USE`, `OTHER_OPERATION_IN_PROGRESS`). The clean-up of an
    /// interrupted run comes straight after such a kill.
    pub async fn destroy_vdi_once_free(&self, vdi: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.destroy_vdi(vdi).await {
                Err(e) if is_busy(&e) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                done => return done,
            }
        }
    }

    pub async fn vdi_uuid(&self, vdi: &str) -> Result<String, ClientError> {
        self.call_for_string("VDI.get_uuid", vec![Value::from(vdi)])
            .await
    }

    pub async fn vdi_name_label(&self, vdi: &str) -> Result<String, ClientError> {
        let name = self
            .call("VDI.get_name_label", vec![Value::from(vdi)])
            .await?;
        Ok(name.as_str().unwrap_or_default().to_owned())
    }

    pub async fn set_vdi_name_label(&self, vdi: &str, name: &str) -> Result<(), ClientError> {
        let params = vec![Value::from(vdi), Value::from(name)];
        self.call_unit("VDI.set_name_label", params).await
    }

    /// `VDI.set_other_config`: the whole map replaced in one call.
    pub async fn set_vdi_other_config(
        &self,
        vdi: &str,
        other_config: &StringMap,
    ) -> Result<(), ClientError> {
        let params = vec![Value::from(vdi), map_value(other_config)];
        self.call_unit("VDI.set_other_config", params).await
    }
}
