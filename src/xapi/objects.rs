//! Typed record access on a client: `get_record`, `get_all_records` and `get_by_uuid` for any
//! [`Record`] class.

use super::client::{ClientError, XapiClient};
use super::records::{Record, StringMap, read_string_map};
use super::rpc::Value;

impl XapiClient {
    /// `<class>.get_record(ref)`, typed.
    pub async fn get_record<R: Record>(&self, reference: &str) -> Result<R, ClientError> {
        let method = format!("{}.get_record", R::CLASS);
        let value = self.call(&method, vec![Value::from(reference)]).await?;
        R::from_value(&value).map_err(|e| self.record_error(&method, e))
    }

    /// `<class>.get_all_records()`, typed, as (ref, record) pairs in ref order.
    pub async fn get_all_records<R: Record>(&self) -> Result<Vec<(String, R)>, ClientError> {
        let method = format!("{}.get_all_records", R::CLASS);
        let value = self.call(&method, Vec::new()).await?;
        let all = value
            .as_struct()
            .ok_or_else(|| self.record_error_text(&method, "the answer is not a struct"))?;
        all.iter()
            .map(|(reference, record)| {
                R::from_value(record)
                    .map(|r| (reference.clone(), r))
                    .map_err(|e| self.record_error(&method, e))
            })
            .collect()
    }

    /// `<class>.get_by_uuid(uuid)`: the object's reference.
    pub async fn get_by_uuid<R: Record>(&self, uuid: &str) -> Result<String, ClientError> {
        let method = format!("{}.get_by_uuid", R::CLASS);
        let value = self.call(&method, vec![Value::from(uuid)]).await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.record_error_text(&method, "the answer is not a reference"))
    }

    /// A reference and its record, found by UUID.
    pub async fn record_by_uuid<R: Record>(&self, uuid: &str) -> Result<(String, R), ClientError> {
        let reference = self.get_by_uuid::<R>(uuid).await?;
        let record = self.get_record::<R>(&reference).await?;
        Ok((reference, record))
    }

    /// `<class>.get_<field>(ref)` of a `(string -> string) map` field, e.g. `other_config`.
    pub async fn get_string_map(
        &self,
        class: &'static str,
        reference: &str,
        field: &str,
    ) -> Result<StringMap, ClientError> {
        let method = format!("{class}.get_{field}");
        let value = self.call(&method, vec![Value::from(reference)]).await?;
        read_string_map(class, field, &value).map_err(|e| self.record_error(&method, e))
    }

    fn record_error(&self, method: &str, e: super::records::RecordError) -> ClientError {
        self.record_error_text(method, &e.to_string())
    }

    fn record_error_text(&self, method: &str, message: &str) -> ClientError {
        ClientError::Protocol {
            host: self.host(),
            method: method.to_owned(),
            message: message.to_owned(),
        }
    }
}
