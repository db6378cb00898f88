//! The KV version 2 operations on a [`Vault`]: read, check-and-set write, metadata, removal
//! and list, each one request.
//!
//! Each costs a round trip, so the callers use what they already know: the version a read or
//! a write answered is the check-and-set value of the next write, a read's custom metadata
//! says whether the path's metadata needs writing, and one `DELETE metadata/PATH` removes a
//! path with every version.

use reqwest::Method;
use serde_json::{Value, json};

use super::vault::{KvPath, StoreError, Vault, Versioned};

impl Vault {
    /// Read the latest version of `path`: `None` if it was never written (or was removed
    /// whole); `deleted` set, with the version, if its latest version was deleted.
    pub async fn read(&self, path: &str) -> Result<Option<Versioned>, StoreError> {
        self.read_at(&self.kv_path(path)).await
    }

    /// [`read`](Self::read) of a path whose URLs are parsed already.
    pub async fn read_at(&self, path: &KvPath) -> Result<Option<Versioned>, StoreError> {
        let op = "read";
        let answer = self.call(op, Method::GET, &path.data, None).await?;
        let found = answer.found;
        let data = answer.body.get("data").cloned().unwrap_or(Value::Null);
        let meta = data.get("metadata").cloned().unwrap_or(Value::Null);
        let Some(version) = meta.get("version").and_then(Value::as_u64) else {
            // A 404 without metadata: a path never written.
            return if found {
                Err(self.malformed(op, "no data.metadata.version"))
            } else {
                Ok(None)
            };
        };
        let deleted = !found
            || meta
                .get("deletion_time")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
            || meta.get("destroyed").and_then(Value::as_bool) == Some(true);
        Ok(Some(Versioned {
            version,
            data: data.get("data").cloned().unwrap_or(Value::Null),
            deleted,
            custom: meta.get("custom_metadata").cloned().unwrap_or(Value::Null),
        }))
    }

    /// The current version number of `path` (0 when it has never been written).
    pub async fn current_version(&self, path: &str) -> Result<u64, StoreError> {
        let answer = self
            .call(
                "read metadata",
                Method::GET,
                &self.target(&format!("{}/metadata/{path}", self.mount())),
                None,
            )
            .await?;
        Ok(answer
            .found()
            .and_then(|a| a.get("data")?.get("current_version")?.as_u64())
            .unwrap_or(0))
    }

    /// Write `data` at `path` only if its current version is `cas` (0: only if absent).
    /// Returns the new version.
    /// `data` moves into the body: `json!` would copy it, string by string, at every write.
    pub async fn write_cas(&self, path: &str, data: Value, cas: u64) -> Result<u64, StoreError> {
        self.write_cas_at(&self.kv_path(path), data, cas).await
    }

    /// [`write_cas`](Self::write_cas) to a path whose URLs are parsed already.
    pub async fn write_cas_at(
        &self,
        path: &KvPath,
        data: Value,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let op = "write";
        let mut body = serde_json::Map::new();
        body.insert("options".into(), json!({ "cas": cas }));
        body.insert("data".into(), data);
        let body = Value::Object(body);
        let answer = self.call(op, Method::POST, &path.data, Some(&body)).await;
        match answer.map(super::vault::Answer::found) {
            Ok(Some(a)) => a
                .get("data")
                .and_then(|d| d.get("version"))
                .and_then(Value::as_u64)
                .ok_or_else(|| self.malformed(op, "no data.version")),
            Ok(None) => Err(self.malformed(op, "404: is the mount a KV version 2 engine?")),
            Err(StoreError::Refused {
                status: 400,
                detail,
                ..
            }) if detail.contains("check-and-set") => Err(StoreError::Conflict {
                store: self.name().to_string(),
                op,
                path: path.path.clone(),
                expected: cas,
            }),
            Err(e) => Err(e),
        }
    }

    /// The custom metadata tokenkeeper gives a set's path: who wrote it, for which set, and
    /// the `max_versions` it set there, so that a read showing this very text tells that the
    /// path's metadata needs no write.
    pub fn custom_metadata(&self, set: &str) -> Value {
        json!({
            "managed-by": "tokenkeeper",
            "set": set,
            "max_versions": self.max_versions().to_string(),
        })
    }

    /// Set `max_versions` and the custom metadata (who wrote it, for whom) on `path`.
    pub async fn set_metadata(&self, path: &str, custom: &Value) -> Result<(), StoreError> {
        self.set_metadata_at(&self.kv_path(path), custom).await
    }

    /// [`set_metadata`](Self::set_metadata) of a path whose URLs are parsed already.
    pub async fn set_metadata_at(&self, path: &KvPath, custom: &Value) -> Result<(), StoreError> {
        let body = json!({ "max_versions": self.max_versions(), "custom_metadata": custom });
        self.call("write metadata", Method::POST, &path.metadata, Some(&body))
            .await
            .map(|_| ())
    }

    /// Remove what `path` holds, in one request: its metadata and every version, destroyed
    /// (readers get 404, and the data is gone from the store's history). A late write with
    /// an old version is still refused: the path's current version is 0 again, and a
    /// check-and-set write succeeds only against that.
    pub async fn remove(&self, path: &str) -> Result<(), StoreError> {
        self.delete_all(path).await
    }

    /// [`remove`](Self::remove) of a path whose URLs are parsed already.
    pub async fn remove_at(&self, path: &KvPath) -> Result<(), StoreError> {
        self.call("delete metadata", Method::DELETE, &path.metadata, None)
            .await
            .map(|_| ())
    }

    /// Delete `path` with all its versions and metadata.
    pub async fn delete_all(&self, path: &str) -> Result<(), StoreError> {
        self.remove_at(&self.kv_path(path)).await
    }

    /// The mount's own `max_versions` (`GET MOUNT/config`; 0 means the store's default, no
    /// limit). A token's policy may not allow it: the caller then writes each path's own.
    pub async fn mount_max_versions(&self) -> Result<u64, StoreError> {
        let op = "read the mount's config";
        let answer = self
            .call(
                op,
                Method::GET,
                &self.target(&format!("{}/config", self.mount())),
                None,
            )
            .await?;
        answer
            .found()
            .and_then(|a| a.get("data")?.get("max_versions")?.as_u64())
            .ok_or_else(|| self.malformed(op, "no data.max_versions"))
    }

    /// The keys under `path/` (empty when there are none).
    pub async fn list(&self, path: &str) -> Result<Vec<String>, StoreError> {
        let method = Method::from_bytes(b"LIST").unwrap_or(Method::GET);
        let answer = self
            .call(
                "list",
                method,
                &self.target(&format!("{}/metadata/{path}", self.mount())),
                None,
            )
            .await?;
        Ok(answer
            .found()
            .and_then(|a| a.get("data")?.get("keys").cloned())
            .and_then(|k| serde_json::from_value(k).ok())
            .unwrap_or_default())
    }
}
