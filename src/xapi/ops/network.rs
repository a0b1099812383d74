//! `VIF` and `network` calls: a VM's interfaces, the host's networks with their PIFs, and
//! creating and destroying interfaces.

use super::{map_value, record};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::{NetworkRecord, PifRecord, VifRecord, VmRecord};
use crate::xapi::rpc::Value;

/// A new interface: `VIF.create`'s arguments that a copy sets.
#[derive(Debug, Clone)]
pub struct NewVif<'a> {
    pub vm: &'a str,
    pub network: &'a str,
    pub device: &'a str,
    /// Empty: the host derives one.
    pub mac: &'a str,
    /// The source interface's settings (MTU, QoS, locking, allowed addresses).
    pub like: &'a VifRecord,
}

impl XapiClient {
    /// `vm`'s interfaces, by device number.
    pub async fn vm_vifs(&self, vm: &VmRecord) -> Result<Vec<(String, VifRecord)>, ClientError> {
        let mut vifs = Vec::new();
        for reference in &vm.vifs {
            let vif: VifRecord = self.get_record(reference).await?;
            vifs.push((reference.clone(), vif));
        }
        vifs.sort_by_key(|(_, v)| {
            (
                v.device.parse::<u32>().unwrap_or(u32::MAX),
                v.device.clone(),
            )
        });
        Ok(vifs)
    }

    /// Every network of the host, with every PIF.
    pub async fn networks_and_pifs(
        &self,
    ) -> Result<(Vec<(String, NetworkRecord)>, Vec<(String, PifRecord)>), ClientError> {
        let networks = self.get_all_records::<NetworkRecord>().await?;
        let pifs = self.get_all_records::<PifRecord>().await?;
        Ok((networks, pifs))
    }

    /// `VIF.create`, unplugged: the new interface's reference.
    pub async fn create_vif(&self, vif: &NewVif<'_>) -> Result<String, ClientError> {
        let like = vif.like;
        let strings = |items: &[String]| {
            Value::Array(items.iter().map(|i| Value::from(i.as_str())).collect())
        };
        let locking = if like.locking_mode.is_empty() {
            "network_default"
        } else {
            like.locking_mode.as_str()
        };
        let args = record([
            ("device", Value::from(vif.device)),
            ("network", Value::from(vif.network)),
            ("VM", Value::from(vif.vm)),
            ("MAC", Value::from(vif.mac)),
            ("MTU", Value::Int(like.mtu)),
            ("other_config", map_value(&like.other_config)),
            (
                "qos_algorithm_type",
                Value::from(like.qos_algorithm_type.as_str()),
            ),
            (
                "qos_algorithm_params",
                map_value(&like.qos_algorithm_params),
            ),
            ("locking_mode", Value::from(locking)),
            ("ipv4_allowed", strings(&like.ipv4_allowed)),
            ("ipv6_allowed", strings(&like.ipv6_allowed)),
            ("currently_attached", Value::Bool(false)),
        ]);
        self.call_for_string("VIF.create", vec![args]).await
    }

    /// The network named `name`, if the host has one.
    pub async fn network_named(&self, name: &str) -> Result<Option<String>, ClientError> {
        let found = self
            .call("network.get_by_name_label", vec![Value::from(name)])
            .await?;
        Ok(found
            .as_array()
            .and_then(|refs| refs.first())
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// `network.create` named `name`, with no PIF: it reaches nothing outside the host.
    pub async fn create_network(&self, name: &str) -> Result<String, ClientError> {
        let args = record([
            ("name_label", Value::from(name)),
            ("name_description", Value::from("created by vhdsync")),
            ("MTU", Value::Int(1500)),
            ("other_config", Value::Struct(Default::default())),
        ]);
        self.call_for_string("network.create", vec![args]).await
    }

    pub async fn destroy_vif(&self, vif: &str) -> Result<(), ClientError> {
        self.call("VIF.destroy", vec![Value::from(vif)])
            .await
            .map(drop)
    }
}
