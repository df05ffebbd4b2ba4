//! Objects in S3, Google Cloud Storage and Azure Blob Storage through the `object_store` crate
//! (Apache Arrow project): one client for the three, ranged reads, and `PutMode::Create`, the
//! conditional put (`If-None-Match: *`) that makes publishing create-if-absent.
//!
//! The crate is asynchronous; nernc's work is not, so every call runs to completion on one
//! process-wide single-threaded tokio runtime.

use std::sync::{Arc, OnceLock};

use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use crate::error::{Error, Result, StoreFailure};

/// One object: its URI as given, the store client, and its key.
#[derive(Clone)]
pub struct ObjectLocation {
    uri: String,
    /// `scheme://bucket` (what `join` builds on).
    root: String,
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
}

impl std::fmt::Debug for ObjectLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectLocation")
            .field("uri", &self.uri)
            .finish()
    }
}

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Store {
            uri: String::new(),
            kind: StoreFailure::Transient,
            detail: format!("cannot start the I/O runtime: {e}"),
        })
}

/// The value of `name` in `env`.
fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// The `(key, value)` pairs of `env` whose name starts with `prefix`, lower-cased keys parsed
/// as the client's configuration keys (what each builder's `from_env` does with the process's
/// environment; unknown names are ignored as there).
fn config<K: std::str::FromStr>(env: &[(String, String)], prefix: &str) -> Vec<(K, String)> {
    env.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v.clone())))
        .collect()
}

/// Which environment variables give credentials for `scheme`, as a sentence for errors and
/// `--help`.
pub fn credentials_hint(scheme: &str) -> &'static str {
    match scheme {
        "s3" => {
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN), or \
             AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (Kubernetes service accounts), or \
             AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (ECS, AWS Batch), or AWS_SKIP_SIGNATURE=true \
             (public buckets); AWS_ENDPOINT_URL and AWS_REGION for other S3 servers"
        }
        "gs" => {
            "GOOGLE_SERVICE_ACCOUNT (a key file's path), GOOGLE_SERVICE_ACCOUNT_KEY (the key's \
             JSON) or GOOGLE_APPLICATION_CREDENTIALS, or GOOGLE_SKIP_SIGNATURE=true"
        }
        _ => {
            "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, \
             AZURE_STORAGE_TOKEN, AZURE_CLIENT_ID + AZURE_CLIENT_SECRET + AZURE_TENANT_ID or \
             AZURE_FEDERATED_TOKEN_FILE; or AZURE_STORAGE_USE_EMULATOR=true, or \
             AZURE_SKIP_SIGNATURE=true"
        }
    }
}

/// Whether the environment names credentials explicitly. Without them each client would try
/// the cloud's instance metadata endpoint, which must never happen behind a user's back.
fn has_credentials(scheme: &str, env: &[(String, String)]) -> bool {
    let set = |k: &str| var(env, k).is_some_and(|v| !v.is_empty());
    match scheme {
        "s3" => {
            (set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"))
                || (set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN"))
                || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                || (set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    && set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
                || truthy(var(env, "AWS_SKIP_SIGNATURE"))
        }
        "gs" => {
            [
                "GOOGLE_SERVICE_ACCOUNT",
                "GOOGLE_SERVICE_ACCOUNT_PATH",
                "GOOGLE_SERVICE_ACCOUNT_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS",
            ]
            .iter()
            .any(|k| set(k))
                || truthy(var(env, "GOOGLE_SKIP_SIGNATURE"))
        }
        _ => {
            if truthy(var(env, "AZURE_STORAGE_USE_EMULATOR"))
                || truthy(var(env, "AZURE_SKIP_SIGNATURE"))
            {
                return true;
            }
            let any = |ks: &[&str]| ks.iter().any(|k| set(k));
            let client_secret = any(&["AZURE_CLIENT_SECRET", "AZURE_STORAGE_CLIENT_SECRET"])
                && any(&["AZURE_CLIENT_ID", "AZURE_STORAGE_CLIENT_ID"])
                && any(&["AZURE_TENANT_ID", "AZURE_STORAGE_TENANT_ID"]);
            set("AZURE_STORAGE_ACCOUNT_NAME")
                && (client_secret
                    || any(&[
                        "AZURE_STORAGE_ACCOUNT_KEY",
                        "AZURE_STORAGE_ACCESS_KEY",
                        "AZURE_STORAGE_MASTER_KEY",
                        "AZURE_STORAGE_SAS_KEY",
                        "AZURE_STORAGE_SAS_TOKEN",
                        "AZURE_STORAGE_TOKEN",
                        "AZURE_FEDERATED_TOKEN_FILE",
                    ]))
        }
    }
}

/// Maps a client error to nernc's: what a retry can fix (`Transient`) and what it cannot.
fn store_error(uri: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => StoreFailure::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => StoreFailure::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreFailure::Denied,
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => StoreFailure::Config,
        _ => match http_status(&e.to_string()) {
            // A request the store refuses as malformed (an invalid bucket name, say) fails the
            // same way every time: not worth a retry.
            Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => StoreFailure::Config,
            _ => StoreFailure::Transient,
        },
    };
    Error::Store {
        uri: uri.into(),
        kind,
        detail: e.to_string(),
    }
}

/// The HTTP status in a client error's message ("... status code: 400 Bad Request ..."). The
/// client does not expose it as a value; without one the failure counts as transient.
fn http_status(message: &str) -> Option<u16> {
    let rest = &message[message.find("status code: ")? + "status code: ".len()..];
    rest.get(..3)?.parse().ok()
}

impl ObjectLocation {
    pub(super) fn parse(uri: &str, scheme: &str, env: &[(String, String)]) -> Result<Self> {
        let bad = |kind, detail: String| Error::Store {
            uri: uri.into(),
            kind,
            detail,
        };
        let rest = &uri[scheme.len() + 3..];
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(
                StoreFailure::Config,
                format!("no bucket in the URI (expected {scheme}://BUCKET/KEY)"),
            ));
        }
        let key = ObjectPath::parse(key.trim_end_matches('/'))
            .map_err(|e| bad(StoreFailure::Config, format!("bad object key: {e}")))?;
        if !has_credentials(scheme, env) {
            return Err(bad(
                StoreFailure::Credentials,
                format!(
                    "no credentials for {scheme}:// in the environment; set {} (nernc does not ask cloud metadata endpoints)",
                    credentials_hint(scheme)
                ),
            ));
        }
        let root = format!("{scheme}://{bucket}");
        let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
            "s3" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                config::<AmazonS3ConfigKey>(env, "AWS_")
                    .into_iter()
                    .fold(AmazonS3Builder::new(), |b, (k, v)| b.with_config(k, v))
                    .with_url(&root)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                config::<GoogleConfigKey>(env, "GOOGLE_")
                    .into_iter()
                    .fold(GoogleCloudStorageBuilder::new(), |b, (k, v)| {
                        b.with_config(k, v)
                    })
                    .with_url(&root)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            _ => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                config::<AzureConfigKey>(env, "AZURE_")
                    .into_iter()
                    .fold(MicrosoftAzureBuilder::new(), |b, (k, v)| {
                        b.with_config(k, v)
                    })
                    .with_url(&root)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
        };
        let store = built.map_err(|e| bad(StoreFailure::Config, e.to_string()))?;
        Ok(ObjectLocation {
            uri: uri.into(),
            root,
            store,
            key,
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub(super) fn file_name(&self) -> Option<String> {
        self.key.filename().map(str::to_owned)
    }

    pub(super) fn join(&self, name: &str) -> Result<Self> {
        let key = self.key.clone().join(name);
        Ok(ObjectLocation {
            uri: format!("{}/{}", self.root, key),
            root: self.root.clone(),
            store: self.store.clone(),
            key,
        })
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = std::result::Result<T, object_store::Error>>,
    ) -> Result<T> {
        runtime()?
            .block_on(f)
            .map_err(|e| store_error(&self.uri, e))
    }

    pub(super) fn get(&self) -> Result<Vec<u8>> {
        self.block(async {
            let got = self.store.get(&self.key).await?;
            got.bytes().await
        })
        .map(|b| b.to_vec())
    }

    pub(super) fn get_range(&self, start: u64, n: u64) -> Result<Vec<u8>> {
        let end = start.checked_add(n).ok_or(Error::Overflow("byte range"))?;
        self.block(self.store.get_range(&self.key, start..end))
            .map(|b| b.to_vec())
    }

    /// The object's `Content-Type`, if the store records one.
    pub(super) fn content_type(&self) -> Result<Option<String>> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        self.block(self.store.get_opts(&self.key, opts)).map(|r| {
            r.attributes
                .get(&Attribute::ContentType)
                .map(|v| v.as_ref().to_string())
        })
    }

    pub(super) fn len(&self) -> Result<u64> {
        self.block(self.store.head(&self.key)).map(|m| m.size)
    }

    pub(super) fn exists(&self) -> Result<bool> {
        match self.len() {
            Ok(_) => Ok(true),
            Err(Error::Store {
                kind: StoreFailure::NotFound,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One PUT of the whole object (atomic on every store). With `create`, the PUT is
    /// conditional (`PutMode::Create`): `Ok(false)` when the object already existed.
    pub(super) fn put(&self, bytes: &[u8], create: bool) -> Result<bool> {
        let mut attributes = Attributes::new();
        // Spec §9: a published `.nern` carries its media type.
        if self.key.extension() == Some("nern") {
            attributes.insert(Attribute::ContentType, crate::provenance::MEDIA_TYPE.into());
        }
        let opts = PutOptions {
            mode: if create {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            attributes,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        match self.block(self.store.put_opts(&self.key, payload, opts)) {
            Ok(_) => Ok(true),
            Err(Error::Store {
                kind: StoreFailure::AlreadyExists,
                ..
            }) if create => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn credentials_are_explicit_or_refused() {
        assert!(!has_credentials("s3", &env(&[("AWS_ACCESS_KEY_ID", "a")])));
        assert!(has_credentials(
            "s3",
            &env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")])
        ));
        assert!(has_credentials(
            "s3",
            &env(&[("AWS_SKIP_SIGNATURE", "true")])
        ));
        assert!(!has_credentials(
            "s3",
            &env(&[("AWS_SKIP_SIGNATURE", "false")])
        ));
        assert!(!has_credentials("gs", &env(&[])));
        assert!(has_credentials(
            "gs",
            &env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/k.json")])
        ));
        assert!(!has_credentials(
            "az",
            &env(&[("AZURE_STORAGE_ACCOUNT_KEY", "k")])
        ));
        assert!(has_credentials(
            "az",
            &env(&[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_SAS_KEY", "sv=1")
            ])
        ));
        assert!(has_credentials(
            "az",
            &env(&[("AZURE_STORAGE_USE_EMULATOR", "true")])
        ));
    }

    #[test]
    fn gcs_and_azure_clients_build_offline_from_explicit_settings() {
        // No server for these here: what can be checked offline is that the URI and the
        // explicit settings make a client (no request is sent before a read or write).
        let gs = env(&[("GOOGLE_SKIP_SIGNATURE", "true")]);
        let loc = ObjectLocation::parse("gs://bucket/a/m.nern", "gs", &gs).unwrap();
        assert_eq!(loc.file_name().as_deref(), Some("m.nern"));
        assert_eq!(loc.join("x").unwrap().uri(), "gs://bucket/a/m.nern/x");
        let az = env(&[("AZURE_STORAGE_USE_EMULATOR", "true")]);
        let loc = ObjectLocation::parse("az://container/m.nern", "az", &az).unwrap();
        assert_eq!(loc.uri(), "az://container/m.nern");
        // A malformed Azure key is a configuration error, found before any request.
        let bad = env(&[
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "not base64!"),
        ]);
        match ObjectLocation::parse("az://container/m.nern", "az", &bad) {
            Err(Error::Store { kind, .. }) => assert_eq!(kind, StoreFailure::Config),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_errors_are_not_retried_server_errors_are() {
        let generic = |m: &str| object_store::Error::Generic {
            store: "S3",
            source: m.to_string().into(),
        };
        let kind = |m: &str| match store_error("s3://b/k", generic(m)) {
            Error::Store { kind, .. } => kind,
            other => panic!("{other}"),
        };
        let msg = |code: &str| {
            format!(
                "Error performing HEAD http://h/k - Server returned non-2xx status code: {code}: "
            )
        };
        assert_eq!(kind(&msg("400 Bad Request")), StoreFailure::Config);
        assert_eq!(kind(&msg("429 Too Many Requests")), StoreFailure::Transient);
        assert_eq!(
            kind(&msg("503 Service Unavailable")),
            StoreFailure::Transient
        );
        assert_eq!(
            kind("error sending request: connection refused"),
            StoreFailure::Transient
        );
    }

    #[test]
    fn uris_need_a_bucket_and_a_clean_key() {
        let ok = env(&[("AWS_SKIP_SIGNATURE", "true")]);
        let e = ObjectLocation::parse("s3:///key", "s3", &ok).unwrap_err();
        assert!(e.to_string().contains("no bucket"), "{e}");
        let e = ObjectLocation::parse("s3://b/a//b", "s3", &ok).unwrap_err();
        assert!(e.to_string().contains("bad object key"), "{e}");
    }
}
