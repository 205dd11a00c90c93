//! KMIP 1.2 client for the Data Security Manager (`dsm` tier): TLS 1.2+ with a client
//! certificate (rustls), one connection per call, requests and responses as TTLV trees.

pub mod ttlv;

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::ttlv::{Item, Value};
use crate::config::DsmConfig;
use crate::secrets::SecretSource;

pub mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const ENCRYPTION_KEY_INFORMATION: u32 = 0x420036;
    pub const HASHING_ALGORITHM: u32 = 0x420038;
    pub const KEY_BLOCK: u32 = 0x420040;
    pub const KEY_FORMAT_TYPE: u32 = 0x420042;
    pub const KEY_MATERIAL: u32 = 0x420043;
    pub const KEY_VALUE: u32 = 0x420045;
    pub const KEY_WRAPPING_DATA: u32 = 0x420046;
    pub const KEY_WRAPPING_SPECIFICATION: u32 = 0x420047;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PADDING_METHOD: u32 = 0x42005F;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const SYMMETRIC_KEY: u32 = 0x42008F;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const WRAPPING_METHOD: u32 = 0x42009E;
    pub const ENCODING_OPTION: u32 = 0x4200A3;
}

pub mod op {
    pub const CREATE: u32 = 0x01;
    pub const LOCATE: u32 = 0x08;
    pub const GET: u32 = 0x0A;
    pub const GET_ATTRIBUTES: u32 = 0x0B;
    pub const ACTIVATE: u32 = 0x12;
    pub const REVOKE: u32 = 0x13;
    pub const DESTROY: u32 = 0x14;
}

/// KMIP Cryptographic Algorithm values the bridge names in its messages.
pub fn algorithm_name(v: u32) -> String {
    match v {
        1 => "DES".into(),
        2 => "Triple DES".into(),
        3 => "AES".into(),
        4 => "RSA".into(),
        5 => "DSA".into(),
        6 => "ECDSA".into(),
        7..=12 => "HMAC".into(),
        other => format!("algorithm 0x{other:X}"),
    }
}

pub const ALG_AES: u32 = 3;
pub const OBJECT_SYMMETRIC_KEY: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum KmipError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("TLS with the DSM failed: {0}")]
    Tls(String),
    #[error("KMIP protocol error: {0}")]
    Protocol(String),
    #[error("the DSM refused {op}: {message}")]
    Failed {
        op: &'static str,
        reason: Option<u32>,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl KmipError {
    /// KMIP Result Reason 1: Item Not Found.
    pub fn not_found(&self) -> bool {
        matches!(
            self,
            KmipError::Failed {
                reason: Some(1),
                ..
            }
        )
    }
}

/// How a Get asks the server to wrap the key.
#[derive(Debug, Clone)]
pub enum KeyWrapping {
    /// RFC 3394 (NIST key wrap) under a symmetric key of the server.
    AesKeyWrap { kek_uid: String },
    /// RSA-OAEP under a public key registered on the server.
    RsaOaep { public_uid: String, sha256: bool },
}

/// A key as a wrapped Get returns it.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub object_type: Option<u32>,
    pub algorithm: Option<u32>,
    pub length: Option<i32>,
    pub wrapped: Vec<u8>,
}

/// What Get Attributes says an object is.
#[derive(Debug, Clone, Default)]
pub struct ObjectFacts {
    pub object_type: Option<u32>,
    pub algorithm: Option<u32>,
    pub length: Option<i32>,
}

pub struct KmipClient {
    pub name: String,
    host: String,
    port: u16,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

fn read_pem_certs(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, KmipError> {
    let pem = std::fs::read(path)
        .map_err(|e| KmipError::Setup(format!("{what}: cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KmipError::Setup(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(KmipError::Setup(format!(
            "{what}: no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

impl KmipClient {
    pub fn new(cfg: &DsmConfig, index: usize) -> Result<Self, KmipError> {
        let key = |k: &str| format!("config key `dsm[{index}].{k}`");
        let mut roots = rustls::RootCertStore::empty();
        for c in read_pem_certs(&cfg.ca_file, &key("ca_file"))? {
            roots
                .add(c)
                .map_err(|e| KmipError::Setup(format!("{}: {e}", key("ca_file"))))?;
        }
        let chain = read_pem_certs(&cfg.client_cert_file, &key("client_cert_file"))?;
        let key_pem = SecretSource::new(cfg.client_key_file.clone())
            .read_bytes()
            .map_err(|e| KmipError::Setup(format!("{}: {e}", key("client_key_file"))))?;
        let private = rustls_pemfile::private_key(&mut key_pem.expose_secret().as_slice())
            .map_err(|e| KmipError::Setup(format!("{}: {e}", key("client_key_file"))))?
            .ok_or_else(|| {
                KmipError::Setup(format!(
                    "{}: no private key in the file",
                    key("client_key_file")
                ))
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KmipError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| KmipError::Setup(format!("{}: {e}", key("client_cert_file"))))?;
        let sn = cfg.server_name.clone().unwrap_or_else(|| cfg.host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(sn.clone()).map_err(|_| {
            KmipError::Setup(format!(
                "{}: `{sn}` is not a valid server name",
                key("server_name")
            ))
        })?;
        Ok(Self {
            name: cfg.name.clone(),
            host: cfg.host.clone(),
            port: cfg.port,
            server_name,
            tls: Arc::new(tls),
            timeout: Duration::from_secs(cfg.timeout_secs),
        })
    }

    /// One request, one batch item; the response payload of a successful operation.
    pub async fn call(
        &self,
        op_name: &'static str,
        op: u32,
        payload: Vec<Item>,
    ) -> Result<Item, KmipError> {
        let request = Item::structure(
            tag::REQUEST_MESSAGE,
            vec![
                Item::structure(
                    tag::REQUEST_HEADER,
                    vec![
                        Item::structure(
                            tag::PROTOCOL_VERSION,
                            vec![
                                Item::int(tag::PROTOCOL_VERSION_MAJOR, 1),
                                Item::int(tag::PROTOCOL_VERSION_MINOR, 2),
                            ],
                        ),
                        Item::int(tag::BATCH_COUNT, 1),
                    ],
                ),
                Item::structure(
                    tag::BATCH_ITEM,
                    vec![
                        Item::enumeration(tag::OPERATION, op),
                        Item::structure(tag::REQUEST_PAYLOAD, payload),
                    ],
                ),
            ],
        );
        let bytes = request
            .encode()
            .map_err(|e| KmipError::Protocol(e.to_string()))?;
        let answer = tokio::time::timeout(self.timeout, self.exchange(&bytes))
            .await
            .map_err(|_| {
                KmipError::Unreachable(format!("{}:{} (timed out)", self.host, self.port))
            })??;
        let item = answer
            .child(tag::BATCH_ITEM)
            .ok_or_else(|| KmipError::Protocol("response without a batch item".into()))?;
        let status = item.child(tag::RESULT_STATUS).and_then(Item::as_enum);
        if status != Some(0) {
            return Err(KmipError::Failed {
                op: op_name,
                reason: item.child(tag::RESULT_REASON).and_then(Item::as_enum),
                message: item
                    .child(tag::RESULT_MESSAGE)
                    .and_then(Item::as_text)
                    .unwrap_or("no message")
                    .to_owned(),
            });
        }
        Ok(item
            .child(tag::RESPONSE_PAYLOAD)
            .cloned()
            .unwrap_or_else(|| Item::structure(tag::RESPONSE_PAYLOAD, Vec::new())))
    }

    async fn exchange(&self, request: &[u8]) -> Result<Item, KmipError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| KmipError::Unreachable(format!("{addr} ({e})")))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut tls = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| KmipError::Tls(e.to_string()))?;
        tls.write_all(request)
            .await
            .map_err(|e| KmipError::Tls(e.to_string()))?;
        let mut header = [0u8; 8];
        tls.read_exact(&mut header)
            .await
            .map_err(|e| KmipError::Protocol(format!("no answer: {e}")))?;
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > ttlv::MAX_MESSAGE {
            return Err(KmipError::Protocol(format!(
                "answer of {len} bytes refused"
            )));
        }
        let mut message = header.to_vec();
        message.resize(8 + len, 0);
        tls.read_exact(&mut message[8..])
            .await
            .map_err(|e| KmipError::Protocol(format!("truncated answer: {e}")))?;
        Item::decode(&message).map_err(|e| KmipError::Protocol(e.to_string()))
    }

    /// Unique identifiers of the objects with this Name.
    pub async fn locate_by_name(&self, name: &str) -> Result<Vec<String>, KmipError> {
        let payload = vec![Item::structure(
            tag::ATTRIBUTE,
            vec![
                Item::text(tag::ATTRIBUTE_NAME, "Name"),
                Item::structure(
                    tag::ATTRIBUTE_VALUE,
                    vec![
                        Item::text(tag::NAME_VALUE, name),
                        Item::enumeration(tag::NAME_TYPE, 1),
                    ],
                ),
            ],
        )];
        let answer = self.call("Locate", op::LOCATE, payload).await?;
        Ok(answer
            .all(tag::UNIQUE_IDENTIFIER)
            .filter_map(|i| i.as_text().map(str::to_owned))
            .collect())
    }

    /// Object Type, Cryptographic Algorithm and Cryptographic Length of an object, asked for
    /// before a wrapped Get so that a key of the wrong kind is refused without being sent.
    pub async fn facts(&self, uid: &str) -> Result<ObjectFacts, KmipError> {
        let names = [
            "Object Type",
            "Cryptographic Algorithm",
            "Cryptographic Length",
        ];
        let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)];
        payload.extend(names.iter().map(|n| Item::text(tag::ATTRIBUTE_NAME, n)));
        let answer = self
            .call("Get Attributes", op::GET_ATTRIBUTES, payload)
            .await?;
        let mut facts = ObjectFacts::default();
        for a in answer.all(tag::ATTRIBUTE) {
            let name = a.child(tag::ATTRIBUTE_NAME).and_then(Item::as_text);
            let value = a.child(tag::ATTRIBUTE_VALUE);
            match name {
                Some("Object Type") => facts.object_type = value.and_then(Item::as_enum),
                Some("Cryptographic Algorithm") => facts.algorithm = value.and_then(Item::as_enum),
                Some("Cryptographic Length") => facts.length = value.and_then(Item::as_int),
                _ => {}
            }
        }
        Ok(facts)
    }

    /// Get with a Key Wrapping Specification: the key comes back wrapped, never in the clear.
    pub async fn get_wrapped(
        &self,
        uid: &str,
        wrapping: &KeyWrapping,
    ) -> Result<WrappedKey, KmipError> {
        let (key_uid, params) = match wrapping {
            KeyWrapping::AesKeyWrap { kek_uid } => (
                kek_uid.as_str(),
                // NIST key wrap (RFC 3394).
                vec![Item::enumeration(tag::BLOCK_CIPHER_MODE, 0x0D)],
            ),
            KeyWrapping::RsaOaep { public_uid, sha256 } => (
                public_uid.as_str(),
                vec![
                    Item::enumeration(tag::PADDING_METHOD, 2),
                    Item::enumeration(tag::HASHING_ALGORITHM, if *sha256 { 6 } else { 4 }),
                ],
            ),
        };
        let payload = vec![
            Item::text(tag::UNIQUE_IDENTIFIER, uid),
            Item::structure(
                tag::KEY_WRAPPING_SPECIFICATION,
                vec![
                    Item::enumeration(tag::WRAPPING_METHOD, 1),
                    Item::structure(
                        tag::ENCRYPTION_KEY_INFORMATION,
                        vec![
                            Item::text(tag::UNIQUE_IDENTIFIER, key_uid),
                            Item::structure(tag::CRYPTOGRAPHIC_PARAMETERS, params),
                        ],
                    ),
                    Item::enumeration(tag::ENCODING_OPTION, 1),
                ],
            ),
        ];
        let answer = self.call("Get", op::GET, payload).await?;
        let object_type = answer.child(tag::OBJECT_TYPE).and_then(Item::as_enum);
        let block = answer
            .children()
            .iter()
            .find_map(|c| c.child(tag::KEY_BLOCK))
            .ok_or_else(|| KmipError::Protocol("Get answer without a key block".into()))?;
        if block.child(tag::KEY_WRAPPING_DATA).is_none() {
            // The server ignored the wrapping request: never accept a key in the clear.
            return Err(KmipError::Protocol(
                "the DSM answered with an unwrapped key; refused".into(),
            ));
        }
        let value = block
            .child(tag::KEY_VALUE)
            .ok_or_else(|| KmipError::Protocol("key block without a key value".into()))?;
        // The specification gives the wrapped key as a Byte String; PyKMIP sends a structure.
        let wrapped = match &value.value {
            Value::ByteString(b) => b.clone(),
            Value::Structure(_) => value
                .child(tag::KEY_MATERIAL)
                .and_then(Item::as_bytes)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| KmipError::Protocol("key value without key material".into()))?,
            _ => return Err(KmipError::Protocol("unexpected key value type".into())),
        };
        Ok(WrappedKey {
            object_type,
            algorithm: block
                .child(tag::CRYPTOGRAPHIC_ALGORITHM)
                .and_then(Item::as_enum),
            length: block
                .child(tag::CRYPTOGRAPHIC_LENGTH)
                .and_then(Item::as_int),
            wrapped,
        })
    }

    /// A throwaway AES-256 key for `probe`; returns its unique identifier.
    pub async fn create_aes(&self, name: &str) -> Result<String, KmipError> {
        let attr = |n: &str, v: Item| {
            Item::structure(
                tag::ATTRIBUTE,
                vec![
                    Item::text(tag::ATTRIBUTE_NAME, n),
                    Item {
                        tag: tag::ATTRIBUTE_VALUE,
                        value: v.value,
                    },
                ],
            )
        };
        let payload = vec![
            Item::enumeration(tag::OBJECT_TYPE, OBJECT_SYMMETRIC_KEY),
            Item::structure(
                tag::TEMPLATE_ATTRIBUTE,
                vec![
                    attr("Cryptographic Algorithm", Item::enumeration(0, ALG_AES)),
                    attr("Cryptographic Length", Item::int(0, 256)),
                    attr("Cryptographic Usage Mask", Item::int(0, 12)),
                    attr(
                        "Name",
                        Item::structure(
                            0,
                            vec![
                                Item::text(tag::NAME_VALUE, name),
                                Item::enumeration(tag::NAME_TYPE, 1),
                            ],
                        ),
                    ),
                ],
            ),
        ];
        let answer = self.call("Create", op::CREATE, payload).await?;
        answer
            .child(tag::UNIQUE_IDENTIFIER)
            .and_then(Item::as_text)
            .map(str::to_owned)
            .ok_or_else(|| KmipError::Protocol("Create answer without a unique identifier".into()))
    }

    pub async fn destroy(&self, uid: &str) -> Result<(), KmipError> {
        self.call(
            "Destroy",
            op::DESTROY,
            vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
        )
        .await
        .map(|_| ())
    }
}
